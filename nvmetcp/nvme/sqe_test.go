package nvme

import (
	"bytes"
	"testing"
)

func TestSQEGolden(t *testing.T) {
	f := SQEFields{
		Opcode: IORead, Flags: FlagsPSDTSGL, CID: 0x1234, NSID: 0x01020304,
		CDW2: 0x11111111, CDW3: 0x22222222, MPTR: 0x3333333344444444,
		DPTR:  SGLFields{Address: 0x5555555566666666, Length: 0x1000, ID: SGLTransportData},
		CDW10: 0xa0a0a0a0, CDW11: 0x0000000b, CDW12: 0x000000ff,
		CDW13: 0xd, CDW14: 0xe, CDW15: 0xf,
	}
	// NVMe base specification, Common Command Format: CDW0 (opcode, flags,
	// CID), NSID, CDW2, CDW3, MPTR, DPTR (16-byte SGL), CDW10..15.
	want := goldenHex(t, "02 40 3412 04030201 11111111 22222222 4444444433333333"+
		" 6666666655555555 00100000 000000 5a"+
		" a0a0a0a0 0b000000 ff000000 0d000000 0e000000 0f000000")
	s := SQE(junk(SQELen))
	s.Encode(&f)
	if !bytes.Equal(s, want) {
		t.Fatalf("Encode:\n got % x\nwant % x", []byte(s), want)
	}
	expectEq(t, "Opcode", s.Opcode(), IORead)
	expectEq(t, "Flags", s.Flags(), FlagsPSDTSGL)
	expectEq(t, "CID", s.CID(), 0x1234)
	expectEq(t, "NSID", s.NSID(), 0x01020304)
	expectEq(t, "MPTR", s.MPTR(), 0x3333333344444444)
	expectEq(t, "CDW(2)", s.CDW(2), 0x11111111)
	expectEq(t, "CDW(3)", s.CDW(3), 0x22222222)
	expectEq(t, "CDW10", s.CDW10(), 0xa0a0a0a0)
	expectEq(t, "CDW11", s.CDW11(), 0xb)
	expectEq(t, "CDW12", s.CDW12(), 0xff)
	expectEq(t, "CDW13", s.CDW13(), 0xd)
	expectEq(t, "CDW14", s.CDW14(), 0xe)
	expectEq(t, "CDW15", s.CDW15(), 0xf)
	// Read/Write: SLBA is CDW10..11, NLB CDW12 bits 15:0, 0's based.
	expectEq(t, "SLBA", s.SLBA(), 0x0000000ba0a0a0a0)
	expectEq(t, "NLB", s.NLB(), 0x100)
	d := s.DPTR()
	expectEq(t, "DPTR address", d.Address(), 0x5555555566666666)
	expectEq(t, "DPTR length", d.Length(), 0x1000)
	expectEq(t, "DPTR id", d.ID(), SGLTransportData)
	expectEq(t, "FabricsType", s.FabricsType(), 0x04)

	s.SetCID(0xbeef)
	expectEq(t, "CID after SetCID", s.CID(), 0xbeef)
	if !bytes.Equal(s[4:], want[4:]) || s[0] != want[0] || s[1] != want[1] {
		t.Error("SetCID changed more than the CID")
	}
}

func TestNLBRange(t *testing.T) {
	s := make(SQE, SQELen)
	expectEq(t, "NLB 0's based 0", s.NLB(), 1)
	s[48], s[49], s[50] = 0xff, 0xff, 0xff // bits above 15 are not NLB
	expectEq(t, "NLB max", s.NLB(), 65536)
}

func TestSGLGolden(t *testing.T) {
	for _, tc := range []struct {
		f        SGLFields
		want     string
		typ, sub uint8
	}{
		// In-capsule data: SGL Data Block descriptor, Offset subtype (01).
		{SGLFields{Address: 0, Length: 1024, ID: SGLInCapsule}, "0000000000000000 00040000 000000 01", SGLTypeDataBlock, SGLSubtypeOffset},
		// Data moved by C2HData or R2T/H2CData: Transport SGL Data Block,
		// transport specific subtype A (5a).
		{SGLFields{Address: 0x0102030405060708, Length: 0xffffffff, ID: SGLTransportData}, "0807060504030201 ffffffff 000000 5a", SGLTypeTransportDataBlock, SGLSubtypeTransportA},
		{SGLFields{ID: SGLTypeLastSegment<<4 | SGLSubtypeAddress}, "0000000000000000 00000000 000000 30", SGLTypeLastSegment, SGLSubtypeAddress},
	} {
		g := SGL(junk(SGLLen))
		g.Encode(&tc.f)
		if want := goldenHex(t, tc.want); !bytes.Equal(g, want) {
			t.Errorf("Encode(%+v):\n got % x\nwant % x", tc.f, []byte(g), want)
		}
		expectEq(t, "Address", g.Address(), tc.f.Address)
		expectEq(t, "Length", g.Length(), tc.f.Length)
		expectEq(t, "ID", g.ID(), tc.f.ID)
		expectEq(t, "Type", g.Type(), tc.typ)
		expectEq(t, "Subtype", g.Subtype(), tc.sub)
	}
	expectEq(t, "SGLInCapsule", SGLInCapsule, 0x01)
	expectEq(t, "SGLTransportData", SGLTransportData, 0x5a)
}

// TestOpcodes pins the opcodes of the NVMe base and NVM command set
// specifications (Linux include/linux/nvme.h: nvme_admin_opcode, nvme_opcode).
func TestOpcodes(t *testing.T) {
	for name, c := range map[string][2]int{
		"Get Log Page":  {AdminGetLogPage, 0x02},
		"Identify":      {AdminIdentify, 0x06},
		"Abort":         {AdminAbort, 0x08},
		"Set Features":  {AdminSetFeatures, 0x09},
		"Get Features":  {AdminGetFeatures, 0x0a},
		"AER":           {AdminAsyncEvent, 0x0c},
		"Keep Alive":    {AdminKeepAlive, 0x18},
		"Fabrics":       {OpcodeFabrics, 0x7f},
		"Flush":         {IOFlush, 0x00},
		"Write":         {IOWrite, 0x01},
		"Read":          {IORead, 0x02},
		"Write Zeroes":  {IOWriteZeroes, 0x08},
		"DSM":           {IODatasetMgmt, 0x09},
		"PSDT mask":     {FlagsPSDTMask, 0xc0},
		"PSDT SGL":      {FlagsPSDTSGL, 0x40},
		"SGL DataBlock": {SGLTypeDataBlock, 0},
		"SGL BitBucket": {SGLTypeBitBucket, 1},
		"SGL Segment":   {SGLTypeSegment, 2},
		"SGL Keyed":     {SGLTypeKeyedDataBlock, 4},
		"SGL Transport": {SGLTypeTransportDataBlock, 5},
	} {
		if c[0] != c[1] {
			t.Errorf("%s = %#x, want %#x", name, c[0], c[1])
		}
	}
}
