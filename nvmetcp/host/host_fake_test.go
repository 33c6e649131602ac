package host

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
)

var testHostID = [16]byte{0x4b, 0x4e, 0x56, 0x50, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, 0x42}

// testOpts are small and quick: tests never touch the user's config dir.
func testOpts() Options {
	return Options{
		HostNQN:        "nqn.2014-08.org.nvmexpress:uuid:4b4e5650-0000-4000-8000-000000000042",
		HostID:         testHostID,
		NrIOQueues:     2,
		QueueSize:      32,
		IOTimeout:      5 * time.Second,
		KeepAliveTmo:   5 * time.Second,
		ReconnectDelay: 100 * time.Millisecond,
		CtrlLossTmo:    10 * time.Second,
		Logger:         slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func connectT(t *testing.T, addr, nqn string, o Options) *Controller {
	t.Helper()
	c, err := Connect(testCtx(t, 10*time.Second), addr, nqn, o)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestFakeConnectIdentify(t *testing.T) {
	ft := newFakeTarget(t, fakeConfig{nsSizes: []int{4 << 20, 1 << 20}, mdts: 3, ioccsz: 4 + 1024})
	o := testOpts()
	o.NrIOQueues = 8
	c := connectT(t, ft.Addr(), ft.cfg.nqn, o)
	info := c.Info()
	if info.IOQueues != 4 { // fake grants 4
		t.Errorf("IOQueues %d, want 4 (granted)", info.IOQueues)
	}
	if info.QueueSize != 32 {
		t.Errorf("QueueSize %d, want 32", info.QueueSize)
	}
	if info.MaxTransfer != 4096<<3 {
		t.Errorf("MaxTransfer %d, want %d (MDTS 3)", info.MaxTransfer, 4096<<3)
	}
	if info.InCapsule != 16<<10 {
		t.Errorf("InCapsule %d, want 16 KiB", info.InCapsule)
	}
	if info.SubNQN != ft.cfg.nqn || info.Serial != "FAKE0001" {
		t.Errorf("SubNQN %q Serial %q", info.SubNQN, info.Serial)
	}
	nss := c.Namespaces()
	if len(nss) != 2 || nss[0].ID != 1 || nss[0].Size() != 4<<20 || nss[1].Size() != 1<<20 || nss[0].BlockSize != 512 {
		t.Errorf("namespaces %+v", nss)
	}
	if err := c.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := c.Read(testCtx(t, time.Second), 1, 0, make([]byte, 512)); !errors.Is(err, ErrClosed) {
		t.Errorf("Read after Close: %v, want ErrClosed", err)
	}
}

func TestFakeWrongSubsystem(t *testing.T) {
	ft := newFakeTarget(t, fakeConfig{})
	_, err := Connect(testCtx(t, 5*time.Second), ft.Addr(), "nqn.2026-01.io.nvmefs:other", testOpts())
	var st nvme.Status
	if !errors.As(err, &st) || st.Code() != nvme.StatusConnectInvalidParam {
		t.Fatalf("Connect to the wrong NQN: %v, want connect invalid parameters", err)
	}
}

// readWriteSizes covers every size class, from one block to beyond MDTS.
var readWriteSizes = []int{512, 4096, 8192 - 512, 16 << 10, 64 << 10, 128 << 10, 1 << 20, 3<<20 + 512}

func TestFakeReadWrite(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  fakeConfig
		hd   bool
		dd   bool
	}{
		{"plain", fakeConfig{}, false, false},
		{"digests", fakeConfig{}, true, true},
		{"multiPDU+success", fakeConfig{maxC2H: 8192, success: true, r2tChunk: 16 << 10, maxH2CData: 4096}, true, true},
		{"incapsule+cpda+mdts", fakeConfig{ioccsz: 4 + 8192/16, cpda: 3, mdts: 5}, false, true},
		{"header digest only", fakeConfig{maxC2H: 4096}, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.nsSizes = []int{8 << 20}
			ft := newFakeTarget(t, tc.cfg)
			o := testOpts()
			o.HeaderDigest, o.DataDigest = tc.hd, tc.dd
			c := connectT(t, ft.Addr(), ft.cfg.nqn, o)
			want := ft.fill(1)
			ctx := testCtx(t, 30*time.Second)
			for _, size := range readWriteSizes {
				lba := uint64(1 + size/512)
				got := make([]byte, size)
				if err := c.Read(ctx, 1, lba, got); err != nil {
					t.Fatalf("read %d: %v", size, err)
				}
				if !bytes.Equal(got, want[lba*512:lba*512+uint64(size)]) {
					t.Fatalf("read %d at lba %d: data differs", size, lba)
				}
				w := make([]byte, size)
				fillPattern(w, int64(size)<<32)
				if err := c.Write(ctx, 1, lba, w); err != nil {
					t.Fatalf("write %d: %v", size, err)
				}
				copy(want[lba*512:], w)
				if err := c.Read(ctx, 1, lba, got); err != nil {
					t.Fatalf("read back %d: %v", size, err)
				}
				if !bytes.Equal(got, w) {
					t.Fatalf("read back %d: data differs", size)
				}
			}
			ns := ft.ns[1]
			ns.mu.Lock()
			same := bytes.Equal(ns.data, want)
			ns.mu.Unlock()
			if !same {
				t.Fatal("target's namespace differs from what was written")
			}
			s := c.Stats()
			if s.Total.BytesRead == 0 || s.Total.BytesWritten == 0 || s.Total.Errors != 0 || s.Total.DigestErrors != 0 {
				t.Errorf("stats: %+v", s.Total)
			}
			if tc.dd && s.Total.CRCSoftware == 0 {
				t.Error("data digest on but no CRC computed")
			}
		})
	}
}

func TestFakeFlushZeroesDeallocate(t *testing.T) {
	ft := newFakeTarget(t, fakeConfig{nsSizes: []int{64 << 20}})
	c := connectT(t, ft.Addr(), ft.cfg.nqn, testOpts())
	want := ft.fill(1)
	ctx := testCtx(t, 20*time.Second)
	if err := c.Flush(ctx, 1); err != nil {
		t.Fatal(err)
	}
	// 70000 blocks: more than one Write Zeroes command (65536).
	if err := c.WriteZeroes(ctx, 1, 100, 70000); err != nil {
		t.Fatal(err)
	}
	clear(want[100*512 : (100+70000)*512])
	if err := c.Deallocate(ctx, 1, []Range{{LBA: 80000, Blocks: 8}, {LBA: 90000, Blocks: 1000}}); err != nil {
		t.Fatal(err)
	}
	clear(want[80000*512 : 80008*512])
	clear(want[90000*512 : 91000*512])
	got := make([]byte, len(want))
	if err := c.Read(ctx, 1, 0, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("namespace differs after write zeroes and deallocate")
	}
	if err := c.Read(ctx, 1, uint64(len(want)/512), make([]byte, 512)); !errors.Is(err, nvme.StatusLBAOutOfRange) {
		var st nvme.Status
		if !errors.As(err, &st) || st.Code() != nvme.StatusLBAOutOfRange {
			t.Errorf("read past the end: %v", err)
		}
	}
	if err := c.Read(ctx, 9, 0, make([]byte, 512)); err == nil {
		t.Error("read of namespace 9 succeeded")
	}
	if err := c.Read(ctx, 1, 0, make([]byte, 100)); err == nil {
		t.Error("read of 100 bytes succeeded")
	}
}

func TestFakeConcurrent(t *testing.T) {
	ft := newFakeTarget(t, fakeConfig{nsSizes: []int{16 << 20}, maxC2H: 16 << 10, ioccsz: 4 + 4096/16})
	o := testOpts()
	o.QueueSize = 8 // fewer tags than goroutines
	o.DataDigest = true
	c := connectT(t, ft.Addr(), ft.cfg.nqn, o)
	want := ft.fill(1)
	ctx := testCtx(t, 60*time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each goroutine owns a 512 KiB slice: reads check the pattern,
			// writes replace it with their own.
			base := uint64(g) * 1024
			mine := want[base*512 : (base+1024)*512]
			for i := range 40 {
				size := 512 << (i % 9) // 512 B .. 128 KiB
				lba := base + uint64((i*37)%(1024-size/512+1))
				buf := make([]byte, size)
				if i%3 == 2 {
					fillPattern(buf, int64(g*1000+i)<<32)
					if err := c.Write(ctx, 1, lba, buf); err != nil {
						errs <- err
						return
					}
					copy(mine[(lba-base)*512:], buf)
					continue
				}
				if err := c.Read(ctx, 1, lba, buf); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(buf, mine[(lba-base)*512:(lba-base)*512+uint64(size)]) {
					errs <- fmt.Errorf("goroutine %d: read %d at %d: data differs", g, size, lba)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	s := c.Stats()
	for _, q := range s.IO {
		if q.Commands == 0 {
			t.Errorf("queue %d got no commands: requests are not spread", q.QID)
		}
	}
}
