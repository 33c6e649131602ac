package store

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		err  string // substring of the error; "" for success
	}{
		{"4096", 4096, ""},
		{"1", 1, ""},
		{"512K", 512 << 10, ""},
		{"512k", 512 << 10, ""},
		{"64M", 64 << 20, ""},
		{"1G", 1 << 30, ""},
		{"1GiB", 1 << 30, ""},
		{"1gb", 1 << 30, ""},
		{"2T", 2 << 40, ""},
		{"8388607T", 8388607 << 40, ""},
		{"", 0, "empty size"},
		{"0", 0, "must be positive"},
		{"0G", 0, "must be positive"},
		{"-1G", 0, "invalid size"},
		{"+1G", 0, "invalid size"},
		{"G", 0, "invalid size"},
		{"1X", 0, "invalid size"},
		{"1.5G", 0, "invalid size"},
		{"1 G", 0, "invalid size"},
		{"1B", 0, "invalid size"}, // a bare B is not a unit we accept
		{"0x10", 0, "invalid size"},
		{"8388608T", 0, "too large"},
		{"99999999999999999999", 0, "too large"},
	} {
		got, err := ParseSize(tc.in)
		if tc.err == "" {
			if err != nil || got != tc.want {
				t.Errorf("ParseSize(%q) = %d, %v; want %d, nil", tc.in, got, err, tc.want)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("ParseSize(%q) = %d, %v; want an error containing %q", tc.in, got, err, tc.err)
		}
	}
}

func TestOpenSpecs(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "ns")
	if err := os.WriteFile(file, make([]byte, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// A file named like a mem spec is reachable through a path with a directory.
	memNamed := filepath.Join(dir, "mem:1G")
	if err := os.WriteFile(memNamed, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		spec string
		size int64
		kind string // "mem" or "file"
		err  string
	}{
		{"mem:1G", 1 << 30, "mem", ""},
		{"mem:64M", 64 << 20, "mem", ""},
		{"mem:512K", 512 << 10, "mem", ""},
		{"mem:1T", 1 << 40, "mem", ""}, // sparse: costs nothing until written
		{file, 8192, "file", ""},
		{memNamed, 4096, "file", ""},
		{"", 0, "", "empty spec"},
		{"mem:", 0, "", "empty size"},
		{"mem:0", 0, "", "must be positive"},
		{"mem:lots", 0, "", "invalid size"},
		{filepath.Join(dir, "missing"), 0, "", "does not exist"},
		{dir, 0, "", "is a directory"},
		{empty, 0, "", "is empty"},
		{"/dev/null", 0, "", "not a regular file or block device"},
	} {
		s, err := Open(tc.spec)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Open(%q) error = %v; want one containing %q", tc.spec, err, tc.err)
			}
			if s != nil { // also catches a typed nil inside the interface
				t.Errorf("Open(%q) returned a non-nil Store (%T) with its error", tc.spec, s)
			}
			continue
		}
		if err != nil {
			t.Errorf("Open(%q): %v", tc.spec, err)
			continue
		}
		if s.Size() != tc.size {
			t.Errorf("Open(%q).Size() = %d, want %d", tc.spec, s.Size(), tc.size)
		}
		switch tc.kind {
		case "mem":
			if _, ok := s.(*Mem); !ok {
				t.Errorf("Open(%q) = %T, want *Mem", tc.spec, s)
			}
		case "file":
			if _, ok := s.(*File); !ok {
				t.Errorf("Open(%q) = %T, want *File", tc.spec, s)
			}
		}
		if err := s.Close(); err != nil {
			t.Errorf("Close %q: %v", tc.spec, err)
		}
	}
	// Open never creates what it was asked to open.
	if _, err := os.Stat(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open created a missing file: stat err = %v", err)
	}
}

func TestFormatSize(t *testing.T) {
	for in, want := range map[int64]string{
		1 << 30: "1G", 64 << 20: "64M", 512 << 10: "512K", 3 << 40: "3T", 1536 << 20: "1536M", 1000: "1000",
	} {
		if got := formatSize(in); got != want {
			t.Errorf("formatSize(%d) = %q, want %q", in, got, want)
		}
	}
}

// pattern returns n bytes that differ with seed and position.
func pattern(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*7) ^ seed | 1 // never zero, so a zero read is always wrong
	}
	return p
}

// conformance runs the behaviour every Store must have on s, which must be
// fresh (all zeros) and at least 256 KiB + 3 bytes.
func conformance(t *testing.T, s Store) {
	t.Helper()
	size := s.Size()
	read := func(off, n int64) []byte {
		t.Helper()
		p := make([]byte, n)
		if got, err := s.ReadAt(p, off); err != nil || got != int(n) {
			t.Fatalf("ReadAt(%d, %d) = %d, %v", n, off, got, err)
		}
		return p
	}
	write := func(p []byte, off int64) {
		t.Helper()
		if got, err := s.WriteAt(p, off); err != nil || got != len(p) {
			t.Fatalf("WriteAt(%d, %d) = %d, %v", len(p), off, got, err)
		}
	}

	if !isZero(read(0, size)) {
		t.Fatal("a fresh store does not read as zeros")
	}

	// A write straddling two chunk boundaries, at odd offsets.
	data := pattern(2*memChunkSize+1001, 0x5a)
	off := int64(memChunkSize - 500)
	write(data, off)
	if got := read(off, int64(len(data))); !bytes.Equal(got, data) {
		t.Fatal("read back differs from what was written")
	}
	if !isZero(read(0, off)) || !isZero(read(off+int64(len(data)), size-off-int64(len(data)))) {
		t.Fatal("bytes around the write are no longer zero")
	}

	// The last byte and the first byte are reachable.
	write([]byte{0xee}, size-1)
	write([]byte{0xdd}, 0)
	if got := read(size-1, 1); got[0] != 0xee {
		t.Fatalf("last byte = %#x", got[0])
	}

	// Out of range: an error wrapping ErrOutOfRange, nothing touched.
	before := read(0, size)
	for _, r := range []struct{ off, n int64 }{
		{size - 1, 2}, {size, 1}, {-1, 1}, {size + 4096, 4096}, {1<<63 - 10, 20},
	} {
		if n, err := s.WriteAt(make([]byte, r.n), r.off); !errors.Is(err, ErrOutOfRange) || n != 0 {
			t.Errorf("WriteAt(%d bytes at %d) = %d, %v; want 0, ErrOutOfRange", r.n, r.off, n, err)
		}
		if n, err := s.ReadAt(make([]byte, r.n), r.off); !errors.Is(err, ErrOutOfRange) || n != 0 {
			t.Errorf("ReadAt(%d bytes at %d) = %d, %v; want 0, ErrOutOfRange", r.n, r.off, n, err)
		}
		if err := s.Deallocate(r.off, r.n); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("Deallocate(%d, %d) = %v; want ErrOutOfRange", r.off, r.n, err)
		}
		if err := s.WriteZeroes(r.off, r.n); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("WriteZeroes(%d, %d) = %v; want ErrOutOfRange", r.off, r.n, err)
		}
	}
	if err := s.Deallocate(0, -1); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("Deallocate with a negative length = %v; want ErrOutOfRange", err)
	}
	if !bytes.Equal(read(0, size), before) {
		t.Fatal("a refused operation changed the store")
	}
	if s.Size() != size {
		t.Fatalf("size changed from %d to %d", size, s.Size())
	}

	// Zero-length operations at the end are fine and change nothing.
	if err := s.Deallocate(size, 0); err != nil {
		t.Errorf("Deallocate(size, 0) = %v", err)
	}
	if err := s.WriteZeroes(size, 0); err != nil {
		t.Errorf("WriteZeroes(size, 0) = %v", err)
	}

	// Deallocate a range inside the data, unaligned at both ends.
	dOff, dLen := off+777, int64(memChunkSize+4096+5)
	if err := s.Deallocate(dOff, dLen); err != nil {
		t.Fatalf("Deallocate: %v", err)
	}
	want := bytes.Clone(data)
	clear(want[777 : 777+dLen])
	if got := read(off, int64(len(data))); !bytes.Equal(got, want) {
		t.Fatal("after Deallocate: the range is not zero or its neighbours changed")
	}

	// WriteZeroes on the rest of the data.
	if err := s.WriteZeroes(off, 777); err != nil {
		t.Fatalf("WriteZeroes: %v", err)
	}
	clear(want[:777])
	if got := read(off, int64(len(data))); !bytes.Equal(got, want) {
		t.Fatal("after WriteZeroes: the range is not zero or its neighbours changed")
	}

	// Deallocating everything leaves zeros everywhere.
	if err := s.Deallocate(0, size); err != nil {
		t.Fatalf("Deallocate all: %v", err)
	}
	if !isZero(read(0, size)) {
		t.Fatal("after deallocating everything the store is not all zeros")
	}
	if err := s.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}

	// After Close everything fails with os.ErrClosed.
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	p := make([]byte, 1)
	if _, err := s.ReadAt(p, 0); !errors.Is(err, os.ErrClosed) {
		t.Errorf("ReadAt after Close = %v, want os.ErrClosed", err)
	}
	if _, err := s.WriteAt(p, 0); !errors.Is(err, os.ErrClosed) {
		t.Errorf("WriteAt after Close = %v, want os.ErrClosed", err)
	}
	if err := s.Flush(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Flush after Close = %v, want os.ErrClosed", err)
	}
	if err := s.Deallocate(0, 1); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Deallocate after Close = %v, want os.ErrClosed", err)
	}
	if err := s.WriteZeroes(0, 1); !errors.Is(err, os.ErrClosed) {
		t.Errorf("WriteZeroes after Close = %v, want os.ErrClosed", err)
	}
	if err := s.Close(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("second Close = %v, want os.ErrClosed", err)
	}
}
