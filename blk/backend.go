package blk

import (
	"context"
	"errors"
	"fmt"
)

// PageSize is the unit of buffer alignment and of segments: a page-aligned
// buffer of n bytes spans ceil(n/PageSize) segments.
const PageSize = 4096

// Backend is one namespace of a block storage controller: it reads and
// writes whole blocks. Its methods are safe for concurrent use.
type Backend interface {
	// Limits describes the namespace and the controller's queues. It does
	// not change while the Backend is in use.
	Limits() Limits
	// Read reads len(buf) bytes, a whole number of blocks, at block lba.
	Read(ctx context.Context, lba uint64, buf []byte) error
	// Write writes buf, a whole number of blocks, at block lba.
	Write(ctx context.Context, lba uint64, buf []byte) error
	// Flush commits the controller's volatile write cache.
	Flush(ctx context.Context) error
	// WriteZeroes makes blocks [lba, lba+blocks) read as zeros.
	WriteZeroes(ctx context.Context, lba, blocks uint64) error
	// Deallocate says blocks [lba, lba+blocks) are no longer needed.
	Deallocate(ctx context.Context, lba, blocks uint64) error
}

// Limits are a Backend's geometry and the limits a request must respect.
type Limits struct {
	BlockSize int    // bytes per logical block: a power of two
	Blocks    uint64 // capacity in blocks
	// MaxTransfer is the most bytes one command moves (MDTS, the
	// transport's max_hw_sectors); 0: no limit.
	MaxTransfer int
	// MaxSegments is the most memory pages one command's buffer may span
	// (max_segments, e.g. a NIC's DDP scatter list length); 0: no limit.
	MaxSegments int
	// Queues and QueueDepth are the controller's I/O queues and the
	// commands each may have in flight.
	Queues     int
	QueueDepth int
	// WriteZeroes and Deallocate say whether the controller implements
	// those commands.
	WriteZeroes bool
	Deallocate  bool
}

// Size is the capacity in bytes.
func (l Limits) Size() int64 { return int64(l.Blocks) * int64(l.BlockSize) }

func (l Limits) check() error {
	bs := l.BlockSize
	if bs < 1 || bs&(bs-1) != 0 {
		return fmt.Errorf("blk: block size %d is not a power of two", bs)
	}
	if l.Blocks == 0 || l.Blocks > (1<<63-1)/uint64(bs) {
		return fmt.Errorf("blk: capacity of %d blocks is empty or too large", l.Blocks)
	}
	if l.MaxTransfer < 0 || l.MaxSegments < 0 || l.Queues < 0 || l.QueueDepth < 0 {
		return fmt.Errorf("blk: negative limit in %+v", l)
	}
	return nil
}

// Errors callers map to errno values; Backend errors come wrapped otherwise.
var (
	// ErrNotSupported: the controller does not implement the command.
	ErrNotSupported = errors.New("blk: not supported by the controller")
	// ErrInvalid: a range that is not block-aligned where it must be, or
	// that lies outside the namespace.
	ErrInvalid = errors.New("blk: invalid range")
	// ErrNoSpace: a write that starts at or past the end of the namespace.
	ErrNoSpace = errors.New("blk: write past the end of the namespace")
	// ErrClosed: the Device was closed.
	ErrClosed = errors.New("blk: device closed")
)

// Counter is one statistic, named like ethtool -S counters.
type Counter struct {
	Name  string
	Value uint64
}
