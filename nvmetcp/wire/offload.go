package wire

// OffloadConfig is what a host tells a DDP device about one NVMe/TCP I/O
// queue at sk_add (a ddp.Config): what was negotiated in ICReq/ICResp and the
// queue's size, so that the device can follow the queue's PDU stream on its
// own.
type OffloadConfig struct {
	PFV          uint16
	CPDA         uint8
	HPDA         uint8 // the PDO alignment of the C2H PDUs the device parses
	HeaderDigest bool
	DataDigest   bool
	QueueID      int
	QueueSize    int // command ids in flight are below this (unless the device maps the full range)
}

// OffloadProtocol is the ddp.Config protocol name of NVMe/TCP.
const OffloadProtocol = "nvme-tcp"

// Protocol names the protocol for the device.
func (OffloadConfig) Protocol() string { return OffloadProtocol }
