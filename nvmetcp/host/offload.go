package host

import (
	"sync/atomic"

	"github.com/nvmefs/nvmefs/ddp"
	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
	"github.com/nvmefs/nvmefs/nvmetcp/wire"
)

// DDP receive offload of an I/O queue, as the kernel's nvme-tcp does it with
// ulp_ddp: sk_add after ICResp, setup before a large read's capsule, the
// copy and CRC skipped for what the NIC did, teardown on the response, and
// the request completed only once both the response and teardown_done have
// happened. The software path never reaches this file.

// ddpState is where a request's buffer mapping is (under request.mu).
type ddpState uint8

const (
	ddpNone    ddpState = iota // not mapped: the NIC never writes into the buffer
	ddpMapped                  // Setup succeeded; Teardown not called yet
	ddpTearing                 // Teardown called (or the socket is closing); TeardownDone pending
)

// offload is one offloaded queue's side of the device (the ddp.ULP).
type offload struct {
	q     *queue
	sock  ddp.Socket
	dev   ddp.Device
	lim   ddp.Limits
	stats *queueStats
	// resync is the latest resync request, seq<<32 | 1; 0: none pending.
	// Only the latest counts (the device ignores answers to older ones).
	resync atomic.Uint64
	// tearing is the mapping the receiver is tearing down right now: a
	// TeardownDone for it comes from within Teardown, on the receiver.
	tearing atomic.Pointer[ddp.IO]
}

var _ ddp.ULP = (*offload)(nil)

// offloadQueue offloads q (sk_add) once ICReq/ICResp are done and nothing
// more has been read from the connection: the device starts in sync at the
// next PDU. On failure the queue runs in software.
func (q *queue) offloadQueue(dev ddp.Device, lim ddp.Limits, maxData int) {
	o := &offload{q: q, dev: dev, lim: lim, stats: q.stats}
	cfg := wire.OffloadConfig{
		PFV:          0,
		CPDA:         q.p.TxPDA,
		HPDA:         q.p.RxPDA,
		HeaderDigest: q.p.HeaderDigest,
		DataDigest:   q.p.DataDigest,
		QueueID:      int(q.qid),
		QueueSize:    q.depth,
	}
	sock, err := dev.SkAdd(q.conn, cfg, o)
	if err != nil {
		q.stats.skAddFail.Add(1)
		q.log.Debug("nvme host: queue runs without offload", "qid", q.qid, "device", dev.Name(), "err", err)
		return
	}
	q.stats.skAdd.Add(1)
	o.sock = sock
	q.off = o
	// Without the full tag range the device maps only tags below the
	// queue size: command ids carry no generation on this queue (the
	// kernel's NVME_QUIRK_SKIP_CID_GEN for such devices).
	q.plainCID = !lim.FullTagRange
	for i := range q.reqs {
		r := &q.reqs[i]
		r.unmapped = make(chan struct{}, 1)
		r.dio.SG = make([][]byte, 0, min(lim.MaxSGL, maxData/ddp.PageSize+1)+1)
	}
	q.rx = &ddpStream{o: o}
}

// setup maps r's buffer for command id cid before its capsule is sent, if
// the read is worth it; false: the read goes the software way. Called
// under txMu, so that a queue being torn down maps nothing more.
func (o *offload) setup(r *request, cid uint16) bool {
	if len(r.data) < o.lim.IOThreshold {
		return false
	}
	if _, on := o.dev.Capabilities(); on&ddp.CapPlacement == 0 {
		return false
	}
	r.dio.Tag = cid
	r.dio.SG = ddp.SG(r.data, r.dio.SG[:0])
	r.dio.Len = len(r.data)
	if err := o.sock.Setup(&r.dio); err != nil {
		o.stats.ddpSetupFail.Add(1)
		return false
	}
	o.stats.ddpSetup.Add(1)
	return true
}

// ResyncRequest records the device's question; the receive loop answers it
// when its parser reaches seq (stream.answer).
func (o *offload) ResyncRequest(seq ddp.Seq) {
	o.stats.resyncRequests.Add(1)
	o.resync.Store(uint64(seq)<<32 | 1)
}

// answer answers the pending resync request, if the parser's position at
// (header: a PDU header starts there) settles it: yes when a header starts
// exactly at the requested seq, no once the parser is past it.
func (o *offload) answer(at ddp.Seq, header bool) {
	v := o.resync.Load()
	if v == 0 {
		return
	}
	seq := ddp.Seq(v >> 32)
	var ok bool
	switch {
	case header && seq == at:
		ok = true
	case seq.LessThan(at):
	default:
		return // not there yet
	}
	if !o.resync.CompareAndSwap(v, 0) {
		return // a newer request came: it is answered at the next check
	}
	if ok {
		o.stats.resyncYes.Add(1)
	} else {
		o.stats.resyncNo.Add(1)
	}
	o.sock.Resync(seq, ok)
}

// TeardownDone: the device will never write into the request's buffer
// again. A response that came meanwhile completes the request now.
func (o *offload) TeardownDone(io *ddp.IO) {
	q := o.q
	t := int(io.Tag & tagMask)
	if t >= len(q.reqs) || &q.reqs[t].dio != io {
		return
	}
	r := &q.reqs[t]
	o.stats.ddpTeardown.Add(1)
	// The device is done with the list: drop its references to the
	// caller's buffer.
	clear(io.SG)
	io.SG = io.SG[:0]
	r.mu.Lock()
	r.ddp = ddpNone
	if r.unmapWait {
		r.unmapped <- struct{}{} // one token per wait; never blocks
	}
	pending, st, res, err := r.respPending, r.respStatus, r.respResult, r.respErr
	r.respPending, r.respErr = false, nil
	r.mu.Unlock()
	if pending {
		q.complete(r, st, res, err)
		if q.leader.Load() == r && o.tearing.Load() != io {
			// Its waiter receives for the queue and may wait at a PDU
			// boundary for bytes that never come: wake it.
			q.kickReceiver()
		}
	}
}

// respond ends a command on its response (CapsuleResp, or C2HData with
// SUCCESS): at once in software; on an offloaded queue, a mapped buffer is
// torn down first and the command completes at TeardownDone.
func (q *queue) respond(r *request, st nvme.Status, result uint64, err error) {
	if q.off != nil {
		r.mu.Lock()
		switch r.ddp {
		case ddpMapped, ddpTearing:
			tear := r.ddp == ddpMapped
			r.ddp = ddpTearing
			r.respPending, r.respStatus, r.respResult, r.respErr = true, st, result, err
			r.mu.Unlock()
			if tear {
				q.off.tearing.Store(&r.dio)
				q.off.sock.Teardown(&r.dio)
				q.off.tearing.Store(nil)
			}
			return
		}
		r.mu.Unlock()
	}
	q.complete(r, st, result, err)
}

// unmapBeforeLeaving is a read's waiter leaving early (its context ended)
// with the buffer possibly mapped: it tears the mapping down and waits for
// TeardownDone, so that nothing writes into the buffer once wait returns.
// The caller holds r.mu (released meanwhile, held again on return). It
// reports whether the command completed meanwhile.
func (q *queue) unmapBeforeLeaving(r *request) (completed bool) {
	if r.ddp == ddpNone {
		return false
	}
	tear := r.ddp == ddpMapped
	r.ddp = ddpTearing
	r.unmapWait = true
	r.mu.Unlock()
	if tear {
		q.off.sock.Teardown(&r.dio)
	}
	<-r.unmapped
	r.mu.Lock()
	r.unmapWait = false
	return r.state != reqInflight
}

// ddpStream is the receive side of an offloaded queue: the segments the
// device hands over, parsed by the same rxLoop as the software stream.
// Header bytes are copied into the parser's buffer; payload is copied into
// the request's buffer unless the device placed it there already (source
// == destination); the CRC tracker follows every segment that carries a
// byte of the current PDU.
type ddpStream struct {
	o        *offload
	seg      ddp.Segment // the current segment
	rest     []byte      // its bytes not consumed yet
	pos      ddp.Seq     // sequence number of rest[0]
	counted  bool        // seg is accounted in crc for the current PDU
	pduStart bool        // startPDU was called and no byte of the PDU consumed
	crc      ddp.CRCTracker
}

var _ rxStream = (*ddpStream)(nil)

func (s *ddpStream) startPDU() {
	s.crc.Reset()
	s.counted = false
	s.pduStart = true
}

func (s *ddpStream) pduVerified() bool { return s.crc.Offloaded() }

func (s *ddpStream) interrupt() { s.o.sock.Interrupt() }

func (s *ddpStream) buffered() bool { return len(s.rest) > 0 }

// ready loads the next segment if the device has one at hand: an
// Interrupt first makes Recv return at once when it has none.
func (s *ddpStream) ready() bool {
	if len(s.rest) > 0 {
		return true
	}
	s.startPDU()
	s.o.sock.Interrupt()
	return s.ensure() != errKicked
}

// ensure makes rest non-empty and accounts the segment for the current
// PDU. It answers a pending resync request where the parser's position
// settles it: at a PDU start (once the bytes there have come, since the
// device asks before it hands them over), or when a new segment shows the
// parser has passed it.
func (s *ddpStream) ensure() error {
	fresh := false
	for len(s.rest) == 0 {
		seg, err := s.o.sock.Recv()
		if err == ddp.ErrInterrupted {
			if s.pduStart {
				return errKicked // nothing of the PDU consumed
			}
			continue
		}
		if err != nil {
			return err
		}
		s.seg, s.rest, s.pos = seg, seg.Bytes, seg.Seq
		s.counted, fresh = false, true
	}
	if s.pduStart || fresh {
		s.o.answer(s.pos, s.pduStart)
		s.pduStart = false
	}
	if !s.counted {
		s.crc.Add(s.seg)
		s.counted = true
	}
	return nil
}

func (s *ddpStream) advance(n int) {
	s.rest = s.rest[n:]
	s.pos = s.pos.Add(uint32(n))
}

func (s *ddpStream) readFull(b []byte) error {
	for len(b) > 0 {
		if err := s.ensure(); err != nil {
			return err
		}
		n := copy(b, s.rest)
		s.advance(n)
		b = b[n:]
	}
	return nil
}

func (s *ddpStream) readPayload(dst []byte) error {
	var copied, skipped int
	var err error
	for len(dst) > 0 {
		if err = s.ensure(); err != nil {
			err = unexpectedEOF(err)
			break
		}
		n := min(len(dst), len(s.rest))
		if c := ddp.CopySkip(dst[:n], s.rest[:n]); c == 0 {
			skipped += n
		} else {
			copied += c
		}
		s.advance(n)
		dst = dst[n:]
	}
	if copied > 0 {
		s.o.stats.bytesCopied.Add(uint64(copied))
	}
	if skipped > 0 {
		s.o.stats.bytesPlaced.Add(uint64(skipped))
	}
	return err
}

func (s *ddpStream) skip(n int) error {
	for n > 0 {
		if err := s.ensure(); err != nil {
			return unexpectedEOF(err)
		}
		k := min(n, len(s.rest))
		s.advance(k)
		n -= k
	}
	return nil
}
