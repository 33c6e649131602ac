package faults

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nvmefs/nvmefs/internal/aio"
)

// The workload: writers and readers through the mount, every byte checked
// against a model of the namespace that the test keeps.
//
// During a phase each writer owns a region no one else touches and updates
// the model once its write(2) returned success, then reads the range back;
// readers read only regions no writer touches during the phase, so the
// model holds the one value a reader may see for each byte. Regions rotate
// between phases, so that every block is written in some phase and read
// concurrently in another.

const (
	pageSize = 4096
	// slices is how many regions the namespace is cut into; each phase
	// gives writers of them to its writers, the rest to its readers.
	slices  = 8
	writers = 4
	readers = 4
	// aioDepth is the queue depth of the asynchronous reader.
	aioDepth = 16
)

// span is a byte range [Lo, Hi) of the namespace.
type span struct{ Lo, Hi int }

func (s span) Len() int { return s.Hi - s.Lo }

// layout gives phase k's writer regions and reader regions (adjacent
// slices merged, so reads cross slice boundaries).
func layout(size, k int) (w []span, r []span) {
	sl := size / slices
	owned := map[int]bool{}
	for i := range writers {
		s := (k + i) % slices
		owned[s] = true
		w = append(w, span{s * sl, (s + 1) * sl})
	}
	for s := 0; s < slices; s++ {
		if owned[s] {
			continue
		}
		if n := len(r); n > 0 && r[n-1].Hi == s*sl {
			r[n-1].Hi += sl
		} else {
			r = append(r, span{s * sl, (s + 1) * sl})
		}
	}
	return w, r
}

// loadStats counts what a phase did and checked.
type loadStats struct {
	Writes, Reads           atomic.Uint64
	BytesWritten, BytesRead atomic.Uint64
	BytesVerified           atomic.Uint64
	Zeroed, Flushes         atomic.Uint64 // bytes zeroed or deallocated; fsyncs
}

// load is one phase's running workers.
type load struct {
	file   string
	model  []byte
	cancel context.CancelFunc
	wg     sync.WaitGroup
	st     *loadStats

	mu   sync.Mutex
	errs []string
	// failed counts errors beyond those kept.
	failed int
}

// startLoad starts writers and readers on file (the mount's namespace) in
// the layout of phase k. model is the namespace's content; writers update
// it in their regions.
func startLoad(t testing.TB, file string, model []byte, k int, seed uint64, st *loadStats) *load {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{file: file, model: model, cancel: cancel, st: st}
	w, r := layout(len(model), k)
	for i, region := range w {
		l.wg.Add(1)
		go l.writer(ctx, i, region, rand.New(rand.NewPCG(seed, uint64(100+i))))
	}
	for i := range readers {
		l.wg.Add(1)
		rng := rand.New(rand.NewPCG(seed, uint64(200+i)))
		if i == 0 {
			go l.aioReader(ctx, r, rng)
		} else {
			go l.reader(ctx, i, r, rng)
		}
	}
	return l
}

// fail records a failure of a worker (kept for the report).
func (l *load) fail(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errs) < 20 {
		l.errs = append(l.errs, fmt.Sprintf(format, args...))
	} else {
		l.failed++
	}
}

// stop ends the phase: workers finish their current operation. A worker
// still stuck after timeout fails the test; kill then unblocks it (by
// killing the mount), so that stop returns in bounded time.
func (l *load) stop(t testing.TB, timeout time.Duration, kill func()) {
	t.Helper()
	l.cancel()
	done := make(chan struct{})
	go func() { l.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		t.Errorf("workers still in a read or write %v after the phase ended: killing the mount", timeout)
		kill()
		<-done
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.errs {
		t.Error(e)
	}
	if l.failed > 0 {
		t.Errorf("... and %d more failures", l.failed)
	}
}

// check compares got, read at off, with the model and records a mismatch.
func (l *load) check(who string, off int, got []byte) bool {
	want := l.model[off : off+len(got)]
	if bytes.Equal(got, want) {
		l.st.BytesVerified.Add(uint64(len(got)))
		return true
	}
	l.fail("%s: %s", who, diff(off, got, want))
	return false
}

// diff describes how got differs from want (both at off).
func diff(off int, got, want []byte) string {
	first, n := -1, 0
	for i := range got {
		if got[i] != want[i] {
			if first < 0 {
				first = i
			}
			n++
		}
	}
	if first < 0 {
		return fmt.Sprintf("%d bytes at %d equal", len(got), off)
	}
	return fmt.Sprintf("%d of %d bytes at offset %d differ from the model, first at %d (got %#x, want %#x)",
		n, len(got), off, off+first, got[first], want[first])
}

// openPair opens file for direct and for ordinary (unaligned) I/O.
func openPair(file string, flag int) (direct, plain *os.File, err error) {
	direct, err = os.OpenFile(file, flag|syscall.O_DIRECT, 0)
	if err != nil {
		return nil, nil, err
	}
	plain, err = os.OpenFile(file, flag, 0)
	if err != nil {
		direct.Close()
		return nil, nil, err
	}
	return direct, plain, nil
}

// writer writes random data at random places of its region: O_DIRECT
// whole pages up to 256 KiB, or any offset and length up to 68 KiB (which
// the block layer read-modify-writes), now and then followed by an fsync,
// or zeroes a range (fallocate ZERO_RANGE or PUNCH_HOLE); then it reads
// the range back the other way.
func (l *load) writer(ctx context.Context, id int, region span, rng *rand.Rand) {
	defer l.wg.Done()
	who := fmt.Sprintf("writer %d [%d, %d)", id, region.Lo, region.Hi)
	direct, plain, err := openPair(l.file, os.O_RDWR)
	if err != nil {
		l.fail("%s: %v", who, err)
		return
	}
	defer direct.Close()
	defer plain.Close()
	bufs, free, err := aio.Buffers(2, 256<<10+2*pageSize)
	if err != nil {
		l.fail("%s: %v", who, err)
		return
	}
	defer free()
	for ctx.Err() == nil {
		var off, n int
		f, back := plain, direct
		op := rng.IntN(32)
		if op < 2 || rng.IntN(2) == 0 {
			n = pageSize * (1 + rng.IntN(64))
			off = region.Lo + pageSize*rng.IntN((region.Len()-n)/pageSize+1)
			f, back = direct, plain
		} else {
			n = 1 + rng.IntN(68<<10)
			off = region.Lo + rng.IntN(region.Len()-n+1)
		}
		switch op {
		case 0, 1:
			// fallocate: Write Zeroes, or Deallocate (nvmefs serve
			// punches a hole in the file: the range reads as zeros).
			mode := uint32(unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE)
			if op == 1 {
				mode = unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE
			}
			if err := fallocate(f, mode, off, n); err != nil {
				l.fail("%s: fallocate %#x of %d bytes at %d: %v", who, mode, n, off, err)
				return
			}
			clear(l.model[off : off+n])
			l.st.Zeroed.Add(uint64(n))
		default:
			data := bufs[0][:n]
			fillRandom(rng, data)
			if w, err := f.WriteAt(data, int64(off)); err != nil || w != n {
				l.fail("%s: write of %d bytes at %d (direct %v): %d, %v", who, n, off, f == direct, w, err)
				return
			}
			copy(l.model[off:], data)
			l.st.Writes.Add(1)
			l.st.BytesWritten.Add(uint64(n))
			if op == 2 {
				if err := f.Sync(); err != nil { // an NVMe Flush
					l.fail("%s: fsync: %v", who, err)
					return
				}
				l.st.Flushes.Add(1)
			}
		}

		rlo, rhi := off, off+n
		if back == direct {
			rlo, rhi = rlo&^(pageSize-1), (rhi+pageSize-1)&^(pageSize-1)
		}
		got := bufs[1][:rhi-rlo]
		if r, err := back.ReadAt(got, int64(rlo)); err != nil || r != len(got) {
			l.fail("%s: read back of %d bytes at %d: %d, %v", who, len(got), rlo, r, err)
			return
		}
		l.st.Reads.Add(1)
		l.st.BytesRead.Add(uint64(len(got)))
		if !l.check(who+" read back", rlo, got) {
			return
		}
	}
}

// reader reads random ranges of the read-only regions: O_DIRECT whole
// pages up to 1 MiB, or any offset and length up to 300 KB.
func (l *load) reader(ctx context.Context, id int, regions []span, rng *rand.Rand) {
	defer l.wg.Done()
	who := fmt.Sprintf("reader %d", id)
	direct, plain, err := openPair(l.file, os.O_RDONLY)
	if err != nil {
		l.fail("%s: %v", who, err)
		return
	}
	defer direct.Close()
	defer plain.Close()
	bufs, free, err := aio.Buffers(1, 1<<20)
	if err != nil {
		l.fail("%s: %v", who, err)
		return
	}
	defer free()
	for ctx.Err() == nil {
		region := regions[rng.IntN(len(regions))]
		var off, n int
		f := plain
		if rng.IntN(2) == 0 {
			n = pageSize * (1 + rng.IntN(min(256, region.Len()/pageSize)))
			off = region.Lo + pageSize*rng.IntN((region.Len()-n)/pageSize+1)
			f = direct
		} else {
			n = 1 + rng.IntN(min(300_000, region.Len()))
			off = region.Lo + rng.IntN(region.Len()-n+1)
		}
		got := bufs[0][:n]
		if r, err := f.ReadAt(got, int64(off)); err != nil || r != n {
			l.fail("%s: read of %d bytes at %d (direct %v): %d, %v", who, n, off, f == direct, r, err)
			return
		}
		l.st.Reads.Add(1)
		l.st.BytesRead.Add(uint64(n))
		if !l.check(who, off, got) {
			return
		}
	}
}

// aioReader keeps aioDepth O_DIRECT reads of 128 KiB in flight with
// io_submit, as fio's libaio engine does: many commands per queue at once.
func (l *load) aioReader(ctx context.Context, regions []span, rng *rand.Rand) {
	defer l.wg.Done()
	const n = 128 << 10
	who := "aio reader"
	f, err := os.OpenFile(l.file, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		l.fail("%s: %v", who, err)
		return
	}
	defer f.Close()
	ac, err := aio.New(aioDepth)
	if err != nil {
		l.fail("%s: %v", who, err)
		return
	}
	defer ac.Close()
	bufs, free, err := aio.Buffers(aioDepth, n)
	if err != nil {
		l.fail("%s: %v", who, err)
		return
	}
	defer free()
	rs := make([]aio.Read, aioDepth)
	for ctx.Err() == nil {
		for i := range rs {
			region := regions[rng.IntN(len(regions))]
			rs[i] = aio.Read{Buf: bufs[i], Offset: int64(region.Lo + pageSize*rng.IntN((region.Len()-n)/pageSize+1))}
		}
		if err := ac.ReadAll(int(f.Fd()), rs); err != nil {
			l.fail("%s: %v", who, err)
			return
		}
		for _, r := range rs {
			if r.Err != nil || r.N != n {
				l.fail("%s: read of %d bytes at %d: %d, %v", who, n, r.Offset, r.N, r.Err)
				return
			}
			l.st.Reads.Add(1)
			l.st.BytesRead.Add(n)
			if !l.check(who, int(r.Offset), r.Buf) {
				return
			}
		}
	}
}

// fallocate retries EINTR, as os.File's own calls do.
func fallocate(f *os.File, mode uint32, off, n int) error {
	for {
		err := unix.Fallocate(int(f.Fd()), mode, int64(off), int64(n))
		if err != unix.EINTR {
			return err
		}
	}
}

func fillRandom(rng *rand.Rand, b []byte) {
	for len(b) >= 8 {
		v := rng.Uint64()
		for i := range 8 {
			b[i] = byte(v >> (8 * i))
		}
		b = b[8:]
	}
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
}

// verifyAll reads the whole namespace through the mount (O_DIRECT, 1 MiB
// at a time) and the backing file directly, and compares both with the
// model. It returns the bytes verified.
func verifyAll(t testing.TB, file, backing string, model []byte) uint64 {
	t.Helper()
	f, err := os.OpenFile(file, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	defer f.Close()
	bufs, free, err := aio.Buffers(1, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer free()
	var verified uint64
	bad := 0
	for off := 0; off < len(model); off += len(bufs[0]) {
		got := bufs[0][:min(len(bufs[0]), len(model)-off)]
		if n, err := f.ReadAt(got, int64(off)); err != nil || n != len(got) {
			t.Fatalf("verify through the mount: read of %d bytes at %d: %d, %v", len(got), off, n, err)
		}
		if !bytes.Equal(got, model[off:off+len(got)]) {
			bad++
			t.Errorf("through the mount: %s", diff(off, got, model[off:off+len(got)]))
			if bad > 5 {
				t.FailNow()
			}
		}
		verified += uint64(len(got))
	}
	b, err := os.ReadFile(backing)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != len(model) {
		t.Fatalf("the backing file is %d bytes, the model %d", len(b), len(model))
	}
	for off := 0; off < len(model); off += 1 << 20 {
		end := min(off+1<<20, len(model))
		if !bytes.Equal(b[off:end], model[off:end]) {
			t.Errorf("backing file: %s", diff(off, b[off:end], model[off:end]))
			bad++
			if bad > 5 {
				t.FailNow()
			}
		}
	}
	return verified + uint64(len(b))
}
