package ddp

import (
	"testing"
	"unsafe"
)

func TestCopySkip(t *testing.T) {
	buf := []byte("placed by the device")
	if n := CopySkip(buf, buf); n != 0 {
		t.Fatalf("same memory: copied %d bytes, want 0", n)
	}
	if n := CopySkip(buf[:0], buf[:0]); n != 0 {
		t.Fatalf("empty: copied %d", n)
	}
	dst := make([]byte, len(buf))
	if n := CopySkip(dst, buf); n != len(buf) || string(dst) != string(buf) {
		t.Fatalf("different memory: copied %d, dst %q", n, dst)
	}
	// Overlapping but not the same start is a real copy.
	src := []byte("abcdef")
	if n := CopySkip(src[1:], src[:5]); n != 5 || string(src) != "aabcde" {
		t.Fatalf("shifted: copied %d, %q", n, src)
	}
	short := make([]byte, 3)
	if n := CopySkip(short, buf); n != 3 || string(short) != "pla" {
		t.Fatalf("short dst: copied %d, %q", n, short)
	}
}

func TestCRCTracker(t *testing.T) {
	var tr CRCTracker
	tr.Reset()
	if tr.Offloaded() {
		t.Fatal("a PDU with no segment was offloaded")
	}
	tr.Add(Segment{CRCOK: true})
	tr.Add(Segment{CRCOK: true})
	if !tr.Offloaded() {
		t.Fatal("every segment CRCOK: want offloaded")
	}
	tr.Add(Segment{CRCOK: false}) // e.g. the segment holding a bad digest
	if tr.Offloaded() {
		t.Fatal("a segment without CRCOK: want a software check")
	}
	tr.Add(Segment{CRCOK: true})
	if tr.Offloaded() {
		t.Fatal("a later good segment must not clear the miss")
	}
	tr.Reset()
	tr.Add(Segment{CRCOK: true})
	if !tr.Offloaded() {
		t.Fatal("Reset starts a new PDU")
	}
	var zero CRCTracker
	zero.Add(Segment{CRCOK: true})
	if zero.Offloaded() {
		t.Fatal("a tracker never Reset must not claim offload")
	}
}

func TestSeq(t *testing.T) {
	for _, tc := range []struct {
		s, t Seq
		less bool
		size uint32
	}{
		{1, 2, true, 1},
		{2, 1, false, 1<<32 - 1},
		{0xffffff00, 0x10, true, 0x110}, // across the wrap
		{0x10, 0xffffff00, false, 0xfffffef0},
		{7, 7, false, 0},
	} {
		if got := tc.s.LessThan(tc.t); got != tc.less {
			t.Errorf("%#x.LessThan(%#x) = %v", tc.s, tc.t, got)
		}
		if got := tc.s.Size(tc.t); got != tc.size {
			t.Errorf("%#x.Size(%#x) = %#x, want %#x", tc.s, tc.t, got, tc.size)
		}
		if tc.s.Add(tc.size) != tc.t {
			t.Errorf("%#x.Add(%#x) != %#x", tc.s, tc.size, tc.t)
		}
	}
	if !Seq(0xfffffffe).InWindow(0xfffffff0, 0x20) || Seq(0x10).InWindow(0xfffffff0, 0x20) {
		t.Error("InWindow across the wrap")
	}
}

func TestSG(t *testing.T) {
	backing := make([]byte, 5*PageSize)
	base := uintptr(unsafe.Pointer(&backing[0]))
	off := int((PageSize - base%PageSize) % PageSize) // first page boundary
	buf := backing[off+100 : off+100+2*PageSize]      // starts 100 bytes into a page
	sg := SG(buf, nil)
	if len(sg) != 3 {
		t.Fatalf("%d pieces, want 3", len(sg))
	}
	total := 0
	for i, p := range sg {
		total += len(p)
		addr := uintptr(unsafe.Pointer(&p[0]))
		if i > 0 && addr%PageSize != 0 {
			t.Errorf("piece %d does not start on a page", i)
		}
		if i < len(sg)-1 && (addr+uintptr(len(p)))%PageSize != 0 {
			t.Errorf("piece %d does not end on a page", i)
		}
		if cap(p) != len(p) {
			t.Errorf("piece %d can grow into the next", i)
		}
	}
	if total != len(buf) || len(sg[0]) != PageSize-100 || len(sg[2]) != 100 {
		t.Fatalf("pieces %d/%d/%d, total %d", len(sg[0]), len(sg[1]), len(sg[2]), total)
	}
	if (Limits{MaxSGL: 128}).MaxIOBytes() != 512<<10 {
		t.Error("MaxIOBytes")
	}
}
