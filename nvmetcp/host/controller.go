package host

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nvmefs/nvmefs/ddp"
	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
)

// Errors callers can tell apart.
var (
	// ErrControllerLost: error recovery gave up (CtrlLossTmo passed); every
	// pending and later request fails with it. The block layer maps it to EIO.
	ErrControllerLost = errors.New("nvme host: controller lost")
	// ErrClosed: the Controller was closed.
	ErrClosed = errors.New("nvme host: controller closed")
	// ErrNotSupported: the controller does not implement the command (ONCS).
	ErrNotSupported = errors.New("nvme host: command not supported by the controller")
)

type ctrlState uint8

const (
	stateLive       ctrlState = iota // an association is up
	stateRecovering                  // torn down, reconnecting
	stateLost                        // CtrlLossTmo passed
	stateClosed
)

// Controller is a connected NVMe/TCP controller: an admin queue and I/O
// queues, each its own TCP connection, with keep-alive, I/O timeouts and
// error recovery. Its methods are safe for concurrent use.
type Controller struct {
	addr      string
	subnqn    string
	opts      Options
	discovery bool
	log       *slog.Logger

	// live is the association requests go to; nil while not live. It
	// changes only under mu.
	live atomic.Pointer[assoc]

	mu      sync.Mutex
	state   ctrlState
	cur     *assoc
	changed chan struct{} // closed and replaced at every state change
	// setting lists the associations being set up: the watchdog times
	// their commands out too.
	setting map[*assoc]bool

	closeCtx    context.Context // ended by Close: bounds background work
	closeCancel context.CancelFunc
	wg          sync.WaitGroup

	adminStats *queueStats
	ioStats    []*queueStats // per I/O queue slot
	recoveries atomic.Uint64
	rr         atomic.Uint32
}

// assoc is one association with the controller: what one successful
// connect set up, torn down as a whole by error recovery.
type assoc struct {
	c *Controller
	// admin and io are set during setup (under qmu, as the watchdog and
	// fail read them then) and fixed once the association is live.
	qmu    sync.Mutex
	admin  *queue
	io     []*queue
	info   ControllerInfo
	limits ddp.Limits // of Options.Offload; MaxSGL 0: no offload
	cap    uint64
	ns     map[uint32]Namespace
	nsList []Namespace

	failed atomic.Bool
	dead   chan struct{}
}

// Connect connects to the NVM subsystem subnqn at addr (host:port) and sets
// up its controller: admin queue, CC.EN, Identify, Set Features Number of
// Queues and the I/O queues. ctx bounds the connection; the Controller then
// lives until Close or until it is lost.
func Connect(ctx context.Context, addr, subnqn string, opts Options) (*Controller, error) {
	if !nvme.ValidNQN(subnqn) {
		return nil, fmt.Errorf("host: invalid subsystem NQN %q", subnqn)
	}
	return connect(ctx, addr, subnqn, opts, false)
}

func connect(ctx context.Context, addr, subnqn string, opts Options, discovery bool) (*Controller, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if discovery {
		o.NrIOQueues = 0
	}
	c := &Controller{
		addr:       addr,
		subnqn:     subnqn,
		opts:       o,
		discovery:  discovery,
		log:        o.Logger.With("addr", addr, "subnqn", subnqn),
		changed:    make(chan struct{}),
		setting:    map[*assoc]bool{},
		adminStats: new(queueStats),
	}
	c.ioStats = make([]*queueStats, o.NrIOQueues)
	for i := range c.ioStats {
		c.ioStats[i] = new(queueStats)
	}
	c.closeCtx, c.closeCancel = context.WithCancel(context.Background())
	c.wg.Add(1)
	go c.watchdog()
	a, err := c.connectAssoc(ctx)
	if err != nil {
		c.closeCancel()
		c.wg.Wait()
		return nil, err
	}
	c.mu.Lock()
	c.setLiveLocked(a)
	c.mu.Unlock()
	c.log.Debug("nvme host: connected", "cntlid", a.info.CntlID, "ioqueues", len(a.io), "depth", a.info.QueueSize)
	return c, nil
}

// Info describes the controller of the current association.
func (c *Controller) Info() ControllerInfo {
	if a := c.current(); a != nil {
		return a.info
	}
	return ControllerInfo{}
}

// Namespaces lists the active namespaces, by NSID.
func (c *Controller) Namespaces() []Namespace {
	if a := c.current(); a != nil {
		return append([]Namespace(nil), a.nsList...)
	}
	return nil
}

// Namespace describes one active namespace.
func (c *Controller) Namespace(nsid uint32) (Namespace, bool) {
	a := c.current()
	if a == nil {
		return Namespace{}, false
	}
	ns, ok := a.ns[nsid]
	return ns, ok
}

// current is the live association, or the last one while recovering.
func (c *Controller) current() *assoc {
	if a := c.live.Load(); a != nil {
		return a
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur
}

// Stats returns the statistics of every queue.
func (c *Controller) Stats() Stats {
	s := Stats{Admin: c.adminStats.snapshot(0), Recoveries: c.recoveries.Load()}
	s.Total = s.Admin
	s.Total.QID = -1
	for i, qs := range c.ioStats {
		q := qs.snapshot(i + 1)
		s.IO = append(s.IO, q)
		s.Total.add(&q)
	}
	c.mu.Lock()
	s.Lost = c.state == stateLost
	c.mu.Unlock()
	return s
}

func (c *Controller) setLiveLocked(a *assoc) {
	c.state = stateLive
	c.cur = a
	c.live.Store(a)
	c.notifyLocked()
}

func (c *Controller) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// waitLive returns the live association, waiting through error recovery.
// An association that failed never comes back: a caller whose command was
// torn down passes it as failed to wait for the next one.
func (c *Controller) waitLive(ctx context.Context, failed *assoc) (*assoc, error) {
	for {
		if a := c.live.Load(); a != nil && a != failed {
			return a, nil
		}
		c.mu.Lock()
		st, a, ch := c.state, c.cur, c.changed
		c.mu.Unlock()
		switch st {
		case stateLive:
			if a != failed {
				return a, nil
			}
		case stateLost:
			return nil, ErrControllerLost
		case stateClosed:
			return nil, ErrClosed
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// ---- association set-up ----

// connectAssoc connects the admin queue, enables and identifies the
// controller and connects the I/O queues.
func (c *Controller) connectAssoc(ctx context.Context) (*assoc, error) {
	a := &assoc{c: c, dead: make(chan struct{})}
	c.mu.Lock()
	c.setting[a] = true
	c.mu.Unlock()
	err := a.setup(ctx)
	c.mu.Lock()
	delete(c.setting, a)
	c.mu.Unlock()
	if err != nil {
		a.fail(err)
		a.wait()
		return nil, err
	}
	return a, nil
}

func (a *assoc) setup(ctx context.Context) (err error) {
	c := a.c
	o := &c.opts
	admin, err := dialQueue(ctx, queueConfig{
		addr: c.addr, qid: 0, depth: adminQueueDepth,
		maxData:   adminMaxData,
		inCapsule: adminInCapsule,
		opts:      o, stats: c.adminStats, onFail: a.fail,
	})
	if err != nil {
		return err
	}
	if err := a.addQueue(admin); err != nil {
		return err
	}
	cntlid, err := a.connectQueue(ctx, a.admin, 0xffff, adminQueueDepth, o.kato())
	if err != nil {
		return err
	}
	a.info.CntlID = cntlid
	if err := a.enable(ctx); err != nil {
		return err
	}
	if err := a.identify(ctx); err != nil {
		return err
	}
	if c.discovery {
		return nil
	}
	if a.info.SubNQN != "" && a.info.SubNQN != c.subnqn {
		return fmt.Errorf("host: connected to subsystem %q, asked for %q", a.info.SubNQN, c.subnqn)
	}
	if err := a.identifyNamespaces(ctx); err != nil {
		return err
	}
	if err := a.connectIOQueues(ctx); err != nil {
		return err
	}
	a.startKeepAlive()
	return nil
}

const (
	adminMaxData   = maxTransferAdmin
	adminInCapsule = 8192 - nvme.SQELen // NVME_TCP_ADMIN_CCSZ
	// maxTransferAdmin bounds one admin data transfer (Identify, log page chunks).
	maxTransferAdmin = 64 << 10
)

// admin runs one admin command with a timeout of IOTimeout.
func (a *assoc) adminCmd(ctx context.Context, sqe *[nvme.SQELen]byte, data []byte, dir dataDir) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, a.c.opts.IOTimeout)
	defer cancel()
	st, res, err := a.admin.exec(ctx, sqe, data, dir)
	if err != nil {
		return 0, err
	}
	if !st.Success() {
		return res, st
	}
	return res, nil
}

// connectQueue sends the Fabrics Connect of one queue and returns the
// controller id.
func (a *assoc) connectQueue(ctx context.Context, q *queue, cntlid uint16, depth int, kato uint32) (uint16, error) {
	o := &a.c.opts
	ctx, cancel := context.WithTimeout(ctx, o.IOTimeout)
	defer cancel()
	r, err := q.get(ctx)
	if err != nil {
		return 0, err
	}
	nvme.SQE(r.sqe[:]).EncodeConnect(&nvme.ConnectFields{QID: q.qid, SQSize: uint16(depth - 1), KATO: kato})
	data := make([]byte, nvme.ConnectDataLen)
	nvme.ConnectData(data).Encode(&nvme.ConnectDataFields{HostID: o.HostID, CntlID: cntlid, SubNQN: a.c.subnqn, HostNQN: o.HostNQN})
	r.data, r.dir, r.inCapsule = data, dirWrite, len(data) <= q.inCapsule
	if !r.inCapsule {
		nvme.SQE(r.sqe[:]).DPTR().Encode(&nvme.SGLFields{Length: nvme.ConnectDataLen, ID: nvme.SGLTransportData})
	}
	if err := q.submit(r); err != nil {
		q.put(r)
		return 0, err
	}
	st, res, err := q.wait(ctx, r, true)
	if err != nil {
		return 0, fmt.Errorf("host: connect queue %d: %w", q.qid, err)
	}
	if !st.Success() {
		return 0, fmt.Errorf("host: connect queue %d to %s: %w", q.qid, a.c.subnqn, st)
	}
	if auth := res >> 16 & 3; auth != 0 {
		return 0, fmt.Errorf("host: connect queue %d: the controller requires authentication (%#x), not supported", q.qid, auth)
	}
	return uint16(res), nil
}

func (a *assoc) propGet(ctx context.Context, off uint32, size8 bool) (uint64, error) {
	var sqe [nvme.SQELen]byte
	nvme.SQE(sqe[:]).EncodeProperty(&nvme.PropertyFields{Offset: off, Size8: size8})
	v, err := a.adminCmd(ctx, &sqe, nil, dirNone)
	if err != nil {
		return 0, fmt.Errorf("host: property get %#x: %w", off, err)
	}
	if !size8 {
		v &= 0xffffffff
	}
	return v, nil
}

func (a *assoc) propSet(ctx context.Context, off uint32, v uint32) error {
	var sqe [nvme.SQELen]byte
	nvme.SQE(sqe[:]).EncodeProperty(&nvme.PropertyFields{Set: true, Offset: off, Value: uint64(v)})
	if _, err := a.adminCmd(ctx, &sqe, nil, dirNone); err != nil {
		return fmt.Errorf("host: property set %#x: %w", off, err)
	}
	return nil
}

// CC fields the host sets: CSS NVM (0), MPS 4 KiB (0), AMS round robin (0),
// IOSQES 6 (64 bytes), IOCQES 4 (16 bytes).
const ccIOQueueEntrySizes = 6<<16 | 4<<20

// enable reads CAP and VS, sets CC.EN and waits for CSTS.RDY within CAP.TO.
func (a *assoc) enable(ctx context.Context) error {
	capv, err := a.propGet(ctx, nvme.PropCAP, true)
	if err != nil {
		return err
	}
	a.cap = capv
	vs, err := a.propGet(ctx, nvme.PropVS, false)
	if err != nil {
		return err
	}
	a.info.Version = uint32(vs)
	if err := a.propSet(ctx, nvme.PropCC, ccIOQueueEntrySizes|nvme.CCEnable); err != nil {
		return err
	}
	// CAP.TO is in 500 ms units: the worst case time to become ready.
	timeout := time.Duration(capv>>24&0xff+1) * 500 * time.Millisecond
	return a.pollCSTS(ctx, timeout, "ready", func(csts uint32) bool { return csts&nvme.CSTSReady != 0 })
}

// pollCSTS reads CSTS until ok or timeout; CSTS.CFS fails it.
func (a *assoc) pollCSTS(ctx context.Context, timeout time.Duration, what string, ok func(uint32) bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	delay := time.Millisecond
	for {
		v, err := a.propGet(ctx, nvme.PropCSTS, false)
		if err != nil {
			return err
		}
		csts := uint32(v)
		if csts&nvme.CSTSFatal != 0 {
			return fmt.Errorf("host: controller fatal status (CSTS %#x) waiting for %s", csts, what)
		}
		if ok(csts) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("host: controller not %s within %v (CSTS %#x)", what, timeout, csts)
		case <-time.After(delay):
		}
		delay = min(2*delay, 100*time.Millisecond)
	}
}

func (a *assoc) identifyCmd(ctx context.Context, cns uint8, nsid uint32) ([]byte, error) {
	buf := make([]byte, nvme.IdentifyDataLen)
	var sqe [nvme.SQELen]byte
	nvme.SQE(sqe[:]).EncodeIdentify(&nvme.IdentifyFields{NSID: nsid, CNS: cns})
	_, err := a.adminCmd(ctx, &sqe, buf, dirRead)
	if err != nil {
		return nil, fmt.Errorf("host: identify cns %d nsid %d: %w", cns, nsid, err)
	}
	return buf, nil
}

// identify reads Identify Controller and derives the transfer limits.
func (a *assoc) identify(ctx context.Context) error {
	b, err := a.identifyCmd(ctx, nvme.CNSController, 0)
	if err != nil {
		return err
	}
	cntlid, vs := a.info.CntlID, a.info.Version
	if err := parseIdentifyController(b, &a.info); err != nil {
		return err
	}
	a.info.CntlID, a.info.Version = cntlid, vs
	o := &a.c.opts
	a.info.HeaderDigest, a.info.DataDigest = o.HeaderDigest, o.DataDigest
	mt := o.MaxTransfer
	if a.info.MDTS != 0 {
		page := 1 << (12 + a.cap>>48&0xf) // CAP.MPSMIN
		if lim := page << min(a.info.MDTS, 20); lim < mt {
			mt = lim
		}
	}
	if dev := o.Offload; dev != nil && !a.c.discovery {
		// As nvme-tcp asks the NIC on the admin queue: one command maps
		// at most MaxSGL pages (max_segments, max_hw_sectors).
		lim := dev.Limits()
		if lim.MaxSGL > 0 {
			a.limits = lim
			a.info.MaxSegments = lim.MaxSGL
			mt = min(mt, lim.MaxIOBytes())
		}
	}
	a.info.MaxTransfer = mt
	// In-capsule write data on I/O queues: IOCCSZ (16-byte units) less the
	// SQE. Like the kernel, only where it starts right after the SQE.
	if a.info.ICDOFF == 0 && a.info.IOCCSZ > nvme.SQELen/16 {
		a.info.InCapsule = int(min(a.info.IOCCSZ*16-nvme.SQELen, 1<<30))
	}
	return nil
}

// identifyNamespaces reads the active namespace list and each namespace.
func (a *assoc) identifyNamespaces(ctx context.Context) error {
	b, err := a.identifyCmd(ctx, nvme.CNSActiveNSList, 0)
	if err != nil {
		return err
	}
	ids, err := parseActiveNamespaces(b)
	if err != nil {
		return err
	}
	a.ns = make(map[uint32]Namespace, len(ids))
	for _, id := range ids {
		b, err := a.identifyCmd(ctx, nvme.CNSNamespace, id)
		if err != nil {
			return err
		}
		ns, err := parseIdentifyNamespace(id, b)
		if err != nil {
			a.c.log.Warn("nvme host: namespace skipped", "nsid", id, "err", err)
			continue
		}
		if ns.Blocks == 0 {
			continue
		}
		a.ns[id] = ns
		a.nsList = append(a.nsList, ns)
	}
	return nil
}

// connectIOQueues asks for I/O queues (Set Features Number of Queues) and
// connects as many as granted.
func (a *assoc) connectIOQueues(ctx context.Context) error {
	o := &a.c.opts
	want := o.NrIOQueues
	if want == 0 {
		return nil
	}
	var sqe [nvme.SQELen]byte
	nvme.SQE(sqe[:]).EncodeFeatures(&nvme.FeaturesFields{Set: true, FID: nvme.FeatNumQueues, Value: nvme.NumQueuesValue(want, want)})
	res, err := a.adminCmd(ctx, &sqe, nil, dirNone)
	if err != nil {
		return fmt.Errorf("host: set features number of queues: %w", err)
	}
	sq, cq := nvme.NumQueues(uint32(res))
	granted := min(sq, cq)
	n := min(want, granted)
	depth := min(o.QueueSize, int(a.cap&0xffff)+1)
	if a.info.MaxCmd != 0 {
		depth = min(depth, int(a.info.MaxCmd))
	}
	if depth < 2 {
		return fmt.Errorf("host: controller allows queue depth %d", depth)
	}
	a.info.QueueSize = depth
	for i := 1; i <= n; i++ {
		qc := queueConfig{
			addr: a.c.addr, qid: uint16(i), depth: depth,
			maxData:   uint32(a.info.MaxTransfer),
			inCapsule: a.info.InCapsule,
			opts:      o, stats: a.c.ioStats[i-1], onFail: a.fail,
		}
		if a.limits.MaxSGL > 0 {
			qc.offload, qc.limits = o.Offload, a.limits
		}
		q, err := dialQueue(ctx, qc)
		if err != nil {
			return err
		}
		if err := a.addQueue(q); err != nil {
			return err
		}
		if _, err := a.connectQueue(ctx, q, a.info.CntlID, depth, 0); err != nil {
			return err
		}
		if i == 1 {
			a.info.MaxH2CData = uint32(q.maxH2CData)
		}
		if q.off != nil {
			a.info.OffloadedQueues++
		}
	}
	a.info.IOQueues = len(a.io)
	return nil
}

// addQueue adds a connected queue to an association being set up; if the
// association failed meanwhile, the queue fails too.
func (a *assoc) addQueue(q *queue) error {
	a.qmu.Lock()
	if q.qid == 0 {
		a.admin = q
	} else {
		a.io = append(a.io, q)
	}
	failed := a.failed.Load()
	a.qmu.Unlock()
	if failed {
		err := errors.New("host: association failed during set-up")
		q.fail(err)
		return err
	}
	return nil
}

// fail tears the association down (once): every queue fails, and the
// controller, if this is its live association, starts error recovery.
func (a *assoc) fail(err error) {
	if !a.failed.CompareAndSwap(false, true) {
		return
	}
	close(a.dead)
	for _, q := range a.queues() {
		q.fail(err)
	}
	a.c.assocFailed(a, err)
}

// wait waits until every queue of a failed association is torn down.
func (a *assoc) wait() {
	for _, q := range a.queues() {
		<-q.reaped
	}
}

// queues lists the association's queues, admin first.
func (a *assoc) queues() []*queue {
	a.qmu.Lock()
	defer a.qmu.Unlock()
	qs := make([]*queue, 0, 1+len(a.io))
	if a.admin != nil {
		qs = append(qs, a.admin)
	}
	return append(qs, a.io...)
}

// ---- keep-alive, timeouts, recovery ----

// startKeepAlive sends a Keep Alive every KATO/2; one that fails or gets no
// answer within KATO starts error recovery.
func (a *assoc) startKeepAlive() {
	kato := a.c.opts.KeepAliveTmo
	if kato <= 0 || a.c.discovery {
		return
	}
	c := a.c
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		t := time.NewTicker(kato / 2)
		defer t.Stop()
		for {
			select {
			case <-t.C:
			case <-a.dead:
				return
			case <-c.closeCtx.Done():
				return
			}
			ctx, cancel := context.WithTimeout(c.closeCtx, kato)
			var sqe [nvme.SQELen]byte
			nvme.SQE(sqe[:]).Encode(&nvme.SQEFields{Opcode: nvme.AdminKeepAlive})
			st, _, err := a.admin.exec(ctx, &sqe, nil, dirNone)
			cancel()
			if c.closeCtx.Err() != nil {
				return
			}
			if err == nil && !st.Success() {
				err = st
			}
			if err != nil {
				if errors.Is(err, context.DeadlineExceeded) {
					c.adminStats.timeouts.Add(1)
				}
				a.fail(fmt.Errorf("keep-alive: %w", err))
				return
			}
		}
	}()
}

// watchdog fails the live association when a command has been in flight
// longer than IOTimeout (the kernel's request timeout handler), and wakes
// receiving waiters whose context ended.
func (c *Controller) watchdog() {
	defer c.wg.Done()
	// At most 100 ms: it also wakes a receiving waiter whose context
	// ended (queue.lead), which then leaves within a tick.
	tick := min(max(c.opts.IOTimeout/10, 10*time.Millisecond), 100*time.Millisecond)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-c.closeCtx.Done():
			return
		}
		c.mu.Lock()
		watched := make([]*assoc, 0, 1+len(c.setting))
		if a := c.live.Load(); a != nil {
			watched = append(watched, a)
		}
		for a := range c.setting {
			watched = append(watched, a)
		}
		c.mu.Unlock()
		now := time.Now().UnixNano()
		for _, a := range watched {
			for _, q := range a.queues() {
				if q.leaderGone() {
					q.kickReceiver()
				}
				if q.inflight.Load() == 0 {
					q.pokeReceiver() // reads what came unasked
				}
				if q.overdue(now) {
					q.stats.timeouts.Add(1)
					c.log.Warn("nvme host: I/O timeout", "qid", q.qid, "timeout", c.opts.IOTimeout)
					a.fail(fmt.Errorf("queue %d: I/O timeout (%v)", q.qid, c.opts.IOTimeout))
					break
				}
			}
		}
	}
}

// assocFailed starts error recovery if a is the live association.
func (c *Controller) assocFailed(a *assoc, err error) {
	c.mu.Lock()
	if c.state != stateLive || c.cur != a {
		c.mu.Unlock()
		return
	}
	c.state = stateRecovering
	c.live.Store(nil)
	c.notifyLocked()
	c.wg.Add(1)
	c.mu.Unlock()
	c.recoveries.Add(1)
	c.log.Warn("nvme host: starting error recovery", "err", err)
	go c.recover(a)
}

// recover reconnects every ReconnectDelay until it succeeds or CtrlLossTmo
// has passed since the failure.
func (c *Controller) recover(old *assoc) {
	defer c.wg.Done()
	start := time.Now()
	old.wait()
	o := &c.opts
	for attempt := 1; ; attempt++ {
		delay := o.ReconnectDelay
		if o.CtrlLossTmo > 0 {
			left := o.CtrlLossTmo - time.Since(start)
			if left <= 0 {
				c.lose()
				return
			}
			delay = min(delay, left)
		}
		select {
		case <-time.After(delay):
		case <-c.closeCtx.Done():
			return
		}
		ctx := c.closeCtx
		var cancel context.CancelFunc = func() {}
		if o.CtrlLossTmo > 0 {
			// An attempt may take a few IOTimeouts; it does not outlive
			// the controller loss by more than one.
			ctx, cancel = context.WithDeadline(ctx, start.Add(o.CtrlLossTmo+min(o.IOTimeout, 2*time.Second)))
		}
		a, err := c.connectAssoc(ctx)
		cancel()
		if err != nil {
			c.log.Warn("nvme host: reconnect failed", "attempt", attempt, "err", err)
			continue
		}
		c.mu.Lock()
		if c.state != stateRecovering {
			c.mu.Unlock()
			a.fail(ErrClosed)
			a.wait()
			return
		}
		c.setLiveLocked(a)
		c.mu.Unlock()
		for _, qs := range append([]*queueStats{c.adminStats}, c.ioStats[:len(a.io)]...) {
			qs.reconnects.Add(1)
		}
		c.log.Info("nvme host: reconnected", "attempt", attempt, "after", time.Since(start).Round(time.Millisecond), "cntlid", a.info.CntlID)
		return
	}
}

// lose gives up: every waiter and every later request gets ErrControllerLost.
func (c *Controller) lose() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stateRecovering {
		return
	}
	c.state = stateLost
	c.notifyLocked()
	c.log.Error("nvme host: controller lost", "ctrl_loss_tmo", c.opts.CtrlLossTmo)
}

// Close shuts the controller down (CC.SHN, waiting for CSTS.SHST up to
// ShutdownTimeout) and closes its connections. Requests still in flight
// fail with ErrClosed.
func (c *Controller) Close() error {
	c.mu.Lock()
	if c.state == stateClosed {
		c.mu.Unlock()
		return nil
	}
	prev := c.state
	c.state = stateClosed
	a := c.cur
	c.live.Store(nil)
	c.notifyLocked()
	c.mu.Unlock()
	var err error
	if a != nil && prev == stateLive && !a.failed.Load() {
		err = a.shutdown()
	}
	c.closeCancel()
	if a != nil {
		a.fail(ErrClosed)
		a.wait()
	}
	c.wg.Wait()
	return err
}

// shutdown sets CC.SHN to normal shutdown and waits for CSTS.SHST complete.
func (a *assoc) shutdown() error {
	o := &a.c.opts
	ctx, cancel := context.WithTimeout(context.Background(), o.ShutdownTimeout)
	defer cancel()
	cc, err := a.propGet(ctx, nvme.PropCC, false)
	if err != nil {
		return err
	}
	if err := a.propSet(ctx, nvme.PropCC, uint32(cc)&^nvme.CCShutdownMask|1<<14); err != nil {
		return err
	}
	return a.pollCSTS(ctx, o.ShutdownTimeout, "shut down", func(csts uint32) bool {
		return csts&nvme.CSTSShstMask == nvme.CSTSShstDone
	})
}
