package mlx5sim

import (
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nvmefs/nvmefs/ddp"
	"github.com/nvmefs/nvmefs/nvmetcp/wire"
)

// Mapping states. A table entry goes free -> mapped (Setup) -> tearing
// (Teardown while the engine writes into it) -> queued (invalidated; its
// TeardownDone is on the completion queue) -> free (TeardownDone called).
const (
	entryFree uint8 = iota
	entryMapped
	entryTearing
	entryQueued
)

// entry is one slot of a socket's tag table, the model of an mlx5 KLM
// mkey: the pages of one mapped buffer.
type entry struct {
	s     *socket
	tag   uint16
	state uint8
	gen   uint32 // bumped by each Setup: the engine never follows a stale mapping
	next  uint32 // end of the furthest PDU seen for this mapping: placement only beyond
	io    *ddp.IO
	due   time.Time // when its TeardownDone may be called
}

// Receive handoff: the engine fills batches, Recv hands their segments out.
const (
	numBatches  = 4
	bounceSize  = 64 << 10
	maxBatchSeg = 512
)

// batch is what one handoff carries: segments whose unplaced bytes live in
// buf, the NIC-private receive buffer.
type batch struct {
	buf  []byte
	used int
	segs []ddp.Segment
}

// socket is one offloaded NVMe/TCP queue (ddp.Socket).
type socket struct {
	d    *Device
	conn net.Conn
	ulp  ddp.ULP
	cfg  wire.OffloadConfig

	mu       sync.Mutex
	table    []entry
	writing  *entry // the mapping the engine is reading the socket into, if any
	setupRng *rand.Rand
	closed   bool
	// Completion queue: entries invalidated, TeardownDone pending.
	cq       []*entry
	cqStop   bool
	cqSignal chan struct{}

	// answer is the ULP's latest resync answer: seq<<32 | ok<<1 | 1.
	answer atomic.Uint64

	full chan *batch
	free chan *batch
	intr chan struct{} // Interrupt's token, taken by the Recv that waits

	// inline: the engine runs in Recv (Config.Inline), under recvMu,
	// filling cur; an Interrupt sets intrPending and a past read deadline.
	inline      bool
	recvMu      sync.Mutex
	intrPending atomic.Bool
	// Recv's own state (one caller at a time).
	cur    *batch
	curIdx int
	err    error // why the stream ended; written by the engine before it closes full

	quit     chan struct{}
	stopOnce sync.Once
	stopErr  error
	down     atomic.Bool
	isClosed atomic.Bool

	eng           *engine
	engineDone    chan struct{}
	completerDone chan struct{}
	closeOnce     sync.Once
}

var _ ddp.Socket = (*socket)(nil)

func newSocket(d *Device, conn net.Conn, cfg wire.OffloadConfig, ulp ddp.ULP, tags int, n uint64) *socket {
	s := &socket{
		d:             d,
		conn:          conn,
		ulp:           ulp,
		cfg:           cfg,
		table:         make([]entry, tags),
		setupRng:      d.rng(n, 1),
		cqSignal:      make(chan struct{}, 1),
		full:          make(chan *batch, numBatches),
		intr:          make(chan struct{}, 1),
		free:          make(chan *batch, numBatches),
		quit:          make(chan struct{}),
		engineDone:    make(chan struct{}),
		completerDone: make(chan struct{}),
	}
	for i := range s.table {
		s.table[i] = entry{s: s, tag: uint16(i)}
	}
	s.inline = d.cfg.Inline
	if s.inline {
		s.cur = newBatch()
	} else {
		for range numBatches {
			s.free <- newBatch()
		}
	}
	s.eng = newEngine(s, d.rng(n, 2))
	return s
}

func newBatch() *batch {
	return &batch{buf: make([]byte, bounceSize), segs: make([]ddp.Segment, 0, 64)}
}

func (s *socket) start() {
	if s.inline {
		close(s.engineDone) // no goroutine: Recv runs the engine
	} else {
		go s.eng.run()
	}
	go s.complete()
}

// Setup maps io for io.Tag. It fails (the I/O goes the software way) when
// the tag is out of the table's range or still mapped, when the list is
// longer than MaxSGL or malformed, when placement is off, or by injection.
func (s *socket) Setup(io *ddp.IO) error {
	err := s.setup(io)
	if err != nil {
		s.d.stats.add(statSetupFail, 1)
		return err
	}
	s.d.stats.add(statSetup, 1)
	return nil
}

func (s *socket) setup(io *ddp.IO) error {
	if io == nil {
		return fmt.Errorf("mlx5sim: nil IO: %w", ddp.ErrNotSupported)
	}
	if s.d.caps()&ddp.CapPlacement == 0 {
		return fmt.Errorf("mlx5sim: placement off: %w", ddp.ErrNotSupported)
	}
	if s.down.Load() || s.d.down.Load() {
		return ddp.ErrDeviceDown
	}
	if len(io.SG) > s.d.cfg.MaxSGL {
		return fmt.Errorf("mlx5sim: %d pieces, limit %d: %w", len(io.SG), s.d.cfg.MaxSGL, ddp.ErrSGLTooLong)
	}
	if err := checkSG(io); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("mlx5sim: socket closed: %w", net.ErrClosed)
	}
	if int(io.Tag) >= len(s.table) {
		return fmt.Errorf("mlx5sim: tag %d beyond the queue's %d: %w", io.Tag, len(s.table), ddp.ErrNoResources)
	}
	e := &s.table[io.Tag]
	if e.state != entryFree {
		return fmt.Errorf("mlx5sim: tag %d busy: %w", io.Tag, ddp.ErrNoResources)
	}
	if r := loadRate(&s.d.setupFailRate); r > 0 && s.setupRng.Float64() < r {
		return fmt.Errorf("mlx5sim: injected setup failure: %w", ddp.ErrNoResources)
	}
	e.state = entryMapped
	e.gen++
	e.next = 0
	e.io = io
	io.DeviceCtx = e
	return nil
}

// checkSG checks the shape ddp.IO promises: pieces of 1..PageSize bytes,
// all but the first and the last exactly a page, summing to Len. The
// engine's offset arithmetic relies on it.
func checkSG(io *ddp.IO) error {
	sum := 0
	for i, p := range io.SG {
		n := len(p)
		if n == 0 || n > ddp.PageSize || (i > 0 && i < len(io.SG)-1 && n != ddp.PageSize) {
			return fmt.Errorf("mlx5sim: SG piece %d of %d is %d bytes: %w", i, len(io.SG), n, ddp.ErrNotSupported)
		}
		sum += n
	}
	if len(io.SG) == 0 || sum != io.Len {
		return fmt.Errorf("mlx5sim: SG of %d pieces holds %d bytes, Len %d: %w", len(io.SG), sum, io.Len, ddp.ErrNotSupported)
	}
	return nil
}

// Teardown invalidates io's mapping: the engine stops placing into it at
// once (or, if a read system call into it is under way, as soon as that
// call returns). TeardownDone follows: from within Teardown when there is
// nothing to wait for (no delay, no read into the mapping under way, no
// earlier teardown pending), else from the completion goroutine, after the
// device's teardown delay. An io that is not mapped here (Setup failed, already torn down,
// socket closed) is ignored: no TeardownDone.
func (s *socket) Teardown(io *ddp.IO) {
	if io == nil {
		return
	}
	e, ok := io.DeviceCtx.(*entry)
	if !ok || e.s != s {
		return
	}
	s.mu.Lock()
	if e.io != io || e.state != entryMapped || s.closed {
		s.mu.Unlock()
		return
	}
	if s.writing == e {
		e.state = entryTearing // the engine queues it when its read returns
		s.mu.Unlock()
		return
	}
	if len(s.cq) > 0 || s.d.teardownDelay.Load() != 0 {
		s.queueLocked(e)
		s.mu.Unlock()
		return
	}
	// Nothing to wait for and nothing ahead of it: the invalidation is
	// complete now, and TeardownDone comes from here, as a completion a
	// driver polls right after posting it (no wake-up of the completion
	// goroutine).
	e.io = nil
	e.state = entryFree
	s.mu.Unlock()
	s.d.stats.add(statTeardown, 1)
	s.ulp.TeardownDone(io)
}

// queueLocked puts an invalidated entry on the completion queue.
func (s *socket) queueLocked(e *entry) {
	e.state = entryQueued
	e.due = time.Now().Add(time.Duration(s.d.teardownDelay.Load()))
	s.cq = append(s.cq, e)
	s.signal()
}

func (s *socket) signal() {
	select {
	case s.cqSignal <- struct{}{}:
	default:
	}
}

// complete is the completion goroutine: it calls TeardownDone for each
// invalidated mapping in order, once its delay has passed (at once when
// the socket closes), and frees the tag just before.
func (s *socket) complete() {
	defer close(s.completerDone)
	var timer *time.Timer
	for {
		s.mu.Lock()
		if len(s.cq) == 0 {
			stop := s.cqStop
			s.mu.Unlock()
			if stop {
				return
			}
			<-s.cqSignal
			continue
		}
		e, flush := s.cq[0], s.cqStop
		s.mu.Unlock()
		if wait := time.Until(e.due); !flush && wait > 0 {
			if timer == nil {
				timer = time.NewTimer(wait)
			} else {
				timer.Reset(wait)
			}
			select {
			case <-timer.C:
			case <-s.cqSignal:
				// A new entry or the flush: look again.
				if !timer.Stop() {
					<-timer.C
				}
				continue
			}
		}
		s.mu.Lock()
		s.cq[0] = nil
		s.cq = s.cq[1:]
		io := e.io
		e.io = nil
		e.state = entryFree
		s.mu.Unlock()
		s.d.stats.add(statTeardown, 1)
		s.ulp.TeardownDone(io)
	}
}

// Resync answers the latest ResyncRequest. Answers to an earlier request
// (superseded by a newer one) are ignored.
func (s *socket) Resync(seq ddp.Seq, ok bool) {
	v := uint64(seq)<<32 | 1
	if ok {
		v |= 2
	}
	s.answer.Store(v)
}

// Recv returns the next segment: to one caller at a time. A batch at hand
// is returned before an Interrupt is looked at.
func (s *socket) Recv() (ddp.Segment, error) {
	if s.inline {
		return s.recvInline()
	}
	for {
		if s.down.Load() {
			return ddp.Segment{}, ddp.ErrDeviceDown
		}
		if s.isClosed.Load() {
			return ddp.Segment{}, net.ErrClosed
		}
		if b := s.cur; b != nil {
			if s.curIdx < len(b.segs) {
				seg := b.segs[s.curIdx]
				s.curIdx++
				return seg, nil
			}
			// Every segment of b has been handed out and the caller is
			// done with the last one: b goes back to the engine.
			s.cur = nil
			s.free <- b
		}
		var b *batch
		var ok bool
		select {
		case b, ok = <-s.full:
		default:
			select {
			case b, ok = <-s.full:
			case <-s.intr:
				return ddp.Segment{}, ddp.ErrInterrupted
			}
		}
		if !ok {
			if s.down.Load() {
				return ddp.Segment{}, ddp.ErrDeviceDown
			}
			return ddp.Segment{}, s.err
		}
		s.cur, s.curIdx = b, 0
	}
}

// recvInline is Recv running the engine itself (Config.Inline): when the
// segments at hand are used up, it reads what the socket has into the one
// batch, waiting for the socket only when nothing at all is there.
func (s *socket) recvInline() (ddp.Segment, error) {
	s.recvMu.Lock()
	defer s.recvMu.Unlock()
	for {
		if s.down.Load() {
			return ddp.Segment{}, ddp.ErrDeviceDown
		}
		if s.isClosed.Load() {
			return ddp.Segment{}, net.ErrClosed
		}
		if b := s.cur; s.curIdx < len(b.segs) {
			seg := b.segs[s.curIdx]
			s.curIdx++
			return seg, nil
		}
		if s.err != nil {
			return ddp.Segment{}, s.err // after the last segments before it
		}
		s.curIdx = 0
		switch err := s.eng.next(s.cur); {
		case err == errInterrupted:
			return ddp.Segment{}, ddp.ErrInterrupted
		case err != nil:
			s.err = err
		}
	}
}

// Interrupt makes the Recv that waits, now or next, return
// ddp.ErrInterrupted.
func (s *socket) Interrupt() {
	if s.inline {
		s.intrPending.Store(true)
		s.conn.SetReadDeadline(time.Unix(1, 0)) // the device owns read deadlines
		return
	}
	select {
	case s.intr <- struct{}{}:
	default:
	}
}

// stop makes the engine exit with err as the stream's end.
func (s *socket) stop(err error) {
	s.stopOnce.Do(func() {
		s.stopErr = err
		close(s.quit)
		// Unblocks a read in progress; the device owns read deadlines.
		s.conn.SetReadDeadline(time.Unix(1, 0))
	})
}

// Close ends the offload (sk_del): the engine stops, every mapping still
// set up is torn down, and Close returns once each TeardownDone has been
// called (pending delays are cut short). Recv returns net.ErrClosed after.
// The connection itself stays open, its receive side unusable: the ULP
// closes it.
func (s *socket) Close() error {
	s.closeOnce.Do(func() {
		s.isClosed.Store(true)
		s.stop(net.ErrClosed)
		if s.inline {
			// A Recv in progress returns (stop woke it); nothing was
			// read ahead of the ULP.
			s.recvMu.Lock()
			s.eng.flush(true)
			s.recvMu.Unlock()
		} else {
			<-s.engineDone
			s.d.stats.add(statDrop, s.eng.undelivered())
		}
		s.mu.Lock()
		s.closed = true
		for i := range s.table {
			if e := &s.table[i]; e.state == entryMapped || e.state == entryTearing {
				s.queueLocked(e)
			}
		}
		s.cqStop = true
		s.signal()
		s.mu.Unlock()
		<-s.completerDone
		s.d.unregister(s)
		s.d.stats.add(statSkDel, 1)
	})
	return nil
}

// lookup returns the mapping that may take the payload [off, off+n) of
// a C2HData PDU for tag, nil if none. A mapping's bytes are written at
// most once: a PDU is placed only if it starts at or after the end of
// every PDU inside the mapping seen for the tag since Setup (NVMe/TCP
// sends a command's data in order). So the bytes of a placed segment never change while the ULP
// holds it, whatever a peer sends.
func (s *socket) lookup(tag uint16, off, n uint32) (*entry, uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if int(tag) >= len(s.table) {
		return nil, 0
	}
	e := &s.table[tag]
	if e.state != entryMapped {
		return nil, 0
	}
	end := uint64(off) + uint64(n) // VerifyHeader bounds it below 2^32
	if end > uint64(e.io.Len) {
		return nil, 0 // a ULP takes nothing of it either
	}
	ordered := off >= e.next
	e.next = max(e.next, uint32(end))
	if !ordered {
		return nil, 0
	}
	return e, e.gen
}

// beginWrite marks e as being written by the engine, if it is still the
// mapping of generation gen.
func (s *socket) beginWrite(e *entry, gen uint32) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e.state != entryMapped || e.gen != gen || s.closed {
		return false
	}
	s.writing = e
	return true
}

// endWrite ends a write; a Teardown that came meanwhile is queued now.
func (s *socket) endWrite() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.writing; e != nil && e.state == entryTearing {
		s.queueLocked(e)
	}
	s.writing = nil
}

// pieces returns the parts of mapping e (if it is still the mapping of
// generation gen) that take n bytes at offset moff, at most maxIOV of them.
func (s *socket) pieces(e *entry, gen uint32, moff, n int, dst [][]byte) ([][]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e.state != entryMapped || e.gen != gen {
		return dst, false
	}
	sg := e.io.SG
	i, within := 0, moff
	if first := len(sg[0]); moff >= first {
		k := moff - first
		i, within = 1+k/ddp.PageSize, k%ddp.PageSize
	}
	for ; n > 0 && i < len(sg) && len(dst) < maxIOV; i++ {
		p := sg[i][within:]
		if len(p) > n {
			p = p[:n]
		}
		dst = append(dst, p)
		n -= len(p)
		within = 0
	}
	return dst, len(dst) > 0
}
