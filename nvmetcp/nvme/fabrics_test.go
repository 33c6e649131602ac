package nvme

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

// Fabrics commands are laid out as in the NVMe over Fabrics specification
// (Linux include/linux/nvme.h: nvmf_connect_command, nvmf_property_*_command):
// opcode 7f, byte 1 (the kernel host sets PSDT 01 there as in any command),
// CID, fctype at byte 4, the SGL at 24, command fields from byte 40.

func TestEncodeConnectGolden(t *testing.T) {
	for _, tc := range []struct {
		f    ConnectFields
		want string
	}{
		{ConnectFields{CID: 0x0a0b, QID: 0, SQSize: 31, KATO: 5000},
			"7f 40 0b0a 01 000000 00000000 00000000 0000000000000000" +
				" 0000000000000000 00040000 000000 01" + // 1024 bytes of in-capsule data
				" 0000 0000 1f00 00 00 88130000 000000000000000000000000"},
		{ConnectFields{CID: 1, QID: 3, SQSize: 127, CAttr: 0x04, KATO: 0},
			"7f 40 0100 01 000000 00000000 00000000 0000000000000000" +
				" 0000000000000000 00040000 000000 01" +
				" 0000 0300 7f00 04 00 00000000 000000000000000000000000"},
	} {
		s := SQE(junk(SQELen))
		s.EncodeConnect(&tc.f)
		if want := goldenHex(t, tc.want); !bytes.Equal(s, want) {
			t.Errorf("EncodeConnect(%+v):\n got % x\nwant % x", tc.f, []byte(s), want)
		}
		expectEq(t, "opcode", s.Opcode(), OpcodeFabrics)
		expectEq(t, "fctype", s.FabricsType(), FabricsConnect)
		expectEq(t, "CID", s.CID(), tc.f.CID)
		expectEq(t, "RECFMT", s.ConnectRecFmt(), 0)
		expectEq(t, "QID", s.ConnectQID(), tc.f.QID)
		expectEq(t, "SQSIZE", s.ConnectSQSize(), tc.f.SQSize)
		expectEq(t, "CATTR", s.ConnectCAttr(), tc.f.CAttr)
		expectEq(t, "KATO", s.ConnectKATO(), tc.f.KATO)
		expectEq(t, "SGL", s.DPTR().ID(), SGLInCapsule)
		expectEq(t, "SGL length", s.DPTR().Length(), ConnectDataLen)
	}
}

func TestEncodePropertyGolden(t *testing.T) {
	for _, tc := range []struct {
		f    PropertyFields
		want string
	}{
		// Property Get CC (4 bytes): ATTRIB 0, OFST 0x14.
		{PropertyFields{CID: 2, Offset: PropCC},
			"7f 40 0200 04 000000" + strings.Repeat("00", 32) + " 00 000000 14000000" + strings.Repeat("00", 16)},
		// Property Get CAP (8 bytes): ATTRIB 1.
		{PropertyFields{CID: 3, Size8: true, Offset: PropCAP},
			"7f 40 0300 04 000000" + strings.Repeat("00", 32) + " 01 000000 00000000" + strings.Repeat("00", 16)},
		// Property Set CC = EN | IOSQES 6 | IOCQES 4: fctype 0, VALUE at 48.
		{PropertyFields{CID: 4, Set: true, Offset: PropCC, Value: 0x00460001},
			"7f 40 0400 00 000000" + strings.Repeat("00", 32) + " 00 000000 14000000 0100460000000000" + strings.Repeat("00", 8)},
	} {
		s := SQE(junk(SQELen))
		s.EncodeProperty(&tc.f)
		if want := goldenHex(t, tc.want); !bytes.Equal(s, want) {
			t.Errorf("EncodeProperty(%+v):\n got % x\nwant % x", tc.f, []byte(s), want)
		}
		attrib := uint8(0)
		if tc.f.Size8 {
			attrib = 1
		}
		expectEq(t, "ATTRIB", s.PropertyAttrib(), attrib)
		expectEq(t, "OFST", s.PropertyOffset(), tc.f.Offset)
		expectEq(t, "VALUE", s.PropertyValue(), tc.f.Value)
	}
}

// TestFabricsConstants pins fctypes, property offsets and register bits
// (NVMe over Fabrics and NVMe base specifications).
func TestFabricsConstants(t *testing.T) {
	for name, c := range map[string][2]int{
		"Property Set": {FabricsPropertySet, 0x00},
		"Connect":      {FabricsConnect, 0x01},
		"Property Get": {FabricsPropertyGet, 0x04},
		"Auth Send":    {FabricsAuthSend, 0x05},
		"Auth Recv":    {FabricsAuthRecv, 0x06},
		"Disconnect":   {FabricsDisconnect, 0x08},
		"CAP":          {PropCAP, 0x00},
		"VS":           {PropVS, 0x08},
		"CC":           {PropCC, 0x14},
		"CSTS":         {PropCSTS, 0x1c},
		"NSSR":         {PropNSSR, 0x20},
		"CC.EN":        {CCEnable, 1},
		"CC.SHN":       {CCShutdownMask, 0xc000},
		"CSTS.RDY":     {CSTSReady, 1},
		"CSTS.CFS":     {CSTSFatal, 2},
		"CSTS.SHST":    {CSTSShstMask, 0xc},
		"SHST normal":  {CSTSShstNormal, 0},
		"SHST running": {CSTSShstRunning, 4},
		"SHST done":    {CSTSShstDone, 8},
		"Connect data": {ConnectDataLen, 1024},
		"NQN max":      {NQNMaxLen, 223},
	} {
		if c[0] != c[1] {
			t.Errorf("%s = %#x, want %#x", name, c[0], c[1])
		}
	}
	expectEq(t, "DiscoveryNQN", DiscoveryNQN, "nqn.2014-08.org.nvmexpress.discovery")
}

func TestConnectDataGolden(t *testing.T) {
	f := ConnectDataFields{
		HostID:  [16]byte{0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f},
		CntlID:  0xffff,
		SubNQN:  "nqn.2024-01.io.nvmefs:test",
		HostNQN: "nqn.2014-08.org.nvmexpress:uuid:00112233-4455-6677-8899-aabbccddeeff",
	}
	// HOSTID 0..15, CNTLID 16..17, reserved, SUBNQN 256..511, HOSTNQN
	// 512..767, reserved to 1023 (Linux struct nvmf_connect_data).
	want := make([]byte, ConnectDataLen)
	copy(want, f.HostID[:])
	want[16], want[17] = 0xff, 0xff
	copy(want[256:], f.SubNQN)
	copy(want[512:], f.HostNQN)

	d := ConnectData(junk(ConnectDataLen))
	d.Encode(&f)
	if !bytes.Equal(d, want) {
		t.Fatalf("Encode:\n got % x\nwant % x", []byte(d), want)
	}
	expectEq(t, "HostID", d.HostID(), f.HostID)
	expectEq(t, "CntlID", d.CntlID(), 0xffff)
	expectEq(t, "SubNQN", d.SubNQN(), f.SubNQN)
	expectEq(t, "HostNQN", d.HostNQN(), f.HostNQN)

	// The I/O queue's Connect names the controller of the admin queue.
	d.Encode(&ConnectDataFields{CntlID: 0x0102, SubNQN: "s", HostNQN: "h"})
	expectEq(t, "CntlID LE", binary.LittleEndian.Uint16(d[16:]), 0x0102)
	expectEq(t, "SubNQN", d.SubNQN(), "s")
}

func TestConnectDataNQNBounds(t *testing.T) {
	d := ConnectData(make([]byte, ConnectDataLen))
	// Too long: cut to 255 bytes, the NUL terminator kept.
	d.Encode(&ConnectDataFields{SubNQN: strings.Repeat("a", 300), HostNQN: strings.Repeat("b", 256)})
	expectEq(t, "cut SubNQN", d.SubNQN(), strings.Repeat("a", 255))
	expectEq(t, "cut HostNQN", d.HostNQN(), strings.Repeat("b", 255))
	expectEq(t, "SUBNQN terminator", d[511], 0)
	expectEq(t, "HOSTNQN terminator", d[767], 0)
	if d[768] != 0 {
		t.Error("HOSTNQN overflowed into the reserved bytes")
	}
	// A peer's field without a NUL is read whole, and is then no valid NQN.
	for i := 512; i < 768; i++ {
		d[i] = 'c'
	}
	expectEq(t, "unterminated HostNQN", d.HostNQN(), strings.Repeat("c", 256))
	expectEq(t, "ValidNQN(unterminated)", ValidNQN(d.HostNQN()), false)
	// Bytes after the NUL are not part of the NQN.
	copy(d[256:], "nqn.x\x00garbage")
	expectEq(t, "SubNQN before NUL", d.SubNQN(), "nqn.x")
}

func TestValidNQN(t *testing.T) {
	for _, tc := range []struct {
		s    string
		want bool
	}{
		{"", false},
		{"n", true},
		{DiscoveryNQN, true},
		{"nqn.2014-08.org.nvmexpress:uuid:00112233-4455-6677-8899-aabbccddeeff", true},
		{strings.Repeat("x", 223), true},
		{strings.Repeat("x", 224), false},
		{"nqn.2024-01.example:données", true},                      // NQNs are UTF-8
		{"nqn.2024-01.example:" + strings.Repeat("é", 101), true},  // 20+202 = 222 bytes
		{"nqn.2024-01.example:" + strings.Repeat("é", 102), false}, // 224 bytes
		{"nqn\x00x", false},
		{"nqn\nx", false},
		{"nqn\tx", false},
		{"nqn\x7fx", false},
		{"nqn\u0085x", false}, // C1 control
		{"nqn\xffx", false},   // not UTF-8
		{"nqn\xc3", false},    // cut UTF-8
	} {
		if got := ValidNQN(tc.s); got != tc.want {
			t.Errorf("ValidNQN(%q) = %v, want %v", tc.s, got, tc.want)
		}
	}
}
