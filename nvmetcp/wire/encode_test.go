package wire

import (
	"bytes"
	"encoding/hex"
	"io"
	"strings"
	"testing"

	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
)

// The SQEs of the golden PDUs, written out field by field (NVMe base
// specification, Common Command Format).
const (
	// Read: opcode 02, PSDT SGL (40), CID 1234, NSID 1, CDW2/3 and MPTR 0,
	// DPTR Transport Data Block (5a) of 4096 bytes, SLBA 0x10, NLB 8 (7).
	readSQEHex = "02 40 3412 01000000 00000000 00000000 0000000000000000" +
		" 0000000000000000 00100000 000000 5a" +
		" 10000000 00000000 07000000 00000000 00000000 00000000"
	// Write of 8 bytes in the capsule: DPTR Data Block, Offset (01).
	writeSQEHex = "01 40 4200 01000000 00000000 00000000 0000000000000000" +
		" 0000000000000000 08000000 000000 01" +
		" 00000000 00000000 00000000 00000000 00000000 00000000"
)

var (
	readSQE = nvme.SQEFields{Opcode: nvme.IORead, Flags: nvme.FlagsPSDTSGL, CID: 0x1234, NSID: 1,
		DPTR:  nvme.SGLFields{Length: 4096, ID: nvme.SGLTransportData},
		CDW10: 0x10, CDW12: 7}
	writeSQE = nvme.SQEFields{Opcode: nvme.IOWrite, Flags: nvme.FlagsPSDTSGL, CID: 0x42, NSID: 1,
		DPTR: nvme.SGLFields{Length: 8, ID: nvme.SGLInCapsule}}
	data8 = []byte{0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04}
)

type goldenPDU struct {
	name string
	p    Params    // the sender's
	dir  Direction // as received
	enc  func(b []byte)
	data []byte
	// hdr is what Seal returns: common header, type-specific header,
	// header digest and padding (CRCs computed independently of this
	// package, with a bitwise CRC32C).
	hdr string
	// layout is what the receiver's Layout must find.
	layout Layout
	// check verifies the getters on the received header.
	check func(t *testing.T, h Header)
}

func goldenPDUs() []goldenPDU {
	return []goldenPDU{
		{
			name: "ICReq",
			p:    Params{HeaderDigest: true, DataDigest: true}, // never applied to ICReq
			dir:  ToController,
			enc: func(b []byte) {
				ICReq(b).Encode(&ICReqFields{HPDA: 0, HeaderDigest: true, DataDigest: true, MaxR2T: 0})
			},
			hdr:    "00 00 80 00 80000000 0000 00 03 00000000" + zeros(112),
			layout: Layout{Type: TypeICReq, HLen: 128, DataOffset: 128, PLen: 128},
			check: func(t *testing.T, h Header) {
				r := ICReq(h)
				eq(t, "PFV", r.PFV(), 0)
				eq(t, "HPDA", r.HPDA(), 0)
				eq(t, "DGST", r.Digest(), DigestHeader|DigestData)
				eq(t, "MAXR2T", r.MaxR2T(), 0)
			},
		},
		{
			name: "ICReq HPDA 3 MAXR2T",
			enc: func(b []byte) {
				ICReq(b).Encode(&ICReqFields{HPDA: 3, HeaderDigest: true, MaxR2T: 0x01020304})
			},
			dir:    ToController,
			hdr:    "00 00 80 00 80000000 0000 03 01 04030201" + zeros(112),
			layout: Layout{Type: TypeICReq, HLen: 128, DataOffset: 128, PLen: 128},
			check: func(t *testing.T, h Header) {
				eq(t, "HPDA", ICReq(h).HPDA(), 3)
				eq(t, "DGST", ICReq(h).Digest(), DigestHeader)
				eq(t, "MAXR2T", ICReq(h).MaxR2T(), 0x01020304)
			},
		},
		{
			name: "ICResp",
			p:    Params{DataDigest: true},
			dir:  ToHost,
			enc: func(b []byte) {
				ICResp(b).Encode(&ICRespFields{CPDA: 1, DataDigest: true, MaxH2CData: 0x20000})
			},
			hdr:    "01 00 80 00 80000000 0000 01 02 00000200" + zeros(112),
			layout: Layout{Type: TypeICResp, HLen: 128, DataOffset: 128, PLen: 128},
			check: func(t *testing.T, h Header) {
				r := ICResp(h)
				eq(t, "PFV", r.PFV(), 0)
				eq(t, "CPDA", r.CPDA(), 1)
				eq(t, "DGST", r.Digest(), DigestData)
				eq(t, "MAXH2CDATA", r.MaxH2CData(), 0x20000)
			},
		},
		{
			name: "H2CTermReq with the offending header",
			p:    Params{HeaderDigest: true, DataDigest: true, TxPDA: 7}, // none applies
			dir:  ToController,
			enc: func(b []byte) {
				TermReq(b).Encode(&TermReqFields{Type: TypeH2CTermReq, FES: FESInvalidHeader, FEI: 2})
			},
			data:   unhexS("05 00 ff 00 18000000"),
			hdr:    "02 00 18 00 20000000 0100 02000000" + zeros(10),
			layout: Layout{Type: TypeH2CTermReq, HLen: 24, DataOffset: 24, DataLen: 8, PLen: 32},
			check: func(t *testing.T, h Header) {
				eq(t, "FES", TermReq(h).FES(), FESInvalidHeader)
				eq(t, "FEI", TermReq(h).FEI(), 2)
			},
		},
		{
			name: "C2HTermReq without data",
			p:    Params{HeaderDigest: true},
			dir:  ToHost,
			enc: func(b []byte) {
				TermReq(b).Encode(&TermReqFields{Type: TypeC2HTermReq, FES: FESLimitExceeded, FEI: 0x1000})
			},
			hdr:    "03 00 18 00 18000000 0500 00100000" + zeros(10),
			layout: Layout{Type: TypeC2HTermReq, HLen: 24, DataOffset: 24, PLen: 24},
			check: func(t *testing.T, h Header) {
				eq(t, "FES", TermReq(h).FES(), FESLimitExceeded)
				eq(t, "FEI", TermReq(h).FEI(), 0x1000)
			},
		},
		{
			name:   "CapsuleCmd Read",
			dir:    ToController,
			enc:    func(b []byte) { CapsuleCmd(b).Encode().Encode(&readSQE) },
			hdr:    "04 00 48 00 48000000" + readSQEHex,
			layout: Layout{Type: TypeCapsuleCmd, HLen: 72, PLen: 72},
			check:  checkReadSQE,
		},
		{
			name:   "CapsuleCmd Read HDGST",
			p:      Params{HeaderDigest: true, DataDigest: true}, // no data: no DDGST
			dir:    ToController,
			enc:    func(b []byte) { CapsuleCmd(b).Encode().Encode(&readSQE) },
			hdr:    "04 01 48 00 4c000000" + readSQEHex + "f6b7e744",
			layout: Layout{Type: TypeCapsuleCmd, Flags: FlagHDGST, HLen: 72, HDGST: 4, PLen: 76},
			check:  checkReadSQE,
		},
		{
			name:   "CapsuleCmd Write in-capsule data",
			dir:    ToController,
			enc:    func(b []byte) { CapsuleCmd(b).Encode().Encode(&writeSQE) },
			data:   data8,
			hdr:    "04 00 48 48 50000000" + writeSQEHex,
			layout: Layout{Type: TypeCapsuleCmd, HLen: 72, DataOffset: 72, DataLen: 8, PLen: 80},
			check:  checkWriteSQE,
		},
		{
			name: "CapsuleCmd Write in-capsule data HDGST DDGST",
			p:    Params{HeaderDigest: true, DataDigest: true},
			dir:  ToController,
			enc:  func(b []byte) { CapsuleCmd(b).Encode().Encode(&writeSQE) },
			data: data8,
			hdr:  "04 03 48 4c 58000000" + writeSQEHex + "73b3176f",
			layout: Layout{Type: TypeCapsuleCmd, Flags: FlagHDGST | FlagDDGST, HLen: 72, HDGST: 4,
				DataOffset: 76, DataLen: 8, DDGST: 4, PLen: 88},
			check: checkWriteSQE,
		},
		{
			name: "CapsuleCmd Write in-capsule data HDGST DDGST CPDA 7",
			p:    Params{HeaderDigest: true, DataDigest: true, TxPDA: 7}, // 32-byte alignment
			dir:  ToController,
			enc:  func(b []byte) { CapsuleCmd(b).Encode().Encode(&writeSQE) },
			data: data8,
			hdr:  "04 03 48 60 6c000000" + writeSQEHex + "57ceb1c3" + zeros(20),
			layout: Layout{Type: TypeCapsuleCmd, Flags: FlagHDGST | FlagDDGST, HLen: 72, HDGST: 4,
				DataOffset: 96, DataLen: 8, DDGST: 4, PLen: 108},
			check: checkWriteSQE,
		},
		{
			name: "CapsuleResp",
			dir:  ToHost,
			enc: func(b []byte) {
				CapsuleResp(b).Encode(&nvme.CQEFields{Result: 0x1122334455667788, SQHD: 5, SQID: 1, CID: 0x1234,
					Status: nvme.StatusInvalidField | nvme.StatusDNR})
			},
			// Status 0x4002 travels shifted left past the phase bit: 0x8004.
			hdr:    "05 00 18 00 18000000 8877665544332211 0500 0100 3412 0480",
			layout: Layout{Type: TypeCapsuleResp, HLen: 24, PLen: 24},
			check: func(t *testing.T, h Header) {
				c := CapsuleResp(h).CQE()
				eq(t, "Result", c.Result(), 0x1122334455667788)
				eq(t, "SQHD", c.SQHD(), 5)
				eq(t, "SQID", c.SQID(), 1)
				eq(t, "CID", c.CID(), 0x1234)
				eq(t, "Status", c.Status(), nvme.StatusInvalidField|nvme.StatusDNR)
			},
		},
		{
			name: "CapsuleResp HDGST",
			p:    Params{HeaderDigest: true, DataDigest: true, TxPDA: 31},
			dir:  ToHost,
			enc: func(b []byte) {
				CapsuleResp(b).Encode(&nvme.CQEFields{Result: 1, SQHD: 5, CID: 0x1234})
			},
			hdr:    "05 01 18 00 1c000000 0100000000000000 0500 0000 3412 0000 ed5b8069",
			layout: Layout{Type: TypeCapsuleResp, Flags: FlagHDGST, HLen: 24, HDGST: 4, PLen: 28},
			check: func(t *testing.T, h Header) {
				eq(t, "DW0", CapsuleResp(h).CQE().DW0(), 1)
				eq(t, "Status", CapsuleResp(h).CQE().Status(), nvme.StatusSuccess)
			},
		},
		{
			name: "H2CData LAST",
			dir:  ToController,
			enc: func(b []byte) {
				DataHeader(b).Encode(&DataFields{Type: TypeH2CData, Flags: FlagLast, CCCID: 0x1234, TTag: 7,
					DataOffset: 0x1000, DataLen: 0x200})
			},
			data:   pattern(0x200),
			hdr:    "06 04 18 18 18020000 3412 0700 00100000 00020000 00000000",
			layout: Layout{Type: TypeH2CData, Flags: FlagLast, HLen: 24, DataOffset: 24, DataLen: 0x200, PLen: 0x218},
			check:  checkData(0x1234, 7, 0x1000, 0x200),
		},
		{
			name: "H2CData LAST HDGST DDGST",
			p:    Params{HeaderDigest: true, DataDigest: true},
			dir:  ToController,
			enc: func(b []byte) {
				DataHeader(b).Encode(&DataFields{Type: TypeH2CData, Flags: FlagLast, CCCID: 0x1234, TTag: 7,
					DataOffset: 0x1000, DataLen: 0x200})
			},
			data: pattern(0x200),
			hdr:  "06 07 18 1c 20020000 3412 0700 00100000 00020000 00000000 c699071f",
			layout: Layout{Type: TypeH2CData, Flags: FlagLast | FlagHDGST | FlagDDGST, HLen: 24, HDGST: 4,
				DataOffset: 28, DataLen: 0x200, DDGST: 4, PLen: 0x220},
			check: checkData(0x1234, 7, 0x1000, 0x200),
		},
		{
			name: "C2HData",
			dir:  ToHost,
			enc: func(b []byte) {
				DataHeader(b).Encode(&DataFields{Type: TypeC2HData, CCCID: 1, DataOffset: 0x2000, DataLen: 16})
			},
			data:   pattern(16),
			hdr:    "07 00 18 18 28000000 0100 0000 00200000 10000000 00000000",
			layout: Layout{Type: TypeC2HData, HLen: 24, DataOffset: 24, DataLen: 16, PLen: 40},
			check:  checkData(1, 0, 0x2000, 16),
		},
		{
			name: "C2HData LAST SUCCESS HDGST DDGST HPDA 31",
			p:    Params{HeaderDigest: true, DataDigest: true, TxPDA: 31}, // 128-byte alignment
			dir:  ToHost,
			enc: func(b []byte) {
				DataHeader(b).Encode(&DataFields{Type: TypeC2HData, Flags: FlagLast | FlagSuccess, CCCID: 1,
					DataLen: 4096})
			},
			data: pattern(4096),
			hdr:  "07 0f 18 80 84100000 0100 0000 00000000 00100000 00000000 00ceaf3f" + zeros(100),
			layout: Layout{Type: TypeC2HData, Flags: FlagLast | FlagSuccess | FlagHDGST | FlagDDGST, HLen: 24, HDGST: 4,
				DataOffset: 128, DataLen: 4096, DDGST: 4, PLen: 128 + 4096 + 4},
			check: checkData(1, 0, 0, 4096),
		},
		{
			name: "R2T",
			dir:  ToHost,
			enc: func(b []byte) {
				R2T(b).Encode(&R2TFields{CCCID: 0x1234, TTag: 3, Offset: 0x2000, Len: 0x8000})
			},
			hdr:    "09 00 18 00 18000000 3412 0300 00200000 00800000 00000000",
			layout: Layout{Type: TypeR2T, HLen: 24, PLen: 24},
			check:  checkR2T,
		},
		{
			name: "R2T HDGST",
			p:    Params{HeaderDigest: true, DataDigest: true},
			dir:  ToHost,
			enc: func(b []byte) {
				R2T(b).Encode(&R2TFields{CCCID: 0x1234, TTag: 3, Offset: 0x2000, Len: 0x8000})
			},
			hdr:    "09 01 18 00 1c000000 3412 0300 00200000 00800000 00000000 f60e744e",
			layout: Layout{Type: TypeR2T, Flags: FlagHDGST, HLen: 24, HDGST: 4, PLen: 28},
			check:  checkR2T,
		},
	}
}

func TestEncodeGolden(t *testing.T) {
	for _, tc := range goldenPDUs() {
		t.Run(tc.name, func(t *testing.T) {
			// Start from garbage: Encode and Seal must set every byte they return.
			buf := bytes.Repeat([]byte{0xa5}, MaxHeaderBuf)
			tc.enc(buf)
			got := tc.p.Seal(buf, len(tc.data))
			want := unhex(t, tc.hdr)
			if !bytes.Equal(got, want) {
				t.Fatalf("Seal:\n got % x\nwant % x", got, want)
			}
			if want, ok := dataDigests[len(tc.data)]; ok && tc.layout.DDGST != 0 && DataDigest(tc.data) != want {
				t.Fatalf("data digest of %d bytes %#x, want %#x", len(tc.data), DataDigest(tc.data), want)
			}
		})
	}
}

// dataDigests are the CRC32Cs of the golden data (by length), computed with
// a bitwise CRC32C.
var dataDigests = map[int]uint32{
	8:     0x8268d51f, // data8
	16:    0x6b24bde1, // pattern(16)
	0x200: 0xe44a1db5, // pattern(512)
	4096:  0xed96b643, // pattern(4096)
}

func TestDecodeGolden(t *testing.T) {
	for _, tc := range goldenPDUs() {
		t.Run(tc.name, func(t *testing.T) {
			hdr := unhex(t, tc.hdr)
			rp := receiver(tc.p)
			l, err := rp.Layout(hdr[:CommonHeaderLen], tc.dir)
			if err != nil {
				t.Fatalf("Layout: %v", err)
			}
			if l != tc.layout {
				t.Fatalf("Layout:\n got %+v\nwant %+v", l, tc.layout)
			}
			if err := rp.VerifyHeader(Header(hdr[:l.HeaderBytes()]), l); err != nil {
				t.Fatalf("VerifyHeader: %v", err)
			}
			if l.PadLen() != len(hdr)-l.HeaderBytes() {
				t.Errorf("PadLen %d, Seal padded %d", l.PadLen(), len(hdr)-l.HeaderBytes())
			}
			if got, want := l.TrailerBytes(), l.PLen-l.HeaderBytes(); got != want {
				t.Errorf("TrailerBytes %d, want %d", got, want)
			}
			h := Header(hdr)
			if h.Type() != tc.layout.Type || h.HLen() != tc.layout.HLen || int(h.PLen()) != tc.layout.PLen {
				t.Errorf("Header getters: %v", h)
			}
			tc.check(t, h)
		})
	}
}

// TestRoundTrip sends each golden PDU twice through Seal and a Reader and
// checks what comes out, and that the Reader stops exactly at each PLEN.
func TestRoundTrip(t *testing.T) {
	for _, tc := range goldenPDUs() {
		t.Run(tc.name, func(t *testing.T) {
			pdu := buildPDU(&tc.p, tc.enc, tc.data)
			if len(pdu) != tc.layout.PLen {
				t.Fatalf("PDU is %d bytes, PLEN %d", len(pdu), tc.layout.PLen)
			}
			// Twice in a row: the Reader must end the first exactly at its PLEN.
			stream := append(append([]byte(nil), pdu...), pdu...)
			rp := receiver(tc.p)
			r := NewReader(bytes.NewReader(stream), tc.dir, &rp)
			for i := range 2 {
				h, l, err := r.Next()
				if err != nil {
					t.Fatalf("PDU %d: Next: %v", i, err)
				}
				if l != tc.layout {
					t.Fatalf("PDU %d: Layout %+v, want %+v", i, l, tc.layout)
				}
				if !bytes.Equal(h, pdu[:l.HeaderBytes()]) {
					t.Fatalf("PDU %d: header % x", i, h)
				}
				tc.check(t, h)
				if l.DataLen > 0 {
					got := make([]byte, l.DataLen)
					if err := r.ReadData(got); err != nil {
						t.Fatalf("PDU %d: ReadData: %v", i, err)
					}
					if !bytes.Equal(got, tc.data) {
						t.Fatalf("PDU %d: data differs", i)
					}
				}
			}
			if _, _, err := r.Next(); err != io.EOF {
				t.Fatalf("after the last PDU: %v, want io.EOF", err)
			}
		})
	}
}

func checkReadSQE(t *testing.T, h Header) {
	t.Helper()
	s := CapsuleCmd(h).SQE()
	eq(t, "opcode", s.Opcode(), nvme.IORead)
	eq(t, "CID", s.CID(), 0x1234)
	eq(t, "NSID", s.NSID(), 1)
	eq(t, "SGL ID", s.DPTR().ID(), nvme.SGLTransportData)
	eq(t, "SGL length", s.DPTR().Length(), 4096)
	eq(t, "SLBA", s.SLBA(), 0x10)
	eq(t, "NLB", s.NLB(), 8)
}

func checkWriteSQE(t *testing.T, h Header) {
	t.Helper()
	s := CapsuleCmd(h).SQE()
	eq(t, "opcode", s.Opcode(), nvme.IOWrite)
	eq(t, "CID", s.CID(), 0x42)
	eq(t, "SGL ID", s.DPTR().ID(), nvme.SGLInCapsule)
	eq(t, "SGL length", s.DPTR().Length(), 8)
}

func checkData(cccid, ttag uint16, off, n uint32) func(*testing.T, Header) {
	return func(t *testing.T, h Header) {
		t.Helper()
		d := DataHeader(h)
		eq(t, "CCCID", d.CCCID(), cccid)
		eq(t, "TTAG", d.TTag(), ttag)
		eq(t, "DATAO", d.DataOffset(), off)
		eq(t, "DATAL", d.DataLen(), n)
	}
}

func checkR2T(t *testing.T, h Header) {
	t.Helper()
	r := R2T(h)
	eq(t, "CCCID", r.CCCID(), 0x1234)
	eq(t, "TTAG", r.TTag(), 3)
	eq(t, "R2TO", r.R2TOffset(), 0x2000)
	eq(t, "R2TL", r.R2TLen(), 0x8000)
}

func eq[T comparable](t *testing.T, what string, got, want T) {
	t.Helper()
	if got != want {
		t.Errorf("%s = %#v, want %#v", what, got, want)
	}
}

func zeros(n int) string { return string(bytes.Repeat([]byte("00"), n)) }

// unhexS is unhex for package-level values.
func unhexS(s string) []byte {
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		panic(err)
	}
	return b
}
