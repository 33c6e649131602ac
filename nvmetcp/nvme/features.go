package nvme

import "encoding/binary"

// Feature identifiers (Set/Get Features CDW10 bits 7:0).
const (
	FeatArbitration       = 0x01
	FeatPowerManagement   = 0x02
	FeatTemperature       = 0x04
	FeatErrorRecovery     = 0x05
	FeatVolatileWC        = 0x06
	FeatNumQueues         = 0x07
	FeatIRQCoalescing     = 0x08
	FeatIRQConfig         = 0x09
	FeatWriteAtomicity    = 0x0a
	FeatAsyncEventConfig  = 0x0b
	FeatAutonomousPST     = 0x0c
	FeatTimestamp         = 0x0e
	FeatKeepAliveTimer    = 0x0f
	FeatHostBehavior      = 0x16
	FeatHostIdentifier    = 0x81
	FeatSoftwareProgress  = 0x80
	FeatReservationNotify = 0x82
)

// Get Features select (CDW10 bits 10:8).
const (
	FeatSelCurrent   = 0
	FeatSelDefault   = 1
	FeatSelSaved     = 2
	FeatSelSupported = 3
)

// Capabilities returned for FeatSelSupported.
const (
	FeatCapSaveable   = 1 << 0
	FeatCapNSSpecific = 1 << 1
	FeatCapChangeable = 1 << 2
)

// Set/Get Features fields: CDW10 bits 7:0 FID, 10:8 SEL (Get), 31 SV (Set).
func (s SQE) FeatureID() uint8     { return s[40] }
func (s SQE) FeatureSel() uint8    { return s[41] & 7 }
func (s SQE) FeatureSave() bool    { return s[43]&0x80 != 0 }
func (s SQE) FeatureValue() uint32 { return binary.LittleEndian.Uint32(s[44:]) } // CDW11

// FeaturesFields is a Set Features or Get Features command without data.
type FeaturesFields struct {
	CID   uint16
	Set   bool
	NSID  uint32
	FID   uint8
	Sel   uint8 // Get only
	Save  bool  // Set only
	Value uint32
}

// EncodeFeatures writes a Set Features or Get Features command.
func (s SQE) EncodeFeatures(f *FeaturesFields) {
	op := uint8(AdminGetFeatures)
	cdw10 := uint32(f.FID) | uint32(f.Sel&7)<<8
	if f.Set {
		op = AdminSetFeatures
		cdw10 = uint32(f.FID)
		if f.Save {
			cdw10 |= 1 << 31
		}
	}
	s.Encode(&SQEFields{
		Opcode: op,
		Flags:  FlagsPSDTSGL,
		CID:    f.CID,
		NSID:   f.NSID,
		DPTR:   SGLFields{ID: SGLTransportData},
		CDW10:  cdw10,
		CDW11:  f.Value,
	})
}

// NumQueuesValue is the Number of Queues value asking for (or granting) sq
// submission and cq completion queues (1-based counts, 1..65535).
func NumQueuesValue(sq, cq int) uint32 {
	return uint32(sq-1)&0xffff | (uint32(cq-1)&0xffff)<<16
}

// NumQueues decodes a Number of Queues value into 1-based counts.
func NumQueues(v uint32) (sq, cq int) {
	return int(v&0xffff) + 1, int(v>>16) + 1
}

// Volatile Write Cache feature: bit 0 enables the cache.
const VWCEnable = 1 << 0

// Asynchronous Event Configuration bits.
const AECNSAttrNotices = 1 << 8

// Asynchronous Event Request completion DW0: type (2:0), information (15:8)
// and the log page to read (23:16).
const (
	AsyncEventTypeError  = 0
	AsyncEventTypeSMART  = 1
	AsyncEventTypeNotice = 2

	AsyncEventInfoNSChanged = 0x00
)

// AsyncEventResult builds the DW0 of an Asynchronous Event Request completion.
func AsyncEventResult(eventType, info, logPage uint8) uint32 {
	return uint32(eventType&7) | uint32(info)<<8 | uint32(logPage)<<16
}
