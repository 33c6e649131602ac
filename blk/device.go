package blk

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// Options are a Device's shared resources.
type Options struct {
	// Tags bounds the commands in flight; the Devices of one controller
	// share it. Nil: a TagSet of Limits.Queues*Limits.QueueDepth tags.
	Tags *TagSet
	// Buffers is the pool of bounce buffers. Nil: a pool of the Device's
	// own, closed with it.
	Buffers *Buffers
}

// DefaultBuffers returns a pool sized for a FUSE mount: as many buffers out
// as FUSE requests in flight (go-fuse's readers plus MaxBackground), a few
// idle of each size.
func DefaultBuffers() *Buffers { return NewBuffers(128, 8) }

// Device turns byte-range I/O on one namespace into block commands on its
// Backend. Its methods are safe for concurrent use.
type Device struct {
	be       Backend
	lim      Limits
	bs       int64
	size     int64
	maxChunk int // largest command in bytes, a multiple of bs; 0: no limit
	window   int // largest bounce buffer used at once, a multiple of bs
	tags     *TagSet
	bufs     *Buffers
	ownBufs  bool
	locks    rangeLocks

	mu     sync.RWMutex // guards closed against enter
	closed bool
	active sync.WaitGroup

	st deviceStats
}

type deviceStats struct {
	reads, readBytes, readDirect, readBounced, readCopied   atomic.Uint64
	writes, writeBytes, writeRMW, rmwReadBytes, writeCopied atomic.Uint64
	readCommands, writeCommands, splitRequests              atomic.Uint64
	flushes, writeZeroes, deallocates, lockWaits, errors    atomic.Uint64
}

// New returns a Device over be.
func New(be Backend, opts Options) (*Device, error) {
	lim := be.Limits()
	if err := lim.check(); err != nil {
		return nil, err
	}
	d := &Device{be: be, lim: lim, bs: int64(lim.BlockSize), size: lim.Size(), tags: opts.Tags, bufs: opts.Buffers}
	if lim.MaxTransfer > 0 {
		d.maxChunk = lim.MaxTransfer - lim.MaxTransfer%lim.BlockSize
		if d.maxChunk == 0 {
			return nil, fmt.Errorf("blk: transfer limit %d is below the block size %d", lim.MaxTransfer, lim.BlockSize)
		}
	}
	d.window = MaxBuffer - MaxBuffer%lim.BlockSize
	if d.window == 0 {
		return nil, fmt.Errorf("blk: block size %d is above the largest buffer %d", lim.BlockSize, MaxBuffer)
	}
	if d.tags == nil {
		d.tags = NewTagSet(max(lim.Queues, 1) * max(lim.QueueDepth, 1))
	}
	if d.bufs == nil {
		d.bufs, d.ownBufs = DefaultBuffers(), true
	}
	return d, nil
}

// Limits returns the Backend's limits.
func (d *Device) Limits() Limits { return d.lim }

// Size is the namespace's capacity in bytes.
func (d *Device) Size() int64 { return d.size }

// BlockSize is the logical block size in bytes.
func (d *Device) BlockSize() int { return d.lim.BlockSize }

// Tags returns the TagSet the Device's commands hold.
func (d *Device) Tags() *TagSet { return d.tags }

func (d *Device) enter() error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.closed {
		return ErrClosed
	}
	d.active.Add(1)
	return nil
}

// Close refuses new requests and waits for those in flight.
func (d *Device) Close() error {
	d.mu.Lock()
	already := d.closed
	d.closed = true
	d.mu.Unlock()
	if already {
		return nil
	}
	d.active.Wait()
	if d.ownBufs {
		d.bufs.Close()
	}
	return nil
}

// failed counts err, unless it is the caller's cancellation: an interrupted
// request (a FUSE INTERRUPT, sent when the reader gets any signal) is not an
// I/O error of the namespace.
func (d *Device) failed(err error) error {
	if err != nil && !errors.Is(err, context.Canceled) {
		d.st.errors.Add(1)
	}
	return err
}

// ReadAt reads len(p) bytes at byte offset off, or fewer at the end of the
// namespace (0 at or past it). On an error, how much of p was written is
// undefined.
func (d *Device) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%w: negative offset %d", ErrInvalid, off)
	}
	if err := d.enter(); err != nil {
		return 0, err
	}
	defer d.active.Done()
	if off >= d.size || len(p) == 0 {
		return 0, nil
	}
	n := int(min(int64(len(p)), d.size-off))
	p = p[:n]
	d.st.reads.Add(1)
	if off%d.bs == 0 && int64(n)%d.bs == 0 && pageAligned(p) {
		if err := d.rw(ctx, false, uint64(off/d.bs), p); err != nil {
			return 0, d.failed(err)
		}
		d.st.readDirect.Add(1)
		d.st.readBytes.Add(uint64(n))
		return n, nil
	}
	d.st.readBounced.Add(1)
	for done := 0; done < n; {
		at := off + int64(done)
		lo := at &^ (d.bs - 1)
		hi := min(roundUp(off+int64(n), d.bs), lo+int64(d.window))
		buf, err := d.bufs.Get(ctx, int(hi-lo))
		if err != nil {
			return 0, d.failed(err)
		}
		err = d.rw(ctx, false, uint64(lo/d.bs), buf)
		if err == nil {
			c := copy(p[done:], buf[at-lo:])
			d.st.readCopied.Add(uint64(c))
			done += c
		}
		d.bufs.Put(buf)
		if err != nil {
			return 0, d.failed(err)
		}
	}
	d.st.readBytes.Add(uint64(n))
	return n, nil
}

// WriteAt writes p at byte offset off. A write that starts at or past the
// end of the namespace fails with ErrNoSpace; one that runs past it writes
// what fits and returns that count. Blocks only partly written are read,
// modified and written back under a range lock.
func (d *Device) WriteAt(ctx context.Context, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%w: negative offset %d", ErrInvalid, off)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if off >= d.size {
		return 0, fmt.Errorf("%w: offset %d, size %d", ErrNoSpace, off, d.size)
	}
	if err := d.enter(); err != nil {
		return 0, err
	}
	defer d.active.Done()
	n := int(min(int64(len(p)), d.size-off))
	p = p[:n]
	end := off + int64(n)
	lo, hi := off&^(d.bs-1), roundUp(end, d.bs)
	unlock, err := d.lockRange(ctx, lo, hi)
	if err != nil {
		return 0, d.failed(err)
	}
	defer unlock()
	d.st.writes.Add(1)
	if lo == off && hi == end {
		if err := d.rw(ctx, true, uint64(lo/d.bs), p); err != nil {
			return 0, d.failed(err)
		}
		d.st.writeBytes.Add(uint64(n))
		return n, nil
	}
	d.st.writeRMW.Add(1)
	for wlo := lo; wlo < hi; {
		whi := min(hi, wlo+int64(d.window))
		if err := d.writeWindow(ctx, p, off, wlo, whi); err != nil {
			return 0, d.failed(err)
		}
		wlo = whi
	}
	d.st.writeBytes.Add(uint64(n))
	return n, nil
}

// writeWindow writes the part of p (which starts at byte off) that falls in
// the blocks [wlo, whi) through a bounce buffer, reading first the edge
// blocks p covers only in part.
func (d *Device) writeWindow(ctx context.Context, p []byte, off, wlo, whi int64) error {
	buf, err := d.bufs.Get(ctx, int(whi-wlo))
	if err != nil {
		return err
	}
	defer d.bufs.Put(buf)
	from, to := max(off, wlo), min(off+int64(len(p)), whi)
	head, tail := from > wlo, to < whi
	switch {
	case head && tail && whi-wlo <= 2*d.bs:
		err = d.rmwRead(ctx, wlo, buf)
	default:
		if head {
			err = d.rmwRead(ctx, wlo, buf[:d.bs])
		}
		if tail && err == nil {
			err = d.rmwRead(ctx, whi-d.bs, buf[whi-wlo-d.bs:])
		}
	}
	if err != nil {
		return err
	}
	c := copy(buf[from-wlo:], p[from-off:to-off])
	d.st.writeCopied.Add(uint64(c))
	return d.rw(ctx, true, uint64(wlo/d.bs), buf)
}

func (d *Device) rmwRead(ctx context.Context, at int64, buf []byte) error {
	d.st.rmwReadBytes.Add(uint64(len(buf)))
	return d.rw(ctx, false, uint64(at/d.bs), buf)
}

func (d *Device) lockRange(ctx context.Context, lo, hi int64) (func(), error) {
	unlock, waited, err := d.locks.lock(ctx, uint64(lo/d.bs), uint64(hi/d.bs))
	if waited {
		d.st.lockWaits.Add(1)
	}
	return unlock, err
}

// checkBlocks checks that [off, off+length) is a non-empty, block-aligned
// range inside the namespace.
func (d *Device) checkBlocks(off, length int64) error {
	if off < 0 || length <= 0 || off%d.bs != 0 || length%d.bs != 0 || off >= d.size || length > d.size-off {
		return fmt.Errorf("%w: [%d, +%d) is not a whole number of %d-byte blocks inside the %d-byte namespace",
			ErrInvalid, off, length, d.bs, d.size)
	}
	return nil
}

// WriteZeroes makes the block-aligned range [off, off+length) read as
// zeros (NVMe Write Zeroes).
func (d *Device) WriteZeroes(ctx context.Context, off, length int64) error {
	return d.blockRangeOp(ctx, off, length, d.lim.WriteZeroes, &d.st.writeZeroes, d.be.WriteZeroes)
}

// Deallocate tells the controller the block-aligned range [off,
// off+length) is no longer needed (NVMe Dataset Management, Deallocate).
// Whether it then reads as zeros is up to the controller.
func (d *Device) Deallocate(ctx context.Context, off, length int64) error {
	return d.blockRangeOp(ctx, off, length, d.lim.Deallocate, &d.st.deallocates, d.be.Deallocate)
}

func (d *Device) blockRangeOp(ctx context.Context, off, length int64, supported bool, count *atomic.Uint64,
	op func(ctx context.Context, lba, blocks uint64) error) error {
	if !supported {
		return ErrNotSupported
	}
	if err := d.checkBlocks(off, length); err != nil {
		return err
	}
	if err := d.enter(); err != nil {
		return err
	}
	defer d.active.Done()
	unlock, err := d.lockRange(ctx, off, off+length)
	if err != nil {
		return d.failed(err)
	}
	defer unlock()
	if err := d.tags.acquire(ctx); err != nil {
		return d.failed(err)
	}
	defer d.tags.release()
	count.Add(1)
	return d.failed(op(ctx, uint64(off/d.bs), uint64(length/d.bs)))
}

// Flush commits the controller's volatile write cache (NVMe Flush): every
// write that completed before is durable when it returns.
func (d *Device) Flush(ctx context.Context) error {
	if err := d.enter(); err != nil {
		return err
	}
	defer d.active.Done()
	if err := d.tags.acquire(ctx); err != nil {
		return d.failed(err)
	}
	defer d.tags.release()
	d.st.flushes.Add(1)
	return d.failed(d.be.Flush(ctx))
}

// chunkLen is how many bytes of buf, from its start, one command may move:
// at most maxChunk, spanning at most MaxSegments pages, a whole number of
// blocks, and at least one block (a block that spans more pages than
// allowed cannot be split).
func (d *Device) chunkLen(buf []byte) int {
	n := len(buf)
	if d.maxChunk > 0 {
		n = min(n, d.maxChunk)
	}
	if d.lim.MaxSegments > 0 && segments(buf[:n]) > d.lim.MaxSegments {
		n = d.lim.MaxSegments*PageSize - int(addrOf(buf)%PageSize)
	}
	n -= n % int(d.bs)
	return max(n, int(d.bs))
}

// rw moves buf (a whole number of blocks) at block lba, splitting it at
// the limits; the pieces run in parallel, each holding a tag. The first
// error cancels the others.
func (d *Device) rw(ctx context.Context, write bool, lba uint64, buf []byte) error {
	if n := d.chunkLen(buf); n >= len(buf) {
		if err := d.tags.acquire(ctx); err != nil {
			return err
		}
		defer d.tags.release()
		return d.command(ctx, write, lba, buf)
	}
	return d.rwSplit(ctx, write, lba, buf)
}

// rwSplit is rw of a request above the limits (a function of its own: the
// variables its goroutines share would make rw allocate on every call).
func (d *Device) rwSplit(ctx context.Context, write bool, lba uint64, buf []byte) error {
	d.st.splitRequests.Add(1)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	fail := func(err error) { once.Do(func() { first = err; cancel(err) }) }
	for len(buf) > 0 {
		n := d.chunkLen(buf)
		chunk, at := buf[:n], lba
		buf, lba = buf[n:], lba+uint64(n)/uint64(d.bs)
		if err := d.tags.acquire(ctx); err != nil {
			fail(err)
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer d.tags.release()
			if err := d.command(ctx, write, at, chunk); err != nil {
				fail(err)
			}
		}()
	}
	wg.Wait()
	return first
}

// command is one Backend command; the caller holds a tag.
func (d *Device) command(ctx context.Context, write bool, lba uint64, buf []byte) error {
	if write {
		d.st.writeCommands.Add(1)
		if err := d.be.Write(ctx, lba, buf); err != nil {
			return fmt.Errorf("blk: write of %d bytes at block %d: %w", len(buf), lba, err)
		}
		return nil
	}
	d.st.readCommands.Add(1)
	if err := d.be.Read(ctx, lba, buf); err != nil {
		return fmt.Errorf("blk: read of %d bytes at block %d: %w", len(buf), lba, err)
	}
	return nil
}

// Counters returns the Device's statistics (not its TagSet's or Buffers').
func (d *Device) Counters() []Counter {
	s := &d.st
	return []Counter{
		{"read_requests", s.reads.Load()},
		{"read_bytes", s.readBytes.Load()},
		{"read_direct", s.readDirect.Load()},
		{"read_bounced", s.readBounced.Load()},
		{"read_bytes_copied", s.readCopied.Load()},
		{"write_requests", s.writes.Load()},
		{"write_bytes", s.writeBytes.Load()},
		{"write_rmw", s.writeRMW.Load()},
		{"rmw_read_bytes", s.rmwReadBytes.Load()},
		{"write_bytes_copied", s.writeCopied.Load()},
		{"read_commands", s.readCommands.Load()},
		{"write_commands", s.writeCommands.Load()},
		{"split_requests", s.splitRequests.Load()},
		{"flushes", s.flushes.Load()},
		{"write_zeroes", s.writeZeroes.Load()},
		{"deallocates", s.deallocates.Load()},
		{"range_lock_waits", s.lockWaits.Load()},
		{"errors", s.errors.Load()},
	}
}

func roundUp(x, to int64) int64 { return (x + to - 1) &^ (to - 1) }
