package nvme

import (
	"bytes"
	"encoding/binary"
	"unicode/utf8"
)

// Fabrics command types (fctype, SQE byte 4).
const (
	FabricsPropertySet = 0x00
	FabricsConnect     = 0x01
	FabricsPropertyGet = 0x04
	FabricsAuthSend    = 0x05
	FabricsAuthRecv    = 0x06
	FabricsDisconnect  = 0x08
)

// Controller properties (register offsets) and their sizes.
const (
	PropCAP  = 0x00 // 8 bytes
	PropVS   = 0x08 // 4 bytes
	PropCC   = 0x14 // 4 bytes
	PropCSTS = 0x1c // 4 bytes
	PropNSSR = 0x20 // 4 bytes
)

// CC and CSTS bits.
const (
	CCEnable        = 1 << 0
	CCShutdownMask  = 3 << 14
	CSTSReady       = 1 << 0
	CSTSFatal       = 1 << 1
	CSTSShstMask    = 3 << 2
	CSTSShstNormal  = 0 << 2
	CSTSShstRunning = 1 << 2
	CSTSShstDone    = 2 << 2
)

// Connect command fields, in the SQE (after the Fabrics header).
//   CDW10 bits 15:0 RECFMT, 31:16 QID; CDW11 bits 15:0 SQSIZE (0's based),
//   23:16 CATTR; CDW12 KATO (ms).

// ConnectRecFmt and the following getters read a Fabrics Connect SQE.
func (s SQE) ConnectRecFmt() uint16 { return binary.LittleEndian.Uint16(s[40:]) }
func (s SQE) ConnectQID() uint16    { return binary.LittleEndian.Uint16(s[42:]) }
func (s SQE) ConnectSQSize() uint16 { return binary.LittleEndian.Uint16(s[44:]) }
func (s SQE) ConnectCAttr() uint8   { return s[46] }
func (s SQE) ConnectKATO() uint32   { return binary.LittleEndian.Uint32(s[48:]) }

// Property Get/Set: ATTRIB (byte 40; bits 2:0 size: 0 = 4 bytes, 1 = 8 bytes),
// OFST (bytes 44..47) and, for Set, VALUE (bytes 48..55).
func (s SQE) PropertyAttrib() uint8  { return s[40] }
func (s SQE) PropertyOffset() uint32 { return binary.LittleEndian.Uint32(s[44:]) }
func (s SQE) PropertyValue() uint64  { return binary.LittleEndian.Uint64(s[48:]) }

// ConnectFields is a Fabrics Connect command.
type ConnectFields struct {
	CID    uint16
	QID    uint16
	SQSize uint16 // 0's based
	CAttr  uint8
	KATO   uint32 // milliseconds
}

// EncodeConnect writes a Connect command whose 1024 bytes of data travel in
// the capsule (SGL Data Block, Offset).
func (s SQE) EncodeConnect(f *ConnectFields) {
	clear(s[:SQELen])
	s[0] = OpcodeFabrics
	s[1] = FlagsPSDTSGL
	binary.LittleEndian.PutUint16(s[2:], f.CID)
	s[4] = FabricsConnect
	SGL(s[24:40]).Encode(&SGLFields{Length: ConnectDataLen, ID: SGLInCapsule})
	binary.LittleEndian.PutUint16(s[40:], 0) // RECFMT 0
	binary.LittleEndian.PutUint16(s[42:], f.QID)
	binary.LittleEndian.PutUint16(s[44:], f.SQSize)
	s[46] = f.CAttr
	binary.LittleEndian.PutUint32(s[48:], f.KATO)
}

// PropertyFields is a Property Get or Set command.
type PropertyFields struct {
	CID    uint16
	Set    bool
	Size8  bool // 8-byte property (CAP)
	Offset uint32
	Value  uint64 // Set only
}

// EncodeProperty writes a Property Get or Set command.
func (s SQE) EncodeProperty(f *PropertyFields) {
	clear(s[:SQELen])
	s[0] = OpcodeFabrics
	s[1] = FlagsPSDTSGL
	binary.LittleEndian.PutUint16(s[2:], f.CID)
	s[4] = FabricsPropertyGet
	if f.Set {
		s[4] = FabricsPropertySet
		binary.LittleEndian.PutUint64(s[48:], f.Value)
	}
	if f.Size8 {
		s[40] = 1
	}
	binary.LittleEndian.PutUint32(s[44:], f.Offset)
}

// ConnectDataLen is the size of the Connect command's data.
const ConnectDataLen = 1024

// NQNMaxLen is the largest NQN (223 bytes of UTF-8, NUL-terminated in 256).
const NQNMaxLen = 223

// DiscoveryNQN is the well-known NQN of the discovery subsystem.
const DiscoveryNQN = "nqn.2014-08.org.nvmexpress.discovery"

// ConnectData is a view of the 1024-byte Connect data.
type ConnectData []byte

// ConnectDataFields is what the Connect data carries.
type ConnectDataFields struct {
	HostID  [16]byte
	CntlID  uint16 // 0xffff: dynamic controller; I/O queues name the admin queue's
	SubNQN  string
	HostNQN string
}

func (d ConnectData) HostID() (id [16]byte) { copy(id[:], d[0:16]); return id }
func (d ConnectData) CntlID() uint16        { return binary.LittleEndian.Uint16(d[16:]) }
func (d ConnectData) SubNQN() string        { return nqnString(d[256:512]) }
func (d ConnectData) HostNQN() string       { return nqnString(d[512:768]) }

// Encode writes f into d. NQNs longer than 255 bytes are cut; callers check
// NQNMaxLen first.
func (d ConnectData) Encode(f *ConnectDataFields) {
	clear(d[:ConnectDataLen])
	copy(d[0:16], f.HostID[:])
	binary.LittleEndian.PutUint16(d[16:], f.CntlID)
	copy(d[256:511], f.SubNQN)
	copy(d[512:767], f.HostNQN)
}

// nqnString returns the NUL-terminated string in a 256-byte NQN field. A field
// with no NUL is taken whole (the caller validates the length).
func nqnString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// ValidNQN reports whether s is a usable NQN: 1..223 bytes of UTF-8 (the NVMe
// base specification's NQN encoding) with no control characters, so that it
// fits its NUL-terminated field and prints safely in logs.
func ValidNQN(s string) bool {
	if len(s) == 0 || len(s) > NQNMaxLen || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || (r >= 0x7f && r <= 0x9f) {
			return false
		}
	}
	return true
}
