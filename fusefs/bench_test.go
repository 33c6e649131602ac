package fusefs

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/nvmefs/nvmefs/internal/aio"
)

// Reads through a real mount of a memory backend: the cost of FUSE, go-fuse,
// fusefs and blk without a transport (compare tests' BenchmarkMountRead*,
// which add the NVMe/TCP host and target).

func benchFUSERead(b *testing.B, size, depth int) {
	be := newMemBackend(512, 64<<20)
	srv, _ := mountFiles(b, Config{}, be)
	f, err := os.OpenFile(filepath.Join(srv.Dir(), "nvme0n1"), os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	bufs, free, err := aio.Buffers(depth, size)
	if err != nil {
		b.Fatal(err)
	}
	defer free()
	slots := (64 << 20) / size
	b.SetBytes(int64(size))
	b.ResetTimer()
	if depth == 1 {
		for i := range b.N {
			if n, err := f.ReadAt(bufs[0], int64(i%slots)*int64(size)); n != size || err != nil {
				b.Fatal(n, err)
			}
		}
	} else {
		ctx, err := aio.New(depth)
		if err != nil {
			b.Fatal(err)
		}
		defer ctx.Close()
		rs := make([]aio.Read, depth)
		for done := 0; done < b.N; done += depth {
			n := min(depth, b.N-done)
			for i := range n {
				rs[i] = aio.Read{Buf: bufs[i], Offset: int64((done+i)%slots) * int64(size)}
			}
			if err := ctx.ReadAll(int(f.Fd()), rs[:n]); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "IOPS")
}

func BenchmarkFUSERead4KQD1(b *testing.B)  { benchFUSERead(b, 4<<10, 1) }
func BenchmarkFUSERead4KQD32(b *testing.B) { benchFUSERead(b, 4<<10, 32) }
func BenchmarkFUSERead1MQD1(b *testing.B)  { benchFUSERead(b, 1<<20, 1) }
