package wire

import (
	"encoding/binary"
	"fmt"
)

// Type is a PDU type.
type Type uint8

// PDU types.
const (
	TypeICReq       Type = 0x00
	TypeICResp      Type = 0x01
	TypeH2CTermReq  Type = 0x02
	TypeC2HTermReq  Type = 0x03
	TypeCapsuleCmd  Type = 0x04
	TypeCapsuleResp Type = 0x05
	TypeH2CData     Type = 0x06
	TypeC2HData     Type = 0x07
	TypeR2T         Type = 0x09
)

var typeNames = [...]string{"ICReq", "ICResp", "H2CTermReq", "C2HTermReq", "CapsuleCmd", "CapsuleResp", "H2CData", "C2HData", "type 8", "R2T"}

func (t Type) String() string {
	if int(t) < len(typeNames) {
		return typeNames[t]
	}
	return fmt.Sprintf("type %#x", uint8(t))
}

// Flags is the FLAGS byte of the common header.
type Flags uint8

// PDU flags.
const (
	FlagHDGST   Flags = 0x01 // a header digest follows the header
	FlagDDGST   Flags = 0x02 // a data digest follows the data
	FlagLast    Flags = 0x04 // H2CData/C2HData: last PDU of the transfer (or of the R2T)
	FlagSuccess Flags = 0x08 // C2HData: the command succeeded; no CapsuleResp follows
)

// Sizes.
const (
	CommonHeaderLen   = 8
	ICReqLen          = 128
	ICRespLen         = 128
	TermReqHeaderLen  = 24
	TermReqMaxDataLen = 128 // the offending PDU header, cut to this
	CapsuleCmdHdrLen  = 72  // common header + 64-byte SQE
	CapsuleRespHdrLen = 24  // common header + 16-byte CQE
	DataHdrLen        = 24  // H2CData and C2HData
	R2THdrLen         = 24
	DigestLen         = 4
	// MaxPDA is the largest HPDA/CPDA: alignment (PDA+1)*4 = 128 bytes.
	MaxPDA = 31
	// MaxHeaderBuf holds any header with its digest and padding (PDO is a byte).
	MaxHeaderBuf = 256
)

// HeaderLen is the fixed HLEN of each PDU type, 0 for an unknown type.
func HeaderLen(t Type) int {
	switch t {
	case TypeICReq, TypeICResp:
		return ICReqLen
	case TypeH2CTermReq, TypeC2HTermReq:
		return TermReqHeaderLen
	case TypeCapsuleCmd:
		return CapsuleCmdHdrLen
	case TypeCapsuleResp:
		return CapsuleRespHdrLen
	case TypeH2CData, TypeC2HData:
		return DataHdrLen
	case TypeR2T:
		return R2THdrLen
	}
	return 0
}

// Direction is who receives a PDU.
type Direction uint8

const (
	ToController Direction = iota // host to controller: ICReq, H2CTermReq, CapsuleCmd, H2CData
	ToHost                        // controller to host: ICResp, C2HTermReq, CapsuleResp, C2HData, R2T
)

// Accepts reports whether t may travel in direction d.
func (d Direction) Accepts(t Type) bool {
	switch t {
	case TypeICReq, TypeH2CTermReq, TypeCapsuleCmd, TypeH2CData:
		return d == ToController
	case TypeICResp, TypeC2HTermReq, TypeCapsuleResp, TypeC2HData, TypeR2T:
		return d == ToHost
	}
	return false
}

// digestible reports whether PDUs of type t carry digests when negotiated
// (everything but the connection set-up and termination PDUs).
func digestible(t Type) bool {
	switch t {
	case TypeICReq, TypeICResp, TypeH2CTermReq, TypeC2HTermReq:
		return false
	}
	return true
}

// Header is a view of a received or encoded PDU header: the common header, the
// type-specific header and, where present, the header digest and padding.
type Header []byte

func (h Header) Type() Type   { return Type(h[0]) }
func (h Header) Flags() Flags { return Flags(h[1]) }
func (h Header) HLen() int    { return int(h[2]) }
func (h Header) PDO() int     { return int(h[3]) }
func (h Header) PLen() uint32 { return binary.LittleEndian.Uint32(h[4:]) }
func (h Header) String() string {
	if len(h) < CommonHeaderLen {
		return "short header"
	}
	return fmt.Sprintf("%v flags=%#x hlen=%d pdo=%d plen=%d", h.Type(), uint8(h.Flags()), h.HLen(), h.PDO(), h.PLen())
}

// encodeCommon starts a header of type t: type, type-specific flags, HLEN;
// PDO and PLEN are left to Seal. The type-specific bytes are cleared.
func encodeCommon(b []byte, t Type, flags Flags) {
	hlen := HeaderLen(t)
	clear(b[:hlen])
	b[0] = byte(t)
	b[1] = byte(flags)
	b[2] = byte(hlen)
}

// Layout is where everything of one PDU lies, derived from its common header
// and validated against the negotiated Params. Offsets are from the PDU start.
type Layout struct {
	Type       Type
	Flags      Flags
	HLen       int // type-specific header length, including the common header
	HDGST      int // 0 or DigestLen
	DataOffset int // where the data starts (PDO, or HLEN for a TermReq)
	DataLen    int // payload bytes (0: no data)
	DDGST      int // 0 or DigestLen
	PLen       int
}

// HeaderBytes is the header with its digest: what to read before the padding.
func (l Layout) HeaderBytes() int { return l.HLen + l.HDGST }

// PadLen is the padding between the header digest and the data.
func (l Layout) PadLen() int {
	if l.DataLen == 0 {
		return 0
	}
	return l.DataOffset - l.HeaderBytes()
}

// TrailerBytes is everything after the header: padding, data and data digest.
func (l Layout) TrailerBytes() int { return l.PLen - l.HeaderBytes() }

// Params are what one end of a connection negotiated (ICReq/ICResp) and the
// bounds it enforces on what it receives. Before the ICReq/ICResp exchange
// the zero value is right: no digests, no padding.
type Params struct {
	HeaderDigest bool
	DataDigest   bool
	// RxPDA is the data alignment this end asked of the PDUs it receives
	// (a controller's CPDA, a host's HPDA): PDO is a multiple of (RxPDA+1)*4.
	RxPDA uint8
	// TxPDA is the alignment the peer asked for; Seal pads to it.
	TxPDA uint8
	// MaxData bounds the payload of one H2CData/C2HData PDU received.
	MaxData uint32
	// MaxInCapsule bounds in-capsule data of a CapsuleCmd received.
	MaxInCapsule uint32
}

func alignment(pda uint8) int { return (int(pda) + 1) * 4 }

// Seal finishes the header that an Encode wrote at the start of b for a PDU
// carrying dataLen bytes of data: it sets the digest flags, PDO and PLEN,
// appends the header digest and zeroed padding, and returns the bytes that go
// on the wire before the data. b must have room for MaxHeaderBuf bytes. The
// data digest, when p.DataDigest and dataLen > 0, is the sender's to append
// after the data (DataDigest).
func (p *Params) Seal(b []byte, dataLen int) []byte {
	t := Type(b[0])
	hlen := int(b[2])
	flags := Flags(b[1]) &^ (FlagHDGST | FlagDDGST)
	if !digestible(t) {
		// Set-up and termination PDUs carry no digest; a TermReq's data
		// (the offending header) follows its header directly.
		b[1] = byte(flags)
		b[3] = 0
		binary.LittleEndian.PutUint32(b[4:], uint32(hlen+dataLen))
		return b[:hlen]
	}
	end := hlen
	if p.HeaderDigest {
		flags |= FlagHDGST
		end += DigestLen
	}
	pdo, plen := 0, end
	if dataLen > 0 {
		// A PDA above MaxPDA is invalid (VerifyHeader rejects it in
		// ICReq/ICResp); capping it keeps PDO within its byte and b.
		pdo = alignUp(end, alignment(min(p.TxPDA, MaxPDA)))
		plen = pdo + dataLen
		if p.DataDigest {
			flags |= FlagDDGST
			plen += DigestLen
		}
	}
	b[1] = byte(flags)
	b[3] = byte(pdo)
	binary.LittleEndian.PutUint32(b[4:], uint32(plen))
	if p.HeaderDigest {
		binary.LittleEndian.PutUint32(b[hlen:], HeaderDigest(b[:hlen]))
	}
	if pdo > end {
		clear(b[end:pdo])
		end = pdo
	}
	return b[:end]
}

// badLayout is what Layout returns with an error: what it could read.
func badLayout(t Type, flags Flags, hlen int) Layout {
	return Layout{Type: t, Flags: flags, HLen: hlen}
}

// alignUp rounds n up to a multiple of a. Alignments are (PDA+1)*4: the
// common powers of two take a mask instead of a division.
func alignUp(n, a int) int {
	if a&(a-1) == 0 {
		return (n + a - 1) &^ (a - 1)
	}
	return (n + a - 1) / a * a
}

// aligned reports whether n is a multiple of a, as alignUp does.
func aligned(n, a int) bool {
	if a&(a-1) == 0 {
		return n&(a-1) == 0
	}
	return uint(n)%uint(a) == 0
}

// Layout validates the 8-byte common header of a PDU received in direction
// dir and tells where its parts lie. Nothing past the common header is read:
// the result bounds how much more the caller reads (at most MaxHeaderBuf
// bytes of header, and a payload of at most MaxData or MaxInCapsule).
func (p *Params) Layout(common []byte, dir Direction) (Layout, error) {
	if len(common) < CommonHeaderLen {
		return Layout{}, errorf(FESInvalidHeader, 0, "common header is %d bytes, want %d", len(common), CommonHeaderLen)
	}
	// The fields stay in locals and the Layout is built once at the end: a
	// Layout filled in field by field costs store-forwarding stalls when it
	// is copied out, a third of the time of this function.
	h := Header(common)
	t, flags, hlen := h.Type(), h.Flags(), h.HLen()
	if !dir.Accepts(t) {
		return badLayout(t, flags, hlen), errorf(FESInvalidHeader, 0, "unexpected PDU type %v", t)
	}
	if want := HeaderLen(t); hlen != want {
		return badLayout(t, flags, hlen), errorf(FESInvalidHeader, 2, "%v: HLEN %d, want %d", t, hlen, want)
	}
	plen := h.PLen()
	pdo := h.PDO()

	if !digestible(t) {
		if flags&(FlagHDGST|FlagDDGST) != 0 {
			return badLayout(t, flags, hlen), errorf(FESInvalidHeader, 1, "%v: digest flags %#x set", t, uint8(flags))
		}
		if pdo != 0 {
			return badLayout(t, flags, hlen), errorf(FESInvalidHeader, 3, "%v: PDO %d, want 0", t, pdo)
		}
		max := uint32(hlen)
		if t == TypeH2CTermReq || t == TypeC2HTermReq {
			max += TermReqMaxDataLen
		}
		if plen < uint32(hlen) || plen > max {
			return badLayout(t, flags, hlen), errorf(FESInvalidHeader, 4, "%v: PLEN %d out of [%d, %d]", t, plen, hlen, max)
		}
		return Layout{Type: t, Flags: flags, HLen: hlen, DataOffset: hlen, DataLen: int(plen) - hlen, PLen: int(plen)}, nil
	}

	if (flags&FlagHDGST != 0) != p.HeaderDigest {
		return badLayout(t, flags, hlen), errorf(FESInvalidHeader, 1, "%v: HDGST flag %v but header digest negotiated %v", t, flags&FlagHDGST != 0, p.HeaderDigest)
	}
	hdgst := 0
	if p.HeaderDigest {
		hdgst = DigestLen
	}
	hb := hlen + hdgst

	var maxData uint32
	switch t {
	case TypeCapsuleCmd:
		maxData = p.MaxInCapsule
	case TypeH2CData, TypeC2HData:
		maxData = p.MaxData
	}
	carriesData := t == TypeCapsuleCmd || t == TypeH2CData || t == TypeC2HData
	if pdo == 0 {
		// No data. Data PDUs must have some.
		if t == TypeH2CData || t == TypeC2HData {
			return badLayout(t, flags, hlen), errorf(FESInvalidHeader, 3, "%v: PDO 0 in a data PDU", t)
		}
		if flags&FlagDDGST != 0 {
			return badLayout(t, flags, hlen), errorf(FESInvalidHeader, 1, "%v: DDGST flag without data", t)
		}
		if plen != uint32(hb) {
			return badLayout(t, flags, hlen), errorf(FESInvalidHeader, 4, "%v: PLEN %d, want %d (no data)", t, plen, hb)
		}
		return Layout{Type: t, Flags: flags, HLen: hlen, HDGST: hdgst, PLen: hb}, nil
	}
	if !carriesData {
		return badLayout(t, flags, hlen), errorf(FESInvalidHeader, 3, "%v: PDO %d in a PDU that carries no data", t, pdo)
	}
	if pdo < hb || !aligned(pdo, alignment(p.RxPDA)) {
		return badLayout(t, flags, hlen), errorf(FESInvalidHeader, 3, "%v: PDO %d: below header (%d) or not a multiple of %d", t, pdo, hb, alignment(p.RxPDA))
	}
	if (flags&FlagDDGST != 0) != p.DataDigest {
		return badLayout(t, flags, hlen), errorf(FESInvalidHeader, 1, "%v: DDGST flag %v but data digest negotiated %v", t, flags&FlagDDGST != 0, p.DataDigest)
	}
	ddgst := 0
	if p.DataDigest {
		ddgst = DigestLen
	}
	if plen <= uint32(pdo+ddgst) {
		return badLayout(t, flags, hlen), errorf(FESInvalidHeader, 4, "%v: PLEN %d leaves no data after PDO %d", t, plen, pdo)
	}
	dataLen := plen - uint32(pdo+ddgst)
	if dataLen > maxData {
		return badLayout(t, flags, hlen), errorf(FESLimitExceeded, 4, "%v: %d bytes of data, limit %d", t, dataLen, maxData)
	}
	return Layout{Type: t, Flags: flags, HLen: hlen, HDGST: hdgst, DataOffset: pdo, DataLen: int(dataLen), DDGST: ddgst, PLen: int(plen)}, nil
}

// VerifyHeader checks the header digest of hdr (l.HeaderBytes() long) and
// the type-specific fields that do not depend on command state.
func (p *Params) VerifyHeader(hdr Header, l Layout) error {
	// l comes from Layout; a Layout that does not fit its type (a zero
	// value, say) must give an error here, not an out-of-range read.
	if l.HLen != HeaderLen(l.Type) || len(hdr) < l.HeaderBytes() {
		return errorf(FESInvalidHeader, 0, "%v: header is %d bytes, want %d", l.Type, len(hdr), l.HeaderBytes())
	}
	if l.HDGST != 0 {
		want := binary.LittleEndian.Uint32(hdr[l.HLen:])
		if got := HeaderDigest(hdr[:l.HLen]); got != want {
			return errorf(FESHeaderDigest, l.HLen, "%v: header digest %#08x, computed %#08x", l.Type, want, got)
		}
	}
	switch l.Type {
	case TypeICReq:
		r := ICReq(hdr)
		if r.PFV() != 0 {
			return errorf(FESUnsupported, 8, "ICReq: PDU format version %d", r.PFV())
		}
		if r.HPDA() > MaxPDA {
			return errorf(FESInvalidHeader, 10, "ICReq: HPDA %d > %d", r.HPDA(), MaxPDA)
		}
	case TypeICResp:
		r := ICResp(hdr)
		if r.PFV() != 0 {
			return errorf(FESUnsupported, 8, "ICResp: PDU format version %d", r.PFV())
		}
		if r.CPDA() > MaxPDA {
			return errorf(FESInvalidHeader, 10, "ICResp: CPDA %d > %d", r.CPDA(), MaxPDA)
		}
		if m := r.MaxH2CData(); m < 4096 || m%4 != 0 {
			return errorf(FESInvalidHeader, 12, "ICResp: MAXH2CDATA %d (below 4096 or not a multiple of 4)", m)
		}
	case TypeH2CData, TypeC2HData:
		d := DataHeader(hdr)
		if int(d.DataLen()) != l.DataLen {
			return errorf(FESInvalidHeader, 16, "%v: DATAL %d but PDU carries %d bytes", l.Type, d.DataLen(), l.DataLen)
		}
		if uint64(d.DataOffset())+uint64(d.DataLen()) > 1<<32-1 {
			return errorf(FESOutOfRange, 12, "%v: DATAO %d + DATAL %d overflows", l.Type, d.DataOffset(), d.DataLen())
		}
		if l.Flags&FlagSuccess != 0 && (l.Type != TypeC2HData || l.Flags&FlagLast == 0) {
			return errorf(FESInvalidHeader, 1, "%v: SUCCESS flag without LAST_PDU", l.Type)
		}
	case TypeR2T:
		r := R2T(hdr)
		if r.R2TLen() == 0 {
			return errorf(FESInvalidHeader, 16, "R2T: R2TL 0")
		}
		if uint64(r.R2TOffset())+uint64(r.R2TLen()) > 1<<32-1 {
			return errorf(FESOutOfRange, 12, "R2T: R2TO %d + R2TL %d overflows", r.R2TOffset(), r.R2TLen())
		}
	}
	return nil
}
