package store

import (
	"fmt"
	"sync"
	"sync/atomic"
)

const (
	// memChunkSize is the unit of allocation of a Mem store: large enough
	// that a 128 KiB I/O touches two or three chunks, small enough that a
	// sparse store of scattered 4 KiB writes stays small.
	memChunkSize = 64 << 10
	// memStripes is how many locks the chunks are spread over. Consecutive
	// chunks fall in different stripes, so a large I/O and its neighbours
	// rarely wait on one another.
	memStripes = 64
)

type memChunk = [memChunkSize]byte

// memStripe guards the chunks whose index is congruent to its own modulo
// memStripes: the map and the chunks' contents.
type memStripe struct {
	mu     sync.RWMutex
	chunks map[int64]*memChunk // nil once the store is closed
	_      [64 - 24 - 8]byte   // keep stripes on separate cache lines
}

// Mem is a sparse store in memory. Chunks are allocated on the first write
// of non-zero data; chunks never written, or wholly deallocated, read as zeros
// and hold no memory.
type Mem struct {
	size      int64
	closed    atomic.Bool
	allocated atomic.Int64 // chunks held
	stripes   [memStripes]memStripe
}

var _ Immediate = (*Mem)(nil)

// NewMem returns an empty (all zeros) in-memory store of size bytes.
func NewMem(size int64) (*Mem, error) {
	if size <= 0 {
		return nil, fmt.Errorf("store: mem size %d must be positive", size)
	}
	m := &Mem{size: size}
	for i := range m.stripes {
		m.stripes[i].chunks = make(map[int64]*memChunk)
	}
	return m, nil
}

// Size implements Store.
func (m *Mem) Size() int64 { return m.size }

// Immediate implements Immediate: memory never waits.
func (m *Mem) Immediate() bool { return true }

// Allocated is how many bytes of memory the store's data holds now.
func (m *Mem) Allocated() int64 { return m.allocated.Load() * memChunkSize }

func (m *Mem) String() string { return "memory (" + formatSize(m.size) + ", sparse)" }

// span calls fn for each chunk that [off, off+n) touches, with the chunk's
// index, the range's start within the chunk and the length within it. It
// stops at the first error.
func span(off, n int64, fn func(idx int64, start, length int, done int64) error) error {
	var done int64
	for done < n {
		pos := off + done
		idx := pos / memChunkSize
		start := int(pos % memChunkSize)
		length := int(min(int64(memChunkSize-start), n-done))
		if err := fn(idx, start, length, done); err != nil {
			return err
		}
		done += int64(length)
	}
	return nil
}

func (m *Mem) stripe(idx int64) *memStripe { return &m.stripes[idx%memStripes] }

// ReadAt implements Store.
func (m *Mem) ReadAt(p []byte, off int64) (int, error) {
	if m.closed.Load() {
		return 0, closedError("read")
	}
	if err := checkRange("read", off, int64(len(p)), m.size); err != nil {
		return 0, err
	}
	err := span(off, int64(len(p)), func(idx int64, start, length int, done int64) error {
		dst := p[done : done+int64(length)]
		s := m.stripe(idx)
		s.mu.RLock()
		defer s.mu.RUnlock()
		if s.chunks == nil {
			return closedError("read")
		}
		if c := s.chunks[idx]; c != nil {
			copy(dst, c[start:start+length])
		} else {
			clear(dst)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// WriteAt implements Store.
func (m *Mem) WriteAt(p []byte, off int64) (int, error) {
	if m.closed.Load() {
		return 0, closedError("write")
	}
	if err := checkRange("write", off, int64(len(p)), m.size); err != nil {
		return 0, err
	}
	err := span(off, int64(len(p)), func(idx int64, start, length int, done int64) error {
		src := p[done : done+int64(length)]
		s := m.stripe(idx)
		s.mu.Lock()
		if s.chunks == nil {
			s.mu.Unlock()
			return closedError("write")
		}
		c := s.chunks[idx]
		if c == nil {
			if isZero(src) {
				s.mu.Unlock() // zeros over an absent chunk change nothing
				return nil
			}
			// Allocate (and let the runtime zero 64 KiB) without
			// holding up the stripe's other chunks.
			s.mu.Unlock()
			fresh := new(memChunk)
			s.mu.Lock()
			if s.chunks == nil {
				s.mu.Unlock()
				return closedError("write")
			}
			if c = s.chunks[idx]; c == nil {
				c = fresh
				s.chunks[idx] = c
				m.allocated.Add(1)
			}
		}
		copy(c[start:start+length], src)
		s.mu.Unlock()
		return nil
	})
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush implements Store; memory has nothing to make durable.
func (m *Mem) Flush() error {
	if m.closed.Load() {
		return closedError("flush")
	}
	return nil
}

// Deallocate implements Store: whole chunks in the range are released,
// partly covered ones are zeroed over the range.
func (m *Mem) Deallocate(off, length int64) error {
	return m.zero("deallocate", off, length)
}

// WriteZeroes implements Store. In memory it is the same as Deallocate: a
// released chunk reads as zeros and costs nothing to rewrite later.
func (m *Mem) WriteZeroes(off, length int64) error {
	return m.zero("write zeroes", off, length)
}

func (m *Mem) zero(op string, off, length int64) error {
	if m.closed.Load() {
		return closedError(op)
	}
	if err := checkRange(op, off, length, m.size); err != nil {
		return err
	}
	return span(off, length, func(idx int64, start, n int, _ int64) error {
		s := m.stripe(idx)
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.chunks == nil {
			return closedError(op)
		}
		c := s.chunks[idx]
		if c == nil {
			return nil
		}
		// A chunk wholly in the range, or the store's last (short)
		// chunk covered to the end, is released.
		chunkEnd := min(int64(memChunkSize), m.size-idx*memChunkSize)
		if start == 0 && int64(n) >= chunkEnd {
			delete(s.chunks, idx)
			m.allocated.Add(-1)
			return nil
		}
		clear(c[start : start+n])
		return nil
	})
}

// Close implements Store and releases all memory.
func (m *Mem) Close() error {
	if m.closed.Swap(true) {
		return closedError("close")
	}
	for i := range m.stripes {
		s := &m.stripes[i]
		s.mu.Lock()
		m.allocated.Add(-int64(len(s.chunks)))
		s.chunks = nil
		s.mu.Unlock()
	}
	return nil
}

// isZero reports whether b holds only zero bytes.
func isZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}
