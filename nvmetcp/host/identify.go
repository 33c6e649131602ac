package host

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Identify and log page layouts the host reads (NVMe Base 2.0, NVMe over
// Fabrics 1.1). Parsed here into plain structs; only what the host uses.

const (
	identifyLen = 4096

	cnsNamespace       = 0x00
	cnsController      = 0x01
	cnsActiveNamespace = 0x02

	featureNumQueues = 0x07

	logPageDiscovery = 0x70

	discoveryHeaderLen = 1024
	discoveryEntryLen  = 1024
	// maxDiscoveryRecords bounds the discovery log the host reads (1 MiB).
	maxDiscoveryRecords = 1023
)

// ONCS bits (optional NVM command support).
const (
	oncsDSM         = 1 << 2
	oncsWriteZeroes = 1 << 3
)

// ControllerInfo is what Identify Controller and Connect told the host.
type ControllerInfo struct {
	CntlID       uint16
	VendorID     uint16
	Serial       string
	Model        string
	Firmware     string
	SubNQN       string
	Version      uint32 // VS property: major<<16 | minor<<8 | tertiary
	MDTS         uint8  // 2^MDTS minimum pages per command; 0: no limit
	MaxCmd       uint16
	NN           uint32 // highest namespace id
	ONCS         uint16
	VWC          bool // volatile write cache present
	SGLS         uint32
	IOCCSZ       uint32 // I/O queue command capsule size, in 16-byte units
	IORCSZ       uint32
	ICDOFF       uint16
	KAS          uint16 // keep-alive granularity, 100 ms units
	MaxTransfer  int    // bytes per command the host uses (Options.MaxTransfer capped by MDTS)
	InCapsule    int    // in-capsule write data on I/O queues (0: none)
	IOQueues     int    // I/O queues connected
	QueueSize    int    // depth of each I/O queue
	MaxH2CData   uint32 // from the I/O queues' ICResp
	HeaderDigest bool
	DataDigest   bool
}

func parseIdentifyController(b []byte, ci *ControllerInfo) error {
	if len(b) < identifyLen {
		return fmt.Errorf("identify controller: %d bytes", len(b))
	}
	le := binary.LittleEndian
	ci.VendorID = le.Uint16(b[0:])
	ci.Serial = trimField(b[4:24])
	ci.Model = trimField(b[24:64])
	ci.Firmware = trimField(b[64:72])
	ci.MDTS = b[77]
	ci.KAS = le.Uint16(b[320:])
	ci.MaxCmd = le.Uint16(b[514:])
	ci.NN = le.Uint32(b[516:])
	ci.ONCS = le.Uint16(b[520:])
	ci.VWC = b[525]&1 != 0
	ci.SGLS = le.Uint32(b[536:])
	ci.SubNQN = trimField(b[768:1024])
	ci.IOCCSZ = le.Uint32(b[1792:])
	ci.IORCSZ = le.Uint32(b[1796:])
	ci.ICDOFF = le.Uint16(b[1800:])
	return nil
}

// Namespace is an active namespace as Identify Namespace describes it.
type Namespace struct {
	ID        uint32
	Blocks    uint64 // NSZE
	BlockSize int    // bytes per LBA
	NGUID     [16]byte
	EUI64     [8]byte
}

// Size is the namespace size in bytes.
func (n Namespace) Size() int64 { return int64(n.Blocks) * int64(n.BlockSize) }

func parseIdentifyNamespace(nsid uint32, b []byte) (Namespace, error) {
	if len(b) < identifyLen {
		return Namespace{}, fmt.Errorf("identify namespace %d: %d bytes", nsid, len(b))
	}
	le := binary.LittleEndian
	ns := Namespace{ID: nsid, Blocks: le.Uint64(b[0:])}
	nlbaf := int(b[25]) + 1
	flbas := int(b[26]&0x0f) | int(b[26]>>5&0x3)<<4
	if flbas >= nlbaf || flbas >= 64 {
		return ns, fmt.Errorf("identify namespace %d: FLBAS %d beyond %d formats", nsid, flbas, nlbaf)
	}
	lbaf := b[128+4*flbas:]
	if ms := le.Uint16(lbaf[0:]); ms != 0 {
		return ns, fmt.Errorf("namespace %d: %d bytes of metadata per block are not supported", nsid, ms)
	}
	lbads := lbaf[2]
	if lbads < 9 || lbads > 16 {
		return ns, fmt.Errorf("namespace %d: LBA data size 2^%d not supported", nsid, lbads)
	}
	ns.BlockSize = 1 << lbads
	if ns.Blocks > 1<<63/uint64(ns.BlockSize) {
		return ns, fmt.Errorf("namespace %d: %d blocks is too large", nsid, ns.Blocks)
	}
	copy(ns.NGUID[:], b[104:120])
	copy(ns.EUI64[:], b[120:128])
	return ns, nil
}

// parseActiveNamespaces reads an active namespace ID list: ascending NSIDs,
// ended by the first 0.
func parseActiveNamespaces(b []byte) ([]uint32, error) {
	var ids []uint32
	var last uint32
	for i := 0; i+4 <= len(b) && i < identifyLen; i += 4 {
		id := binary.LittleEndian.Uint32(b[i:])
		if id == 0 {
			break
		}
		if id <= last || id == 0xffffffff {
			return nil, fmt.Errorf("active namespace list: NSID %d after %d", id, last)
		}
		ids = append(ids, id)
		last = id
	}
	return ids, nil
}

// DiscoveryEntry is one record of the discovery log page (0x70).
type DiscoveryEntry struct {
	TransportType   uint8 // 3: TCP
	AddressFamily   uint8 // 1: IPv4, 2: IPv6
	SubsystemType   uint8 // 1: discovery (referral), 2: NVM subsystem, 3: current discovery subsystem
	TransportReq    uint8 // TREQ: secure channel requirements
	PortID          uint16
	CntlID          uint16
	AdminQueueSize  uint16
	Flags           uint16 // EFLAGS
	ServiceID       string // TRSVCID: the TCP port
	SubNQN          string
	Address         string // TRADDR
	TCPSecurityType uint8  // TSAS SECTYPE
}

func parseDiscoveryEntry(b []byte) DiscoveryEntry {
	le := binary.LittleEndian
	return DiscoveryEntry{
		TransportType:   b[0],
		AddressFamily:   b[1],
		SubsystemType:   b[2],
		TransportReq:    b[3],
		PortID:          le.Uint16(b[4:]),
		CntlID:          le.Uint16(b[6:]),
		AdminQueueSize:  le.Uint16(b[8:]),
		Flags:           le.Uint16(b[10:]),
		ServiceID:       trimField(b[32:64]),
		SubNQN:          trimField(b[256:512]),
		Address:         trimField(b[512:768]),
		TCPSecurityType: b[768],
	}
}

// Names of discovery entry fields, as nvme-cli prints them.
func (e DiscoveryEntry) TransportName() string {
	switch e.TransportType {
	case 1:
		return "rdma"
	case 2:
		return "fc"
	case 3:
		return "tcp"
	case 0xfe:
		return "loop"
	}
	return fmt.Sprintf("%d", e.TransportType)
}

func (e DiscoveryEntry) FamilyName() string {
	switch e.AddressFamily {
	case 1:
		return "ipv4"
	case 2:
		return "ipv6"
	case 3:
		return "ib"
	case 4:
		return "fc"
	case 0xfe:
		return "loop"
	}
	return fmt.Sprintf("%d", e.AddressFamily)
}

func (e DiscoveryEntry) SubtypeName() string {
	switch e.SubsystemType {
	case 1:
		return "discovery subsystem referral"
	case 2:
		return "nvme subsystem"
	case 3:
		return "current discovery subsystem"
	}
	return fmt.Sprintf("%d", e.SubsystemType)
}

func (e DiscoveryEntry) TreqName() string {
	switch e.TransportReq & 3 {
	case 0:
		return "not specified"
	case 1:
		return "required"
	case 2:
		return "not required"
	}
	return "reserved"
}

func (e DiscoveryEntry) SecurityName() string {
	switch e.TCPSecurityType {
	case 0:
		return "none"
	case 1:
		return "tls"
	case 2:
		return "tls13"
	}
	return fmt.Sprintf("%d", e.TCPSecurityType)
}

// trimField turns a fixed-size ASCII field (space or NUL padded) into a string.
func trimField(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(bytes.TrimRight(b, " "))
}
