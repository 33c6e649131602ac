package blk

import (
	"context"
	"testing"
)

// Benchmarks of blk's own cost (splitting, tags, bounce buffers, range
// locks) over a Backend that does nothing.

func benchRead(b *testing.B, lim Limits, size int, off int64, aligned bool) {
	d := newDevice(b, nullBackend{lim}, Options{})
	ctx := context.Background()
	var p []byte
	if aligned {
		p = alignedBuf(b, size)
	} else {
		p = unalignedBuf(size)
	}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := d.ReadAt(ctx, p, off); err != nil {
				b.Fatal(err)
			}
		}
	})
}

var benchLimits = Limits{BlockSize: 512, Blocks: 1 << 24, MaxTransfer: 1 << 20, Queues: 2, QueueDepth: 128}

func BenchmarkReadDirect4K(b *testing.B)   { benchRead(b, benchLimits, 4096, 8192, true) }
func BenchmarkReadDirect128K(b *testing.B) { benchRead(b, benchLimits, 128<<10, 0, true) }
func BenchmarkReadDirect1M(b *testing.B)   { benchRead(b, benchLimits, 1<<20, 0, true) }

// 1 MiB with a NIC-like 32-segment limit: 8 commands of 128 KiB in parallel.
func BenchmarkReadSplit1MSeg32(b *testing.B) {
	lim := benchLimits
	lim.MaxSegments = 32
	benchRead(b, lim, 1<<20, 0, true)
}

func BenchmarkReadBounce4KUnaligned(b *testing.B)   { benchRead(b, benchLimits, 4096, 100, false) }
func BenchmarkReadBounce128KUnaligned(b *testing.B) { benchRead(b, benchLimits, 128<<10, 100, false) }

func benchWrite(b *testing.B, size int, off int64) {
	d := newDevice(b, nullBackend{benchLimits}, Options{})
	ctx := context.Background()
	p := make([]byte, size)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := d.WriteAt(ctx, p, off); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkWriteAligned4K(b *testing.B) { benchWrite(b, 4096, 0) }
func BenchmarkWriteRMW100B(b *testing.B)   { benchWrite(b, 100, 10) }
func BenchmarkWriteRMW128K(b *testing.B)   { benchWrite(b, 128<<10, 10) }
