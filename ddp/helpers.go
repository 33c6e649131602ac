package ddp

import "unsafe"

// CopySkip copies src into dst, skipping the copy when they are the same
// memory: the device already placed the bytes (the kernel's
// "if (src == dst) skip copy"). It returns the bytes actually copied.
func CopySkip(dst, src []byte) int {
	n := min(len(dst), len(src))
	if n == 0 || unsafe.SliceData(dst) == unsafe.SliceData(src) {
		return 0
	}
	return copy(dst, src[:n])
}

// CRCTracker follows the segments of one PDU and tells, at its end, whether
// the device verified its digest: only if every segment was CRCOK. Any other
// outcome (a segment without the bit, or no segment at all) leaves the check
// to the ULP, in software.
type CRCTracker struct {
	segments int
	allOK    bool
}

// Reset starts a new PDU.
func (t *CRCTracker) Reset() { *t = CRCTracker{allOK: true} }

// Add accounts one segment (or part of one) carrying the PDU's bytes: every
// one, up to and including the one holding the last byte of its data digest.
func (t *CRCTracker) Add(s Segment) {
	t.segments++
	t.allOK = t.allOK && s.CRCOK
}

// Offloaded reports whether the device checked the whole PDU's digest.
func (t *CRCTracker) Offloaded() bool { return t.segments > 0 && t.allOK }

// SG cuts buf into the page-bounded pieces a Setup maps.
func SG(buf []byte, dst [][]byte) [][]byte {
	for len(buf) > 0 {
		addr := uintptr(unsafe.Pointer(unsafe.SliceData(buf)))
		n := PageSize - int(addr%PageSize)
		n = min(n, len(buf))
		dst = append(dst, buf[:n:n])
		buf = buf[n:]
	}
	return dst
}
