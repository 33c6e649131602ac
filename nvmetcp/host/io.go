package host

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/nvmefs/nvmefs/ddp"
	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
	"github.com/nvmefs/nvmefs/nvmetcp/wire"
)

// maxRetries is how often a command that failed with a retryable status or
// a data digest error is issued again (the kernel's nvme_max_retries).
// Commands torn down by error recovery are issued again without limit
// until the controller is lost.
const maxRetries = 5

// maxBlocksPerCommand: NLB is a 16-bit 0's based field.
const maxBlocksPerCommand = 1 << 16

// ioCmd is one NVM command, before it gets a queue and a tag.
type ioCmd struct {
	opcode uint8
	nsid   uint32
	cdw10  uint32
	cdw11  uint32
	cdw12  uint32
	data   []byte
	dir    dataDir
}

func rwCmd(opcode uint8, nsid uint32, lba uint64, nlb int, data []byte, dir dataDir) ioCmd {
	return ioCmd{opcode: opcode, nsid: nsid, cdw10: uint32(lba), cdw11: uint32(lba >> 32), cdw12: uint32(nlb - 1), data: data, dir: dir}
}

// Read reads len(buf) bytes, a whole number of blocks, at block lba of
// namespace nsid. Requests above the controller's transfer limit are split
// and issued in parallel. When Read returns, the host no longer writes into
// buf; on error its contents are undefined.
func (c *Controller) Read(ctx context.Context, nsid uint32, lba uint64, buf []byte) error {
	return c.transfer(ctx, nvme.IORead, nsid, lba, buf, dirRead)
}

// Write writes buf, a whole number of blocks, at block lba of namespace nsid.
// The host does not retain buf after Write returns.
func (c *Controller) Write(ctx context.Context, nsid uint32, lba uint64, buf []byte) error {
	return c.transfer(ctx, nvme.IOWrite, nsid, lba, buf, dirWrite)
}

// Flush commits the namespace's volatile write cache.
func (c *Controller) Flush(ctx context.Context, nsid uint32) error {
	if _, err := c.namespaceOf(ctx, nsid); err != nil {
		return err
	}
	cmd := ioCmd{opcode: nvme.IOFlush, nsid: nsid}
	if err := c.do(ctx, &cmd); err != nil {
		return fmt.Errorf("host: flush nsid %d: %w", nsid, err)
	}
	return nil
}

// WriteZeroes makes nlb blocks from lba read as zeros.
func (c *Controller) WriteZeroes(ctx context.Context, nsid uint32, lba, nlb uint64) error {
	a, _, err := c.checkRange(ctx, nsid, lba, nlb)
	if err != nil {
		return err
	}
	if a.info.ONCS&nvme.ONCSWriteZeroes == 0 {
		return fmt.Errorf("host: write zeroes: %w", ErrNotSupported)
	}
	n := int((nlb + maxBlocksPerCommand - 1) / maxBlocksPerCommand)
	return parallel(ctx, n, 16, func(ctx context.Context, i int) error {
		start := lba + uint64(i)*maxBlocksPerCommand
		cnt := min(nlb-uint64(i)*maxBlocksPerCommand, maxBlocksPerCommand)
		cmd := rwCmd(nvme.IOWriteZeroes, nsid, start, int(cnt), nil, dirNone)
		if err := c.do(ctx, &cmd); err != nil {
			return fmt.Errorf("host: write zeroes nsid %d lba %d+%d: %w", nsid, start, cnt, err)
		}
		return nil
	})
}

// Range is a run of blocks.
type Range struct {
	LBA    uint64
	Blocks uint64
}

// maxDSMRanges is the number of ranges one Dataset Management command carries.
const maxDSMRanges = 256

// Deallocate tells the controller the ranges' data is no longer needed
// (Dataset Management, attribute Deallocate); they may read as zeros after.
func (c *Controller) Deallocate(ctx context.Context, nsid uint32, ranges []Range) error {
	a, err := c.waitLive(ctx, nil)
	if err != nil {
		return err
	}
	if a.info.ONCS&nvme.ONCSDSM == 0 {
		return fmt.Errorf("host: deallocate: %w", ErrNotSupported)
	}
	var split []Range
	for _, r := range ranges {
		if _, _, err := c.checkRange(ctx, nsid, r.LBA, r.Blocks); err != nil {
			return err
		}
		for r.Blocks > 0 {
			n := min(r.Blocks, 0xffffffff)
			split = append(split, Range{r.LBA, n})
			r.LBA += n
			r.Blocks -= n
		}
	}
	for len(split) > 0 {
		batch := split[:min(len(split), maxDSMRanges)]
		split = split[len(batch):]
		data := make([]byte, 16*len(batch))
		for i, r := range batch {
			b := data[16*i:]
			binary.LittleEndian.PutUint32(b[4:], uint32(r.Blocks))
			binary.LittleEndian.PutUint64(b[8:], r.LBA)
		}
		cmd := ioCmd{opcode: nvme.IODatasetMgmt, nsid: nsid, cdw10: uint32(len(batch) - 1), cdw11: 1 << 2, data: data, dir: dirWrite}
		if err := c.do(ctx, &cmd); err != nil {
			return fmt.Errorf("host: deallocate nsid %d: %w", nsid, err)
		}
	}
	return nil
}

// namespaceOf looks a namespace up in the live association.
func (c *Controller) namespaceOf(ctx context.Context, nsid uint32) (*assoc, error) {
	a, err := c.waitLive(ctx, nil)
	if err != nil {
		return nil, err
	}
	if _, ok := a.ns[nsid]; !ok {
		return nil, fmt.Errorf("host: namespace %d: %w", nsid, nvme.StatusInvalidNamespace|nvme.StatusDNR)
	}
	return a, nil
}

// checkRange checks that [lba, lba+nlb) is a non-empty range of the namespace.
func (c *Controller) checkRange(ctx context.Context, nsid uint32, lba, nlb uint64) (*assoc, Namespace, error) {
	a, err := c.namespaceOf(ctx, nsid)
	if err != nil {
		return nil, Namespace{}, err
	}
	ns := a.ns[nsid]
	if nlb == 0 || lba > ns.Blocks || nlb > ns.Blocks-lba {
		return nil, ns, fmt.Errorf("host: nsid %d: blocks [%d, +%d) outside the namespace's %d: %w", nsid, lba, nlb, ns.Blocks, nvme.StatusLBAOutOfRange|nvme.StatusDNR)
	}
	return a, ns, nil
}

func (c *Controller) transfer(ctx context.Context, opcode uint8, nsid uint32, lba uint64, buf []byte, dir dataDir) error {
	a, err := c.namespaceOf(ctx, nsid)
	if err != nil {
		return err
	}
	bs := a.ns[nsid].BlockSize
	if len(buf) == 0 || len(buf)%bs != 0 {
		return fmt.Errorf("host: nsid %d: %d bytes is not a whole number of %d-byte blocks", nsid, len(buf), bs)
	}
	nlb := len(buf) / bs
	if _, _, err := c.checkRange(ctx, nsid, lba, uint64(nlb)); err != nil {
		return err
	}
	chunk := min(a.info.MaxTransfer/bs, maxBlocksPerCommand)
	if seg := a.info.MaxSegments; seg > 0 && uintptr(unsafe.Pointer(unsafe.SliceData(buf)))%ddp.PageSize != 0 {
		// An unaligned buffer spans one page more than its length: one
		// page less per command keeps it within the offload's list.
		if c := (seg - 1) * ddp.PageSize / bs; c > 0 {
			chunk = min(chunk, c)
		}
	}
	if chunk == 0 {
		return fmt.Errorf("host: nsid %d: block size %d above the transfer limit %d", nsid, bs, a.info.MaxTransfer)
	}
	if nlb <= chunk {
		cmd := rwCmd(opcode, nsid, lba, nlb, buf, dir)
		if err := c.do(ctx, &cmd); err != nil {
			return fmt.Errorf("host: %s nsid %d lba %d+%d: %w", opName(opcode), nsid, lba, nlb, err)
		}
		return nil
	}
	n := (nlb + chunk - 1) / chunk
	return parallel(ctx, n, 64, func(ctx context.Context, i int) error {
		first := i * chunk
		cnt := min(nlb-first, chunk)
		start := lba + uint64(first)
		cmd := rwCmd(opcode, nsid, start, cnt, buf[first*bs:(first+cnt)*bs], dir)
		if err := c.do(ctx, &cmd); err != nil {
			return fmt.Errorf("host: %s nsid %d lba %d+%d: %w", opName(opcode), nsid, start, cnt, err)
		}
		return nil
	})
}

func opName(op uint8) string {
	switch op {
	case nvme.IORead:
		return "read"
	case nvme.IOWrite:
		return "write"
	}
	return fmt.Sprintf("opcode %#x", op)
}

// do issues a command on one of the I/O queues and waits for it, issuing it
// again after error recovery, a data digest error or a retryable status.
func (c *Controller) do(ctx context.Context, cmd *ioCmd) error {
	var failed *assoc
	tries := 0
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		a, err := c.waitLive(ctx, failed)
		if err != nil {
			return err
		}
		if len(a.io) == 0 {
			return errors.New("host: no I/O queues")
		}
		q := a.io[int(c.rr.Add(1))%len(a.io)]
		err = c.issue(ctx, q, cmd)
		if err == nil {
			switch cmd.dir {
			case dirRead:
				q.stats.bytesRead.Add(uint64(len(cmd.data)))
			case dirWrite:
				q.stats.bytesWritten.Add(uint64(len(cmd.data)))
			}
			return nil
		}
		switch {
		case errors.Is(err, errRequeue):
			failed = a
		case tries < maxRetries && retryable(err):
			tries++
		default:
			return err
		}
		q.stats.retries.Add(1)
	}
}

// retryable: a data digest error, or a status without Do Not Retry.
func retryable(err error) bool {
	if errors.Is(err, wire.ErrDataDigest) {
		return true
	}
	var st nvme.Status
	return errors.As(err, &st) && !st.DNR()
}

func (c *Controller) issue(ctx context.Context, q *queue, cmd *ioCmd) error {
	r, err := q.get(ctx)
	if err != nil {
		return err
	}
	nvme.SQE(r.sqe[:]).Encode(&nvme.SQEFields{
		Opcode: cmd.opcode, NSID: cmd.nsid,
		CDW10: cmd.cdw10, CDW11: cmd.cdw11, CDW12: cmd.cdw12,
	})
	q.setData(r, cmd.data, cmd.dir)
	if err := q.submit(r); err != nil {
		q.put(r)
		return err
	}
	st, _, err := q.wait(ctx, r, false)
	if err != nil {
		return err
	}
	if !st.Success() {
		return st
	}
	return nil
}

// parallel runs f(ctx, i) for i in [0, n) on up to width goroutines and
// returns the first error; the others are then canceled.
func parallel(ctx context.Context, n, width int, f func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next, done atomic.Int64
		wg         sync.WaitGroup
		once       sync.Once
		first      error
	)
	for range min(n, width) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(ctx, i); err != nil {
					once.Do(func() { first = err; cancel() })
					return
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	if first == nil && done.Load() != int64(n) {
		first = context.Cause(ctx)
	}
	return first
}
