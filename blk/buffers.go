package blk

import (
	"context"
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Buffers is a pool of page-aligned I/O buffers, mmap'd outside the Go heap
// (the GC never moves or scans them; a NIC may be handed their pages) and
// recycled. Sizes are powers of two from one page up to MaxBuffer. At most
// a fixed number are out at once (Get waits for one to come back), and at
// most a few of each size are kept idle; the others are unmapped.
type Buffers struct {
	sem     chan struct{} // one token per buffer out
	mu      sync.Mutex
	idle    [numClasses][][]byte
	maxIdle int

	gets    atomic.Uint64
	waits   atomic.Uint64
	mapped  atomic.Int64 // bytes mapped now (out and idle)
	mmaps   atomic.Uint64
	munmaps atomic.Uint64
	out     atomic.Int64
}

// MaxBuffer is the largest buffer Get hands out: room for a 1 MiB request
// that starts and ends inside blocks of up to 64 KiB.
const MaxBuffer = 2 << 20

const numClasses = 10 // PageSize << 0 .. PageSize << 9 (2 MiB)

// NewBuffers returns a pool that lets at most maxOut buffers out at once
// and keeps at most maxIdle of each size idle.
func NewBuffers(maxOut, maxIdle int) *Buffers {
	return &Buffers{sem: make(chan struct{}, max(maxOut, 1)), maxIdle: max(maxIdle, 0)}
}

func classOf(n int) int {
	pages := (n + PageSize - 1) / PageSize
	if pages <= 1 {
		return 0
	}
	return bits.Len(uint(pages - 1))
}

// Get returns a page-aligned buffer of n bytes (1 <= n <= MaxBuffer),
// waiting while maxOut buffers are out. Give it back with Put.
func (b *Buffers) Get(ctx context.Context, n int) ([]byte, error) {
	if n < 1 || n > MaxBuffer {
		return nil, fmt.Errorf("blk: buffer of %d bytes: want 1..%d", n, MaxBuffer)
	}
	select {
	case b.sem <- struct{}{}:
	default:
		b.waits.Add(1)
		select {
		case b.sem <- struct{}{}:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
	b.gets.Add(1)
	b.out.Add(1)
	c := classOf(n)
	b.mu.Lock()
	if k := len(b.idle[c]); k > 0 {
		buf := b.idle[c][k-1]
		b.idle[c] = b.idle[c][:k-1]
		b.mu.Unlock()
		return buf[:n], nil
	}
	b.mu.Unlock()
	size := PageSize << c
	buf, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		b.out.Add(-1)
		<-b.sem
		return nil, fmt.Errorf("blk: mmap %d bytes: %w", size, err)
	}
	b.mmaps.Add(1)
	b.mapped.Add(int64(size))
	return buf[:n], nil
}

// Put gives back a buffer Get returned; buf may have been resliced from
// its start.
func (b *Buffers) Put(buf []byte) {
	buf = buf[:cap(buf)]
	c := classOf(len(buf))
	if len(buf) != PageSize<<c || !pageAligned(buf) {
		panic(fmt.Sprintf("blk: Put of a buffer (%d bytes) that Get did not return", len(buf)))
	}
	b.mu.Lock()
	keep := len(b.idle[c]) < b.maxIdle
	if keep {
		b.idle[c] = append(b.idle[c], buf)
	}
	b.mu.Unlock()
	if !keep {
		b.unmap(buf)
	}
	b.out.Add(-1)
	<-b.sem
}

func (b *Buffers) unmap(buf []byte) {
	if err := unix.Munmap(buf); err != nil {
		panic(fmt.Sprintf("blk: munmap: %v", err)) // only a buffer of ours gets here
	}
	b.munmaps.Add(1)
	b.mapped.Add(-int64(len(buf)))
}

// Close unmaps the idle buffers. Buffers still out are unmapped when Put.
func (b *Buffers) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for c := range b.idle {
		for _, buf := range b.idle[c] {
			b.unmap(buf)
		}
		b.idle[c] = nil
	}
	b.maxIdle = 0
}

// Counters returns the pool's statistics.
func (b *Buffers) Counters() []Counter {
	return []Counter{
		{"buffer_gets", b.gets.Load()},
		{"buffer_waits", b.waits.Load()},
		{"buffers_out", uint64(max(b.out.Load(), 0))},
		{"buffer_bytes_mapped", uint64(max(b.mapped.Load(), 0))},
		{"buffer_mmaps", b.mmaps.Load()},
		{"buffer_munmaps", b.munmaps.Load()},
	}
}

// pageAligned reports whether p starts on a page boundary.
func pageAligned(p []byte) bool {
	return len(p) > 0 && uintptr(unsafe.Pointer(unsafe.SliceData(p)))%PageSize == 0
}

// addrOf is the address of p's first byte.
func addrOf(p []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(p))) }

// segments is the number of pages p spans.
func segments(p []byte) int {
	if len(p) == 0 {
		return 0
	}
	a := uintptr(unsafe.Pointer(unsafe.SliceData(p)))
	return int((a+uintptr(len(p))-1)/PageSize - a/PageSize + 1)
}
