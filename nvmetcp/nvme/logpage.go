package nvme

import (
	"encoding/binary"
)

// Log page identifiers.
const (
	LogError          = 0x01
	LogSMART          = 0x02
	LogFirmwareSlot   = 0x03
	LogChangedNS      = 0x04
	LogCommandEffects = 0x05
	LogDiscovery      = 0x70
)

// Get Log Page command fields: CDW10 bits 7:0 LID, 14:8 LSP, 15 RAE, 31:16
// NUMDL; CDW11 bits 15:0 NUMDU, 31:16 LSI; CDW12-13 the byte offset (LPOL/LPOU).
func (s SQE) LogPageID() uint8  { return s[40] }
func (s SQE) LogPageLSP() uint8 { return s[41] & 0x7f }
func (s SQE) LogPageRAE() bool  { return s[41]&0x80 != 0 }
func (s SQE) LogPageLSI() uint16 {
	return binary.LittleEndian.Uint16(s[46:])
}

// LogPageLen is the number of bytes requested: (NUMD+1)*4, at most 16 GiB.
func (s SQE) LogPageLen() uint64 {
	numd := uint64(binary.LittleEndian.Uint16(s[42:])) | uint64(binary.LittleEndian.Uint16(s[44:]))<<16
	return (numd + 1) * 4
}

// LogPageOffset is the byte offset into the log page (a multiple of 4).
func (s SQE) LogPageOffset() uint64 { return binary.LittleEndian.Uint64(s[48:]) }

// GetLogPageFields is a Get Log Page command; Len bytes (a non-zero multiple
// of 4) come back through C2HData.
type GetLogPageFields struct {
	CID    uint16
	NSID   uint32
	LID    uint8
	LSP    uint8
	RAE    bool
	Len    uint32
	Offset uint64
}

// EncodeGetLogPage writes a Get Log Page command.
func (s SQE) EncodeGetLogPage(f *GetLogPageFields) {
	numd := f.Len/4 - 1
	cdw10 := uint32(f.LID) | uint32(f.LSP&0x7f)<<8 | (numd&0xffff)<<16
	if f.RAE {
		cdw10 |= 1 << 15
	}
	s.Encode(&SQEFields{
		Opcode: AdminGetLogPage,
		Flags:  FlagsPSDTSGL,
		CID:    f.CID,
		NSID:   f.NSID,
		DPTR:   SGLFields{Length: f.Len, ID: SGLTransportData},
		CDW10:  cdw10,
		CDW11:  numd >> 16,
		CDW12:  uint32(f.Offset),
		CDW13:  uint32(f.Offset >> 32),
	})
}

// ErrorLogEntryLen is the size of one Error Information log entry.
const ErrorLogEntryLen = 64

// ErrorLogEntry is a view of one 64-byte Error Information log entry.
type ErrorLogEntry []byte

// ErrorLogEntryFields is what an error log entry carries.
type ErrorLogEntryFields struct {
	ErrorCount    uint64 // unique, increasing; 0: the entry is empty
	SQID          uint16
	CID           uint16
	Status        Status
	ParamLocation uint16 // byte (bits 7:0) and bit (10:8) of the command in error
	LBA           uint64
	NSID          uint32
	TrType        uint8
}

func (e ErrorLogEntry) ErrorCount() uint64 { return binary.LittleEndian.Uint64(e[0:]) }
func (e ErrorLogEntry) SQID() uint16       { return binary.LittleEndian.Uint16(e[8:]) }
func (e ErrorLogEntry) CID() uint16        { return binary.LittleEndian.Uint16(e[10:]) }

// Status is the status field of the failed command (phase tag dropped).
func (e ErrorLogEntry) Status() Status        { return Status(binary.LittleEndian.Uint16(e[12:]) >> 1) }
func (e ErrorLogEntry) ParamLocation() uint16 { return binary.LittleEndian.Uint16(e[14:]) }
func (e ErrorLogEntry) LBA() uint64           { return binary.LittleEndian.Uint64(e[16:]) }
func (e ErrorLogEntry) NSID() uint32          { return binary.LittleEndian.Uint32(e[24:]) }
func (e ErrorLogEntry) TrType() uint8         { return e[29] }

// Encode writes f into e.
func (e ErrorLogEntry) Encode(f *ErrorLogEntryFields) {
	clear(e[:ErrorLogEntryLen])
	le := binary.LittleEndian
	le.PutUint64(e[0:], f.ErrorCount)
	le.PutUint16(e[8:], f.SQID)
	le.PutUint16(e[10:], f.CID)
	le.PutUint16(e[12:], uint16(f.Status)<<1)
	le.PutUint16(e[14:], f.ParamLocation)
	le.PutUint64(e[16:], f.LBA)
	le.PutUint32(e[24:], f.NSID)
	e[29] = f.TrType
}

// SMARTLogLen is the size of the SMART / Health Information log page.
const SMARTLogLen = 512

// SMARTLog is a view of the SMART / Health Information log page. The
// 128-bit counters are read and written as their low 64 bits.
type SMARTLog []byte

// SMARTLogFields is what the SMART log carries. Data units are thousands of
// 512-byte units, rounded up.
type SMARTLogFields struct {
	CriticalWarning  uint8
	Temperature      uint16 // kelvin; 0: not reported
	AvailableSpare   uint8  // percent
	SpareThreshold   uint8
	PercentUsed      uint8
	DataUnitsRead    uint64
	DataUnitsWritten uint64
	HostReads        uint64
	HostWrites       uint64
	BusyTimeMinutes  uint64
	PowerCycles      uint64
	PowerOnHours     uint64
	UnsafeShutdowns  uint64
	MediaErrors      uint64
	ErrorLogEntries  uint64
}

func (s SMARTLog) CriticalWarning() uint8   { return s[0] }
func (s SMARTLog) Temperature() uint16      { return binary.LittleEndian.Uint16(s[1:]) }
func (s SMARTLog) AvailableSpare() uint8    { return s[3] }
func (s SMARTLog) SpareThreshold() uint8    { return s[4] }
func (s SMARTLog) PercentUsed() uint8       { return s[5] }
func (s SMARTLog) DataUnitsRead() uint64    { return binary.LittleEndian.Uint64(s[32:]) }
func (s SMARTLog) DataUnitsWritten() uint64 { return binary.LittleEndian.Uint64(s[48:]) }
func (s SMARTLog) HostReads() uint64        { return binary.LittleEndian.Uint64(s[64:]) }
func (s SMARTLog) HostWrites() uint64       { return binary.LittleEndian.Uint64(s[80:]) }
func (s SMARTLog) BusyTimeMinutes() uint64  { return binary.LittleEndian.Uint64(s[96:]) }
func (s SMARTLog) PowerCycles() uint64      { return binary.LittleEndian.Uint64(s[112:]) }
func (s SMARTLog) PowerOnHours() uint64     { return binary.LittleEndian.Uint64(s[128:]) }
func (s SMARTLog) UnsafeShutdowns() uint64  { return binary.LittleEndian.Uint64(s[144:]) }
func (s SMARTLog) MediaErrors() uint64      { return binary.LittleEndian.Uint64(s[160:]) }
func (s SMARTLog) ErrorLogEntries() uint64  { return binary.LittleEndian.Uint64(s[176:]) }

// Encode writes f into s (SMARTLogLen bytes).
func (s SMARTLog) Encode(f *SMARTLogFields) {
	clear(s[:SMARTLogLen])
	le := binary.LittleEndian
	s[0] = f.CriticalWarning
	le.PutUint16(s[1:], f.Temperature)
	s[3] = f.AvailableSpare
	s[4] = f.SpareThreshold
	s[5] = f.PercentUsed
	for i, v := range [...]uint64{f.DataUnitsRead, f.DataUnitsWritten, f.HostReads, f.HostWrites,
		f.BusyTimeMinutes, f.PowerCycles, f.PowerOnHours, f.UnsafeShutdowns, f.MediaErrors, f.ErrorLogEntries} {
		le.PutUint64(s[32+16*i:], v)
	}
}

// DataUnits converts bytes to SMART data units: thousands of 512-byte
// units, rounded up.
func DataUnits(bytes uint64) uint64 {
	sectors := (bytes + 511) / 512
	return (sectors + 999) / 1000
}

// FirmwareSlotLogLen is the size of the Firmware Slot Information log page.
const FirmwareSlotLogLen = 512

// FirmwareSlotLog is a view of the Firmware Slot Information log page.
type FirmwareSlotLog []byte

// FirmwareSlotLogFields is what the firmware slot log carries.
type FirmwareSlotLogFields struct {
	ActiveSlot uint8     // AFI bits 2:0
	Revisions  [7]string // slots 1..7, 8 ASCII bytes each
}

func (f FirmwareSlotLog) ActiveSlot() uint8 { return f[0] & 7 }

// Revision returns slot n's (1..7) firmware revision.
func (f FirmwareSlotLog) Revision(n int) string {
	if n < 1 || n > 7 {
		return ""
	}
	return asciiField(f[8*n : 8*n+8])
}

// Encode writes fields into f (FirmwareSlotLogLen bytes). Empty slots are
// zero filled, as the specification asks.
func (f FirmwareSlotLog) Encode(fl *FirmwareSlotLogFields) {
	clear(f[:FirmwareSlotLogLen])
	f[0] = fl.ActiveSlot & 7
	for i, r := range fl.Revisions {
		if r != "" {
			putASCII(f[8*(i+1):8*(i+2)], r)
		}
	}
}

// ChangedNSListLen is the size of the Changed Namespace List log page, an
// NSList.
const ChangedNSListLen = IdentifyDataLen

// Command Effects log: one 32-bit entry per admin opcode, then per I/O opcode.
const (
	CommandEffectsLogLen = 4096
	EffectsCSUPP         = 1 << 0 // command supported
	EffectsLBCC          = 1 << 1 // logical block content change
	EffectsNCC           = 1 << 2 // namespace capability change
	EffectsNIC           = 1 << 3 // namespace inventory change
	EffectsCCC           = 1 << 4 // controller capability change
)

// CommandEffectsLog is a view of the Commands Supported and Effects log page.
type CommandEffectsLog []byte

// CommandEffectsLogFields is what the command effects log carries.
type CommandEffectsLogFields struct {
	Admin [256]uint32
	IO    [256]uint32
}

func (c CommandEffectsLog) Admin(opcode uint8) uint32 {
	return binary.LittleEndian.Uint32(c[4*int(opcode):])
}
func (c CommandEffectsLog) IO(opcode uint8) uint32 {
	return binary.LittleEndian.Uint32(c[1024+4*int(opcode):])
}

// Encode writes f into c (CommandEffectsLogLen bytes).
func (c CommandEffectsLog) Encode(f *CommandEffectsLogFields) {
	clear(c[:CommandEffectsLogLen])
	for i := range 256 {
		binary.LittleEndian.PutUint32(c[4*i:], f.Admin[i])
		binary.LittleEndian.PutUint32(c[1024+4*i:], f.IO[i])
	}
}

// Discovery log page (LID 0x70): a 1024-byte header, then 1024-byte entries.
const (
	DiscoveryLogHeaderLen = 1024
	DiscoveryLogEntryLen  = 1024

	TrTypeTCP = 3

	AdrFamIPv4 = 1
	AdrFamIPv6 = 2

	SubTypeReferral         = 1 // a discovery service referral
	SubTypeNVM              = 2 // an NVM subsystem
	SubTypeCurrentDiscovery = 3 // the discovery subsystem answering

	TReqNotSpecified = 0

	TCPSecTypeNone = 0

	CntlIDDynamic = 0xffff
)

// DiscoveryLogHeader is a view of the discovery log page header.
type DiscoveryLogHeader []byte

// DiscoveryLogHeaderFields is what the discovery log header carries.
type DiscoveryLogHeaderFields struct {
	GenCtr uint64
	NumRec uint64
	RecFmt uint16
}

func (h DiscoveryLogHeader) GenCtr() uint64 { return binary.LittleEndian.Uint64(h[0:]) }
func (h DiscoveryLogHeader) NumRec() uint64 { return binary.LittleEndian.Uint64(h[8:]) }
func (h DiscoveryLogHeader) RecFmt() uint16 { return binary.LittleEndian.Uint16(h[16:]) }

// Encode writes f into h (DiscoveryLogHeaderLen bytes).
func (h DiscoveryLogHeader) Encode(f *DiscoveryLogHeaderFields) {
	clear(h[:DiscoveryLogHeaderLen])
	binary.LittleEndian.PutUint64(h[0:], f.GenCtr)
	binary.LittleEndian.PutUint64(h[8:], f.NumRec)
	binary.LittleEndian.PutUint16(h[16:], f.RecFmt)
}

// DiscoveryLogEntry is a view of one discovery log page entry.
type DiscoveryLogEntry []byte

// DiscoveryLogEntryFields is what a discovery log entry carries.
type DiscoveryLogEntryFields struct {
	TrType  uint8
	AdrFam  uint8
	SubType uint8
	TReq    uint8
	PortID  uint16
	CntlID  uint16
	ASQSZ   uint16
	EFlags  uint16
	TrSvcID string // transport service id: the TCP port, as text (32 bytes)
	SubNQN  string
	TrAddr  string // transport address: the IP address, as text (256 bytes)
	SecType uint8  // TCP: TSAS security type
}

func (e DiscoveryLogEntry) TrType() uint8   { return e[0] }
func (e DiscoveryLogEntry) AdrFam() uint8   { return e[1] }
func (e DiscoveryLogEntry) SubType() uint8  { return e[2] }
func (e DiscoveryLogEntry) TReq() uint8     { return e[3] }
func (e DiscoveryLogEntry) PortID() uint16  { return binary.LittleEndian.Uint16(e[4:]) }
func (e DiscoveryLogEntry) CntlID() uint16  { return binary.LittleEndian.Uint16(e[6:]) }
func (e DiscoveryLogEntry) ASQSZ() uint16   { return binary.LittleEndian.Uint16(e[8:]) }
func (e DiscoveryLogEntry) EFlags() uint16  { return binary.LittleEndian.Uint16(e[10:]) }
func (e DiscoveryLogEntry) TrSvcID() string { return asciiField(e[32:64]) }
func (e DiscoveryLogEntry) SubNQN() string  { return nqnString(e[256:512]) }
func (e DiscoveryLogEntry) TrAddr() string  { return asciiField(e[512:768]) }
func (e DiscoveryLogEntry) SecType() uint8  { return e[768] }

// Encode writes f into e (DiscoveryLogEntryLen bytes). TRSVCID and TRADDR
// are NUL padded, as Linux's nvmet writes them (readers trim both spaces and
// NULs); SUBNQN is NUL terminated.
func (e DiscoveryLogEntry) Encode(f *DiscoveryLogEntryFields) {
	clear(e[:DiscoveryLogEntryLen])
	le := binary.LittleEndian
	e[0] = f.TrType
	e[1] = f.AdrFam
	e[2] = f.SubType
	e[3] = f.TReq
	le.PutUint16(e[4:], f.PortID)
	le.PutUint16(e[6:], f.CntlID)
	le.PutUint16(e[8:], f.ASQSZ)
	le.PutUint16(e[10:], f.EFlags)
	copy(e[32:63], f.TrSvcID)
	copy(e[256:511], f.SubNQN)
	copy(e[512:767], f.TrAddr)
	e[768] = f.SecType
}
