package nvme

import (
	"bytes"
	"errors"
	"testing"
)

func TestCQEGolden(t *testing.T) {
	for _, tc := range []struct {
		f    CQEFields
		want string
	}{
		// DW0..DW1 result, SQHD, SQID, CID, then the status field: the
		// Status shifted left past the phase tag (bit 0), which fabrics
		// leave 0.
		{CQEFields{Result: 0x0000000100000002, SQHD: 3, SQID: 4, CID: 0x1234, Status: StatusSuccess},
			"0200000001000000 0300 0400 3412 0000"},
		{CQEFields{CID: 1, Status: StatusLBAOutOfRange}, "0000000000000000 0000 0000 0100 0001"},
		{CQEFields{CID: 1, Status: StatusInvalidField | StatusDNR}, "0000000000000000 0000 0000 0100 0480"},
		{CQEFields{CID: 1, Status: StatusConnectInvalidHost | StatusDNR}, "0000000000000000 0000 0000 0100 0883"},
		{CQEFields{Result: 0xffffffffffffffff, SQHD: 0xffff, SQID: 0xffff, CID: 0xffff, Status: 0x7fff},
			"ffffffffffffffff ffff ffff ffff feff"},
	} {
		c := CQE(junk(CQELen))
		c.Encode(&tc.f)
		if want := goldenHex(t, tc.want); !bytes.Equal(c, want) {
			t.Errorf("Encode(%+v):\n got % x\nwant % x", tc.f, []byte(c), want)
		}
		expectEq(t, "Result", c.Result(), tc.f.Result)
		expectEq(t, "DW0", c.DW0(), uint32(tc.f.Result))
		expectEq(t, "SQHD", c.SQHD(), tc.f.SQHD)
		expectEq(t, "SQID", c.SQID(), tc.f.SQID)
		expectEq(t, "CID", c.CID(), tc.f.CID)
		expectEq(t, "Status", c.Status(), tc.f.Status)
	}
	// The phase tag is not part of the Status.
	c := CQE(goldenHex(t, "0000000000000000 0000 0000 0100 0580"))
	expectEq(t, "Status with phase set", c.Status(), StatusInvalidField|StatusDNR)
}

func TestStatusFields(t *testing.T) {
	// SC 7:0, SCT 10:8, CRD 12:11, More 13, DNR 14.
	s := Status(0x4000 | 0x2000 | 0x1800 | 0x0184)
	expectEq(t, "SC", s.SC(), 0x84)
	expectEq(t, "SCT", s.SCT(), SCTCommandSpecific)
	expectEq(t, "DNR", s.DNR(), true)
	expectEq(t, "Code", s.Code(), StatusConnectInvalidHost)
	expectEq(t, "Success", s.Success(), false)
	expectEq(t, "DNR-only Success", StatusDNR.Success(), true)
	expectEq(t, "Success", StatusSuccess.Success(), true)
	expectEq(t, "DNR of plain", StatusLBAOutOfRange.DNR(), false)
	expectEq(t, "media SCT", StatusUnrecoveredRead.SCT(), SCTMedia)
	expectEq(t, "StatusDNR", StatusDNR, 0x4000)
}

// TestStatusValues pins the codes of the NVMe base specification (and of
// Linux include/linux/nvme.h, which keeps them as the status field >> 1).
func TestStatusValues(t *testing.T) {
	for name, c := range map[string][2]Status{
		"Success":                {StatusSuccess, 0x000},
		"Invalid Opcode":         {StatusInvalidOpcode, 0x001},
		"Invalid Field":          {StatusInvalidField, 0x002},
		"CID Conflict":           {StatusCIDConflict, 0x003},
		"Data Transfer Error":    {StatusDataTransferError, 0x004},
		"Internal":               {StatusInternalError, 0x006},
		"Abort Requested":        {StatusAbortRequested, 0x007},
		"Invalid NS":             {StatusInvalidNamespace, 0x00b},
		"Cmd Seq Error":          {StatusCommandSequenceError, 0x00c},
		"SGL Invalid Last":       {StatusInvalidSGLSegment, 0x00d},
		"SGL Invalid Count":      {StatusInvalidSGLCount, 0x00e},
		"SGL Invalid Data":       {StatusDataSGLLengthInvalid, 0x00f},
		"SGL Invalid Type":       {StatusSGLTypeInvalid, 0x011},
		"SGL Invalid Offset":     {StatusSGLOffsetInvalid, 0x016},
		"Host Path / Transient":  {StatusTransientTransport, 0x022},
		"LBA Range":              {StatusLBAOutOfRange, 0x080},
		"Cap Exceeded":           {StatusCapacityExceeded, 0x081},
		"NS Not Ready":           {StatusNamespaceNotReady, 0x082},
		"QID Invalid":            {StatusInvalidQueueID, 0x101},
		"Queue Size":             {StatusMaxQueueSizeExceeded, 0x102},
		"Async Limit":            {StatusAsyncEventLimit, 0x105},
		"Invalid Log Page":       {StatusInvalidLogPage, 0x109},
		"Feature Not Saveable":   {StatusFeatureNotSaveable, 0x10d},
		"Feature Not Changeable": {StatusFeatureNotChangeable, 0x10e},
		"Connect Format":         {StatusConnectIncompatFormat, 0x180},
		"Connect Ctrl Busy":      {StatusConnectCtrlBusy, 0x181},
		"Connect Invalid Param":  {StatusConnectInvalidParam, 0x182},
		"Connect Restart Disc":   {StatusConnectRestartDisc, 0x183},
		"Connect Invalid Host":   {StatusConnectInvalidHost, 0x184},
		"Write Fault":            {StatusWriteFault, 0x280},
		"Read Error":             {StatusUnrecoveredRead, 0x281},
	} {
		if c[0] != c[1] {
			t.Errorf("%s = %#x, want %#x", name, uint16(c[0]), uint16(c[1]))
		}
	}
}

func TestStatusString(t *testing.T) {
	for _, tc := range []struct {
		s    Status
		want string
	}{
		{StatusSuccess, "success (sct 0x0 sc 0x00)"},
		{StatusInvalidField | StatusDNR, "invalid field in command (sct 0x0 sc 0x02) dnr"},
		{StatusLBAOutOfRange, "LBA out of range (sct 0x0 sc 0x80)"},
		{StatusConnectInvalidHost | StatusDNR, "connect: invalid host (sct 0x1 sc 0x84) dnr"},
		{StatusUnrecoveredRead, "unrecovered read error (sct 0x2 sc 0x81)"},
		{Status(0x3000 | 0x2ff), "status (sct 0x2 sc 0xff)"}, // unknown; CRD and More are not named
	} {
		expectEq(t, "String", tc.s.String(), tc.want)
		expectEq(t, "Error", tc.s.Error(), "nvme: "+tc.want)
	}
	var err error = StatusInvalidNamespace | StatusDNR
	var st Status
	if !errors.As(err, &st) || st.Code() != StatusInvalidNamespace {
		t.Errorf("errors.As(%v) = %#x", err, uint16(st))
	}
}
