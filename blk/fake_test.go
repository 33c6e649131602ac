package blk

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// memBackend is a Backend over memory that checks every command against
// its limits, counts what it sees and can be slowed down or made to fail.
type memBackend struct {
	lim  Limits
	mu   sync.Mutex
	data []byte

	delay    time.Duration // per command
	failRead atomic.Pointer[error]

	inFlight, maxInFlight atomic.Int64
	reads, writes         atomic.Int64
	violations            atomic.Int64
	lastViolation         atomic.Pointer[string]
	readAddrs             sync.Map // address of each read buffer -> true
	zeroed, deallocated   atomic.Int64
	flushes               atomic.Int64
}

func newMemBackend(lim Limits) *memBackend {
	return &memBackend{lim: lim, data: make([]byte, lim.Size())}
}

func (m *memBackend) Limits() Limits { return m.lim }

func (m *memBackend) violate(format string, args ...any) error {
	s := fmt.Sprintf(format, args...)
	m.violations.Add(1)
	m.lastViolation.Store(&s)
	return errors.New(s)
}

func (m *memBackend) check(lba uint64, buf []byte) error {
	bs := m.lim.BlockSize
	if len(buf) == 0 || len(buf)%bs != 0 {
		return m.violate("%d bytes is not a whole number of blocks", len(buf))
	}
	if lba+uint64(len(buf)/bs) > m.lim.Blocks {
		return m.violate("blocks [%d, +%d) past the end", lba, len(buf)/bs)
	}
	if m.lim.MaxTransfer > 0 && len(buf) > m.lim.MaxTransfer {
		return m.violate("%d bytes above MaxTransfer %d", len(buf), m.lim.MaxTransfer)
	}
	if m.lim.MaxSegments > 0 && segments(buf) > m.lim.MaxSegments && len(buf) > bs {
		return m.violate("%d segments above MaxSegments %d", segments(buf), m.lim.MaxSegments)
	}
	return nil
}

func (m *memBackend) begin(ctx context.Context) error {
	n := m.inFlight.Add(1)
	for {
		x := m.maxInFlight.Load()
		if n <= x || m.maxInFlight.CompareAndSwap(x, n) {
			break
		}
	}
	if m.delay > 0 {
		select {
		case <-time.After(m.delay):
		case <-ctx.Done():
			m.inFlight.Add(-1)
			return ctx.Err()
		}
	}
	return nil
}

func (m *memBackend) end() { m.inFlight.Add(-1) }

func (m *memBackend) Read(ctx context.Context, lba uint64, buf []byte) error {
	if err := m.check(lba, buf); err != nil {
		return err
	}
	if err := m.begin(ctx); err != nil {
		return err
	}
	defer m.end()
	m.reads.Add(1)
	m.readAddrs.Store(addrOf(buf), true)
	if e := m.failRead.Load(); e != nil {
		return *e
	}
	off := int(lba) * m.lim.BlockSize
	m.mu.Lock()
	copy(buf, m.data[off:])
	m.mu.Unlock()
	return nil
}

func (m *memBackend) Write(ctx context.Context, lba uint64, buf []byte) error {
	if err := m.check(lba, buf); err != nil {
		return err
	}
	if err := m.begin(ctx); err != nil {
		return err
	}
	defer m.end()
	m.writes.Add(1)
	off := int(lba) * m.lim.BlockSize
	m.mu.Lock()
	copy(m.data[off:], buf)
	m.mu.Unlock()
	return nil
}

func (m *memBackend) Flush(ctx context.Context) error { m.flushes.Add(1); return nil }

func (m *memBackend) WriteZeroes(ctx context.Context, lba, blocks uint64) error {
	if lba+blocks > m.lim.Blocks {
		return m.violate("write zeroes past the end")
	}
	bs := uint64(m.lim.BlockSize)
	m.mu.Lock()
	clear(m.data[lba*bs : (lba+blocks)*bs])
	m.mu.Unlock()
	m.zeroed.Add(int64(blocks))
	return nil
}

func (m *memBackend) Deallocate(ctx context.Context, lba, blocks uint64) error {
	if lba+blocks > m.lim.Blocks {
		return m.violate("deallocate past the end")
	}
	m.deallocated.Add(int64(blocks))
	return nil
}

func (m *memBackend) snapshot() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]byte(nil), m.data...)
}

// nullBackend does nothing: it measures blk's own cost.
type nullBackend struct{ lim Limits }

func (n nullBackend) Limits() Limits                                  { return n.lim }
func (nullBackend) Read(context.Context, uint64, []byte) error        { return nil }
func (nullBackend) Write(context.Context, uint64, []byte) error       { return nil }
func (nullBackend) Flush(context.Context) error                       { return nil }
func (nullBackend) WriteZeroes(context.Context, uint64, uint64) error { return nil }
func (nullBackend) Deallocate(context.Context, uint64, uint64) error  { return nil }

var (
	_ Backend = (*memBackend)(nil)
	_ Backend = nullBackend{}
)
