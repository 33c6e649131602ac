package blk

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// alignedBuf returns a page-aligned buffer of n bytes outside the Go heap.
func alignedBuf(t testing.TB, n int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

// unalignedBuf returns a buffer of n bytes that does not start on a page.
func unalignedBuf(n int) []byte {
	b := make([]byte, n+PageSize+1)
	a := addrOf(b)
	skip := (PageSize - int(a%PageSize)) % PageSize
	return b[skip+1 : skip+1+n]
}

func newDevice(t testing.TB, be Backend, opts Options) *Device {
	t.Helper()
	d, err := New(be, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func fillRandom(r *rand.Rand, b []byte) {
	for i := range b {
		b[i] = byte(r.Uint32())
	}
}

func counter(cs []Counter, name string) uint64 {
	for _, c := range cs {
		if c.Name == name {
			return c.Value
		}
	}
	panic("no counter " + name)
}

var testLimits = Limits{BlockSize: 512, Blocks: 2048, MaxTransfer: 16 << 10, MaxSegments: 3, Queues: 2, QueueDepth: 4,
	WriteZeroes: true, Deallocate: true}

func TestReadAnyOffsetAndSize(t *testing.T) {
	ctx := testCtx(t)
	for _, bs := range []int{512, 4096} {
		lim := testLimits
		lim.BlockSize, lim.Blocks = bs, uint64((1<<20)/bs)
		be := newMemBackend(lim)
		r := rand.New(rand.NewPCG(1, uint64(bs)))
		fillRandom(r, be.data)
		d := newDevice(t, be, Options{})
		size := int(d.Size())
		aligned := alignedBuf(t, 256<<10)
		for i := range 300 {
			n := 1 + r.IntN(200<<10)
			off := r.IntN(size)
			switch i % 4 {
			case 0: // block-aligned range
				off -= off % bs
				n = bs * (1 + r.IntN(64))
			case 1: // near the end
				off = size - r.IntN(3*bs)
			}
			var p []byte
			if i%2 == 0 {
				p = aligned[:n]
			} else {
				p = unalignedBuf(n)
			}
			got, err := d.ReadAt(ctx, p, int64(off))
			if err != nil {
				t.Fatalf("bs %d: ReadAt(%d bytes, off %d): %v", bs, n, off, err)
			}
			want := min(n, size-off)
			if got != want {
				t.Fatalf("bs %d: ReadAt(%d bytes, off %d) = %d, want %d", bs, n, off, got, want)
			}
			if !bytes.Equal(p[:got], be.data[off:off+got]) {
				t.Fatalf("bs %d: ReadAt(%d bytes, off %d): wrong bytes", bs, n, off)
			}
		}
		if v := be.violations.Load(); v != 0 {
			t.Fatalf("bs %d: %d commands broke the limits, last: %s", bs, v, *be.lastViolation.Load())
		}
		cs := d.Counters()
		if counter(cs, "read_direct") == 0 || counter(cs, "read_bounced") == 0 || counter(cs, "split_requests") == 0 {
			t.Errorf("bs %d: expected direct, bounced and split reads: %v", bs, cs)
		}
	}
}

func TestReadDirectUsesCallerBuffer(t *testing.T) {
	ctx := testCtx(t)
	lim := testLimits
	lim.MaxSegments = 0
	be := newMemBackend(lim)
	fillRandom(rand.New(rand.NewPCG(2, 2)), be.data)
	d := newDevice(t, be, Options{})

	p := alignedBuf(t, 8192)
	if n, err := d.ReadAt(ctx, p, 4096); err != nil || n != 8192 {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
	if _, ok := be.readAddrs.Load(addrOf(p)); !ok {
		t.Errorf("the backend did not read into the caller's page-aligned buffer")
	}
	cs := d.Counters()
	if counter(cs, "read_direct") != 1 || counter(cs, "read_bytes_copied") != 0 {
		t.Errorf("aligned read: want 1 direct read and no copy: %v", cs)
	}

	q := unalignedBuf(8192)
	if n, err := d.ReadAt(ctx, q, 4096); err != nil || n != 8192 {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
	if _, ok := be.readAddrs.Load(addrOf(q)); ok {
		t.Errorf("the backend read into a buffer that is not page-aligned")
	}
	if !bytes.Equal(p, q) {
		t.Errorf("bounced read differs from direct read")
	}
	cs = d.Counters()
	if counter(cs, "read_bounced") != 1 || counter(cs, "read_bytes_copied") != 8192 {
		t.Errorf("unaligned buffer: want 1 bounced read and 8192 bytes copied: %v", cs)
	}
}

func TestReadAtEnd(t *testing.T) {
	ctx := testCtx(t)
	d := newDevice(t, newMemBackend(testLimits), Options{})
	size := d.Size()
	p := make([]byte, 4096)
	for _, c := range []struct {
		off  int64
		want int
	}{{size, 0}, {size + 12345, 0}, {size - 100, 100}, {size - 4096, 4096}} {
		if n, err := d.ReadAt(ctx, p, c.off); n != c.want || err != nil {
			t.Errorf("ReadAt(4096, off %d) = %d, %v; want %d, nil", c.off, n, err, c.want)
		}
	}
	if _, err := d.ReadAt(ctx, p, -1); !errors.Is(err, ErrInvalid) {
		t.Errorf("negative offset: %v, want ErrInvalid", err)
	}
}

func TestWriteAnyOffsetAndSize(t *testing.T) {
	ctx := testCtx(t)
	for _, bs := range []int{512, 4096} {
		lim := testLimits
		lim.BlockSize, lim.Blocks = bs, uint64((1<<20)/bs)
		be := newMemBackend(lim)
		r := rand.New(rand.NewPCG(3, uint64(bs)))
		fillRandom(r, be.data)
		model := append([]byte(nil), be.data...)
		d := newDevice(t, be, Options{})
		size := int(d.Size())
		for i := range 300 {
			n := 1 + r.IntN(100<<10)
			off := r.IntN(size)
			if i%3 == 0 {
				off -= off % bs
				n = bs * (1 + r.IntN(64))
			}
			p := unalignedBuf(n)
			fillRandom(r, p)
			got, err := d.WriteAt(ctx, p, int64(off))
			if err != nil {
				t.Fatalf("bs %d: WriteAt(%d bytes, off %d): %v", bs, n, off, err)
			}
			if want := min(n, size-off); got != want {
				t.Fatalf("bs %d: WriteAt(%d bytes, off %d) = %d, want %d", bs, n, off, got, want)
			}
			copy(model[off:], p[:got])
		}
		if !bytes.Equal(be.snapshot(), model) {
			t.Fatalf("bs %d: namespace differs from the model after writes", bs)
		}
		if v := be.violations.Load(); v != 0 {
			t.Fatalf("bs %d: %d commands broke the limits, last: %s", bs, v, *be.lastViolation.Load())
		}
		if counter(d.Counters(), "write_rmw") == 0 {
			t.Errorf("bs %d: no read-modify-write counted", bs)
		}
	}
}

func TestWritePastEnd(t *testing.T) {
	ctx := testCtx(t)
	d := newDevice(t, newMemBackend(testLimits), Options{})
	size := d.Size()
	if n, err := d.WriteAt(ctx, []byte("x"), size); n != 0 || !errors.Is(err, ErrNoSpace) {
		t.Errorf("write at the end = %d, %v; want 0, ErrNoSpace", n, err)
	}
	if n, err := d.WriteAt(ctx, make([]byte, 1000), size-10); n != 10 || err != nil {
		t.Errorf("write across the end = %d, %v; want 10, nil", n, err)
	}
}

// TestConcurrentWritersOfOneBlock: writers of distinct bytes of the same
// blocks, unaligned and aligned, with slow commands so that their
// read-modify-writes overlap: no byte written may be lost.
func TestConcurrentWritersOfOneBlock(t *testing.T) {
	ctx := testCtx(t)
	lim := testLimits
	lim.Queues, lim.QueueDepth = 4, 16
	be := newMemBackend(lim)
	be.delay = 200 * time.Microsecond
	d := newDevice(t, be, Options{})
	const writers = 32
	// Each writer owns 16 bytes of the first 1024 bytes (blocks 0 and 1)
	// and writes them 20 times; a writer that lost its bytes to another's
	// stale read-modify-write shows as a missing value at the end.
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := bytes.Repeat([]byte{byte(w + 1)}, 16)
			for range 20 {
				if _, err := d.WriteAt(ctx, p, int64(w*32+8)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	// An aligned writer of block 3 interleaved with unaligned writers of it.
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				var err error
				if w == 0 {
					_, err = d.WriteAt(ctx, bytes.Repeat([]byte{0xEE}, 512), 3*512)
				} else {
					_, err = d.WriteAt(ctx, []byte{byte(0xA0 + w), byte(i)}, int64(3*512+100*w))
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	data := be.snapshot()
	for w := range writers {
		got := data[w*32+8 : w*32+24]
		if !bytes.Equal(got, bytes.Repeat([]byte{byte(w + 1)}, 16)) {
			t.Errorf("writer %d's bytes were lost: % x", w, got)
		}
	}
	for w := 1; w < 4; w++ {
		// The last aligned write may come after an unaligned one; either
		// way the block holds 0xEE or writer w's last bytes.
		got := data[3*512+100*w : 3*512+100*w+2]
		if !bytes.Equal(got, []byte{0xEE, 0xEE}) && !bytes.Equal(got, []byte{byte(0xA0 + w), 19}) {
			t.Errorf("block 3, writer %d: % x, want ee ee or %x 13", w, got, 0xA0+w)
		}
	}
	if counter(d.Counters(), "range_lock_waits") == 0 {
		t.Errorf("no writer waited for a range lock: the test did not overlap writes")
	}
}

func TestConcurrencyBoundedByTags(t *testing.T) {
	ctx := testCtx(t)
	lim := testLimits
	lim.Queues, lim.QueueDepth = 2, 3
	be := newMemBackend(lim)
	be.delay = time.Millisecond
	d := newDevice(t, be, Options{})
	var wg sync.WaitGroup
	for i := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]byte, 64<<10) // split into several commands
			if _, err := d.ReadAt(ctx, p, int64(i%8)*4096); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if m := be.maxInFlight.Load(); m > 6 {
		t.Errorf("%d commands in flight at once, want at most Queues*QueueDepth = 6", m)
	}
	if m := d.Tags().InFlightMax(); m != 6 {
		t.Errorf("TagSet in-flight max %d, want 6 (32 readers, 6 tags)", m)
	}
	if w := counter(d.Tags().Counters(), "tag_waits"); w == 0 {
		t.Errorf("no command waited for a tag")
	}
}

func TestBackendErrorsPropagate(t *testing.T) {
	ctx := testCtx(t)
	be := newMemBackend(testLimits)
	d := newDevice(t, be, Options{})
	boom := errors.New("boom")
	be.failRead.Store(&boom)
	if _, err := d.ReadAt(ctx, make([]byte, 100<<10), 0); !errors.Is(err, boom) {
		t.Errorf("split read: %v, want boom", err)
	}
	if _, err := d.WriteAt(ctx, []byte("x"), 3); !errors.Is(err, boom) {
		t.Errorf("read-modify-write: %v, want boom", err)
	}
	if n := counter(d.Counters(), "errors"); n != 2 {
		t.Errorf("errors = %d, want 2", n)
	}
	be.failRead.Store(nil)
	if _, err := d.WriteAt(ctx, []byte("x"), 3); err != nil {
		t.Errorf("after the failure: %v (a failed request must release its range lock)", err)
	}
}

// TestCancelledIsNoError: a request its caller cancels (a FUSE INTERRUPT)
// returns context.Canceled and is not counted as an I/O error.
func TestCancelledIsNoError(t *testing.T) {
	be := newMemBackend(testLimits)
	be.delay = 10 * time.Second
	d := newDevice(t, be, Options{})
	ctx, cancel := context.WithCancel(testCtx(t))
	time.AfterFunc(20*time.Millisecond, cancel)
	if _, err := d.ReadAt(ctx, make([]byte, 100<<10), 0); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled read: %v, want context.Canceled", err)
	}
	if _, err := d.WriteAt(ctx, []byte("x"), 3); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled read-modify-write: %v, want context.Canceled", err)
	}
	if n := counter(d.Counters(), "errors"); n != 0 {
		t.Errorf("errors = %d after two cancelled requests, want 0", n)
	}
}

func TestZeroesAndDeallocate(t *testing.T) {
	ctx := testCtx(t)
	be := newMemBackend(testLimits)
	fillRandom(rand.New(rand.NewPCG(4, 4)), be.data)
	d := newDevice(t, be, Options{})
	if err := d.WriteZeroes(ctx, 1024, 2048); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(be.snapshot()[1024:3072], make([]byte, 2048)) || be.zeroed.Load() != 4 {
		t.Errorf("WriteZeroes did not zero blocks 2..5")
	}
	if err := d.Deallocate(ctx, 0, d.Size()); err != nil || be.deallocated.Load() != int64(testLimits.Blocks) {
		t.Errorf("Deallocate whole namespace: %v, %d blocks", err, be.deallocated.Load())
	}
	for _, r := range [][2]int64{{1, 512}, {0, 100}, {0, 0}, {d.Size(), 512}, {d.Size() - 512, 1024}, {-512, 512}} {
		if err := d.WriteZeroes(ctx, r[0], r[1]); !errors.Is(err, ErrInvalid) {
			t.Errorf("WriteZeroes(%d, %d) = %v, want ErrInvalid", r[0], r[1], err)
		}
	}
	lim := testLimits
	lim.WriteZeroes, lim.Deallocate = false, false
	d2 := newDevice(t, newMemBackend(lim), Options{})
	if err := d2.WriteZeroes(ctx, 0, 512); !errors.Is(err, ErrNotSupported) {
		t.Errorf("unsupported WriteZeroes: %v", err)
	}
	if err := d2.Deallocate(ctx, 0, 512); !errors.Is(err, ErrNotSupported) {
		t.Errorf("unsupported Deallocate: %v", err)
	}
	if err := d.Flush(ctx); err != nil || be.flushes.Load() != 1 {
		t.Errorf("Flush: %v, %d flushes", err, be.flushes.Load())
	}
}

func TestCloseWaitsForRequests(t *testing.T) {
	ctx := testCtx(t)
	be := newMemBackend(testLimits)
	be.delay = 50 * time.Millisecond
	d := newDevice(t, be, Options{})
	done := make(chan error, 1)
	go func() {
		_, err := d.ReadAt(ctx, make([]byte, 4096), 0)
		done <- err
	}()
	for be.inFlight.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	d.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("read in flight at Close: %v", err)
		}
	default:
		t.Fatal("Close returned before the read in flight completed")
	}
	if _, err := d.ReadAt(ctx, make([]byte, 1), 0); !errors.Is(err, ErrClosed) {
		t.Errorf("read after Close: %v, want ErrClosed", err)
	}
	if _, err := d.WriteAt(ctx, make([]byte, 1), 0); !errors.Is(err, ErrClosed) {
		t.Errorf("write after Close: %v, want ErrClosed", err)
	}
}

func TestLimitsChecked(t *testing.T) {
	for _, lim := range []Limits{
		{BlockSize: 0, Blocks: 1},
		{BlockSize: 1000, Blocks: 1},
		{BlockSize: 512, Blocks: 0},
		{BlockSize: 4096, Blocks: 1, MaxTransfer: 512},
		{BlockSize: 512, Blocks: 1, MaxSegments: -1},
	} {
		if _, err := New(nullBackend{lim}, Options{}); err == nil {
			t.Errorf("New accepted %+v", lim)
		}
	}
}

func TestChunkLen(t *testing.T) {
	lim := Limits{BlockSize: 512, Blocks: 1 << 20, MaxTransfer: 64 << 10, MaxSegments: 4}
	d := newDevice(t, nullBackend{lim}, Options{})
	a := alignedBuf(t, 1<<20)
	for _, c := range []struct {
		buf  []byte
		want int
	}{
		{a, 4 * PageSize},              // segments bound
		{a[:3000], 2560},               // shorter than the limits: whole blocks... of a 3000-byte buffer
		{a[512:], 4*PageSize - 512},    // unaligned start: 4 pages from a mid-page address
		{a[4000:], 4*PageSize - 4096},  // 4000 + n <= 16384, rounded down to blocks
		{a[:PageSize*2], PageSize * 2}, // fits
	} {
		if got := d.chunkLen(c.buf); got != c.want {
			t.Errorf("chunkLen(%d bytes at page offset %d) = %d, want %d", len(c.buf), addrOf(c.buf)%PageSize, got, c.want)
		}
	}
	lim.MaxSegments = 0
	d2 := newDevice(t, nullBackend{lim}, Options{})
	if got := d2.chunkLen(a); got != 64<<10 {
		t.Errorf("transfer bound: %d", got)
	}
}
