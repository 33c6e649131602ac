package wire

import (
	"encoding/binary"
	"errors"
	"testing"
)

// ch is a common header.
func ch(t Type, flags Flags, hlen, pdo int, plen uint32) []byte {
	b := []byte{byte(t), byte(flags), byte(hlen), byte(pdo), 0, 0, 0, 0}
	binary.LittleEndian.PutUint32(b[4:], plen)
	return b
}

var (
	noDigest  = Params{MaxData: 8192, MaxInCapsule: 4096}
	hdDigest  = Params{HeaderDigest: true, MaxData: 8192, MaxInCapsule: 4096}
	ddDigest  = Params{DataDigest: true, MaxData: 8192, MaxInCapsule: 4096}
	allDigest = Params{HeaderDigest: true, DataDigest: true, MaxData: 8192, MaxInCapsule: 4096}
	cpda7     = Params{RxPDA: 7, MaxData: 8192, MaxInCapsule: 4096} // 32-byte alignment
)

// checkErr asserts that err is an *Error matching want with errors.Is, at
// offset off, and that it matches no other sentinel.
func checkErr(t *testing.T, err error, want *Error, off int) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %v at offset %d", want, off)
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not an *Error", err, err)
	}
	if !errors.Is(err, want) {
		t.Errorf("error %v: FES %v, want %v", err, e.FES, want.FES)
	}
	for _, other := range []*Error{ErrInvalidHeader, ErrSequence, ErrHeaderDigest, ErrOutOfRange, ErrLimitExceeded, ErrUnsupported} {
		if other != want && errors.Is(err, other) {
			t.Errorf("error %v also matches %v", err, other)
		}
	}
	if errors.Is(err, ErrDataDigest) {
		t.Errorf("fatal error %v matches ErrDataDigest", err)
	}
	if e.Offset != off {
		t.Errorf("error %v: offset %d, want %d", err, e.Offset, off)
	}
	if e.Reason == "" || e.Error() == "" {
		t.Errorf("error without a reason: %q", e.Error())
	}
}

func TestLayoutErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		p      Params
		dir    Direction
		common []byte
		want   *Error
		off    int
	}{
		{"short common header", noDigest, ToController, ch(TypeCapsuleCmd, 0, 72, 0, 72)[:7], ErrInvalidHeader, 0},
		{"host type to controller", noDigest, ToController, ch(TypeC2HData, 0, 24, 24, 32), ErrInvalidHeader, 0},
		{"controller type to host", noDigest, ToHost, ch(TypeCapsuleCmd, 0, 72, 0, 72), ErrInvalidHeader, 0},
		{"ICResp to controller", noDigest, ToController, ch(TypeICResp, 0, 128, 0, 128), ErrInvalidHeader, 0},
		{"ICReq to host", noDigest, ToHost, ch(TypeICReq, 0, 128, 0, 128), ErrInvalidHeader, 0},
		{"type 8", noDigest, ToHost, ch(8, 0, 24, 0, 24), ErrInvalidHeader, 0},
		{"type 0x0a", noDigest, ToController, ch(0x0a, 0, 24, 0, 24), ErrInvalidHeader, 0},
		{"type 0xff", noDigest, ToHost, ch(0xff, 0, 24, 0, 24), ErrInvalidHeader, 0},

		{"ICReq HLEN", noDigest, ToController, ch(TypeICReq, 0, 127, 0, 128), ErrInvalidHeader, 2},
		{"CapsuleCmd HLEN", noDigest, ToController, ch(TypeCapsuleCmd, 0, 24, 0, 24), ErrInvalidHeader, 2},
		{"CapsuleResp HLEN 255", hdDigest, ToHost, ch(TypeCapsuleResp, FlagHDGST, 255, 0, 259), ErrInvalidHeader, 2},
		{"H2CData HLEN", noDigest, ToController, ch(TypeH2CData, 0, 28, 28, 36), ErrInvalidHeader, 2},
		{"R2T HLEN 0", noDigest, ToHost, ch(TypeR2T, 0, 0, 0, 0), ErrInvalidHeader, 2},
		{"TermReq HLEN", noDigest, ToHost, ch(TypeC2HTermReq, 0, 22, 0, 22), ErrInvalidHeader, 2},

		{"ICReq HDGST flag", allDigest, ToController, ch(TypeICReq, FlagHDGST, 128, 0, 132), ErrInvalidHeader, 1},
		{"TermReq DDGST flag", allDigest, ToHost, ch(TypeC2HTermReq, FlagDDGST, 24, 0, 24), ErrInvalidHeader, 1},
		{"ICResp PDO", noDigest, ToHost, ch(TypeICResp, 0, 128, 128, 128), ErrInvalidHeader, 3},
		{"TermReq PDO", noDigest, ToController, ch(TypeH2CTermReq, 0, 24, 24, 32), ErrInvalidHeader, 3},
		{"ICReq PLEN short", noDigest, ToController, ch(TypeICReq, 0, 128, 0, 127), ErrInvalidHeader, 4},
		{"ICReq PLEN long", noDigest, ToController, ch(TypeICReq, 0, 128, 0, 129), ErrInvalidHeader, 4},
		{"ICResp PLEN huge", noDigest, ToHost, ch(TypeICResp, 0, 128, 0, 0xffffffff), ErrInvalidHeader, 4},
		{"TermReq PLEN below HLEN", noDigest, ToHost, ch(TypeC2HTermReq, 0, 24, 0, 23), ErrInvalidHeader, 4},
		{"TermReq PLEN 153", noDigest, ToHost, ch(TypeC2HTermReq, 0, 24, 0, 153), ErrInvalidHeader, 4},

		{"HDGST flag not negotiated", noDigest, ToHost, ch(TypeCapsuleResp, FlagHDGST, 24, 0, 28), ErrInvalidHeader, 1},
		{"HDGST flag missing", hdDigest, ToHost, ch(TypeCapsuleResp, 0, 24, 0, 24), ErrInvalidHeader, 1},
		{"HDGST flag missing on data", hdDigest, ToHost, ch(TypeC2HData, 0, 24, 24, 32), ErrInvalidHeader, 1},

		{"C2HData PDO 0", noDigest, ToHost, ch(TypeC2HData, FlagLast, 24, 0, 24), ErrInvalidHeader, 3},
		{"H2CData PDO 0", noDigest, ToController, ch(TypeH2CData, 0, 24, 0, 32), ErrInvalidHeader, 3},
		{"DDGST without data", ddDigest, ToController, ch(TypeCapsuleCmd, FlagDDGST, 72, 0, 72), ErrInvalidHeader, 1},
		{"DDGST on CapsuleResp", ddDigest, ToHost, ch(TypeCapsuleResp, FlagDDGST, 24, 0, 24), ErrInvalidHeader, 1},
		{"CapsuleCmd PLEN without PDO", noDigest, ToController, ch(TypeCapsuleCmd, 0, 72, 0, 80), ErrInvalidHeader, 4},
		{"CapsuleResp PLEN", noDigest, ToHost, ch(TypeCapsuleResp, 0, 24, 0, 28), ErrInvalidHeader, 4},
		{"R2T PLEN without header digest", hdDigest, ToHost, ch(TypeR2T, FlagHDGST, 24, 0, 24), ErrInvalidHeader, 4},

		{"CapsuleResp PDO", noDigest, ToHost, ch(TypeCapsuleResp, 0, 24, 24, 32), ErrInvalidHeader, 3},
		{"R2T PDO", noDigest, ToHost, ch(TypeR2T, 0, 24, 24, 32), ErrInvalidHeader, 3},
		{"PDO inside the header", noDigest, ToController, ch(TypeCapsuleCmd, 0, 72, 64, 80), ErrInvalidHeader, 3},
		{"PDO over the header digest", hdDigest, ToHost, ch(TypeC2HData, FlagHDGST, 24, 24, 40), ErrInvalidHeader, 3},
		{"PDO not dword aligned", noDigest, ToHost, ch(TypeC2HData, 0, 24, 26, 40), ErrInvalidHeader, 3},
		{"PDO not CPDA aligned", cpda7, ToController, ch(TypeH2CData, 0, 24, 24, 40), ErrInvalidHeader, 3},
		{"PDO not CPDA aligned, 48", cpda7, ToController, ch(TypeCapsuleCmd, 0, 72, 80, 88), ErrInvalidHeader, 3},

		{"DDGST flag missing on data", ddDigest, ToController, ch(TypeH2CData, 0, 24, 24, 40), ErrInvalidHeader, 1},
		{"DDGST flag not negotiated", noDigest, ToHost, ch(TypeC2HData, FlagDDGST, 24, 24, 44), ErrInvalidHeader, 1},

		{"PLEN at PDO", noDigest, ToHost, ch(TypeC2HData, 0, 24, 24, 24), ErrInvalidHeader, 4},
		{"PLEN before PDO", noDigest, ToHost, ch(TypeC2HData, 0, 24, 28, 24), ErrInvalidHeader, 4},
		{"PLEN holds only the data digest", ddDigest, ToHost, ch(TypeC2HData, FlagDDGST, 24, 24, 28), ErrInvalidHeader, 4},

		{"C2HData over MaxData", noDigest, ToHost, ch(TypeC2HData, 0, 24, 24, 24+8193), ErrLimitExceeded, 4},
		{"H2CData over MaxData, 4 GiB", allDigest, ToController, ch(TypeH2CData, 0x07, 24, 28, 0xffffffff), ErrLimitExceeded, 4},
		{"in-capsule data over MaxInCapsule", noDigest, ToController, ch(TypeCapsuleCmd, 0, 72, 72, 72+4097), ErrLimitExceeded, 4},
		{"in-capsule data with no MaxInCapsule", Params{}, ToController, ch(TypeCapsuleCmd, 0, 72, 72, 73), ErrLimitExceeded, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.p.Layout(tc.common, tc.dir)
			checkErr(t, err, tc.want, tc.off)
		})
	}
}

// TestLayoutLimits accepts what is exactly at the limits.
func TestLayoutLimits(t *testing.T) {
	for _, tc := range []struct {
		name    string
		p       Params
		dir     Direction
		common  []byte
		dataLen int
	}{
		{"TermReq PLEN 152", noDigest, ToHost, ch(TypeC2HTermReq, 0, 24, 0, 152), 128},
		{"TermReq PLEN 24", allDigest, ToController, ch(TypeH2CTermReq, 0, 24, 0, 24), 0},
		{"C2HData at MaxData", allDigest, ToHost, ch(TypeC2HData, 0x0f, 24, 28, 28+8192+4), 8192},
		{"in-capsule data at MaxInCapsule", noDigest, ToController, ch(TypeCapsuleCmd, 0, 72, 72, 72+4096), 4096},
		{"PDO past the minimum, aligned", noDigest, ToHost, ch(TypeC2HData, 0, 24, 32, 33), 1},
		{"PDO 32 under CPDA 7", cpda7, ToController, ch(TypeH2CData, FlagLast, 24, 32, 33), 1},
		{"PDO 96 under CPDA 7", cpda7, ToController, ch(TypeCapsuleCmd, 0, 72, 96, 100), 4},
		{"PDO 252", noDigest, ToHost, ch(TypeC2HData, 0, 24, 252, 253), 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := tc.p.Layout(tc.common, tc.dir)
			if err != nil {
				t.Fatal(err)
			}
			if l.DataLen != tc.dataLen {
				t.Errorf("DataLen %d, want %d", l.DataLen, tc.dataLen)
			}
		})
	}
}

// sealed returns the header that Seal makes from enc under p, as the
// receiver sees it (header and digest, without padding).
func sealed(p Params, enc func([]byte), dataLen int) []byte {
	buf := make([]byte, MaxHeaderBuf)
	enc(buf)
	h := p.Seal(buf, dataLen)
	hb := int(h[2])
	if p.HeaderDigest && digestible(Type(h[0])) {
		hb += DigestLen
	}
	return append([]byte(nil), h[:hb]...)
}

// redigest recomputes the header digest of h after a test changed it.
func redigest(h []byte) []byte {
	if Flags(h[1])&FlagHDGST != 0 {
		PutDigest(h[h[2]:], HeaderDigest(h[:h[2]]))
	}
	return h
}

func TestVerifyHeaderErrors(t *testing.T) {
	icreq := func(f ICReqFields) func([]byte) { return func(b []byte) { ICReq(b).Encode(&f) } }
	icresp := func(f ICRespFields) func([]byte) { return func(b []byte) { ICResp(b).Encode(&f) } }
	data := func(f DataFields) func([]byte) { return func(b []byte) { DataHeader(b).Encode(&f) } }
	r2t := func(f R2TFields) func([]byte) { return func(b []byte) { R2T(b).Encode(&f) } }
	set16 := func(h []byte, off int, v uint16) []byte {
		binary.LittleEndian.PutUint16(h[off:], v)
		return redigest(h)
	}
	set32 := func(h []byte, off int, v uint32) []byte {
		binary.LittleEndian.PutUint32(h[off:], v)
		return redigest(h)
	}
	setb := func(h []byte, off int, v byte) []byte { h[off] = v; return redigest(h) }
	maxH2C := ICRespFields{MaxH2CData: 4096}

	for _, tc := range []struct {
		name string
		p    Params
		dir  Direction
		hdr  []byte
		want *Error
		off  int
	}{
		{"ICReq PFV 1", noDigest, ToController, set16(sealed(noDigest, icreq(ICReqFields{}), 0), 8, 1), ErrUnsupported, 8},
		{"ICReq HPDA 32", noDigest, ToController, setb(sealed(noDigest, icreq(ICReqFields{}), 0), 10, 32), ErrInvalidHeader, 10},
		{"ICReq HPDA 255", noDigest, ToController, setb(sealed(noDigest, icreq(ICReqFields{}), 0), 10, 255), ErrInvalidHeader, 10},
		{"ICResp PFV 0x100", noDigest, ToHost, set16(sealed(noDigest, icresp(maxH2C), 0), 8, 0x100), ErrUnsupported, 8},
		{"ICResp CPDA 32", noDigest, ToHost, setb(sealed(noDigest, icresp(maxH2C), 0), 10, 32), ErrInvalidHeader, 10},
		{"ICResp MAXH2CDATA 0", noDigest, ToHost, set32(sealed(noDigest, icresp(maxH2C), 0), 12, 0), ErrInvalidHeader, 12},
		{"ICResp MAXH2CDATA 4092", noDigest, ToHost, set32(sealed(noDigest, icresp(maxH2C), 0), 12, 4092), ErrInvalidHeader, 12},
		{"ICResp MAXH2CDATA 4098", noDigest, ToHost, set32(sealed(noDigest, icresp(maxH2C), 0), 12, 4098), ErrInvalidHeader, 12},

		{"header digest", hdDigest, ToHost, func() []byte {
			h := sealed(hdDigest, r2t(R2TFields{Len: 1}), 0)
			h[len(h)-1] ^= 0x80
			return h
		}(), ErrHeaderDigest, 24},
		{"header digest of a capsule", allDigest, ToController, func() []byte {
			h := sealed(allDigest, func(b []byte) { CapsuleCmd(b).Encode() }, 0)
			h[10] ^= 1 // a bit of the SQE; the digest no longer covers it
			return h
		}(), ErrHeaderDigest, 72},

		{"DATAL above PDU data", noDigest, ToHost,
			sealed(noDigest, data(DataFields{Type: TypeC2HData, DataLen: 17}), 16), ErrInvalidHeader, 16},
		{"DATAL below PDU data", allDigest, ToController,
			sealed(allDigest, data(DataFields{Type: TypeH2CData, DataLen: 15}), 16), ErrInvalidHeader, 16},
		{"DATAO + DATAL overflow", hdDigest, ToHost,
			sealed(hdDigest, data(DataFields{Type: TypeC2HData, DataOffset: 0xfffffff8, DataLen: 16}), 16), ErrOutOfRange, 12},
		{"SUCCESS without LAST", noDigest, ToHost,
			sealed(noDigest, data(DataFields{Type: TypeC2HData, Flags: FlagSuccess, DataLen: 16}), 16), ErrInvalidHeader, 1},
		{"SUCCESS on H2CData", noDigest, ToController,
			sealed(noDigest, data(DataFields{Type: TypeH2CData, Flags: FlagSuccess | FlagLast, DataLen: 16}), 16), ErrInvalidHeader, 1},

		{"R2TL 0", hdDigest, ToHost, sealed(hdDigest, r2t(R2TFields{Offset: 4096}), 0), ErrInvalidHeader, 16},
		{"R2TO + R2TL overflow", noDigest, ToHost, sealed(noDigest, r2t(R2TFields{Offset: 0xffff0000, Len: 0x10000}), 0), ErrOutOfRange, 12},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := tc.p.Layout(tc.hdr[:CommonHeaderLen], tc.dir)
			if err != nil {
				t.Fatalf("Layout: %v", err)
			}
			checkErr(t, tc.p.VerifyHeader(Header(tc.hdr), l), tc.want, tc.off)
		})
	}
}

// TestVerifyHeaderBadLayout gives VerifyHeader a header shorter than its
// Layout, or a Layout that Layout never returns: an error, not a panic.
func TestVerifyHeaderBadLayout(t *testing.T) {
	p := allDigest
	h := sealed(p, func(b []byte) { R2T(b).Encode(&R2TFields{Len: 1}) }, 0)
	l, err := p.Layout(h, ToHost)
	if err != nil {
		t.Fatal(err)
	}
	checkErr(t, p.VerifyHeader(Header(h[:len(h)-1]), l), ErrInvalidHeader, 0)
	checkErr(t, p.VerifyHeader(nil, Layout{}), ErrInvalidHeader, 0)
	checkErr(t, p.VerifyHeader(Header(h), Layout{Type: TypeICResp, HLen: 24}), ErrInvalidHeader, 0)
}

// TestVerifyHeaderAccepts checks the edges that are valid.
func TestVerifyHeaderAccepts(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    Params
		dir  Direction
		enc  func([]byte)
		n    int
	}{
		{"ICReq HPDA 31", noDigest, ToController, func(b []byte) { ICReq(b).Encode(&ICReqFields{HPDA: 31}) }, 0},
		{"ICResp CPDA 31 MAXH2CDATA 4096", noDigest, ToHost, func(b []byte) { ICResp(b).Encode(&ICRespFields{CPDA: 31, MaxH2CData: 4096}) }, 0},
		{"ICResp MAXH2CDATA 4 GiB - 4", noDigest, ToHost, func(b []byte) { ICResp(b).Encode(&ICRespFields{MaxH2CData: 0xfffffffc}) }, 0},
		{"DATAO + DATAL = 4 GiB - 1", noDigest, ToHost, func(b []byte) {
			DataHeader(b).Encode(&DataFields{Type: TypeC2HData, DataOffset: 0xffffffff - 16, DataLen: 16})
		}, 16},
		{"C2HData LAST SUCCESS", allDigest, ToHost, func(b []byte) {
			DataHeader(b).Encode(&DataFields{Type: TypeC2HData, Flags: FlagLast | FlagSuccess, DataLen: 16})
		}, 16},
		{"R2TO + R2TL = 4 GiB - 1", hdDigest, ToHost, func(b []byte) { R2T(b).Encode(&R2TFields{Offset: 0xfffffffe, Len: 1}) }, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := sealed(tc.p, tc.enc, tc.n)
			l, err := tc.p.Layout(h, tc.dir)
			if err != nil {
				t.Fatalf("Layout: %v", err)
			}
			if err := tc.p.VerifyHeader(Header(h), l); err != nil {
				t.Fatalf("VerifyHeader: %v", err)
			}
		})
	}
}

func TestErrorValues(t *testing.T) {
	err := FieldError(FESOutOfRange, 12, "offset %d", 7)
	checkErr(t, err, ErrOutOfRange, 12)
	if got := err.Error(); got != "nvme/tcp: data transfer out of range: offset 7" {
		t.Errorf("Error() = %q", got)
	}
	checkErr(t, SequenceError("second ICReq"), ErrSequence, 0)
	if got := ErrHeaderDigest.Error(); got != "nvme/tcp: header digest error" {
		t.Errorf("sentinel Error() = %q", got)
	}
	if got := FES(0x42).String(); got != "fatal error status 0x42" {
		t.Errorf("unknown FES: %q", got)
	}
	// Sentinels match only themselves and errors of their FES.
	if errors.Is(ErrInvalidHeader, ErrSequence) || !errors.Is(ErrInvalidHeader, ErrInvalidHeader) {
		t.Error("sentinels match wrongly")
	}
	if errors.Is(ErrDataDigest, ErrInvalidHeader) {
		t.Error("ErrDataDigest matches a fatal sentinel")
	}
	for fes, want := range map[FES]uint16{FESInvalidHeader: 1, FESSequence: 2, FESHeaderDigest: 3, FESOutOfRange: 4, FESLimitExceeded: 5, FESUnsupported: 6} {
		if uint16(fes) != want {
			t.Errorf("FES %v = %d, want %d", fes, fes, want)
		}
	}
}

// TestConstants pins the values of the NVMe/TCP transport specification
// (and of Linux's include/linux/nvme-tcp.h).
func TestConstants(t *testing.T) {
	types := map[Type]uint8{TypeICReq: 0, TypeICResp: 1, TypeH2CTermReq: 2, TypeC2HTermReq: 3, TypeCapsuleCmd: 4,
		TypeCapsuleResp: 5, TypeH2CData: 6, TypeC2HData: 7, TypeR2T: 9}
	hlens := map[Type]int{TypeICReq: 128, TypeICResp: 128, TypeH2CTermReq: 24, TypeC2HTermReq: 24, TypeCapsuleCmd: 72,
		TypeCapsuleResp: 24, TypeH2CData: 24, TypeC2HData: 24, TypeR2T: 24}
	for ty, v := range types {
		if uint8(ty) != v {
			t.Errorf("%v = %d, want %d", ty, ty, v)
		}
		if HeaderLen(ty) != hlens[ty] {
			t.Errorf("HeaderLen(%v) = %d, want %d", ty, HeaderLen(ty), hlens[ty])
		}
		host := ty == TypeICReq || ty == TypeH2CTermReq || ty == TypeCapsuleCmd || ty == TypeH2CData
		if ToController.Accepts(ty) != host || ToHost.Accepts(ty) == host {
			t.Errorf("direction of %v wrong", ty)
		}
	}
	for _, ty := range []Type{8, 0x0a, 0x7f, 0xff} {
		if HeaderLen(ty) != 0 || ToController.Accepts(ty) || ToHost.Accepts(ty) {
			t.Errorf("type %v accepted", ty)
		}
	}
	if FlagHDGST != 1 || FlagDDGST != 2 || FlagLast != 4 || FlagSuccess != 8 || DigestHeader != 1 || DigestData != 2 {
		t.Error("flag values")
	}
	if TermReqHeaderLen+TermReqMaxDataLen != 152 {
		t.Error("a TermReq is at most 152 bytes")
	}
	if Type(0x42).String() != "type 0x42" || TypeR2T.String() != "R2T" || TypeC2HData.String() != "C2HData" {
		t.Error("Type.String")
	}
	if got := Header(ch(TypeC2HData, 0x0c, 24, 24, 40)).String(); got != "C2HData flags=0xc hlen=24 pdo=24 plen=40" {
		t.Errorf("Header.String = %q", got)
	}
	if Header(nil).String() != "short header" {
		t.Error("Header.String of a short header")
	}
}

// TestSealPDACapped: a TxPDA beyond MaxPDA (which VerifyHeader would have
// refused in the ICReq/ICResp) still gives a PDU that fits its PDO byte.
func TestSealPDACapped(t *testing.T) {
	p := Params{TxPDA: 255, HeaderDigest: true}
	buf := make([]byte, MaxHeaderBuf)
	CapsuleCmd(buf).Encode()
	h := p.Seal(buf, 8)
	if Header(h).PDO() != 128 || len(h) != 128 {
		t.Fatalf("PDO %d, header %d bytes; want 128", Header(h).PDO(), len(h))
	}
}
