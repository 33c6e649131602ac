package store

import (
	"bytes"
	"errors"
	"os"
	"sync"
	"testing"
)

func TestMemConformance(t *testing.T) {
	m, err := NewMem(4*memChunkSize + 3) // a short last chunk
	if err != nil {
		t.Fatal(err)
	}
	conformance(t, m)
	if m.Allocated() != 0 {
		t.Errorf("after Close %d bytes still allocated", m.Allocated())
	}
}

func TestNewMemRejectsBadSizes(t *testing.T) {
	for _, size := range []int64{0, -1, -1 << 40} {
		if _, err := NewMem(size); err == nil {
			t.Errorf("NewMem(%d) succeeded", size)
		}
	}
}

func TestMemSparse(t *testing.T) {
	m, err := NewMem(1 << 40) // 1 TiB costs nothing until written
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.Allocated() != 0 {
		t.Fatalf("fresh store holds %d bytes", m.Allocated())
	}

	// Zeros written over nothing allocate nothing.
	if _, err := m.WriteAt(make([]byte, 3*memChunkSize), 5*memChunkSize); err != nil {
		t.Fatal(err)
	}
	if m.Allocated() != 0 {
		t.Fatalf("writing zeros allocated %d bytes", m.Allocated())
	}

	// A 4 KiB write far away allocates one chunk; one straddling a
	// boundary allocates two.
	far := int64(1<<40 - 3*memChunkSize)
	if _, err := m.WriteAt(pattern(4096, 1), far); err != nil {
		t.Fatal(err)
	}
	if got := m.Allocated(); got != memChunkSize {
		t.Fatalf("one 4 KiB write holds %d bytes, want %d", got, memChunkSize)
	}
	if _, err := m.WriteAt(pattern(4096, 2), memChunkSize-2048); err != nil {
		t.Fatal(err)
	}
	if got := m.Allocated(); got != 3*memChunkSize {
		t.Fatalf("after a straddling write %d bytes held, want %d", got, 3*memChunkSize)
	}

	// Deallocating part of a chunk zeroes but keeps it; covering it frees it.
	if err := m.Deallocate(far, 1024); err != nil {
		t.Fatal(err)
	}
	if got := m.Allocated(); got != 3*memChunkSize {
		t.Fatalf("a partial deallocate changed the allocation to %d", got)
	}
	p := make([]byte, 4096)
	if _, err := m.ReadAt(p, far); err != nil {
		t.Fatal(err)
	}
	want := pattern(4096, 1)
	clear(want[:1024])
	if !bytes.Equal(p, want) {
		t.Fatal("partial deallocate: wrong contents")
	}
	chunkStart := far / memChunkSize * memChunkSize
	if err := m.Deallocate(chunkStart, memChunkSize); err != nil {
		t.Fatal(err)
	}
	if got := m.Allocated(); got != 2*memChunkSize {
		t.Fatalf("after deallocating a whole chunk %d bytes held, want %d", got, 2*memChunkSize)
	}
	if err := m.WriteZeroes(0, 2*memChunkSize); err != nil {
		t.Fatal(err)
	}
	if got := m.Allocated(); got != 0 {
		t.Fatalf("after zeroing everything written %d bytes held", got)
	}
	if _, err := m.ReadAt(p, memChunkSize-2048); err != nil || !isZero(p) {
		t.Fatalf("zeroed range reads %v, err %v", p[:8], err)
	}
}

// The store's last chunk is short; covering it to the end frees it.
func TestMemShortLastChunkIsReleased(t *testing.T) {
	m, err := NewMem(memChunkSize + 100)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := m.WriteAt(pattern(50, 3), memChunkSize+10); err != nil {
		t.Fatal(err)
	}
	if err := m.Deallocate(memChunkSize, 100); err != nil {
		t.Fatal(err)
	}
	if m.Allocated() != 0 {
		t.Fatalf("short last chunk not released: %d bytes held", m.Allocated())
	}
}

func TestMemConcurrent(t *testing.T) {
	m, err := NewMem(8 * memChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	concurrent(t, m)
}

// Operations racing with Close either complete or fail with os.ErrClosed;
// none panics or touches freed state.
func TestMemCloseDuringIO(t *testing.T) {
	m, err := NewMem(4 * memChunkSize)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for id := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := pattern(memChunkSize+100, byte(id))
			<-start
			for i := range 200 {
				off := int64((id*200+i)*4096) % (3 * memChunkSize)
				var err error
				switch i % 3 {
				case 0:
					_, err = m.WriteAt(p, off)
				case 1:
					_, err = m.ReadAt(p, off)
				default:
					err = m.Deallocate(off, memChunkSize)
				}
				if err != nil && !errors.Is(err, os.ErrClosed) {
					t.Errorf("I/O racing with Close: %v", err)
					return
				}
			}
		}()
	}
	close(start)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if m.Allocated() != 0 {
		t.Errorf("%d bytes held after Close and all I/O ended", m.Allocated())
	}
}
