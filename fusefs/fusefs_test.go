package fusefs

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nvmefs/nvmefs/blk"
	"github.com/nvmefs/nvmefs/internal/aio"
)

func fill(r *rand.Rand, b []byte) {
	for i := range b {
		b[i] = byte(r.Uint32())
	}
}

// readStats parses the stats file.
func readStats(t testing.TB, dir string) map[string]uint64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, StatsPath))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]uint64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), ": ")
		v, err := strconv.ParseUint(val, 10, 64)
		if !ok || err != nil {
			t.Fatalf("stats line %q is not 'name: value'", sc.Text())
		}
		if _, dup := m[name]; dup {
			t.Fatalf("stats: %s twice", name)
		}
		m[name] = v
	}
	return m
}

func TestLayout(t *testing.T) {
	a, b := newMemBackend(512, 4<<20), newMemBackend(4096, 8<<20)
	srv, devs := mountFiles(t, Config{
		Stats: func() []blk.Counter { return append(devs0(a), blk.Counter{Name: "extra_counter", Value: 42}) },
		Info:  func() string { return "nvme0: test\n" },
	}, a, b)
	_ = devs
	dir := srv.Dir()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if want := []string{".nvmefs", "nvme0n1", "nvme0n2"}; !slices.Equal(names, want) {
		t.Errorf("root holds %v, want %v", names, want)
	}
	for i, c := range []struct {
		size    int64
		blksize int64
	}{{4 << 20, 4096}, {8 << 20, 4096}} {
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(dir, names[i+1]), &st); err != nil {
			t.Fatal(err)
		}
		if st.Size != c.size || st.Mode != syscall.S_IFREG|0o644 || st.Blksize != c.blksize || st.Blocks != c.size/512 {
			t.Errorf("%s: size %d mode %o blksize %d blocks %d", names[i+1], st.Size, st.Mode, st.Blksize, st.Blocks)
		}
	}
	m := readStats(t, dir)
	if m["extra_counter"] != 42 {
		t.Errorf("stats lacks the configured counters: %v", m)
	}
	if _, ok := m["fuse_reads"]; !ok {
		t.Errorf("stats lacks fuse_reads: %v", m)
	}
	if info, err := os.ReadFile(filepath.Join(dir, InfoPath)); err != nil || string(info) != "nvme0: test\n" {
		t.Errorf("info: %q, %v", info, err)
	}
	if err := os.WriteFile(filepath.Join(dir, StatsPath), []byte("x"), 0); err == nil {
		t.Errorf("the stats file is writable")
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(dir, &sfs); err != nil {
		t.Fatal(err)
	}
	if sfs.Bsize != 4096 || sfs.Blocks != (12<<20)/4096 || sfs.Bfree != 0 || sfs.Files != 2 {
		t.Errorf("statfs: bsize %d blocks %d bfree %d files %d", sfs.Bsize, sfs.Blocks, sfs.Bfree, sfs.Files)
	}
	if err := os.WriteFile(filepath.Join(dir, "newfile"), nil, 0o644); err == nil {
		t.Errorf("created a file in the mount")
	}
}

func devs0(*memBackend) []blk.Counter { return nil }

func TestReadWholeFileAndCopy(t *testing.T) {
	be := newMemBackend(512, 3<<20+512) // not a multiple of the page size
	fill(rand.New(rand.NewPCG(1, 1)), be.data)
	srv, _ := mountFiles(t, Config{}, be)
	path := filepath.Join(srv.Dir(), "nvme0n1")
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, be.data) {
		t.Fatalf("os.ReadFile: %d bytes, differ from the namespace", len(got))
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var buf bytes.Buffer
	if n, err := io.Copy(&buf, f); err != nil || n != int64(len(be.data)) || !bytes.Equal(buf.Bytes(), be.data) {
		t.Fatalf("io.Copy: %d, %v", n, err)
	}
}

func TestPreadPwriteRandom(t *testing.T) {
	for _, cache := range []bool{false, true} {
		t.Run("cache="+strconv.FormatBool(cache), func(t *testing.T) {
			be := newMemBackend(512, 2<<20)
			r := rand.New(rand.NewPCG(2, 2))
			fill(r, be.data)
			model := append([]byte(nil), be.data...)
			srv, _ := mountFiles(t, Config{Cache: cache}, be)
			f, err := os.OpenFile(filepath.Join(srv.Dir(), "nvme0n1"), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			for i := range 400 {
				n := 1 + r.IntN(300<<10)
				off := r.IntN(len(model))
				if i%2 == 0 {
					p := make([]byte, n)
					fill(r, p)
					// pwrite(2) itself: os.File.WriteAt drops a short count.
					w, err := unix.Pwrite(int(f.Fd()), p, int64(off))
					if want := min(n, len(model)-off); w != want {
						t.Fatalf("WriteAt(%d, off %d) = %d, %v; want %d", n, off, w, err, want)
					}
					copy(model[off:], p)
				} else {
					p := make([]byte, n)
					got, err := f.ReadAt(p, int64(off))
					want := min(n, len(model)-off)
					if got != want || (err != nil && err != io.EOF) {
						t.Fatalf("ReadAt(%d, off %d) = %d, %v; want %d", n, off, got, err, want)
					}
					if !bytes.Equal(p[:got], model[off:off+got]) {
						t.Fatalf("ReadAt(%d, off %d): wrong bytes", n, off)
					}
				}
			}
			if !bytes.Equal(be.bytes(0, len(model)), model) {
				t.Fatalf("the namespace differs from the model after the writes")
			}
		})
	}
}

// TestDirectReadsUseTheReplyBuffer: O_DIRECT reads of whole blocks reach
// blk as page-aligned reply buffers read in place (no bounce, no copy), and
// a 1 MiB read is one FUSE READ (MaxWrite 1 MiB).
func TestDirectReadsUseTheReplyBuffer(t *testing.T) {
	be := newMemBackend(512, 8<<20)
	fill(rand.New(rand.NewPCG(3, 3)), be.data)
	srv, devs := mountFiles(t, Config{}, be)
	f, err := os.OpenFile(filepath.Join(srv.Dir(), "nvme0n1"), os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	bufs, free, err := aio.Buffers(1, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer free()
	before := srv.Counters()
	sizes := []int{4096, 8192, 128 << 10, 1 << 20, 512}
	for _, n := range sizes {
		p := bufs[0][:n]
		if got, err := f.ReadAt(p, 1<<20); got != n || err != nil {
			t.Fatalf("O_DIRECT ReadAt(%d) = %d, %v", n, got, err)
		}
		if !bytes.Equal(p, be.data[1<<20:1<<20+n]) {
			t.Fatalf("O_DIRECT ReadAt(%d): wrong bytes", n)
		}
	}
	after := srv.Counters()
	if reads := get(after, "fuse_reads") - get(before, "fuse_reads"); reads != uint64(len(sizes)) {
		t.Errorf("%d reads of up to 1 MiB arrived as %d FUSE READs", len(sizes), reads)
	}
	if u := get(after, "fuse_read_dest_unaligned"); u != 0 {
		t.Errorf("%d READ reply buffers were not page-aligned", u)
	}
	dc := devs[0].Counters()
	if get(dc, "read_direct") != uint64(len(sizes)) || get(dc, "read_bytes_copied") != 0 {
		t.Errorf("blk: want %d direct reads and no copy: %v", len(sizes), dc)
	}
}

func get(cs []blk.Counter, name string) uint64 {
	for _, c := range cs {
		if c.Name == name {
			return c.Value
		}
	}
	panic("no counter " + name)
}

func TestBlockDeviceSemantics(t *testing.T) {
	be := newMemBackend(512, 1<<20)
	fill(rand.New(rand.NewPCG(4, 4)), be.data)
	orig := append([]byte(nil), be.data...)
	srv, _ := mountFiles(t, Config{}, be)
	path := filepath.Join(srv.Dir(), "nvme0n1")
	size := int64(len(be.data))

	if err := os.Truncate(path, 0); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("truncate to 0: %v, want EINVAL", err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Errorf("truncate to the same size: %v", err)
	}
	if err := os.Chmod(path, 0o600); !errors.Is(err, syscall.EPERM) {
		t.Errorf("chmod: %v, want EPERM", err)
	}
	now := time.Now()
	if err := os.Chtimes(path, now, now); err != nil {
		t.Errorf("chtimes (touch): %v", err)
	}

	// O_TRUNC is ignored, as on a block device: "echo hi > file" writes
	// at offset 0 and the rest stays.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatalf("open O_TRUNC: %v", err)
	}
	if _, err := f.Write([]byte("hi\n")); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if fi, err := os.Stat(path); err != nil || fi.Size() != size {
		t.Errorf("size after O_TRUNC: %v, %v", fi.Size(), err)
	}
	want := append([]byte("hi\n"), orig[3:]...)
	if !bytes.Equal(be.bytes(0, len(want)), want) {
		t.Errorf("O_TRUNC open + write: the namespace is not the old data with 'hi\\n' at 0")
	}

	f, err = os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if n, err := f.WriteAt([]byte("x"), size); n != 0 || !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("write at the end: %d, %v; want ENOSPC", n, err)
	}
	if n, err := unix.Pwrite(int(f.Fd()), []byte("abcdef"), size-3); n != 3 || err != nil {
		t.Errorf("write across the end: %d, %v; want 3 bytes", n, err)
	}
	if n, err := f.ReadAt(make([]byte, 10), size); n != 0 || err != io.EOF {
		t.Errorf("read at the end: %d, %v; want 0, EOF", n, err)
	}

	if err := f.Sync(); err != nil || be.flushes.Load() != 1 {
		t.Errorf("fsync: %v, %d flushes", err, be.flushes.Load())
	}

	fd := int(f.Fd())
	if err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 4096, 8192); err != nil || be.deallocated.Load() != 16 {
		t.Errorf("punch hole: %v, %d blocks deallocated", err, be.deallocated.Load())
	}
	if err := unix.Fallocate(fd, unix.FALLOC_FL_ZERO_RANGE, 512, 1024); err != nil || be.zeroed.Load() != 2 ||
		!bytes.Equal(be.bytes(512, 1024), make([]byte, 1024)) {
		t.Errorf("zero range: %v, %d blocks zeroed", err, be.zeroed.Load())
	}
	if err := unix.Fallocate(fd, unix.FALLOC_FL_ZERO_RANGE, 100, 512); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("unaligned zero range: %v, want EINVAL", err)
	}
	if err := unix.Fallocate(fd, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, size-512, 1024); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("zero range past the end: %v, want EINVAL", err)
	}
	if err := unix.Fallocate(fd, 0, 0, 4096); !errors.Is(err, syscall.EOPNOTSUPP) {
		t.Errorf("fallocate mode 0: %v, want EOPNOTSUPP", err)
	}

	// Direct I/O: a shared mapping cannot be coherent and the kernel
	// refuses it; a private one reads through the page cache.
	if _, err := unix.Mmap(fd, 0, 4096, unix.PROT_READ, unix.MAP_SHARED); !errors.Is(err, syscall.ENODEV) {
		t.Errorf("mmap MAP_SHARED: %v, want ENODEV", err)
	}
	m, err := unix.Mmap(fd, 8192, 4096, unix.PROT_READ, unix.MAP_PRIVATE)
	if err != nil {
		t.Errorf("mmap MAP_PRIVATE: %v", err)
	} else {
		// Fault the page in with a system call (mlock), not with a load:
		// a goroutine blocked in a page fault on its own process's FUSE
		// mount counts as running, and a garbage collection the server
		// side starts meanwhile would wait for it forever.
		if err := unix.Mlock(m); err != nil {
			t.Errorf("mlock of the MAP_PRIVATE mapping: %v", err)
		} else if !bytes.Equal(m, be.bytes(8192, 4096)) {
			t.Errorf("mmap MAP_PRIVATE: wrong bytes")
		}
		unix.Munmap(m)
	}
}

func TestControllerErrorsAreEIO(t *testing.T) {
	be := newMemBackend(512, 1<<20)
	srv, _ := mountFiles(t, Config{}, be)
	f, err := os.OpenFile(filepath.Join(srv.Dir(), "nvme0n1"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	be.fail.Store(true)
	if _, err := f.ReadAt(make([]byte, 4096), 0); !errors.Is(err, syscall.EIO) {
		t.Errorf("read from a failing controller: %v, want EIO", err)
	}
	if _, err := f.WriteAt(make([]byte, 100), 10); !errors.Is(err, syscall.EIO) {
		t.Errorf("write to a failing controller: %v, want EIO", err)
	}
	be.fail.Store(false)
	if _, err := f.ReadAt(make([]byte, 4096), 0); err != nil {
		t.Errorf("read after the failure: %v", err)
	}
	if n := get(srv.Counters(), "fuse_errors"); n != 2 {
		t.Errorf("fuse_errors = %d, want 2", n)
	}
}

// TestAsyncDirectIOQueueDepth: one thread submits 32 O_DIRECT reads with
// io_submit, as fio's libaio engine does. Only with CAP_ASYNC_DIO does the
// kernel send them to the file system together rather than one by one.
func TestAsyncDirectIOQueueDepth(t *testing.T) {
	be := newMemBackend(512, 4<<20)
	be.delay = 2 * time.Millisecond
	fill(rand.New(rand.NewPCG(5, 5)), be.data)
	srv, devs := mountFiles(t, Config{}, be)
	f, err := os.OpenFile(filepath.Join(srv.Dir(), "nvme0n1"), os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const depth = 32
	ctx, err := aio.New(depth)
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.Close()
	bufs, free, err := aio.Buffers(depth, 4096)
	if err != nil {
		t.Fatal(err)
	}
	defer free()
	rs := make([]aio.Read, depth)
	for i := range rs {
		rs[i] = aio.Read{Buf: bufs[i], Offset: int64(i) * 64 << 10}
	}
	if err := ctx.ReadAll(int(f.Fd()), rs); err != nil {
		t.Fatal(err)
	}
	for i, r := range rs {
		if r.Err != nil || r.N != 4096 || !bytes.Equal(r.Buf, be.data[r.Offset:r.Offset+4096]) {
			t.Fatalf("aio read %d: %d, %v", i, r.N, r.Err)
		}
	}
	m := be.maxInFlight.Load()
	t.Logf("32 reads submitted at once: %d in flight at the controller at most (blk: %d)", m, devs[0].Tags().InFlightMax())
	if m < 8 {
		t.Errorf("at most %d of 32 async direct reads were in flight: CAP_ASYNC_DIO/MaxBackground not in effect", m)
	}
}

func TestCacheServesRepeatedReads(t *testing.T) {
	be := newMemBackend(512, 1<<20)
	fill(rand.New(rand.NewPCG(6, 6)), be.data)
	srv, _ := mountFiles(t, Config{Cache: true}, be)
	path := filepath.Join(srv.Dir(), "nvme0n1")
	first, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(first, be.data) {
		t.Fatalf("first read: %v", err)
	}
	n := be.reads.Load()
	second, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(second, be.data) {
		t.Fatalf("second read: %v", err)
	}
	if m := be.reads.Load(); m != n {
		t.Errorf("with Cache, a second read of the file reached the controller (%d more commands)", m-n)
	}

	// Without it, every read reaches the controller.
	be2 := newMemBackend(512, 1<<20)
	srv2, _ := mountFiles(t, Config{}, be2)
	p := filepath.Join(srv2.Dir(), "nvme0n1")
	os.ReadFile(p)
	n = be2.reads.Load()
	os.ReadFile(p)
	if be2.reads.Load() == n {
		t.Errorf("without Cache, a second read was served without the controller")
	}
}

// TestConcurrentUnalignedWriters: many writers of distinct bytes of the
// same blocks through the mount; none may lose another's bytes.
func TestConcurrentUnalignedWriters(t *testing.T) {
	be := newMemBackend(4096, 1<<20)
	be.delay = 100 * time.Microsecond
	srv, _ := mountFiles(t, Config{}, be)
	f, err := os.OpenFile(filepath.Join(srv.Dir(), "nvme0n1"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var wg sync.WaitGroup
	for w := range 24 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := bytes.Repeat([]byte{byte(w + 1)}, 300)
			for range 10 {
				if _, err := f.WriteAt(p, int64(100+w*333)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	for w := range 24 {
		if got := be.bytes(100+w*333, 300); !bytes.Equal(got, bytes.Repeat([]byte{byte(w + 1)}, 300)) {
			t.Errorf("writer %d's bytes were lost", w)
		}
	}
}
