// Package nvmeblk adapts a namespace of an NVMe/TCP host controller to
// blk.Backend, and names the controller's statistics for the stats file.
// It is the wiring between blk, which knows no transport, and nvmetcp/host.
package nvmeblk

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/nvmefs/nvmefs/blk"
	"github.com/nvmefs/nvmefs/nvmetcp/host"
	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
)

// Namespace is one namespace of a connected controller, as a blk.Backend.
type Namespace struct {
	c    *host.Controller
	nsid uint32
	lim  blk.Limits
}

var _ blk.Backend = (*Namespace)(nil)

// Options are limits from outside the controller.
type Options struct {
	// MaxSegments caps the pages one command's buffer may span: a NIC's
	// DDP scatter list length (ddp.Limits.MaxSGL, the kernel's
	// max_segments). 0: no cap (no offload).
	MaxSegments int
}

// New returns namespace nsid of c. Its limits are those of the controller's
// current association: the transfer limit the host uses (MaxTransfer, MDTS),
// the I/O queues and their depth, and the optional commands (ONCS); and
// opts'.
func New(c *host.Controller, nsid uint32, opts Options) (*Namespace, error) {
	ns, ok := c.Namespace(nsid)
	if !ok {
		return nil, fmt.Errorf("namespace %d is not an active namespace of %s", nsid, c.Info().SubNQN)
	}
	info := c.Info()
	return &Namespace{c: c, nsid: nsid, lim: blk.Limits{
		BlockSize:   ns.BlockSize,
		Blocks:      ns.Blocks,
		MaxTransfer: info.MaxTransfer,
		MaxSegments: opts.MaxSegments,
		Queues:      info.IOQueues,
		QueueDepth:  info.QueueSize,
		WriteZeroes: info.ONCS&nvme.ONCSWriteZeroes != 0,
		Deallocate:  info.ONCS&nvme.ONCSDSM != 0,
	}}, nil
}

// NSID is the namespace's id.
func (n *Namespace) NSID() uint32 { return n.nsid }

func (n *Namespace) Limits() blk.Limits { return n.lim }

func (n *Namespace) Read(ctx context.Context, lba uint64, buf []byte) error {
	return mapErr(n.c.Read(ctx, n.nsid, lba, buf))
}

func (n *Namespace) Write(ctx context.Context, lba uint64, buf []byte) error {
	return mapErr(n.c.Write(ctx, n.nsid, lba, buf))
}

func (n *Namespace) Flush(ctx context.Context) error {
	return mapErr(n.c.Flush(ctx, n.nsid))
}

func (n *Namespace) WriteZeroes(ctx context.Context, lba, blocks uint64) error {
	return mapErr(n.c.WriteZeroes(ctx, n.nsid, lba, blocks))
}

func (n *Namespace) Deallocate(ctx context.Context, lba, blocks uint64) error {
	return mapErr(n.c.Deallocate(ctx, n.nsid, []host.Range{{LBA: lba, Blocks: blocks}}))
}

// ErrNamespaceGone: the controller no longer knows the namespace.
var ErrNamespaceGone = errors.New("the namespace is gone from the controller")

// mapErr adds blk's error kinds to the host's errors, keeping both.
func mapErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, host.ErrNotSupported) {
		return fmt.Errorf("%w: %w", blk.ErrNotSupported, err)
	}
	var st nvme.Status
	if errors.As(err, &st) {
		switch st.Code() {
		case nvme.StatusInvalidNamespace:
			return fmt.Errorf("%w: %w", ErrNamespaceGone, err)
		case nvme.StatusLBAOutOfRange:
			return fmt.Errorf("%w: %w", blk.ErrInvalid, err)
		}
	}
	return err
}

// Counters names a controller's statistics like ethtool -S counters:
// controller-wide ones, then the I/O queues' as q<QID>_<name>.
func Counters(s host.Stats) []blk.Counter {
	lost := uint64(0)
	if s.Lost {
		lost = 1
	}
	cs := []blk.Counter{
		{Name: "recoveries", Value: s.Recoveries},
		{Name: "lost", Value: lost},
		{Name: "io_queues", Value: uint64(len(s.IO))},
		{Name: "admin_commands", Value: s.Admin.Commands},
	}
	cs = append(cs, queueCounters("", &s.Total)...)
	cs = append(cs,
		blk.Counter{Name: "latency_p50_us", Value: uint64(s.Total.LatencyQuantile(0.5).Microseconds())},
		blk.Counter{Name: "latency_p99_us", Value: uint64(s.Total.LatencyQuantile(0.99).Microseconds())},
	)
	for i := range s.IO {
		q := &s.IO[i]
		cs = append(cs, queueCounters("q"+strconv.Itoa(q.QID)+"_", q)...)
	}
	return cs
}

func queueCounters(prefix string, q *host.QueueStats) []blk.Counter {
	return []blk.Counter{
		{Name: prefix + "commands", Value: q.Commands},
		{Name: prefix + "bytes_read", Value: q.BytesRead},
		{Name: prefix + "bytes_written", Value: q.BytesWritten},
		{Name: prefix + "errors", Value: q.Errors},
		{Name: prefix + "timeouts", Value: q.Timeouts},
		{Name: prefix + "digest_errors", Value: q.DigestErrors},
		{Name: prefix + "retries", Value: q.Retries},
		{Name: prefix + "reconnects", Value: q.Reconnects},
		{Name: prefix + "rx_bytes_copied", Value: q.BytesCopied},
		{Name: prefix + "rx_bytes_direct", Value: q.BytesDirect},
		{Name: prefix + "rx_bytes_discarded", Value: q.BytesDiscarded},
		{Name: prefix + "rx_bytes_placed", Value: q.BytesPlaced},
		{Name: prefix + "rx_crc_software", Value: q.CRCSoftware},
		{Name: prefix + "rx_crc_offloaded", Value: q.CRCOffloaded},
		{Name: prefix + "offload_sk_add", Value: q.Offloads},
		{Name: prefix + "offload_sk_add_fail", Value: q.OffloadFails},
		{Name: prefix + "ddp_setup", Value: q.DDPSetups},
		{Name: prefix + "ddp_setup_fail", Value: q.DDPSetupFails},
		{Name: prefix + "ddp_teardown", Value: q.DDPTeardowns},
		{Name: prefix + "resync_requests", Value: q.ResyncRequests},
		{Name: prefix + "resync_yes", Value: q.ResyncYes},
		{Name: prefix + "resync_no", Value: q.ResyncNo},
		{Name: prefix + "commands_inflight_max", Value: q.InFlightMax},
	}
}
