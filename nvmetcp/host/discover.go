package host

import (
	"context"
	"fmt"

	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
)

// Discover connects to the discovery controller at addr (the well-known
// discovery NQN), reads its discovery log page and disconnects. The log is
// read header first, then whole, and read again if its generation counter
// changed meanwhile; it is bounded to 1023 records.
func Discover(ctx context.Context, addr string, opts Options) ([]DiscoveryEntry, error) {
	if opts.KeepAliveTmo == 0 {
		opts.KeepAliveTmo = -1 // a non-persistent discovery controller: KATO 0, as the kernel
	}
	c, err := connect(ctx, addr, nvme.DiscoveryNQN, opts, true)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.discoveryLog(ctx)
}

func (c *Controller) discoveryLog(ctx context.Context) ([]DiscoveryEntry, error) {
	a, err := c.waitLive(ctx, nil)
	if err != nil {
		return nil, err
	}
	hdr := make([]byte, nvme.DiscoveryLogHeaderLen)
	for try := 0; try < 3; try++ {
		if err := a.getLogPage(ctx, nvme.LogDiscovery, 0, hdr); err != nil {
			return nil, err
		}
		h := nvme.DiscoveryLogHeader(hdr)
		gen, num := h.GenCtr(), h.NumRec()
		if num > maxDiscoveryRecords {
			return nil, fmt.Errorf("host: discovery log has %d records, more than the %d read", num, maxDiscoveryRecords)
		}
		log := make([]byte, nvme.DiscoveryLogHeaderLen+int(num)*nvme.DiscoveryLogEntryLen)
		if err := a.getLogPage(ctx, nvme.LogDiscovery, 0, log); err != nil {
			return nil, err
		}
		if h := nvme.DiscoveryLogHeader(log); h.GenCtr() != gen || h.NumRec() != num {
			continue // changed while read
		}
		entries := make([]DiscoveryEntry, 0, num)
		for i := range int(num) {
			off := nvme.DiscoveryLogHeaderLen + i*nvme.DiscoveryLogEntryLen
			entries = append(entries, parseDiscoveryEntry(log[off:off+nvme.DiscoveryLogEntryLen]))
		}
		return entries, nil
	}
	return nil, fmt.Errorf("host: discovery log kept changing while read")
}

// getLogPage reads log page lid from offset off into buf, in pieces no larger
// than the admin transfer limit.
func (a *assoc) getLogPage(ctx context.Context, lid uint8, off uint64, buf []byte) error {
	step := min(a.info.MaxTransfer, maxTransferAdmin)
	for done := 0; done < len(buf); {
		n := min(len(buf)-done, step)
		o := off + uint64(done)
		var sqe [nvme.SQELen]byte
		nvme.SQE(sqe[:]).EncodeGetLogPage(&nvme.GetLogPageFields{LID: lid, Len: uint32(n), Offset: o})
		if _, err := a.adminCmd(ctx, &sqe, buf[done:done+n], dirRead); err != nil {
			return fmt.Errorf("host: get log page %#x offset %d: %w", lid, o, err)
		}
		done += n
	}
	return nil
}
