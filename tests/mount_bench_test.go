package tests

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/blk"
	"github.com/nvmefs/nvmefs/fusefs"
	"github.com/nvmefs/nvmefs/internal/aio"
	"github.com/nvmefs/nvmefs/internal/nvmeblk"
	"github.com/nvmefs/nvmefs/nvmetcp/host"
	"github.com/nvmefs/nvmefs/nvmetcp/target"
	"github.com/nvmefs/nvmefs/nvmetcp/target/store"
)

// Benchmarks of reads through a real FUSE mount of a target in this process
// (memory namespace, loopback TCP, no digests): what a reader of the mounted
// file gets, O_DIRECT at queue depth 1 (pread) and 32 (io_submit).

const benchNSSize = 256 << 20

var quiet = slog.New(slog.DiscardHandler)

// benchMount mounts a fresh in-process target's namespace and returns the
// file's path.
func benchMount(b *testing.B) string {
	b.Helper()
	needFUSE(b)
	mem, err := store.NewMem(benchNSSize)
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	tgt, err := target.New(target.Config{SubsystemNQN: mountNQN, Namespaces: []store.Store{mem}, ListenAddr: ln.Addr().String(), Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- tgt.Serve(ln) }()
	b.Cleanup(func() { tgt.Close(); <-served; mem.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := host.Connect(ctx, ln.Addr().String(), mountNQN, host.Options{Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	be, err := nvmeblk.New(c, 1, nvmeblk.Options{})
	if err != nil {
		b.Fatal(err)
	}
	dev, err := blk.New(be, blk.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { dev.Close() })
	dir := filepath.Join(b.TempDir(), "mnt")
	os.Mkdir(dir, 0o755)
	srv, err := fusefs.Mount(dir, fusefs.Config{Files: []fusefs.File{{Name: "nvme0n1", Device: dev}}, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			syscall.Unmount(dir, syscall.MNT_DETACH)
		}
	})
	return filepath.Join(dir, "nvme0n1")
}

func openDirect(b *testing.B, path string) *os.File {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	return f
}

func benchReadQD1(b *testing.B, size int) {
	f := openDirect(b, benchMount(b))
	bufs, free, err := aio.Buffers(1, size)
	if err != nil {
		b.Fatal(err)
	}
	defer free()
	slots := benchNSSize / size
	b.SetBytes(int64(size))
	b.ResetTimer()
	for i := range b.N {
		if n, err := f.ReadAt(bufs[0], int64(i%slots)*int64(size)); n != size || err != nil {
			b.Fatalf("read: %d, %v", n, err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "IOPS")
}

func benchReadQD32(b *testing.B, size int) {
	const depth = 32
	f := openDirect(b, benchMount(b))
	ctx, err := aio.New(depth)
	if err != nil {
		b.Fatal(err)
	}
	defer ctx.Close()
	bufs, free, err := aio.Buffers(depth, size)
	if err != nil {
		b.Fatal(err)
	}
	defer free()
	slots := benchNSSize / size
	rs := make([]aio.Read, depth)
	b.SetBytes(int64(size))
	b.ResetTimer()
	for done := 0; done < b.N; done += depth {
		n := min(depth, b.N-done)
		for i := range n {
			rs[i] = aio.Read{Buf: bufs[i], Offset: int64((done+i)%slots) * int64(size)}
		}
		if err := ctx.ReadAll(int(f.Fd()), rs[:n]); err != nil {
			b.Fatal(err)
		}
		for _, r := range rs[:n] {
			if r.Err != nil || r.N != size {
				b.Fatalf("aio read: %d, %v", r.N, r.Err)
			}
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "IOPS")
}

func BenchmarkMountRead4KDirectQD1(b *testing.B)    { benchReadQD1(b, 4<<10) }
func BenchmarkMountRead128KDirectQD1(b *testing.B)  { benchReadQD1(b, 128<<10) }
func BenchmarkMountRead1MDirectQD1(b *testing.B)    { benchReadQD1(b, 1<<20) }
func BenchmarkMountRead4KDirectQD32(b *testing.B)   { benchReadQD32(b, 4<<10) }
func BenchmarkMountRead128KDirectQD32(b *testing.B) { benchReadQD32(b, 128<<10) }
