package nvme

import (
	"encoding/binary"
	"fmt"
)

// CQELen is the size of a completion queue entry.
const CQELen = 16

// CQE is a view of a 16-byte completion queue entry.
type CQE []byte

// CQEFields is what a CQE carries. Result is DW0..DW1 (Fabrics commands use
// all 64 bits; other commands DW0 only).
type CQEFields struct {
	Result uint64
	SQHD   uint16
	SQID   uint16
	CID    uint16
	Status Status
}

func (c CQE) Result() uint64 { return binary.LittleEndian.Uint64(c[0:]) }
func (c CQE) DW0() uint32    { return binary.LittleEndian.Uint32(c[0:]) }
func (c CQE) SQHD() uint16   { return binary.LittleEndian.Uint16(c[8:]) }
func (c CQE) SQID() uint16   { return binary.LittleEndian.Uint16(c[10:]) }
func (c CQE) CID() uint16    { return binary.LittleEndian.Uint16(c[12:]) }

// Status is the status field without the phase tag (which fabrics do not use).
func (c CQE) Status() Status { return Status(binary.LittleEndian.Uint16(c[14:]) >> 1) }

// Encode writes f into c.
func (c CQE) Encode(f *CQEFields) {
	binary.LittleEndian.PutUint64(c[0:], f.Result)
	binary.LittleEndian.PutUint16(c[8:], f.SQHD)
	binary.LittleEndian.PutUint16(c[10:], f.SQID)
	binary.LittleEndian.PutUint16(c[12:], f.CID)
	binary.LittleEndian.PutUint16(c[14:], uint16(f.Status)<<1)
}

// Status is an NVMe completion status: SC in bits 7:0, SCT in bits 10:8, CRD
// in 12:11, More in 13 and DNR in 14 (the CQE's status field shifted right by
// one, as Linux keeps it).
type Status uint16

// Status code types.
const (
	SCTGeneric         = 0x0
	SCTCommandSpecific = 0x1
	SCTMedia           = 0x2
	SCTPath            = 0x3
)

// Generic command status (SCT 0).
const (
	StatusSuccess              Status = 0x00
	StatusInvalidOpcode        Status = 0x01
	StatusInvalidField         Status = 0x02
	StatusCIDConflict          Status = 0x03
	StatusDataTransferError    Status = 0x04
	StatusInternalError        Status = 0x06
	StatusAbortRequested       Status = 0x07
	StatusInvalidNamespace     Status = 0x0b
	StatusCommandSequenceError Status = 0x0c
	StatusInvalidSGLSegment    Status = 0x0d
	StatusInvalidSGLCount      Status = 0x0e
	StatusDataSGLLengthInvalid Status = 0x0f
	StatusSGLTypeInvalid       Status = 0x11
	StatusSGLOffsetInvalid     Status = 0x16
	StatusTransientTransport   Status = 0x22
	StatusLBAOutOfRange        Status = 0x80
	StatusCapacityExceeded     Status = 0x81
	StatusNamespaceNotReady    Status = 0x82
)

// Command specific status (SCT 1).
const (
	StatusInvalidQueueID        Status = SCTCommandSpecific<<8 | 0x01
	StatusMaxQueueSizeExceeded  Status = SCTCommandSpecific<<8 | 0x02
	StatusAsyncEventLimit       Status = SCTCommandSpecific<<8 | 0x05
	StatusInvalidLogPage        Status = SCTCommandSpecific<<8 | 0x09
	StatusFeatureNotSaveable    Status = SCTCommandSpecific<<8 | 0x0d
	StatusFeatureNotChangeable  Status = SCTCommandSpecific<<8 | 0x0e
	StatusConnectIncompatFormat Status = SCTCommandSpecific<<8 | 0x80
	StatusConnectCtrlBusy       Status = SCTCommandSpecific<<8 | 0x81
	StatusConnectInvalidParam   Status = SCTCommandSpecific<<8 | 0x82
	StatusConnectRestartDisc    Status = SCTCommandSpecific<<8 | 0x83
	StatusConnectInvalidHost    Status = SCTCommandSpecific<<8 | 0x84
)

// Media and data integrity errors (SCT 2).
const (
	StatusWriteFault      Status = SCTMedia<<8 | 0x80
	StatusUnrecoveredRead Status = SCTMedia<<8 | 0x81
)

// StatusDNR is the Do Not Retry bit.
const StatusDNR Status = 1 << 14

func (s Status) SC() uint8     { return uint8(s) }
func (s Status) SCT() uint8    { return uint8(s>>8) & 0x7 }
func (s Status) DNR() bool     { return s&StatusDNR != 0 }
func (s Status) Code() Status  { return s & 0x7ff } // SCT and SC, without CRD/More/DNR
func (s Status) Success() bool { return s.Code() == StatusSuccess }

var statusNames = map[Status]string{
	StatusSuccess:               "success",
	StatusInvalidOpcode:         "invalid command opcode",
	StatusInvalidField:          "invalid field in command",
	StatusCIDConflict:           "command id conflict",
	StatusDataTransferError:     "data transfer error",
	StatusInternalError:         "internal error",
	StatusAbortRequested:        "command abort requested",
	StatusInvalidNamespace:      "invalid namespace or format",
	StatusCommandSequenceError:  "command sequence error",
	StatusInvalidSGLSegment:     "invalid SGL segment descriptor",
	StatusInvalidSGLCount:       "invalid number of SGL descriptors",
	StatusDataSGLLengthInvalid:  "data SGL length invalid",
	StatusSGLTypeInvalid:        "SGL descriptor type invalid",
	StatusSGLOffsetInvalid:      "SGL offset invalid",
	StatusTransientTransport:    "transient transport error",
	StatusLBAOutOfRange:         "LBA out of range",
	StatusCapacityExceeded:      "capacity exceeded",
	StatusNamespaceNotReady:     "namespace not ready",
	StatusInvalidQueueID:        "invalid queue identifier",
	StatusMaxQueueSizeExceeded:  "invalid queue size",
	StatusAsyncEventLimit:       "asynchronous event request limit exceeded",
	StatusInvalidLogPage:        "invalid log page",
	StatusFeatureNotSaveable:    "feature identifier not saveable",
	StatusFeatureNotChangeable:  "feature not changeable",
	StatusConnectIncompatFormat: "connect: incompatible format",
	StatusConnectCtrlBusy:       "connect: controller busy",
	StatusConnectInvalidParam:   "connect: invalid parameters",
	StatusConnectRestartDisc:    "connect: restart discovery",
	StatusConnectInvalidHost:    "connect: invalid host",
	StatusWriteFault:            "write fault",
	StatusUnrecoveredRead:       "unrecovered read error",
}

func (s Status) String() string {
	name, ok := statusNames[s.Code()]
	if !ok {
		name = "status"
	}
	str := fmt.Sprintf("%s (sct %#x sc %#02x)", name, s.SCT(), s.SC())
	if s.DNR() {
		str += " dnr"
	}
	return str
}

// Error makes a non-success Status usable as an error.
func (s Status) Error() string { return "nvme: " + s.String() }
