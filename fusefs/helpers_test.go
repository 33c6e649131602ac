package fusefs

import (
	"context"
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/blk"
)

// memBackend is a namespace in memory, optionally slow or failing, that
// counts its commands and the most in flight at once.
type memBackend struct {
	lim  blk.Limits
	mu   sync.Mutex
	data []byte

	delay                 time.Duration
	fail                  atomic.Bool
	reads                 atomic.Int64
	inFlight, maxInFlight atomic.Int64
	flushes               atomic.Int64
	zeroed, deallocated   atomic.Int64
}

var _ blk.Backend = (*memBackend)(nil)

func newMemBackend(bs int, size int64) *memBackend {
	return &memBackend{
		lim: blk.Limits{BlockSize: bs, Blocks: uint64(size) / uint64(bs), MaxTransfer: 128 << 10,
			Queues: 2, QueueDepth: 32, WriteZeroes: true, Deallocate: true},
		data: make([]byte, size),
	}
}

func (m *memBackend) Limits() blk.Limits { return m.lim }

func (m *memBackend) begin(ctx context.Context) error {
	n := m.inFlight.Add(1)
	for {
		x := m.maxInFlight.Load()
		if n <= x || m.maxInFlight.CompareAndSwap(x, n) {
			break
		}
	}
	if m.fail.Load() {
		m.inFlight.Add(-1)
		return errors.New("injected controller failure")
	}
	if m.delay > 0 {
		select {
		case <-time.After(m.delay):
		case <-ctx.Done():
			m.inFlight.Add(-1)
			return ctx.Err()
		}
	}
	return nil
}

func (m *memBackend) Read(ctx context.Context, lba uint64, buf []byte) error {
	if err := m.begin(ctx); err != nil {
		return err
	}
	defer m.inFlight.Add(-1)
	m.reads.Add(1)
	m.mu.Lock()
	copy(buf, m.data[int(lba)*m.lim.BlockSize:])
	m.mu.Unlock()
	return nil
}

func (m *memBackend) Write(ctx context.Context, lba uint64, buf []byte) error {
	if err := m.begin(ctx); err != nil {
		return err
	}
	defer m.inFlight.Add(-1)
	m.mu.Lock()
	copy(m.data[int(lba)*m.lim.BlockSize:], buf)
	m.mu.Unlock()
	return nil
}

func (m *memBackend) Flush(ctx context.Context) error { m.flushes.Add(1); return nil }

func (m *memBackend) WriteZeroes(ctx context.Context, lba, blocks uint64) error {
	bs := uint64(m.lim.BlockSize)
	m.mu.Lock()
	clear(m.data[lba*bs : (lba+blocks)*bs])
	m.mu.Unlock()
	m.zeroed.Add(int64(blocks))
	return nil
}

func (m *memBackend) Deallocate(ctx context.Context, lba, blocks uint64) error {
	m.deallocated.Add(int64(blocks))
	return nil
}

func (m *memBackend) bytes(off, n int) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]byte(nil), m.data[off:off+n]...)
}

// needFUSE skips the test, saying why, unless it runs as root with
// /dev/fuse.
func needFUSE(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("FUSE mounts without fusermount need root")
	}
	if f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0); err != nil {
		t.Skipf("cannot open /dev/fuse: %v", err)
	} else {
		f.Close()
	}
}

// mountFiles mounts one file per backend (nvme0n1, nvme0n2, ...) in a
// temporary directory, unmounted when the test ends, even if it fails.
func mountFiles(t testing.TB, cfg Config, backends ...*memBackend) (*Server, []*blk.Device) {
	t.Helper()
	needFUSE(t)
	var devs []*blk.Device
	for i, be := range backends {
		d, err := blk.New(be, blk.Options{})
		if err != nil {
			t.Fatal(err)
		}
		devs = append(devs, d)
		cfg.Files = append(cfg.Files, File{Name: "nvme0n" + string(rune('1'+i)), Device: d})
	}
	dir := t.TempDir()
	srv, err := Mount(dir, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unmount(t, srv) })
	return srv, devs
}

// unmount unmounts srv, lazily if a file is still open, within bounded time.
func unmount(t testing.TB, srv *Server) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- srv.Unmount() }()
	select {
	case err := <-done:
		if err == nil {
			return
		}
		t.Errorf("unmount %s: %v; detaching it", srv.Dir(), err)
	case <-time.After(10 * time.Second):
		t.Errorf("unmount %s did not finish in 10 s; detaching it", srv.Dir())
	}
	if err := syscall.Unmount(srv.Dir(), syscall.MNT_DETACH); err != nil {
		t.Errorf("umount -l %s: %v", srv.Dir(), err)
	}
}
