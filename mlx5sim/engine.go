package mlx5sim

import (
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"syscall"
	"time"
	"unsafe"

	"github.com/nvmefs/nvmefs/ddp"
	"golang.org/x/sys/unix"
)

const (
	// maxRead bounds one read: a page read maps at most maxIOV pieces.
	maxRead = maxIOV * ddp.PageSize
	// maxIOV: pieces of one readv (the engine's own iovec array): a 128
	// KiB payload that is all there takes one system call.
	maxIOV = 64
	// minBounce: with less room left in a batch's buffer, hand it off
	// rather than read a sliver.
	minBounce = 2048
	// cpuSampleEvery: handoffs between two reads of the engine's CPU time.
	cpuSampleEvery = 64
)

// errWouldBlock: a non-blocking read found nothing to read.
var errWouldBlock = errors.New("mlx5sim: would block")

// errStale: the mapping a read was for has been torn down.
var errStale = errors.New("mlx5sim: mapping torn down")

// engine is a socket's receive engine: the one goroutine that reads the
// connection, packet by packet in stream terms, feeds the tracker and cuts
// the stream into segments.
type engine struct {
	s   *socket
	t   tracker
	rng *rand.Rand
	raw syscall.RawConn // nil: a connection without a file descriptor

	isn ddp.Seq
	mtu uint64
	off uint64 // stream offset of the next byte read

	// Packet loss decisions, drawn once per packet in order. Packets below
	// nextPkt are decided; when lostAhead, packet lostPkt (the last one
	// decided) is lost and not yet passed.
	nextPkt   uint64
	lostPkt   uint64
	lostAhead bool
	seenLost  uint64 // lostPkt+1 of the last lost packet the tracker was told of

	iov    [][]byte
	iovecs []unix.Iovec // readv's argument, maxIOV+1 (the tail) long
	one    [1][]byte
	// The raw read's arguments and results: rawRead is bound once, so
	// that a read allocates nothing.
	rdBufs  [][]byte
	rdBlock bool
	rdMap   *entry
	rdGen   uint32
	rdN     int
	rdErr   error
	rawRead func(fd uintptr) bool
	// Counters, flushed to the device's at each handoff.
	npkts, bytes, offPackets, offBytes uint64
	lastOffPkt                         uint64 // packet index + 1 of the last packet with placed bytes
	handoffs                           uint64
	cpuStart                           int64
	cpuMark                            int64 // inline: thread CPU time at the last mark
	cpuTid                             int   // and the thread it was read on
}

func newEngine(s *socket, rng *rand.Rand) *engine {
	e := &engine{
		s:      s,
		rng:    rng,
		isn:    s.d.cfg.InitialSeq,
		mtu:    uint64(s.d.cfg.MTU),
		iov:    make([][]byte, 0, maxIOV+1),
		iovecs: make([]unix.Iovec, 0, maxIOV+1),
	}
	if sc, ok := s.conn.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			e.raw = rc
			e.rawRead = e.readFD
		}
	}
	e.t = newTracker(s)
	return e
}

func (e *engine) run() {
	s := e.s
	defer close(s.engineDone)
	if s.d.cfg.AccountCPU {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		e.cpuStart = threadCPU()
	}
	var b *batch
	err := e.loop(&b)
	select {
	case <-s.quit:
		err = s.stopErr
	default:
	}
	if b != nil {
		e.handoff(b)
	}
	e.flush(true)
	s.err = err
	close(s.full)
}

// loop reads until the connection fails or the socket stops.
func (e *engine) loop(bp **batch) error {
	s := e.s
	for {
		select {
		case <-s.quit:
			return s.stopErr
		default:
		}
		b := *bp
		if b == nil {
			select {
			case b = <-s.free:
			case <-s.quit:
				return s.stopErr
			}
			b.used, b.segs = 0, b.segs[:0]
			*bp = b
		}
		full, err := e.step(b)
		if err != nil {
			return err
		}
		if full {
			e.handoff(b)
			*bp = nil
		}
	}
}

// next is the engine run by the Recv that needs segments (Config.Inline):
// it fills b, reset, as the engine's goroutine fills a batch before a
// handoff, and returns errInterrupted when an Interrupt woke it while it
// waited for the socket. With an error that ends the stream, b may hold
// the segments before it.
func (e *engine) next(b *batch) error {
	s := e.s
	b.used, b.segs = 0, b.segs[:0]
	for {
		select {
		case <-s.quit:
			return s.stopErr
		default:
		}
		if s.d.cfg.AccountCPU {
			e.markCPU()
		}
		full, err := e.step(b)
		if s.d.cfg.AccountCPU {
			// The work since the last mark (the read's last attempt, if
			// it waited), if the goroutine is still on the thread it was
			// on then: a thread's CPU clock says nothing of another's.
			if tid, now := unix.Gettid(), threadCPU(); tid == e.cpuTid {
				s.d.stats.add(statEngineCPU, uint64(max(now-e.cpuMark, 0)))
				s.d.stats.add(statEngineSteps, 1)
			} else {
				s.d.stats.add(statEngineStepsLost, 1)
			}
		}
		if err != nil {
			e.flush(false)
			return err
		}
		if full && len(b.segs) > 0 {
			e.handoffs++
			e.flush(false)
			return nil
		}
	}
}

// step reads once (or decides not to) and cuts what came into b's
// segments. full: b should be handed over now (the socket has nothing more
// at once, or b is full).
func (e *engine) step(b *batch) (full bool, err error) {
	s := e.s
	block := len(b.segs) == 0
	e.t.caps = s.d.caps()
	pe, gen, moff, want := e.t.plan()
	tail := 0
	switch {
	case pe == nil:
		want = min(want, bounceSize)
	case want <= maxRead-ddp.PageSize:
		// The read reaches the payload's end: the digest and the
		// next header (never placed) may come in the same system
		// call, into the receive buffer.
		tail = min(e.t.trailer(), len(b.buf)-b.used)
	default:
		want = min(want, maxRead)
	}
	lost, n := e.packets(want + tail)
	var got int
	if pe != nil && !lost {
		tail = max(n-want, 0) // less if a lost packet comes first
		n -= tail
		bufs, ok := s.pieces(pe, gen, moff, n, e.iov[:0])
		if !ok {
			e.t.dropPlace() // torn down: the rest goes unplaced
			return false, nil
		}
		var tb []byte
		if tail > 0 && iovLen(bufs) < n {
			tail = 0 // more pieces than a read takes: the payload goes on
		}
		if tail > 0 {
			tb = b.buf[b.used : b.used+tail]
			bufs = append(bufs, tb)
		}
		got, err = e.read(bufs, block, pe, gen)
		if err == errStale {
			e.t.dropPlace()
			return false, nil
		}
		for _, p := range bufs[:len(bufs)-min(tail, 1)] {
			if got == 0 {
				break
			}
			k := min(got, len(p))
			e.consume(b, p[:k], true, false)
			got -= k
		}
		if got > 0 {
			b.used += got
			e.consume(b, tb[:got], false, false)
		}
	} else {
		room := len(b.buf) - b.used
		if room < min(n, minBounce) {
			return true, nil
		}
		dst := b.buf[b.used : b.used+min(n, room)]
		e.one[0] = dst
		got, err = e.read(e.one[:], block, nil, 0)
		if got > 0 {
			b.used += got
			e.consume(b, dst[:got], false, lost)
		}
	}
	switch {
	case err == errWouldBlock:
		return true, nil
	case err != nil:
		return false, err
	}
	// Without a non-blocking read, hand off after each read: the next one
	// may wait for bytes that never come.
	return e.raw == nil || len(b.segs) >= maxBatchSeg, nil
}

// packets decides packet loss up to limit bytes ahead: whether the packet
// at e.off is lost, and how many bytes from e.off stay on the same side:
// the rest of that packet if it is lost (bytes nobody places), else up to
// limit or the next lost packet.
func (e *engine) packets(limit int) (lost bool, n int) {
	cur := e.off / e.mtu
	e.decide(cur)
	if e.lostAhead && e.lostPkt == cur {
		return true, int(min(bounceSize, (cur+1)*e.mtu-e.off))
	}
	end := e.off + uint64(limit)
	for p := cur + 1; p*e.mtu < end; p++ {
		e.decide(p)
		if e.lostAhead && e.lostPkt == p {
			end = p * e.mtu
			break
		}
	}
	return false, int(end - e.off)
}

// decide draws the loss of packets up to p, stopping at the first lost one.
func (e *engine) decide(p uint64) {
	for e.nextPkt <= p && !e.lostAhead {
		if r := loadRate(&e.s.d.lossRate); r > 0 && e.rng.Float64() < r {
			e.lostAhead, e.lostPkt = true, e.nextPkt
		}
		e.nextPkt++
	}
}

// read fills bufs from the connection. Unless block, it returns
// errWouldBlock at once when nothing is there to read. When bufs are
// pieces of mapping m, m must still be the mapping of generation gen
// at each attempt, and is marked as being written only during the read
// system call itself: a Teardown never waits for the peer to send. If m
// was torn down, read returns errStale.
//
// Inline (Config.Inline), a read deadline in the past is an Interrupt or a
// stop: a read that would wait returns errInterrupted for the first, the
// stream's end for the second; one that would not goes on.
func (e *engine) read(bufs [][]byte, block bool, m *entry, gen uint32) (int, error) {
	s := e.s
	for {
		if s.inline && block && s.intrPending.Swap(false) {
			return 0, errInterrupted
		}
		n, err := e.read1(bufs, block, m, gen)
		if !s.inline || !errors.Is(err, os.ErrDeadlineExceeded) {
			return n, err
		}
		s.conn.SetReadDeadline(time.Time{})
		// stop closes quit before it sets the deadline: looked at
		// after the deadline is cleared, it cannot be missed.
		select {
		case <-s.quit:
			return n, s.stopErr
		default:
		}
		if n > 0 {
			return n, nil
		}
	}
}

// errInterrupted: Interrupt woke an inline engine's wait for the socket.
var errInterrupted = errors.New("mlx5sim: interrupted")

func (e *engine) read1(bufs [][]byte, block bool, m *entry, gen uint32) (int, error) {
	s := e.s
	if e.raw == nil {
		// No file descriptor: a blocking read, during which a Teardown
		// of m waits.
		if m != nil {
			if !s.beginWrite(m, gen) {
				return 0, errStale
			}
			defer s.endWrite()
		}
		return s.conn.Read(bufs[0])
	}
	e.rdBufs, e.rdBlock, e.rdMap, e.rdGen, e.rdN = bufs, block, m, gen, 0
	rerr := e.raw.Read(e.rawRead)
	n, err := e.rdN, e.rdErr
	e.rdBufs, e.rdMap, e.rdErr = nil, nil, nil
	switch {
	case rerr != nil:
		return 0, rerr
	case err != nil:
		return max(n, 0), err
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// readFD is one attempt of read on the file descriptor; false: wait until
// it is readable and try again.
func (e *engine) readFD(fd uintptr) bool {
	s := e.s
	if s.d.cfg.AccountCPU && s.inline {
		e.markCPU() // where the work resumes after a wait
	}
	if m := e.rdMap; m != nil {
		if !s.beginWrite(m, e.rdGen) {
			e.rdN, e.rdErr = 0, errStale
			return true
		}
		defer s.endWrite()
	}
	var n int
	var err error
	for {
		if len(e.rdBufs) == 1 {
			n, err = unix.Read(int(fd), e.rdBufs[0])
		} else {
			n, err = e.readv(fd, e.rdBufs)
		}
		if err != unix.EINTR {
			break
		}
	}
	if err == unix.EAGAIN {
		if !e.rdBlock {
			e.rdN, e.rdErr = 0, errWouldBlock
			return true
		}
		return false // wait for the poller
	}
	e.rdN, e.rdErr = n, err
	return true
}

// readv is readv(2) on the engine's own iovec array (x/sys's Readv
// allocates one above 8 pieces).
func (e *engine) readv(fd uintptr, bufs [][]byte) (int, error) {
	iov := e.iovecs[:0]
	for _, b := range bufs {
		if len(b) == 0 {
			continue
		}
		v := unix.Iovec{Base: &b[0]}
		v.SetLen(len(b))
		iov = append(iov, v)
	}
	if len(iov) == 0 {
		return 0, nil
	}
	n, _, errno := unix.Syscall(unix.SYS_READV, fd, uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
	clear(iov) // no reference into a mapping once the call is over
	if errno != 0 {
		return -1, errno
	}
	return int(n), nil
}

// consume feeds fresh bytes (unless the tracker lost their packet) and
// cuts them into segments.
func (e *engine) consume(b *batch, data []byte, placed, lost bool) {
	t := &e.t
	t.runs = t.runs[:0]
	if lost {
		if pkt := e.off / e.mtu; e.seenLost != pkt+1 {
			e.seenLost = pkt + 1
			e.s.d.stats.add(statLossInjected, 1)
		}
		t.unseen(len(data))
	} else {
		t.feed(data)
	}
	i := 0
	for r := 0; r < len(t.runs); {
		ok, n := t.runs[r].ok, 0
		for ; r < len(t.runs) && t.runs[r].ok == ok; r++ {
			n += t.runs[r].n
		}
		for n > 0 {
			off := e.off + uint64(i)
			pkt := off / e.mtu
			k := min(n, int((pkt+1)*e.mtu-off))
			b.segs = append(b.segs, ddp.Segment{
				Bytes:  data[i : i+k : i+k],
				Seq:    e.isn + ddp.Seq(uint32(off)),
				Placed: placed,
				CRCOK:  ok,
			})
			if off%e.mtu == 0 {
				e.npkts++
			}
			if placed {
				e.offBytes += uint64(k)
				if e.lastOffPkt != pkt+1 {
					e.lastOffPkt = pkt + 1
					e.offPackets++
				}
			}
			i += k
			n -= k
		}
	}
	e.bytes += uint64(len(data))
	e.off += uint64(len(data))
	if e.lostAhead && e.off >= (e.lostPkt+1)*e.mtu {
		e.lostAhead = false // passed: later packets may be decided
	}
}

// handoff passes a batch with segments to Recv (never blocks: there are
// only numBatches batches), or keeps an empty one.
func (e *engine) handoff(b *batch) {
	if len(b.segs) == 0 {
		e.s.free <- b
		return
	}
	e.handoffs++
	e.flush(false)
	e.s.full <- b
}

// flush adds the engine's counters to the device's (and, every
// cpuSampleEvery handoffs and at the end, its thread's CPU time: reading
// it is a system call).
func (e *engine) flush(final bool) {
	st := &e.s.d.stats
	st.add(statPackets, e.npkts)
	st.add(statBytes, e.bytes)
	st.add(statOffloadPackets, e.offPackets)
	st.add(statOffloadBytes, e.offBytes)
	e.npkts, e.bytes, e.offPackets, e.offBytes = 0, 0, 0, 0
	if e.s.d.cfg.AccountCPU && !e.s.inline && (e.handoffs%cpuSampleEvery == 0 || final) {
		now := threadCPU()
		st.add(statEngineCPU, uint64(max(now-e.cpuStart, 0)))
		e.cpuStart = now
	}
}

// undelivered drains the batches Recv never took (after the engine
// exited) and counts their packets.
func (e *engine) undelivered() uint64 {
	var n uint64
	for b := range e.s.full {
		last := uint64(1<<64 - 1)
		for _, seg := range b.segs {
			if pkt := uint64(uint32(seg.Seq-e.isn)) / e.mtu; pkt != last {
				n++
				last = pkt
			}
		}
		e.s.free <- b
	}
	return n
}

// markCPU records the calling thread and its CPU time (inline engines).
func (e *engine) markCPU() { e.cpuTid, e.cpuMark = unix.Gettid(), threadCPU() }

// threadCPU is the calling thread's CPU time in nanoseconds.
func threadCPU() int64 {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts) != nil {
		return 0
	}
	return ts.Nano()
}

// iovLen is the bytes bufs hold.
func iovLen(b [][]byte) int {
	n := 0
	for _, p := range b {
		n += len(p)
	}
	return n
}
