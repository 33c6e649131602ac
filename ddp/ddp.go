package ddp

import (
	"errors"
	"net"
)

// PageSize is the unit of placement: the buffers a ULP maps are lists of
// page-sized pieces, as the kernel's scatterlists are.
const PageSize = 4096

// Capability is an offload a device can perform, switched on and off per
// device by its user (like ethtool -K).
type Capability uint32

const (
	// CapPlacement: the device writes payload into the mapped buffers (copy offload).
	CapPlacement Capability = 1 << iota
	// CapRxCRC: the device verifies the data digest of received PDUs (CRC offload).
	CapRxCRC
)

func (c Capability) String() string {
	switch c {
	case 0:
		return "none"
	case CapPlacement:
		return "placement"
	case CapRxCRC:
		return "rx-crc"
	case CapPlacement | CapRxCRC:
		return "placement,rx-crc"
	}
	return "unknown"
}

// Limits is what a device can map, queried by the ULP before it sizes its
// requests (the kernel's ulp_ddp_limits).
type Limits struct {
	// MaxSGL is the most pieces one Setup may map (max_ddp_sgl_len); the ULP
	// caps its I/O size and segment count to it.
	MaxSGL int
	// IOThreshold is the smallest I/O, in bytes, worth a Setup.
	IOThreshold int
	// FullTagRange is true when any 16-bit tag may be mapped; otherwise
	// tags are below the queue size given at SkAdd.
	FullTagRange bool
}

// MaxIOBytes is the largest buffer one Setup can map: MaxSGL pages.
func (l Limits) MaxIOBytes() int { return l.MaxSGL * PageSize }

// Config is the protocol-specific configuration of one offloaded connection.
// The ULP defines it; a device offloads the protocols whose Config it knows.
type Config interface {
	Protocol() string
}

// Device is a NIC that can offload DDP for the connections it carries.
type Device interface {
	Name() string
	Limits() Limits
	// Capabilities returns what the device supports and what is on now.
	Capabilities() (supported, enabled Capability)
	// SetCapabilities switches offloads on or off for new and existing
	// connections. With none on, SkAdd fails and ULPs run in software.
	SetCapabilities(enabled Capability) error
	// SkAdd offloads conn (sk_add). The ULP calls it at a PDU boundary
	// having read nothing beyond it: the device starts in sync there. From
	// then on the device owns the receive side of conn (reads and read
	// deadlines; the ULP sets only write deadlines): the ULP reads the
	// stream only through the returned Socket's Recv. An error leaves conn
	// untouched and the ULP works without offload.
	SkAdd(conn net.Conn, cfg Config, ulp ULP) (Socket, error)
	// Stats returns the device's counters, named after the driver's.
	Stats() []Stat
}

// Socket is one offloaded connection.
type Socket interface {
	// Recv returns the next segment of the received stream, in order, to
	// one goroutine. Unplaced bytes stay valid until the next call to
	// Recv; placed bytes do not change until their mapping is torn down.
	// An error ends the stream (connection closed, device down), but for
	// ErrInterrupted.
	Recv() (Segment, error)
	// Interrupt makes the Recv that waits for the stream, now or next,
	// return ErrInterrupted at once. The stream is unchanged: the Recv
	// after returns what the interrupted one would have. A ULP whose
	// receiver is also a caller that may have to leave (a request
	// cancelled, or completed from elsewhere) uses it to wake it.
	Interrupt()
	// Setup maps io's buffer for the tag io.Tag before the ULP sends the
	// request whose response will carry the data. An error (no free
	// context, SG list too long) is not fatal: that I/O goes the software way.
	Setup(io *IO) error
	// Teardown unmaps io. It does not wait; the device calls
	// ULP.TeardownDone(io) when its mapping is gone and will never touch
	// io's buffer again, possibly before Teardown returns, from the
	// caller's goroutine (so the ULP holds no lock TeardownDone takes
	// while it calls Teardown). Teardown of an io that is not mapped does
	// nothing (no TeardownDone).
	Teardown(io *IO)
	// Resync answers a ResyncRequest for seq: ok when a PDU header starts
	// exactly at seq in the ULP's own parse of the stream.
	Resync(seq Seq, ok bool)
	// Close ends the offload (sk_del). Mappings still set up are torn
	// down, and their TeardownDone is called before Close returns (so a
	// TeardownDone must not call Close); Recv returns an error after.
	Close() error
}

// ULP is what a device calls back. Calls come from the device's own
// goroutines, or TeardownDone from within Teardown, and must not block.
type ULP interface {
	// ResyncRequest: the device lost track of PDU boundaries and found
	// what may be a PDU header at seq. The device asks before the ULP can
	// have received the byte at seq, and only the latest request is live.
	// The ULP answers with Socket.Resync when its own parser reaches seq:
	// yes if a PDU header starts exactly there, no once it has passed it.
	ResyncRequest(seq Seq)
	// TeardownDone: the mapping of io is gone (ddp_teardown_done).
	TeardownDone(io *IO)
}

// IO is one mapping of a buffer for a tag (the kernel's ulp_ddp_io).
type IO struct {
	// Tag names the transfer in the protocol (NVMe/TCP: the command id).
	Tag uint16
	// SG is the destination: pieces of at most PageSize bytes, each but the
	// first starting on a page boundary, each but the last ending on one.
	SG [][]byte
	// Len is the sum of the pieces' lengths.
	Len int
	// DeviceCtx is the device's own state for this mapping.
	DeviceCtx any
}

// Segment is a piece of the received stream as the device hands it over.
type Segment struct {
	// Bytes are the segment's bytes. When Placed, they are a view of the
	// mapped buffer itself (source == destination).
	Bytes []byte
	// Seq is the sequence number of Bytes[0].
	Seq Seq
	// Placed: the bytes were written into a mapped buffer by the device.
	Placed bool
	// CRCOK: the device was in step with the PDU stream for every byte of
	// the segment, and every CRC field ending in it verified (a segment
	// holding the last byte of a data digest is CRCOK only if that digest
	// matched). So a ULP must account every segment carrying any byte of a
	// PDU, its data digest included (CRCTracker.Add), before it skips its
	// own check. False says nothing: the ULP checks.
	CRCOK bool
}

// Stat is one device counter.
type Stat struct {
	Name  string
	Value uint64
}

// Errors a device returns.
var (
	ErrNotSupported = errors.New("ddp: not supported by the device")
	ErrNoResources  = errors.New("ddp: no free offload context")
	ErrSGLTooLong   = errors.New("ddp: scatter list longer than the device maps")
	ErrDeviceDown   = errors.New("ddp: device is down")
	// ErrInterrupted is Recv's answer after Interrupt; not an end of the
	// stream.
	ErrInterrupted = errors.New("ddp: receive interrupted")
)
