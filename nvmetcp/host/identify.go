package host

import (
	"fmt"

	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
)

// What the host keeps of Identify and the discovery log page, read through
// the nvme package's views.

// maxDiscoveryRecords bounds the discovery log the host reads (1 MiB).
const maxDiscoveryRecords = 1023

// ControllerInfo is what Identify Controller and Connect told the host.
type ControllerInfo struct {
	CntlID      uint16
	VendorID    uint16
	Serial      string
	Model       string
	Firmware    string
	SubNQN      string
	Version     uint32 // VS property: major<<16 | minor<<8 | tertiary
	MDTS        uint8  // 2^MDTS minimum pages per command; 0: no limit
	MaxCmd      uint16
	NN          uint32 // highest namespace id
	ONCS        uint16
	VWC         bool // volatile write cache present
	SGLS        uint32
	IOCCSZ      uint32 // I/O queue command capsule size, in 16-byte units
	IORCSZ      uint32
	ICDOFF      uint16
	KAS         uint16 // keep-alive granularity, 100 ms units
	MaxTransfer int    // bytes per command the host uses (Options.MaxTransfer capped by MDTS and the offload's MaxSGL pages)
	MaxSegments int    // pages one command's buffer may span (the offload device's MaxSGL); 0: no limit
	InCapsule   int    // in-capsule write data on I/O queues (0: none)
	IOQueues    int    // I/O queues connected
	// OffloadedQueues are the I/O queues whose receive the offload device
	// took (sk_add succeeded) when the association was set up.
	OffloadedQueues int
	QueueSize       int    // depth of each I/O queue
	MaxH2CData      uint32 // from the I/O queues' ICResp
	HeaderDigest    bool
	DataDigest      bool
}

func parseIdentifyController(b []byte, ci *ControllerInfo) error {
	if len(b) < nvme.IdentifyDataLen {
		return fmt.Errorf("identify controller: %d bytes", len(b))
	}
	id := nvme.IdentifyController(b)
	ci.VendorID = id.VID()
	ci.Serial = id.Serial()
	ci.Model = id.Model()
	ci.Firmware = id.Firmware()
	ci.MDTS = id.MDTS()
	ci.KAS = id.KAS()
	ci.MaxCmd = id.MaxCmd()
	ci.NN = id.NN()
	ci.ONCS = id.ONCS()
	ci.VWC = id.VWC()&nvme.VWCPresent != 0
	ci.SGLS = id.SGLS()
	ci.SubNQN = id.SubNQN()
	ci.IOCCSZ = id.IOCCSZ()
	ci.IORCSZ = id.IORCSZ()
	ci.ICDOFF = id.ICDOFF()
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
	if len(b) < nvme.IdentifyDataLen {
		return Namespace{}, fmt.Errorf("identify namespace %d: %d bytes", nsid, len(b))
	}
	id := nvme.IdentifyNamespace(b)
	ns := Namespace{ID: nsid, Blocks: id.NSZE(), NGUID: id.NGUID(), EUI64: id.EUI64()}
	if f := int(id.FLBAS() & 0xf); f > int(id.NLBAF()) {
		return ns, fmt.Errorf("namespace %d: LBA format %d beyond the %d listed", nsid, f, int(id.NLBAF())+1)
	}
	if ms := id.LBAFormat(int(id.FLBAS() & 0xf)).MetadataSize; ms != 0 {
		return ns, fmt.Errorf("namespace %d: %d bytes of metadata per block are not supported", nsid, ms)
	}
	ns.BlockSize = id.BlockSize()
	if ns.BlockSize == 0 || ns.BlockSize > 1<<16 {
		return ns, fmt.Errorf("namespace %d: LBA data size not supported", nsid)
	}
	if ns.Blocks > 1<<62/uint64(ns.BlockSize) {
		return ns, fmt.Errorf("namespace %d: %d blocks is too large", nsid, ns.Blocks)
	}
	return ns, nil
}

// parseActiveNamespaces reads an active namespace ID list: NSIDs ascending,
// ended by the first 0.
func parseActiveNamespaces(b []byte) ([]uint32, error) {
	ids := nvme.NSList(b).IDs()
	var last uint32
	for _, id := range ids {
		if id <= last || id == nvme.NSIDAll {
			return nil, fmt.Errorf("active namespace list: NSID %d after %d", id, last)
		}
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
	e := nvme.DiscoveryLogEntry(b)
	return DiscoveryEntry{
		TransportType:   e.TrType(),
		AddressFamily:   e.AdrFam(),
		SubsystemType:   e.SubType(),
		TransportReq:    e.TReq(),
		PortID:          e.PortID(),
		CntlID:          e.CntlID(),
		AdminQueueSize:  e.ASQSZ(),
		Flags:           e.EFlags(),
		ServiceID:       e.TrSvcID(),
		SubNQN:          e.SubNQN(),
		Address:         e.TrAddr(),
		TCPSecurityType: e.SecType(),
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
