package host

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nvmefs/nvmefs/ddp"
	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
	"github.com/nvmefs/nvmefs/nvmetcp/wire"
)

// A command id is a tag (the request's slot in its queue) and a 4-bit
// generation, as the kernel's nvme_cid: a late answer for a slot that has
// since been reused is caught as a protocol error, not delivered.
const (
	tagBits = 12
	tagMask = 1<<tagBits - 1
	genMask = 0xf
)

type dataDir uint8

const (
	dirNone  dataDir = iota
	dirRead          // controller to host: C2HData into data
	dirWrite         // host to controller: in-capsule or H2CData from data
)

type reqState uint8

const (
	reqFree     reqState = iota
	reqInflight          // submitted, not answered
	reqDone              // answered; the waiter takes the result
	reqCanceled          // the waiter left; the slot is freed when the command ends
)

// request is one slot of a queue's tag set, reused for every command that
// gets that tag: nothing is allocated per command.
type request struct {
	tag uint16
	gen uint16

	// Set by the submitter before submit; read by the writer and the
	// receive loop after (submit's locks order them).
	sqe       [nvme.SQELen]byte
	data      []byte
	dir       dataDir
	inCapsule bool
	start     time.Time

	// Receive loop state of the command in flight.
	received  int  // C2HData bytes placed, in order
	r2tEnd    int  // end of the last R2T's range
	digestErr bool // a C2HData PDU of this command failed its data digest

	// r2tActive: an R2T whose H2CData the writer has not yet encoded (the
	// host accepts one outstanding R2T per command, MAXR2T 0).
	r2tActive atomic.Bool
	// txBusy counts writer batches that reference data and are not yet
	// written; the waiter does not hand data back to its caller before 0.
	txBusy atomic.Int32
	// deadline (Unix ns) is the IOTimeout of the command in flight, 0 if none.
	deadline atomic.Int64

	mu     sync.Mutex // state, cid and placement into data
	state  reqState
	cid    uint16
	status nvme.Status
	result uint64
	err    error
	done   chan struct{} // one token per completion

	// DDP offload (offloaded queues only; offload.go). Under mu: the
	// mapping's state, a response waiting for TeardownDone, and a waiter
	// leaving early that waits for it (unmapped).
	dio         ddp.IO
	ddp         ddpState
	respPending bool
	respStatus  nvme.Status
	respResult  uint64
	respErr     error
	unmapWait   bool
	unmapped    chan struct{}
}

type txKind uint8

const (
	txCommand txKind = iota
	txData           // H2CData for an R2T
)

// txItem is what the writer sends: a command capsule, or the H2CData PDUs
// answering one R2T.
type txItem struct {
	r    *request
	kind txKind
	ttag uint16
	off  int
	n    int
}

// queue is one NVMe/TCP connection: a submission/completion queue pair.
type queue struct {
	qid   uint16
	conn  net.Conn
	p     wire.Params // negotiated; read-only once the goroutines run
	depth int
	// maxH2CData bounds each H2CData payload (the controller's MAXH2CDATA).
	maxH2CData int
	// inCapsule is the largest write data sent in the capsule (0: none).
	inCapsule int
	ioTimeout time.Duration

	reqs  []request
	tags  chan uint16
	stats *queueStats
	rx    rxStream
	log   *slog.Logger
	// off is the queue's DDP offload, nil when it runs in software.
	off *offload
	// plainCID: command ids are the bare tag, without a generation (an
	// offload device that maps only tags below the queue size).
	plainCID bool
	// discard: Options.BenchmarkDiscardPayload (the stream drops C2HData
	// payload; no digest is checked).
	discard bool
	// inflight counts commands between submit and their end.
	inflight atomic.Int64

	txMu sync.Mutex
	txq  []txItem
	dead bool // under txMu: nothing more is submitted
	kick chan struct{}
	// sendMu is held by whoever writes to conn: a submitter sending what
	// is queued (its own command and those submitted meanwhile), or the
	// writer goroutine. tx is its scratch space.
	sendMu sync.Mutex
	tx     txBatch

	// The receive role (see receive): rxMu is held by whoever parses,
	// rxHdr and rxDigest are its buffers; rxWake wakes the receive goroutine;
	// leader is the request whose waiter receives, leaderDone its
	// context's Done channel (noDone when none).
	rxMu       sync.Mutex
	rxHdr      [wire.MaxHeaderBuf]byte
	rxDigest   [wire.DigestLen]byte
	rxWake     chan struct{}
	leader     atomic.Pointer[request]
	leaderDone atomic.Value

	failed atomic.Bool
	deadCh chan struct{} // closed when the queue fails
	reaped chan struct{} // closed once the goroutines ended and every command was failed
	wg     sync.WaitGroup
	onFail func(error)
}

// errRequeue fails the commands of a torn-down queue: the caller issues them
// again once the controller has recovered (or gets ErrControllerLost).
var errRequeue = errors.New("host: queue torn down")

// queueConfig is what dialQueue needs.
type queueConfig struct {
	addr      string
	qid       uint16
	depth     int
	maxData   uint32 // largest C2HData payload accepted
	inCapsule int    // in-capsule data limit before the ICResp (admin: 8 KiB - 64)
	opts      *Options
	stats     *queueStats
	onFail    func(error)
	// offload, if set, is the DDP device the queue is offloaded to after
	// ICResp, with its limits (I/O queues only).
	offload ddp.Device
	limits  ddp.Limits
}

// dialQueue connects one queue: TCP, then ICReq/ICResp; then it starts the
// queue's receive loop and writer.
func dialQueue(ctx context.Context, cfg queueConfig) (*queue, error) {
	o := cfg.opts
	// IOTimeout bounds the TCP connect and the ICReq/ICResp exchange.
	ctx, cancel := context.WithTimeout(ctx, o.IOTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", cfg.addr)
	if err != nil {
		return nil, fmt.Errorf("host: queue %d: %w", cfg.qid, err)
	}
	q := &queue{
		qid:       cfg.qid,
		conn:      conn,
		depth:     cfg.depth,
		inCapsule: cfg.inCapsule,
		ioTimeout: o.IOTimeout,
		tags:      make(chan uint16, cfg.depth),
		stats:     cfg.stats,
		log:       o.Logger,
		kick:      make(chan struct{}, 1),
		rxWake:    make(chan struct{}, 1),
		deadCh:    make(chan struct{}),
		reaped:    make(chan struct{}),
		onFail:    cfg.onFail,
	}
	if err := q.initConnection(ctx, cfg); err != nil {
		conn.Close()
		return nil, fmt.Errorf("host: queue %d: %w", cfg.qid, err)
	}
	q.reqs = make([]request, cfg.depth)
	for i := range q.reqs {
		r := &q.reqs[i]
		r.tag, r.done = uint16(i), make(chan struct{}, 1)
		q.tags <- uint16(i)
	}
	ss := newSocketStream(conn, cfg.stats)
	if cfg.qid != 0 && o.BenchmarkDiscardPayload {
		if err := ss.discardPayloads(); err != nil {
			conn.Close()
			return nil, fmt.Errorf("host: queue %d: %w", cfg.qid, err)
		}
		q.discard = true
	}
	q.rx = ss
	if cfg.offload != nil && cfg.qid != 0 {
		q.offloadQueue(cfg.offload, cfg.limits, int(cfg.maxData))
	}
	q.leaderDone.Store(noDone)
	q.wg.Add(2)
	go q.run(q.rxLoop)
	go q.run(q.txLoop)
	return q, nil
}

// initConnection exchanges ICReq and ICResp (synchronously, before the
// goroutines start) and records the negotiated parameters.
func (q *queue) initConnection(ctx context.Context, cfg queueConfig) error {
	o := cfg.opts
	if dl, ok := ctx.Deadline(); ok {
		q.conn.SetDeadline(dl)
		defer q.conn.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { q.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	var b [wire.MaxHeaderBuf]byte
	wire.ICReq(b[:]).Encode(&wire.ICReqFields{HPDA: 0, HeaderDigest: o.HeaderDigest, DataDigest: o.DataDigest, MaxR2T: 0})
	if _, err := q.conn.Write(b[:wire.ICReqLen]); err != nil {
		return fmt.Errorf("ICReq: %w", ctxErr(ctx, err))
	}
	var none wire.Params
	if _, err := io.ReadFull(q.conn, b[:wire.CommonHeaderLen]); err != nil {
		return fmt.Errorf("waiting for ICResp: %w", ctxErr(ctx, unexpectedEOF(err)))
	}
	l, err := none.Layout(b[:wire.CommonHeaderLen], wire.ToHost)
	if err != nil {
		return fmt.Errorf("ICResp: %w", err)
	}
	if _, err := io.ReadFull(q.conn, b[wire.CommonHeaderLen:l.PLen]); err != nil {
		return fmt.Errorf("ICResp: %w", ctxErr(ctx, unexpectedEOF(err)))
	}
	if l.Type == wire.TypeC2HTermReq {
		t := wire.TermReq(b[:])
		return fmt.Errorf("controller refused the connection: %v (FEI %d)", t.FES(), t.FEI())
	}
	if l.Type != wire.TypeICResp {
		return fmt.Errorf("got %v, want ICResp", l.Type)
	}
	if err := none.VerifyHeader(wire.Header(b[:l.PLen]), l); err != nil {
		return err
	}
	resp := wire.ICResp(b[:])
	hd, dd := resp.Digest()&wire.DigestHeader != 0, resp.Digest()&wire.DigestData != 0
	// As the kernel: the controller must grant exactly the digests asked for.
	if hd != o.HeaderDigest || dd != o.DataDigest {
		return fmt.Errorf("controller answered digests header=%v data=%v to a request for header=%v data=%v", hd, dd, o.HeaderDigest, o.DataDigest)
	}
	q.p = wire.Params{
		HeaderDigest: hd,
		DataDigest:   dd,
		RxPDA:        0, // HPDA 0: no alignment asked of C2HData
		TxPDA:        resp.CPDA(),
		MaxData:      cfg.maxData,
	}
	q.maxH2CData = int(resp.MaxH2CData())
	return nil
}

// ctxErr prefers the context's error to the I/O error it caused.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return err
}

// run runs one of the queue's two goroutines; the first to end fails the queue.
func (q *queue) run(loop func() error) {
	defer q.wg.Done()
	if err := loop(); err != nil {
		q.fail(err)
	}
}

// fail tears the queue down: no more submissions, the connection closed,
// and, once both goroutines have ended, every command in flight failed with
// errRequeue. onFail learns of it once.
func (q *queue) fail(err error) {
	if !q.failed.CompareAndSwap(false, true) {
		return
	}
	q.txMu.Lock()
	q.dead = true
	q.txMu.Unlock()
	close(q.deadCh)
	q.conn.Close()
	go q.reap()
	if q.onFail != nil {
		q.onFail(err)
	}
}

// reap fails what was in flight once nothing touches a request's data any
// more (the receive loop and the writer have ended).
func (q *queue) reap() {
	q.wg.Wait()
	// A waiter receiving ends too (the connection is closed); nobody
	// receives on this queue again.
	q.rxMu.Lock()
	if q.off != nil {
		// sk_del: every mapping is torn down (TeardownDone called)
		// before the buffers of failed commands go back to be issued again.
		q.off.sock.Close()
	}
	for i := range q.reqs {
		r := &q.reqs[i]
		r.mu.Lock()
		st := r.state
		r.mu.Unlock()
		if st == reqInflight || st == reqCanceled {
			q.complete(r, 0, 0, errRequeue)
		}
	}
	close(q.reaped)
}

// get takes a free tag. It fails with errRequeue once the queue is torn down.
func (q *queue) get(ctx context.Context) (*request, error) {
	select {
	case t := <-q.tags:
		return &q.reqs[t], nil
	default:
	}
	select {
	case t := <-q.tags:
		return &q.reqs[t], nil
	case <-q.deadCh:
		return nil, errRequeue
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// put frees a tag.
func (q *queue) put(r *request) {
	r.data = nil
	q.tags <- r.tag
}

// submit hands a prepared request (sqe, data, dir, inCapsule) to the writer.
func (q *queue) submit(r *request) error {
	r.received, r.r2tEnd, r.digestErr = 0, 0, false
	r.r2tActive.Store(false)
	cid := r.tag
	if !q.plainCID {
		r.gen = (r.gen + 1) & genMask
		cid = r.gen<<tagBits | r.tag
	}
	nvme.SQE(r.sqe[:]).SetCID(cid)
	r.start = time.Now()
	q.txMu.Lock()
	if q.dead {
		q.txMu.Unlock()
		return errRequeue
	}
	// Mapped under txMu: a queue being torn down maps nothing more, so
	// that sk_del finds every mapping.
	mapped := q.off != nil && r.dir == dirRead && q.off.setup(r, cid)
	r.mu.Lock()
	r.cid, r.state, r.err, r.status, r.result = cid, reqInflight, nil, 0, 0
	if mapped {
		r.ddp = ddpMapped
	}
	r.mu.Unlock()
	r.deadline.Store(r.start.Add(q.ioTimeout).UnixNano())
	q.stats.commands.Add(1)
	q.stats.noteInFlight(q.inflight.Add(1))
	q.txq = append(q.txq, txItem{r: r, kind: txCommand})
	q.txMu.Unlock()
	// Sent from here unless another sender is at work, which then takes
	// it along: no hand-off to the writer (the kernel's direct send).
	q.kickSend()
	return nil
}

// wait waits for the command's end. If ctx ends first, a command that
// moves no data to the controller is detached (the slot is freed when the
// controller answers or the queue is torn down; nothing is placed into data
// after wait returns). A write's data stays in use until the command ends:
// with abort, the queue is torn down at once to end it; without, wait goes
// on until the controller answers or the I/O timeout tears the queue down.
// While nobody else receives, the waiter receives for the queue itself
// (lead); a cancelled one then leaves within a watchdog tick.
func (q *queue) wait(ctx context.Context, r *request, abort bool) (nvme.Status, uint64, error) {
	q.lead(ctx, r)
	select {
	case <-r.done:
	case <-ctx.Done():
		r.mu.Lock()
		if r.state == reqInflight && r.dir != dirWrite {
			if q.unmapBeforeLeaving(r) {
				// It completed while the buffer was being unmapped.
				r.mu.Unlock()
				<-r.done
				break
			}
			r.state = reqCanceled
			r.mu.Unlock()
			return 0, 0, ctx.Err()
		}
		r.mu.Unlock()
		if abort {
			q.fail(fmt.Errorf("queue %d: command abandoned: %w", q.qid, ctx.Err()))
		}
		<-r.done
	}
	// The writer may still be in the system call that sent data.
	for i := 0; r.txBusy.Load() != 0; i++ {
		if i < 100 {
			runtime.Gosched()
		} else {
			time.Sleep(20 * time.Microsecond)
		}
	}
	st, res, err := r.status, r.result, r.err
	r.mu.Lock()
	r.state = reqFree
	r.mu.Unlock()
	q.put(r)
	return st, res, err
}

// complete ends a command: the waiter is told, or, if it has left, the slot
// is freed.
func (q *queue) complete(r *request, st nvme.Status, result uint64, err error) {
	r.deadline.Store(0)
	if err == nil && st.Success() {
		q.stats.observe(time.Since(r.start))
	} else {
		q.stats.errors.Add(1)
	}
	r.mu.Lock()
	switch r.state {
	case reqInflight:
		r.status, r.result, r.err = st, result, err
		r.state = reqDone
		r.mu.Unlock()
		q.inflight.Add(-1)
		r.done <- struct{}{}
	case reqCanceled:
		r.state = reqFree
		r.mu.Unlock()
		q.inflight.Add(-1)
		q.put(r)
	default:
		r.mu.Unlock()
	}
}

// exec runs one command (an encoded SQE) on this queue: the admin
// commands. The SGL descriptor is made to fit data.
func (q *queue) exec(ctx context.Context, sqe *[nvme.SQELen]byte, data []byte, dir dataDir) (nvme.Status, uint64, error) {
	r, err := q.get(ctx)
	if err != nil {
		return 0, 0, err
	}
	r.sqe = *sqe
	q.setData(r, data, dir)
	if err := q.submit(r); err != nil {
		q.put(r)
		return 0, 0, err
	}
	return q.wait(ctx, r, true)
}

// setData attaches data to a request and fills in its SGL descriptor. As
// the kernel, a command without data still carries a transport SGL of
// length 0.
func (q *queue) setData(r *request, data []byte, dir dataDir) {
	if len(data) == 0 {
		dir = dirNone
	}
	r.data, r.dir = data, dir
	r.inCapsule = dir == dirWrite && len(data) <= q.inCapsule
	id := uint8(nvme.SGLTransportData)
	if r.inCapsule {
		id = nvme.SGLInCapsule
	}
	sqe := nvme.SQE(r.sqe[:])
	sqe[1] = sqe[1]&^nvme.FlagsPSDTMask | nvme.FlagsPSDTSGL
	sqe.DPTR().Encode(&nvme.SGLFields{Length: uint32(len(data)), ID: id})
}

// overdue reports whether a command has been in flight past IOTimeout.
func (q *queue) overdue(now int64) bool {
	for i := range q.reqs {
		if d := q.reqs[i].deadline.Load(); d != 0 && now > d {
			return true
		}
	}
	return false
}

// ---- sending ----

// txArenaLen holds the headers and digests of one batch; a larger batch is
// written in several system calls.
const txArenaLen = 32 << 10

// txBatch is the sender's scratch space (under sendMu): the items taken
// from txq, the arena their headers and digests are encoded in, the iovecs
// of one writev, and the requests whose data those iovecs reference.
type txBatch struct {
	work  []txItem
	arena []byte
	used  int
	bufs  net.Buffers
	busy  []*request
	nb    net.Buffers // WriteTo consumes it: kept here so that it does not allocate
}

// maxCombine bounds how many rounds a submitter sends for others before it
// leaves the rest to the writer goroutine, so that its own wait is not
// held up by a stream of other submitters.
const maxCombine = 4

// kickSend sends what is queued from the calling submitter if nobody else
// is sending: commands submitted while a writev is under way go out
// together in the next one, by whoever holds sendMu (flat combining). The
// caller never waits for another sender.
func (q *queue) kickSend() {
	for range maxCombine {
		if !q.sendMu.TryLock() {
			return // the sender takes what we queued before it lets go
		}
		err := q.sendQueued()
		q.sendMu.Unlock()
		if err != nil {
			q.fail(err) // the commands end with the queue, errRequeue
			return
		}
		q.txMu.Lock()
		more := len(q.txq) > 0
		q.txMu.Unlock()
		if !more {
			return
		}
	}
	q.wake()
}

func (q *queue) wake() {
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

// txLoop is the queue's writer goroutine: it sends what the receive loop
// queues (H2CData for R2Ts: the receive loop itself must never wait for
// the socket's send side) and what submitters left to it.
func (q *queue) txLoop() error {
	for {
		select {
		case <-q.kick:
		case <-q.deadCh:
			return nil
		}
		q.sendMu.Lock()
		err := q.sendQueued()
		q.sendMu.Unlock()
		if err != nil {
			return err
		}
	}
}

// sendQueued writes everything queued, a writev per round, until the queue
// is empty. The caller holds sendMu.
func (q *queue) sendQueued() error {
	b := &q.tx
	if b.arena == nil {
		b.arena = make([]byte, txArenaLen)
	}
	for {
		q.txMu.Lock()
		b.work, q.txq = q.txq, b.work[:0]
		q.txMu.Unlock()
		if len(b.work) == 0 {
			return nil
		}
		for i := range b.work {
			if err := q.encode(&b.work[i]); err != nil {
				return err
			}
			b.work[i].r = nil
		}
		if err := q.flushBatch(); err != nil {
			return err
		}
	}
}

// flushBatch writes the iovecs gathered so far and releases the data they
// reference.
func (q *queue) flushBatch() error {
	b := &q.tx
	var err error
	if len(b.bufs) > 0 {
		b.nb = b.bufs
		_, err = b.nb.WriteTo(q.conn)
	}
	clear(b.bufs)
	b.bufs, b.used = b.bufs[:0], 0
	for _, r := range b.busy {
		r.txBusy.Add(-1)
	}
	clear(b.busy)
	b.busy = b.busy[:0]
	return err
}

// room makes sure the arena has n bytes free, writing the batch so far if not.
func (q *queue) room(n int) error {
	if len(q.tx.arena)-q.tx.used >= n {
		return nil
	}
	return q.flushBatch()
}

// useData adds data of r to the batch: r's waiter does not hand data back
// before the batch is written.
func (q *queue) useData(r *request, data []byte) {
	b := &q.tx
	r.txBusy.Add(1)
	b.busy = append(b.busy, r)
	b.bufs = append(b.bufs, data)
	if q.p.DataDigest {
		d := b.arena[b.used : b.used+wire.DigestLen]
		wire.PutDigest(d, wire.DataDigest(data))
		b.used += wire.DigestLen
		b.bufs = append(b.bufs, d)
	}
}

// encode adds one item's PDUs to the batch.
func (q *queue) encode(it *txItem) error {
	b := &q.tx
	r := it.r
	switch it.kind {
	case txCommand:
		if err := q.room(wire.MaxHeaderBuf + wire.DigestLen); err != nil {
			return err
		}
		h := b.arena[b.used:]
		copy(wire.CapsuleCmd(h).Encode(), r.sqe[:])
		dl := 0
		if r.inCapsule {
			dl = len(r.data)
		}
		hdr := q.p.Seal(h, dl)
		b.used += len(hdr)
		b.bufs = append(b.bufs, hdr)
		if dl > 0 {
			q.useData(r, r.data)
		}
	case txData:
		end := it.off + it.n
		for off := it.off; off < end; {
			n := min(end-off, q.maxH2CData)
			if err := q.room(wire.MaxHeaderBuf + wire.DigestLen); err != nil {
				return err
			}
			h := b.arena[b.used:]
			var fl wire.Flags
			if off+n == end {
				fl = wire.FlagLast
			}
			wire.DataHeader(h).Encode(&wire.DataFields{Type: wire.TypeH2CData, Flags: fl, CCCID: nvme.SQE(r.sqe[:]).CID(), TTag: it.ttag, DataOffset: uint32(off), DataLen: uint32(n)})
			hdr := q.p.Seal(h, n)
			b.used += len(hdr)
			b.bufs = append(b.bufs, hdr)
			q.useData(r, r.data[off:off+n])
			off += n
		}
		// The controller may send the next R2T once it has this data,
		// which it cannot before the batch is written.
		r.r2tActive.Store(false)
	}
	return nil
}

// ---- receiving ----

// The receive role: one goroutine at a time runs the PDU parser (holds
// rxMu). A command's own waiter takes it when nobody holds it (lead), so
// that at low queue depth the goroutine that sent a command reads the
// answer itself: no hand-off from a receive goroutine (the kernel's
// nvme-tcp likewise completes in the context that reads the socket). When
// a receiver stops with commands still in flight it wakes the queue's
// receive goroutine (rxLoop), which receives until nothing is in flight.
// A receiver stops only at a PDU boundary. One that waits there is woken
// by kickReceiver: the watchdog does it for a leader whose context ended,
// TeardownDone for a leader whose command it completed.

// rxLoop is the queue's receive goroutine: the receiver when no waiter is,
// and, woken by the watchdog (pokeReceiver) while the queue is idle, the
// one that reads what the controller sent unasked: a TermReq, the end of
// the connection, or a protocol error, which fail the queue within a tick
// as if a receiver had been waiting.
func (q *queue) rxLoop() error {
	for {
		select {
		case <-q.rxWake:
		case <-q.deadCh:
			return nil
		}
		for {
			if q.inflight.Load() > 0 {
				q.rxMu.Lock()
			} else if !q.rxMu.TryLock() {
				break // a waiter receives
			}
			var err error
			for err == nil && (q.inflight.Load() > 0 || q.rx.ready()) {
				if err = q.receivePDU(); err == errKicked {
					err = nil
				}
			}
			q.rxMu.Unlock()
			if err != nil {
				return err
			}
			if q.inflight.Load() == 0 {
				break
			}
		}
	}
}

// pokeReceiver wakes the receive goroutine.
func (q *queue) pokeReceiver() {
	select {
	case q.rxWake <- struct{}{}:
	default:
	}
}

// lead receives for the queue while r is in flight, ctx is live and nobody
// else receives. Then, if commands remain in flight, the receive goroutine
// takes over.
func (q *queue) lead(ctx context.Context, r *request) {
	if !q.rxMu.TryLock() {
		return
	}
	done := ctx.Done()
	q.leaderDone.Store(done)
	q.leader.Store(r)
	err := q.receive(r, done)
	q.leader.Store(nil)
	q.leaderDone.Store(noDone)
	more := q.rx.buffered()
	q.rxMu.Unlock()
	if err != nil {
		q.fail(err)
		return
	}
	if more || q.inflight.Load() > 0 {
		q.pokeReceiver()
	}
}

// noDone is what leaderDone holds when no leader waits: a context that
// never ends.
var noDone <-chan struct{}

// receive parses PDUs until, at a PDU boundary, r is done or done is
// closed. The caller holds rxMu.
func (q *queue) receive(r *request, done <-chan struct{}) error {
	for len(r.done) == 0 {
		select {
		case <-done:
			return nil
		default:
		}
		if err := q.receivePDU(); err != nil && err != errKicked {
			return err
		}
	}
	return nil
}

// errKicked: the receiver was woken at a PDU boundary (kickReceiver), with
// nothing of the next PDU consumed.
var errKicked = errors.New("host: receiver woken")

// kickReceiver wakes the receiver if it waits at a PDU boundary, so that it
// looks again whether to go on.
func (q *queue) kickReceiver() { q.rx.interrupt() }

// leaderGone reports whether the leading waiter's context has ended.
func (q *queue) leaderGone() bool {
	d, _ := q.leaderDone.Load().(<-chan struct{})
	select {
	case <-d:
		return true
	default:
		return false
	}
}

// receivePDU reads one PDU the controller sends and matches it to the
// command it belongs to. Anything that does not fit a command in flight
// ends the queue (error recovery), never a command.
func (q *queue) receivePDU() error {
	hb := &q.rxHdr
	q.rx.startPDU()
	if err := q.rx.readFull(hb[:wire.CommonHeaderLen]); err != nil {
		return err
	}
	l, err := q.p.Layout(hb[:wire.CommonHeaderLen], wire.ToHost)
	if err != nil {
		return q.protocolError(err, hb[:wire.CommonHeaderLen])
	}
	n := l.HeaderBytes()
	if err := q.rx.readFull(hb[wire.CommonHeaderLen:n]); err != nil {
		return unexpectedEOF(err)
	}
	h := wire.Header(hb[:n])
	if err := q.p.VerifyHeader(h, l); err != nil {
		return q.protocolError(err, h)
	}
	switch l.Type {
	case wire.TypeCapsuleResp:
		err = q.handleResponse(wire.CapsuleResp(h).CQE())
	case wire.TypeC2HData:
		err = q.handleC2HData(wire.DataHeader(h), l)
	case wire.TypeR2T:
		err = q.handleR2T(wire.R2T(h))
	case wire.TypeC2HTermReq:
		t := wire.TermReq(h)
		_ = q.rx.skip(l.TrailerBytes())
		return fmt.Errorf("controller terminated the connection: %v (FEI %#x)", t.FES(), t.FEI())
	default:
		err = wire.SequenceError("unexpected %v", l.Type)
	}
	if err != nil {
		return q.protocolError(err, h)
	}
	return nil
}

// protocolError tells the controller, best effort, with an H2CTermReq when
// the error is a fatal one of the PDU stream, and returns err.
func (q *queue) protocolError(err error, hdr []byte) error {
	var we *wire.Error
	if !errors.As(err, &we) {
		return err
	}
	q.log.Warn("nvme host: protocol error", "qid", q.qid, "err", err)
	var b [wire.MaxHeaderBuf + wire.TermReqMaxDataLen]byte
	fei := uint32(we.Offset)
	wire.TermReq(b[:]).Encode(&wire.TermReqFields{Type: wire.TypeH2CTermReq, FES: we.FES, FEI: fei})
	hdr = hdr[:min(len(hdr), wire.TermReqMaxDataLen)]
	var p wire.Params
	out := p.Seal(b[:], len(hdr))
	n := copy(b[len(out):], hdr)
	q.conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	q.conn.Write(b[:len(out)+n])
	return err
}

// lookup returns the request a received command id names, if it is in
// flight (or detached by its waiter but not yet ended).
func (q *queue) lookup(cid uint16) (*request, error) {
	tag := int(cid & tagMask)
	if tag >= q.depth {
		return nil, wire.SequenceError("command id %#x: no such tag (queue depth %d)", cid, q.depth)
	}
	r := &q.reqs[tag]
	r.mu.Lock()
	ok := (r.state == reqInflight || r.state == reqCanceled) && r.cid == cid
	r.mu.Unlock()
	if !ok {
		return nil, wire.SequenceError("command id %#x is not in flight", cid)
	}
	return r, nil
}

func (q *queue) handleResponse(cqe nvme.CQE) error {
	r, err := q.lookup(cqe.CID())
	if err != nil {
		return err
	}
	st := cqe.Status()
	if r.dir == dirWrite && r.r2tActive.Load() {
		// The data of its R2T is not sent yet: the writer still needs the
		// caller's buffer, and the controller broke the protocol.
		return wire.SequenceError("command %#x: response while its R2T is outstanding", r.cid)
	}
	if st.Success() && r.dir == dirRead && r.received != len(r.data) {
		return wire.SequenceError("command %#x: success after %d of %d bytes of data", r.cid, r.received, len(r.data))
	}
	var cerr error
	if r.digestErr {
		cerr = errDataDigest
	}
	q.respond(r, st, cqe.Result(), cerr)
	return nil
}

// errDataDigest fails a command whose data failed its digest (retried).
var errDataDigest = fmt.Errorf("host: %w", wire.ErrDataDigest)

func (q *queue) handleC2HData(d wire.DataHeader, l wire.Layout) error {
	r, err := q.lookup(d.CCCID())
	if err != nil {
		return err
	}
	if r.dir != dirRead {
		return wire.SequenceError("C2HData for command %#x, which reads no data", r.cid)
	}
	off, n := int(d.DataOffset()), int(d.DataLen())
	if off != r.received || off+n > len(r.data) {
		return wire.FieldError(wire.FESOutOfRange, 12, "C2HData for command %#x: [%d, +%d) after %d of %d bytes", r.cid, off, n, r.received, len(r.data))
	}
	if err := q.rx.skip(l.PadLen()); err != nil {
		return unexpectedEOF(err)
	}
	if err := q.placeData(r, r.data[off:off+n], l.DDGST != 0); err != nil {
		return err
	}
	r.received += n
	if l.Flags&wire.FlagSuccess != 0 {
		if r.received != len(r.data) {
			return wire.FieldError(wire.FESInvalidHeader, 1, "C2HData SUCCESS for command %#x after %d of %d bytes", r.cid, r.received, len(r.data))
		}
		var cerr error
		if r.digestErr {
			cerr = errDataDigest
		}
		q.respond(r, nvme.StatusSuccess, 0, cerr)
	}
	return nil
}

// placeData receives one C2HData payload into dst (a slice of the
// request's buffer) and checks its digest. A detached request's payload is
// dropped: once its waiter has left, nothing is written into its buffer.
func (q *queue) placeData(r *request, dst []byte, digest bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.state == reqCanceled {
		n := len(dst)
		if digest {
			n += wire.DigestLen
		}
		return unexpectedEOF(q.rx.skip(n))
	}
	if err := q.rx.readPayload(dst); err != nil {
		return err
	}
	if !digest {
		return nil
	}
	dg := q.rxDigest[:] // the receiver's: a local would escape through the interface
	if err := q.rx.readFull(dg); err != nil {
		return unexpectedEOF(err)
	}
	if q.discard {
		return nil // benchmark only: the payload was dropped unchecked
	}
	if q.rx.pduVerified() {
		q.stats.crcOffloaded.Add(1)
		return nil
	}
	q.stats.crcSoftware.Add(1)
	if got, want := wire.DataDigest(dst), wire.GetDigest(dg); got != want {
		q.stats.digestErrors.Add(1)
		q.log.Warn("nvme host: data digest error", "qid", q.qid, "cid", r.cid, "want", want, "got", got)
		r.digestErr = true
	}
	return nil
}

func (q *queue) handleR2T(t wire.R2T) error {
	r, err := q.lookup(t.CCCID())
	if err != nil {
		return err
	}
	if r.dir != dirWrite || r.inCapsule {
		return wire.SequenceError("R2T for command %#x, which has no data to transfer", r.cid)
	}
	off, n := int(t.R2TOffset()), int(t.R2TLen())
	if off < r.r2tEnd || off+n > len(r.data) {
		return wire.FieldError(wire.FESOutOfRange, 12, "R2T for command %#x: [%d, +%d) after %d of %d bytes", r.cid, off, n, r.r2tEnd, len(r.data))
	}
	if r.r2tActive.Load() {
		return wire.FieldError(wire.FESLimitExceeded, 0, "R2T for command %#x while one is outstanding (MAXR2T 0)", r.cid)
	}
	r.r2tActive.Store(true)
	r.r2tEnd = off + n
	q.txMu.Lock()
	if q.dead {
		q.txMu.Unlock()
		return errRequeue
	}
	q.txq = append(q.txq, txItem{r: r, kind: txData, ttag: t.TTag(), off: off, n: n})
	q.txMu.Unlock()
	q.wake()
	return nil
}
