package store

import (
	"sync/atomic"
	"testing"
)

// benchSize is the namespace the benchmarks work on: large enough that
// consecutive I/Os spread over many chunks and stripes.
const benchSize = 64 << 20

func benchMem(b *testing.B, ioSize int, write bool) {
	m, err := NewMem(benchSize)
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	// Fill it, so that reads copy real chunks rather than zeros.
	fill := pattern(1<<20, 3)
	for off := int64(0); off < benchSize; off += int64(len(fill)) {
		if _, err := m.WriteAt(fill, off); err != nil {
			b.Fatal(err)
		}
	}
	slots := int64(benchSize / ioSize)
	var next atomic.Int64
	b.SetBytes(int64(ioSize))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		buf := pattern(ioSize, 5)
		for pb.Next() {
			off := next.Add(1) % slots * int64(ioSize)
			var err error
			if write {
				_, err = m.WriteAt(buf, off)
			} else {
				_, err = m.ReadAt(buf, off)
			}
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkMemReadAt(b *testing.B) {
	b.Run("4K", func(b *testing.B) { benchMem(b, 4<<10, false) })
	b.Run("128K", func(b *testing.B) { benchMem(b, 128<<10, false) })
}

func BenchmarkMemWriteAt(b *testing.B) {
	b.Run("4K", func(b *testing.B) { benchMem(b, 4<<10, true) })
	b.Run("128K", func(b *testing.B) { benchMem(b, 128<<10, true) })
}

func benchFile(b *testing.B, ioSize int, write bool) {
	s, _ := newFile(b, benchSize)
	fill := pattern(1<<20, 3)
	for off := int64(0); off < benchSize; off += int64(len(fill)) {
		if _, err := s.WriteAt(fill, off); err != nil {
			b.Fatal(err)
		}
	}
	slots := int64(benchSize / ioSize)
	var next atomic.Int64
	b.SetBytes(int64(ioSize))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		buf := pattern(ioSize, 5)
		for pb.Next() {
			off := next.Add(1) % slots * int64(ioSize)
			var err error
			if write {
				_, err = s.WriteAt(buf, off)
			} else {
				_, err = s.ReadAt(buf, off)
			}
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// File benchmarks measure pread/pwrite on the page cache.
func BenchmarkFileReadAt(b *testing.B) {
	b.Run("4K", func(b *testing.B) { benchFile(b, 4<<10, false) })
	b.Run("128K", func(b *testing.B) { benchFile(b, 128<<10, false) })
}

func BenchmarkFileWriteAt(b *testing.B) {
	b.Run("4K", func(b *testing.B) { benchFile(b, 4<<10, true) })
	b.Run("128K", func(b *testing.B) { benchFile(b, 128<<10, true) })
}
