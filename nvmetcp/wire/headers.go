package wire

import (
	"encoding/binary"

	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
)

// Digest bits of ICReq/ICResp DGST.
const (
	DigestHeader = 0x01
	DigestData   = 0x02
)

// ICReq is a view of an Initialize Connection Request (128 bytes).
type ICReq []byte

// ICReqFields is what an ICReq carries.
type ICReqFields struct {
	HPDA         uint8
	HeaderDigest bool
	DataDigest   bool
	MaxR2T       uint32 // 0's based: outstanding R2Ts per command the host accepts
}

func (r ICReq) PFV() uint16    { return binary.LittleEndian.Uint16(r[8:]) }
func (r ICReq) HPDA() uint8    { return r[10] }
func (r ICReq) Digest() uint8  { return r[11] }
func (r ICReq) MaxR2T() uint32 { return binary.LittleEndian.Uint32(r[12:]) }

// Encode writes a complete ICReq into r (ICReqLen bytes; Seal is a no-op).
func (r ICReq) Encode(f *ICReqFields) {
	encodeCommon(r, TypeICReq, 0)
	binary.LittleEndian.PutUint32(r[4:], ICReqLen)
	r[10] = f.HPDA
	r[11] = digestBits(f.HeaderDigest, f.DataDigest)
	binary.LittleEndian.PutUint32(r[12:], f.MaxR2T)
}

// ICResp is a view of an Initialize Connection Response (128 bytes).
type ICResp []byte

// ICRespFields is what an ICResp carries.
type ICRespFields struct {
	CPDA         uint8
	HeaderDigest bool
	DataDigest   bool
	MaxH2CData   uint32 // largest H2CData payload the controller accepts
}

func (r ICResp) PFV() uint16        { return binary.LittleEndian.Uint16(r[8:]) }
func (r ICResp) CPDA() uint8        { return r[10] }
func (r ICResp) Digest() uint8      { return r[11] }
func (r ICResp) MaxH2CData() uint32 { return binary.LittleEndian.Uint32(r[12:]) }

// Encode writes a complete ICResp into r (ICRespLen bytes).
func (r ICResp) Encode(f *ICRespFields) {
	encodeCommon(r, TypeICResp, 0)
	binary.LittleEndian.PutUint32(r[4:], ICRespLen)
	r[10] = f.CPDA
	r[11] = digestBits(f.HeaderDigest, f.DataDigest)
	binary.LittleEndian.PutUint32(r[12:], f.MaxH2CData)
}

func digestBits(h, d bool) uint8 {
	var b uint8
	if h {
		b |= DigestHeader
	}
	if d {
		b |= DigestData
	}
	return b
}

// TermReq is a view of an H2CTermReq or C2HTermReq header (24 bytes); the
// data that follows is the header of the PDU in error, cut to 128 bytes.
type TermReq []byte

// TermReqFields is what a TermReq carries.
type TermReqFields struct {
	Type Type // TypeH2CTermReq or TypeC2HTermReq
	FES  FES
	FEI  uint32 // field error information: the byte offset of the bad field, or the MAXH2CDATA/MAXR2T limit
}

func (r TermReq) FES() FES    { return FES(binary.LittleEndian.Uint16(r[8:])) }
func (r TermReq) FEI() uint32 { return binary.LittleEndian.Uint32(r[10:]) }

// Encode writes a TermReq header; Seal with the length of the header copy.
func (r TermReq) Encode(f *TermReqFields) {
	encodeCommon(r, f.Type, 0)
	binary.LittleEndian.PutUint16(r[8:], uint16(f.FES))
	binary.LittleEndian.PutUint32(r[10:], f.FEI)
}

// CapsuleCmd is a view of a Command Capsule header: the SQE follows the
// common header; in-capsule data, if any, follows at PDO.
type CapsuleCmd []byte

// SQE is the capsule's submission queue entry.
func (c CapsuleCmd) SQE() nvme.SQE { return nvme.SQE(c[CommonHeaderLen:CapsuleCmdHdrLen]) }

// Encode starts a CapsuleCmd header and returns its SQE to fill in.
func (c CapsuleCmd) Encode() nvme.SQE {
	encodeCommon(c, TypeCapsuleCmd, 0)
	return c.SQE()
}

// CapsuleResp is a view of a Response Capsule: the CQE follows the common header.
type CapsuleResp []byte

// CQE is the capsule's completion queue entry.
func (c CapsuleResp) CQE() nvme.CQE { return nvme.CQE(c[CommonHeaderLen:CapsuleRespHdrLen]) }

// Encode writes a CapsuleResp carrying f.
func (c CapsuleResp) Encode(f *nvme.CQEFields) {
	encodeCommon(c, TypeCapsuleResp, 0)
	c.CQE().Encode(f)
}

// DataHeader is a view of an H2CData or C2HData header.
type DataHeader []byte

// DataFields is what an H2CData or C2HData header carries.
type DataFields struct {
	Type       Type  // TypeH2CData or TypeC2HData
	Flags      Flags // FlagLast, FlagSuccess (C2HData only)
	CCCID      uint16
	TTag       uint16 // H2CData: the R2T's transfer tag
	DataOffset uint32
	DataLen    uint32
}

func (d DataHeader) CCCID() uint16      { return binary.LittleEndian.Uint16(d[8:]) }
func (d DataHeader) TTag() uint16       { return binary.LittleEndian.Uint16(d[10:]) }
func (d DataHeader) DataOffset() uint32 { return binary.LittleEndian.Uint32(d[12:]) }
func (d DataHeader) DataLen() uint32    { return binary.LittleEndian.Uint32(d[16:]) }

// Encode writes a data PDU header; Seal with f.DataLen.
func (d DataHeader) Encode(f *DataFields) {
	encodeCommon(d, f.Type, f.Flags&(FlagLast|FlagSuccess))
	binary.LittleEndian.PutUint16(d[8:], f.CCCID)
	binary.LittleEndian.PutUint16(d[10:], f.TTag)
	binary.LittleEndian.PutUint32(d[12:], f.DataOffset)
	binary.LittleEndian.PutUint32(d[16:], f.DataLen)
}

// R2T is a view of a Ready to Transfer header.
type R2T []byte

// R2TFields is what an R2T carries.
type R2TFields struct {
	CCCID  uint16
	TTag   uint16
	Offset uint32
	Len    uint32
}

func (r R2T) CCCID() uint16     { return binary.LittleEndian.Uint16(r[8:]) }
func (r R2T) TTag() uint16      { return binary.LittleEndian.Uint16(r[10:]) }
func (r R2T) R2TOffset() uint32 { return binary.LittleEndian.Uint32(r[12:]) }
func (r R2T) R2TLen() uint32    { return binary.LittleEndian.Uint32(r[16:]) }

// Encode writes an R2T header.
func (r R2T) Encode(f *R2TFields) {
	encodeCommon(r, TypeR2T, 0)
	binary.LittleEndian.PutUint16(r[8:], f.CCCID)
	binary.LittleEndian.PutUint16(r[10:], f.TTag)
	binary.LittleEndian.PutUint32(r[12:], f.Offset)
	binary.LittleEndian.PutUint32(r[16:], f.Len)
}
