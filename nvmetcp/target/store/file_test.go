package store

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// newFile makes a zero-filled (sparse) file of size bytes in a test
// directory and opens it.
func newFile(t testing.TB, size int64) (*File, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ns.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	s, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

// allocatedBytes is how much of the file's data the file system holds (st_blocks).
func allocatedBytes(t testing.TB, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func TestFileIsHeldExclusively(t *testing.T) {
	s, path := newFile(t, 1<<20)
	if s2, err := OpenFile(path); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second OpenFile(%q) = %v, %v; want an in-use error", path, s2, err)
		if s2 != nil {
			s2.Close()
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := OpenFile(path)
	if err != nil {
		t.Fatalf("OpenFile after the first store closed: %v", err)
	}
	s2.Close()
}

func TestFileConformance(t *testing.T) {
	s, path := newFile(t, 4*memChunkSize+3)
	conformance(t, s)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != 4*memChunkSize+3 {
		t.Errorf("file size changed to %d", fi.Size())
	}
}

func TestFileConformanceWithoutFallocate(t *testing.T) {
	s, _ := newFile(t, 4*memChunkSize+3)
	s.noPunch.Store(true)
	s.noZeroRange.Store(true)
	conformance(t, s)
}

func TestFileConcurrent(t *testing.T) {
	s, _ := newFile(t, 8*memChunkSize)
	concurrent(t, s)
}

func TestFileDeallocatePunchesHole(t *testing.T) {
	const size = 4 << 20
	s, path := newFile(t, size)
	data := pattern(size, 9)
	if _, err := s.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	before := allocatedBytes(t, path)
	if before < size {
		t.Fatalf("file holds %d bytes after writing %d", before, size)
	}

	const holeOff, holeLen = 1 << 20, 2 << 20
	if err := s.Deallocate(holeOff, holeLen); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, size)
	if _, err := s.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(data)
	clear(want[holeOff : holeOff+holeLen])
	if !bytes.Equal(got, want) {
		t.Fatal("after Deallocate the hole is not zero or its neighbours changed")
	}
	if s.noPunch.Load() {
		t.Skipf("the file system under %s does not punch holes; zeros were written instead", path)
	}
	after := allocatedBytes(t, path)
	if before-after < holeLen {
		t.Errorf("punching a %d-byte hole freed only %d bytes (%d -> %d)", holeLen, before-after, before, after)
	}
	// KEEP_SIZE: punching never changes the size.
	if fi, err := os.Stat(path); err != nil || fi.Size() != size {
		t.Errorf("size after punching: %v, %v", fi.Size(), err)
	}

	// Zeroing the rest keeps the data reading as zeros too.
	if err := s.WriteZeroes(0, holeOff); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReadAt(got[:holeOff], 0); err != nil || !isZero(got[:holeOff]) {
		t.Fatalf("after WriteZeroes: %v", err)
	}
}

// The zero-writing fallback covers ranges larger than its buffer.
func TestFileZeroFallbackLargeRange(t *testing.T) {
	size := int64(3*zeroBufSize + 4096)
	s, _ := newFile(t, size)
	s.noPunch.Store(true)
	s.noZeroRange.Store(true)
	data := pattern(int(size), 4)
	if _, err := s.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	off, n := int64(7), size-20
	if err := s.WriteZeroes(off, n); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, size)
	if _, err := s.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	clear(data[off : off+n])
	if !bytes.Equal(got, data) {
		t.Fatal("zero fallback wrote the wrong bytes")
	}
}

// A file truncated behind the store's back gives an error, not short data.
func TestFileTruncatedUnderneath(t *testing.T) {
	s, path := newFile(t, 1<<20)
	if err := os.Truncate(path, 4096); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReadAt(make([]byte, 4096), 8192); err == nil {
		t.Fatal("reading past the truncated end succeeded")
	}
}

// TestBlockDevice runs the store on a loop device over a file in a test
// directory. It needs root and a free loop device.
func TestBlockDevice(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to set up a loop device")
	}
	losetup, err := exec.LookPath("losetup")
	if err != nil {
		t.Skip("losetup (util-linux) not installed")
	}
	const size = 4 << 20
	backing := filepath.Join(t.TempDir(), "loop.img")
	if err := os.WriteFile(backing, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(backing, size); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, losetup, "--find", "--show", backing).CombinedOutput()
	if err != nil {
		t.Skipf("cannot attach a loop device: %v: %s", err, bytes.TrimSpace(out))
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if out, err := exec.CommandContext(ctx, losetup, "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("detaching %s: %v: %s", dev, err, out)
		}
	})
	if _, err := os.Stat(dev); err != nil {
		t.Skipf("loop device %s attached but has no device node here: %v", dev, err)
	}

	s, err := OpenFile(dev) // closed by conformance, before the detach above
	if err != nil {
		t.Fatal(err)
	}
	if !s.BlockDevice() || s.Size() != size {
		t.Fatalf("%s: block device %v, size %d; want true, %d", dev, s.BlockDevice(), s.Size(), size)
	}
	// The device is held exclusively: a second open is refused.
	if st, err := Open(dev); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second Open(%q) = %v, %v; want an in-use error", dev, st, err)
		if st != nil {
			st.Close()
		}
	}

	// Write through the device, flush, and find it in the backing file.
	data := pattern(1<<20, 6)
	if _, err := s.WriteAt(data, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	onDisk := make([]byte, len(data))
	bf, err := os.Open(backing)
	if err != nil {
		t.Fatal(err)
	}
	defer bf.Close()
	if _, err := bf.ReadAt(onDisk, 1<<20); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(onDisk, data) {
		t.Fatal("flushed writes to the loop device are not in its backing file")
	}

	// An aligned punch goes through fallocate on the device and reads zeros,
	// from the device and from the backing file.
	if err := s.Deallocate(1<<20, 512<<10); err != nil {
		t.Fatal(err)
	}
	if s.noPunch.Load() {
		t.Logf("%s does not support PUNCH_HOLE; zeros were written", dev)
	}
	got := make([]byte, len(data))
	if _, err := s.ReadAt(got, 1<<20); err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(data)
	clear(want[:512<<10])
	if !bytes.Equal(got, want) {
		t.Fatal("after an aligned Deallocate the device does not read zeros there")
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := bf.ReadAt(onDisk, 1<<20); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(onDisk, want) {
		t.Fatal("after an aligned Deallocate the backing file does not hold zeros there")
	}

	// An unaligned zeroing: the device refuses it (EINVAL) and zeros are
	// written instead.
	if err := s.WriteZeroes(1<<20+(512<<10)+3, 1000); err != nil {
		t.Fatal(err)
	}
	clear(want[(512<<10)+3 : (512<<10)+1003])
	if _, err := s.ReadAt(got, 1<<20); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("after an unaligned WriteZeroes the device holds the wrong bytes")
	}

	// Reset the device and run the generic checks on it.
	if err := s.Deallocate(0, size); err != nil {
		t.Fatal(err)
	}
	conformance(t, s)
}
