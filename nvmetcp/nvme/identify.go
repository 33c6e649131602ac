package nvme

import (
	"encoding/binary"
	"errors"
	"strings"
)

// IdentifyDataLen is the size of every Identify data structure.
const IdentifyDataLen = 4096

// Controller or Namespace Structure (CNS) values of Identify.
const (
	CNSNamespace        = 0x00 // Identify Namespace (NVM command set)
	CNSController       = 0x01 // Identify Controller
	CNSActiveNSList     = 0x02 // active namespace IDs above NSID
	CNSNSDescList       = 0x03 // namespace identification descriptors
	CNSCSNamespace      = 0x05 // I/O command set specific Identify Namespace
	CNSCSController     = 0x06 // I/O command set specific Identify Controller
	CNSCSActiveNSList   = 0x07
	CNSIndependentNS    = 0x08 // I/O command set independent Identify Namespace
	CSINVM              = 0x00 // command set identifier: NVM
	NSIDAll             = 0xffffffff
	NSListMaxEntries    = IdentifyDataLen / 4
	IdentifyNSIDInvalid = 0xfffffffe // not a valid "start after" NSID for CNS 2
)

// Identify command fields: CDW10 bits 7:0 CNS, 31:16 CNTID; CDW11 bits 31:24 CSI.
func (s SQE) IdentifyCNS() uint8    { return s[40] }
func (s SQE) IdentifyCNTID() uint16 { return binary.LittleEndian.Uint16(s[42:]) }
func (s SQE) IdentifyCSI() uint8    { return s[47] }

// IdentifyFields is an Identify command; its 4096 bytes of data come back
// through C2HData (SGL Transport Data Block).
type IdentifyFields struct {
	CID   uint16
	NSID  uint32
	CNS   uint8
	CNTID uint16
	CSI   uint8
}

// EncodeIdentify writes an Identify command.
func (s SQE) EncodeIdentify(f *IdentifyFields) {
	s.Encode(&SQEFields{
		Opcode: AdminIdentify,
		Flags:  FlagsPSDTSGL,
		CID:    f.CID,
		NSID:   f.NSID,
		DPTR:   SGLFields{Length: IdentifyDataLen, ID: SGLTransportData},
		CDW10:  uint32(f.CNS) | uint32(f.CNTID)<<16,
		CDW11:  uint32(f.CSI) << 24,
	})
}

// Controller types (Identify Controller CNTRLTYPE).
const (
	CtrlTypeIO        = 1
	CtrlTypeDiscovery = 2
	CtrlTypeAdmin     = 3
)

// Identify Controller capability bits used by NVMe/TCP targets and hosts.
const (
	CMICMultiCtrl      = 1 << 1 // the subsystem may have several controllers
	CTRATTHostID128    = 1 << 0 // 128-bit host identifier
	CTRATTTBKAS        = 1 << 6 // traffic based keep alive: any command restarts the timer
	OAESNSAttrChanged  = 1 << 8 // namespace attribute notices
	LPASMARTPerNS      = 1 << 0
	LPACmdEffects      = 1 << 1
	LPAExtendedData    = 1 << 2 // Get Log Page offsets and NUMDU
	ONCSCompare        = 1 << 0
	ONCSDSM            = 1 << 2
	ONCSWriteZeroes    = 1 << 3
	ONCSSaveFeatures   = 1 << 4
	VWCPresent         = 1 << 0
	VWCFlushAllNS      = 3 << 1 // Flush with NSID FFFFFFFFh is supported
	SGLSSupported      = 1 << 0 // SGLs supported, no alignment requirement
	SGLSKeyed          = 1 << 2
	SGLSOffset         = 1 << 20 // the address of a Data Block descriptor may be an offset
	SQESNVMe           = 0x66    // 64-byte SQEs, required and maximum
	CQESNVMe           = 0x44    // 16-byte CQEs
	FRMWSlot1ReadOnly  = 1 << 0
	FRMWOneSlot        = 1 << 1
	AERLDefault        = 3
	MaxSerialLen       = 20
	MaxModelLen        = 40
	MaxFirmwareRevLen  = 8
	SubsystemNQNMaxLen = 256
)

// IdentifyController is a view of the 4096-byte Identify Controller data.
type IdentifyController []byte

// IdentifyControllerFields is what IdentifyController carries (the fields an
// NVMe over Fabrics controller reports; everything else encodes as zero).
type IdentifyControllerFields struct {
	VID, SSVID uint16
	Serial     string // space padded to 20 bytes
	Model      string // 40
	Firmware   string // 8
	RAB        uint8
	IEEE       [3]byte
	CMIC       uint8
	MDTS       uint8 // 2^MDTS minimum pages (CAP.MPSMIN); 0: no limit
	CntlID     uint16
	Version    uint32
	OAES       uint32
	CTRATT     uint32
	CntrlType  uint8
	OACS       uint16
	ACL        uint8
	AERL       uint8 // 0's based
	FRMW       uint8
	LPA        uint8
	ELPE       uint8 // 0's based
	NPSS       uint8
	KAS        uint16 // keep alive granularity, 100 ms units
	SQES, CQES uint8
	MaxCmd     uint16
	NN         uint32
	ONCS       uint16
	FUSES      uint16
	FNA        uint8
	VWC        uint8
	AWUN       uint16
	AWUPF      uint16
	SGLS       uint32
	SubNQN     string
	IOCCSZ     uint32 // I/O queue command capsule size, 16-byte units
	IORCSZ     uint32 // I/O queue response capsule size, 16-byte units
	ICDOFF     uint16 // in-capsule data offset, 16-byte units
	FCATT      uint8
	MSDBD      uint8
}

func (c IdentifyController) VID() uint16       { return binary.LittleEndian.Uint16(c[0:]) }
func (c IdentifyController) SSVID() uint16     { return binary.LittleEndian.Uint16(c[2:]) }
func (c IdentifyController) Serial() string    { return asciiField(c[4:24]) }
func (c IdentifyController) Model() string     { return asciiField(c[24:64]) }
func (c IdentifyController) Firmware() string  { return asciiField(c[64:72]) }
func (c IdentifyController) RAB() uint8        { return c[72] }
func (c IdentifyController) CMIC() uint8       { return c[76] }
func (c IdentifyController) MDTS() uint8       { return c[77] }
func (c IdentifyController) CntlID() uint16    { return binary.LittleEndian.Uint16(c[78:]) }
func (c IdentifyController) Version() uint32   { return binary.LittleEndian.Uint32(c[80:]) }
func (c IdentifyController) OAES() uint32      { return binary.LittleEndian.Uint32(c[92:]) }
func (c IdentifyController) CTRATT() uint32    { return binary.LittleEndian.Uint32(c[96:]) }
func (c IdentifyController) CntrlType() uint8  { return c[111] }
func (c IdentifyController) OACS() uint16      { return binary.LittleEndian.Uint16(c[256:]) }
func (c IdentifyController) ACL() uint8        { return c[258] }
func (c IdentifyController) AERL() uint8       { return c[259] }
func (c IdentifyController) FRMW() uint8       { return c[260] }
func (c IdentifyController) LPA() uint8        { return c[261] }
func (c IdentifyController) ELPE() uint8       { return c[262] }
func (c IdentifyController) NPSS() uint8       { return c[263] }
func (c IdentifyController) KAS() uint16       { return binary.LittleEndian.Uint16(c[320:]) }
func (c IdentifyController) SQES() uint8       { return c[512] }
func (c IdentifyController) CQES() uint8       { return c[513] }
func (c IdentifyController) MaxCmd() uint16    { return binary.LittleEndian.Uint16(c[514:]) }
func (c IdentifyController) NN() uint32        { return binary.LittleEndian.Uint32(c[516:]) }
func (c IdentifyController) ONCS() uint16      { return binary.LittleEndian.Uint16(c[520:]) }
func (c IdentifyController) FUSES() uint16     { return binary.LittleEndian.Uint16(c[522:]) }
func (c IdentifyController) FNA() uint8        { return c[524] }
func (c IdentifyController) VWC() uint8        { return c[525] }
func (c IdentifyController) AWUN() uint16      { return binary.LittleEndian.Uint16(c[526:]) }
func (c IdentifyController) AWUPF() uint16     { return binary.LittleEndian.Uint16(c[528:]) }
func (c IdentifyController) SGLS() uint32      { return binary.LittleEndian.Uint32(c[536:]) }
func (c IdentifyController) SubNQN() string    { return nqnString(c[768:1024]) }
func (c IdentifyController) IOCCSZ() uint32    { return binary.LittleEndian.Uint32(c[1792:]) }
func (c IdentifyController) IORCSZ() uint32    { return binary.LittleEndian.Uint32(c[1796:]) }
func (c IdentifyController) ICDOFF() uint16    { return binary.LittleEndian.Uint16(c[1800:]) }
func (c IdentifyController) FCATT() uint8      { return c[1802] }
func (c IdentifyController) MSDBD() uint8      { return c[1803] }
func (c IdentifyController) IEEE() (o [3]byte) { copy(o[:], c[73:76]); return o }

// InCapsuleDataSize is the in-capsule data an I/O queue command may carry:
// IOCCSZ*16 minus the 64-byte SQE (0 when IOCCSZ is below 4).
func (c IdentifyController) InCapsuleDataSize() int {
	n := int(c.IOCCSZ())*16 - SQELen
	return max(n, 0)
}

// Encode writes f into c (IdentifyDataLen bytes), zeroing what f does not carry.
func (c IdentifyController) Encode(f *IdentifyControllerFields) {
	clear(c[:IdentifyDataLen])
	le := binary.LittleEndian
	le.PutUint16(c[0:], f.VID)
	le.PutUint16(c[2:], f.SSVID)
	putASCII(c[4:24], f.Serial)
	putASCII(c[24:64], f.Model)
	putASCII(c[64:72], f.Firmware)
	c[72] = f.RAB
	copy(c[73:76], f.IEEE[:])
	c[76] = f.CMIC
	c[77] = f.MDTS
	le.PutUint16(c[78:], f.CntlID)
	le.PutUint32(c[80:], f.Version)
	le.PutUint32(c[92:], f.OAES)
	le.PutUint32(c[96:], f.CTRATT)
	c[111] = f.CntrlType
	le.PutUint16(c[256:], f.OACS)
	c[258] = f.ACL
	c[259] = f.AERL
	c[260] = f.FRMW
	c[261] = f.LPA
	c[262] = f.ELPE
	c[263] = f.NPSS
	le.PutUint16(c[320:], f.KAS)
	c[512] = f.SQES
	c[513] = f.CQES
	le.PutUint16(c[514:], f.MaxCmd)
	le.PutUint32(c[516:], f.NN)
	le.PutUint16(c[520:], f.ONCS)
	le.PutUint16(c[522:], f.FUSES)
	c[524] = f.FNA
	c[525] = f.VWC
	le.PutUint16(c[526:], f.AWUN)
	le.PutUint16(c[528:], f.AWUPF)
	le.PutUint32(c[536:], f.SGLS)
	copy(c[768:1023], f.SubNQN) // NUL terminated: the last byte stays 0
	le.PutUint32(c[1792:], f.IOCCSZ)
	le.PutUint32(c[1796:], f.IORCSZ)
	le.PutUint16(c[1800:], f.ICDOFF)
	c[1802] = f.FCATT
	c[1803] = f.MSDBD
}

// putASCII writes s into an ASCII field padded with spaces, cutting what
// does not fit.
func putASCII(dst []byte, s string) {
	n := copy(dst, s)
	for i := n; i < len(dst); i++ {
		dst[i] = ' '
	}
}

// asciiField returns a space (or NUL) padded ASCII field without its padding.
func asciiField(b []byte) string {
	return strings.TrimRight(string(b), " \x00")
}

// Namespace features and other Identify Namespace bits.
const (
	NSFEATThinProvisioning = 1 << 0
	NSFEATDeallocError     = 1 << 2
	NMICShared             = 1 << 0
	DLFEATReadZeroes       = 0x1    // deallocated blocks read as zeroes
	DLFEATWriteZeroesDeac  = 1 << 3 // Write Zeroes honours its Deallocate bit
	MaxLBAFormats          = 16
)

// LBAFormat is one entry of an Identify Namespace's LBA format list.
type LBAFormat struct {
	MetadataSize uint16
	LBADS        uint8 // log2 of the LBA data size
	RP           uint8 // relative performance
}

// IdentifyNamespace is a view of the 4096-byte Identify Namespace data (NVM
// command set).
type IdentifyNamespace []byte

// IdentifyNamespaceFields is what IdentifyNamespace carries.
type IdentifyNamespaceFields struct {
	NSZE, NCAP, NUSE uint64 // in logical blocks
	NSFEAT           uint8
	NLBAF            uint8 // 0's based count of LBAFormats
	FLBAS            uint8 // bits 3:0: the format in use
	NMIC             uint8
	DLFEAT           uint8
	NOIOB            uint16 // optimal I/O boundary, logical blocks
	NGUID            [16]byte
	EUI64            [8]byte
	LBAFormats       [MaxLBAFormats]LBAFormat
}

func (n IdentifyNamespace) NSZE() uint64    { return binary.LittleEndian.Uint64(n[0:]) }
func (n IdentifyNamespace) NCAP() uint64    { return binary.LittleEndian.Uint64(n[8:]) }
func (n IdentifyNamespace) NUSE() uint64    { return binary.LittleEndian.Uint64(n[16:]) }
func (n IdentifyNamespace) NSFEAT() uint8   { return n[24] }
func (n IdentifyNamespace) NLBAF() uint8    { return n[25] }
func (n IdentifyNamespace) FLBAS() uint8    { return n[26] }
func (n IdentifyNamespace) NMIC() uint8     { return n[30] }
func (n IdentifyNamespace) DLFEAT() uint8   { return n[33] }
func (n IdentifyNamespace) NOIOB() uint16   { return binary.LittleEndian.Uint16(n[46:]) }
func (n IdentifyNamespace) NGUID() [16]byte { return [16]byte(n[104:120]) }
func (n IdentifyNamespace) EUI64() [8]byte  { return [8]byte(n[120:128]) }

// LBAFormat returns entry i (0..15) of the LBA format list.
func (n IdentifyNamespace) LBAFormat(i int) LBAFormat {
	b := n[128+4*(i&0xf):]
	return LBAFormat{MetadataSize: binary.LittleEndian.Uint16(b), LBADS: b[2], RP: b[3] & 3}
}

// BlockSize is the data size of the LBA format in use, 0 if it is not a
// usable power of two (LBADS below 9 or above 31).
func (n IdentifyNamespace) BlockSize() int {
	ds := n.LBAFormat(int(n.FLBAS() & 0xf)).LBADS
	if ds < 9 || ds > 31 {
		return 0
	}
	return 1 << ds
}

// Encode writes f into n (IdentifyDataLen bytes).
func (n IdentifyNamespace) Encode(f *IdentifyNamespaceFields) {
	clear(n[:IdentifyDataLen])
	le := binary.LittleEndian
	le.PutUint64(n[0:], f.NSZE)
	le.PutUint64(n[8:], f.NCAP)
	le.PutUint64(n[16:], f.NUSE)
	n[24] = f.NSFEAT
	n[25] = f.NLBAF
	n[26] = f.FLBAS
	n[30] = f.NMIC
	n[33] = f.DLFEAT
	le.PutUint16(n[46:], f.NOIOB)
	copy(n[104:120], f.NGUID[:])
	copy(n[120:128], f.EUI64[:])
	for i, lf := range f.LBAFormats {
		b := n[128+4*i:]
		le.PutUint16(b, lf.MetadataSize)
		b[2] = lf.LBADS
		b[3] = lf.RP & 3
	}
}

// NSList is a view of a 4096-byte namespace ID list (Identify CNS 2, the
// Changed Namespace List log page): up to 1024 NSIDs, ascending, ended by 0.
type NSList []byte

// IDs returns the NSIDs before the first zero entry.
func (l NSList) IDs() []uint32 {
	var ids []uint32
	for i := 0; i+4 <= len(l) && i < IdentifyDataLen; i += 4 {
		id := binary.LittleEndian.Uint32(l[i:])
		if id == 0 {
			break
		}
		ids = append(ids, id)
	}
	return ids
}

// Encode writes ids (at most NSListMaxEntries are kept) and zeroes the rest.
func (l NSList) Encode(ids []uint32) {
	clear(l[:IdentifyDataLen])
	for i, id := range ids[:min(len(ids), NSListMaxEntries)] {
		binary.LittleEndian.PutUint32(l[4*i:], id)
	}
}

// Namespace identifier types of the descriptor list (CNS 3).
const (
	NIDTEUI64 = 0x1
	NIDTNGUID = 0x2
	NIDTUUID  = 0x3
	NIDTCSI   = 0x4
)

// NSDescriptor is one namespace identification descriptor.
type NSDescriptor struct {
	Type uint8
	ID   []byte // 8 (EUI64), 16 (NGUID, UUID) or 1 (CSI) bytes
}

// nidLen is the NIDL each descriptor type must have.
func nidLen(t uint8) int {
	switch t {
	case NIDTEUI64:
		return 8
	case NIDTNGUID, NIDTUUID:
		return 16
	case NIDTCSI:
		return 1
	}
	return -1
}

// NSDescList is a view of a 4096-byte namespace identification descriptor list.
type NSDescList []byte

// ErrBadDescriptor is a descriptor list that overruns its 4096 bytes or has
// a descriptor whose length does not match its type.
var ErrBadDescriptor = errors.New("nvme: malformed namespace identification descriptor")

// Descriptors parses the list up to the first descriptor of length 0. The
// IDs alias l.
func (l NSDescList) Descriptors() ([]NSDescriptor, error) {
	var out []NSDescriptor
	b := l[:min(len(l), IdentifyDataLen)]
	for len(b) >= 4 {
		t, n := b[0], int(b[1])
		if n == 0 {
			return out, nil
		}
		if 4+n > len(b) {
			return out, ErrBadDescriptor
		}
		if want := nidLen(t); want >= 0 && want != n {
			return out, ErrBadDescriptor
		}
		out = append(out, NSDescriptor{Type: t, ID: b[4 : 4+n]})
		b = b[4+n:]
	}
	return out, nil
}

// Encode writes the descriptors, ending the list with a zero descriptor.
// Descriptors that do not fit are dropped.
func (l NSDescList) Encode(descs []NSDescriptor) {
	clear(l[:IdentifyDataLen])
	off := 0
	for _, d := range descs {
		if off+4+len(d.ID) > IdentifyDataLen-4 {
			break
		}
		l[off] = d.Type
		l[off+1] = uint8(len(d.ID))
		copy(l[off+4:], d.ID)
		off += 4 + len(d.ID)
	}
}
