package ddp

// Seq is a TCP sequence number: 32 bits that wrap. Compare with LessThan and
// Size, never with < or -, as gVisor's seqnum does.
type Seq uint32

// Add returns s advanced by n bytes.
func (s Seq) Add(n uint32) Seq { return s + Seq(n) }

// Size is the number of bytes from s up to (not including) t.
func (s Seq) Size(t Seq) uint32 { return uint32(t - s) }

// LessThan reports whether s comes before t (within half the sequence space).
func (s Seq) LessThan(t Seq) bool { return int32(s-t) < 0 }

// InWindow reports whether s lies in [first, first+size).
func (s Seq) InWindow(first Seq, size uint32) bool { return first.Size(s) < size }
