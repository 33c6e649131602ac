package nvme

import "encoding/binary"

// SQELen is the size of a submission queue entry.
const SQELen = 64

// Admin command opcodes.
const (
	AdminGetLogPage  = 0x02
	AdminIdentify    = 0x06
	AdminAbort       = 0x08
	AdminSetFeatures = 0x09
	AdminGetFeatures = 0x0a
	AdminAsyncEvent  = 0x0c
	AdminKeepAlive   = 0x18
	OpcodeFabrics    = 0x7f // admin and I/O queues
	IOFlush          = 0x00
	IOWrite          = 0x01
	IORead           = 0x02
	IOWriteZeroes    = 0x08
	IODatasetMgmt    = 0x09
)

// SQE flags byte: PSDT in bits 7:6. NVMe over Fabrics requires SGLs.
const (
	FlagsPSDTMask = 0xc0
	FlagsPSDTSGL  = 0x40 // SGL, metadata pointer to a contiguous buffer
)

// SQE is a view of a 64-byte submission queue entry.
type SQE []byte

// SQEFields is what an SQE carries; CDW10..15 are command specific.
type SQEFields struct {
	Opcode uint8
	Flags  uint8
	CID    uint16
	NSID   uint32
	CDW2   uint32
	CDW3   uint32
	MPTR   uint64
	DPTR   SGLFields
	CDW10  uint32
	CDW11  uint32
	CDW12  uint32
	CDW13  uint32
	CDW14  uint32
	CDW15  uint32
}

func (s SQE) Opcode() uint8    { return s[0] }
func (s SQE) Flags() uint8     { return s[1] }
func (s SQE) CID() uint16      { return binary.LittleEndian.Uint16(s[2:]) }
func (s SQE) NSID() uint32     { return binary.LittleEndian.Uint32(s[4:]) }
func (s SQE) MPTR() uint64     { return binary.LittleEndian.Uint64(s[16:]) }
func (s SQE) DPTR() SGL        { return SGL(s[24:40]) }
func (s SQE) CDW(n int) uint32 { return binary.LittleEndian.Uint32(s[4*n:]) }
func (s SQE) CDW10() uint32    { return s.CDW(10) }
func (s SQE) CDW11() uint32    { return s.CDW(11) }
func (s SQE) CDW12() uint32    { return s.CDW(12) }
func (s SQE) CDW13() uint32    { return s.CDW(13) }
func (s SQE) CDW14() uint32    { return s.CDW(14) }
func (s SQE) CDW15() uint32    { return s.CDW(15) }

// FabricsType is the fctype of a Fabrics command (byte 4, where NSID would be).
func (s SQE) FabricsType() uint8 { return s[4] }

// SetCID rewrites the command identifier (hosts assign it at submission).
func (s SQE) SetCID(cid uint16) { binary.LittleEndian.PutUint16(s[2:], cid) }

// SLBA and NLB of Read, Write, Write Zeroes: CDW10-11 and CDW12 bits 15:0 (0's based).
func (s SQE) SLBA() uint64 { return binary.LittleEndian.Uint64(s[40:]) }
func (s SQE) NLB() uint32  { return uint32(binary.LittleEndian.Uint16(s[48:])) + 1 }

// Encode writes f into s.
func (s SQE) Encode(f *SQEFields) {
	s[0] = f.Opcode
	s[1] = f.Flags
	binary.LittleEndian.PutUint16(s[2:], f.CID)
	binary.LittleEndian.PutUint32(s[4:], f.NSID)
	binary.LittleEndian.PutUint32(s[8:], f.CDW2)
	binary.LittleEndian.PutUint32(s[12:], f.CDW3)
	binary.LittleEndian.PutUint64(s[16:], f.MPTR)
	SGL(s[24:40]).Encode(&f.DPTR)
	for i, v := range [...]uint32{f.CDW10, f.CDW11, f.CDW12, f.CDW13, f.CDW14, f.CDW15} {
		binary.LittleEndian.PutUint32(s[40+4*i:], v)
	}
}

// SGLLen is the size of an SGL descriptor.
const SGLLen = 16

// SGL descriptor types (bits 7:4 of the identifier byte) and subtypes (bits 3:0).
const (
	SGLTypeDataBlock          = 0x0
	SGLTypeBitBucket          = 0x1
	SGLTypeSegment            = 0x2
	SGLTypeLastSegment        = 0x3
	SGLTypeKeyedDataBlock     = 0x4
	SGLTypeTransportDataBlock = 0x5

	SGLSubtypeAddress    = 0x0
	SGLSubtypeOffset     = 0x1
	SGLSubtypeTransportA = 0xa
)

// The two descriptors NVMe/TCP uses: in-capsule data (Data Block, Offset) and
// data moved by C2HData/R2T/H2CData (Transport Data Block, transport specific).
const (
	SGLInCapsule     = SGLTypeDataBlock<<4 | SGLSubtypeOffset              // 0x01
	SGLTransportData = SGLTypeTransportDataBlock<<4 | SGLSubtypeTransportA // 0x5a
)

// SGL is a view of a 16-byte SGL descriptor.
type SGL []byte

// SGLFields is what an SGL descriptor carries.
type SGLFields struct {
	Address uint64
	Length  uint32
	ID      uint8 // type<<4 | subtype
}

func (g SGL) Address() uint64 { return binary.LittleEndian.Uint64(g[0:]) }
func (g SGL) Length() uint32  { return binary.LittleEndian.Uint32(g[8:]) }
func (g SGL) ID() uint8       { return g[15] }
func (g SGL) Type() uint8     { return g[15] >> 4 }
func (g SGL) Subtype() uint8  { return g[15] & 0xf }

// Encode writes f into g; the reserved bytes 12..14 are zeroed.
func (g SGL) Encode(f *SGLFields) {
	binary.LittleEndian.PutUint64(g[0:], f.Address)
	binary.LittleEndian.PutUint32(g[8:], f.Length)
	g[12], g[13], g[14] = 0, 0, 0
	g[15] = f.ID
}
