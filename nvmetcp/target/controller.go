package target

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
)

const (
	errorLogSlots = 64
	capTimeout    = 15 // CAP.TO, 500 ms units
	aerLimit      = nvme.AERLDefault + 1
)

// controller is one association between a host and a subsystem: created by
// an admin queue Connect, ended with its admin queue (or by its keep-alive
// timer).
type controller struct {
	t         *Target
	id        uint16
	discovery bool
	subNQN    string
	hostNQN   string
	hostID    [16]byte
	log       *slog.Logger
	admin     *conn
	started   time.Time

	lastSeen atomic.Int64 // monotonic nanoseconds since started
	ready    atomic.Bool  // CSTS.RDY

	mu        sync.Mutex
	dead      bool
	cc, csts  uint32
	kato      time.Duration
	kaTimer   *time.Timer
	grantedIO int
	features  featureState
	aers      []*command
	errLog    [errorLogSlots]nvme.ErrorLogEntryFields // ring, errCount%slots is the newest
	errCount  uint64
	changedNS []uint32
	ioQueues  map[uint16]*conn
}

// featureState holds the values of the features a host may set.
type featureState struct {
	arbitration   uint32
	powerMgmt     uint32
	errorRecovery uint32
	asyncEvents   uint32
	writeCache    bool
	// tempThresholds[TMPSEL][THSEL]: over (0) and under (1) temperature
	// thresholds in kelvin; nothing reads a sensor here, but a host may set
	// and read them (Linux's hwmon does).
	tempThresholds [16][2]uint16
}

// defaultOverTemp is the default over temperature threshold: 70 C.
const defaultOverTemp = 343

// newController registers a controller for an admin queue; nil if every
// controller id is taken.
func (t *Target) newController(admin *conn, subNQN, hostNQN string, hostID [16]byte, kato time.Duration) *controller {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	const maxCntlID = 0xffef
	id := uint16(0)
	for range maxCntlID {
		cand := t.nextCntl
		t.nextCntl++
		if t.nextCntl > maxCntlID || t.nextCntl == 0 {
			t.nextCntl = 1
		}
		if _, used := t.ctrls[cand]; !used {
			id = cand
			break
		}
	}
	if id == 0 {
		return nil
	}
	ctrl := &controller{
		t:         t,
		id:        id,
		discovery: subNQN == nvme.DiscoveryNQN,
		subNQN:    subNQN,
		hostNQN:   hostNQN,
		hostID:    hostID,
		log:       admin.log.With("cntlid", id, "host", hostNQN),
		admin:     admin,
		started:   time.Now(),
		kato:      kato,
		grantedIO: t.cfg.MaxIOQueues,
		features:  defaultFeatures(),
		ioQueues:  make(map[uint16]*conn),
	}
	if ctrl.discovery {
		ctrl.grantedIO = 0
	}
	ctrl.touch()
	t.ctrls[id] = ctrl
	ctrl.mu.Lock()
	ctrl.armKeepAlive()
	ctrl.mu.Unlock()
	ctrl.log.Info("controller created", "subnqn", subNQN, "kato", kato)
	return ctrl
}

func defaultFeatures() featureState {
	f := featureState{writeCache: true}
	for i := range f.tempThresholds {
		f.tempThresholds[i][0] = defaultOverTemp
	}
	return f
}

// lookupController finds the controller an I/O queue Connect names.
func (t *Target) lookupController(id uint16) *controller {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.ctrls[id]
}

// touch restarts the keep-alive timer (traffic based, like Linux's nvmet).
func (ctrl *controller) touch() {
	ctrl.lastSeen.Store(int64(time.Since(ctrl.started)))
}

// armKeepAlive (re)starts the keep-alive timer for the current KATO.
// ctrl.mu held.
func (ctrl *controller) armKeepAlive() {
	if ctrl.kaTimer != nil {
		ctrl.kaTimer.Stop()
		ctrl.kaTimer = nil
	}
	if ctrl.kato <= 0 || ctrl.dead {
		return
	}
	ctrl.touch()
	ctrl.kaTimer = time.AfterFunc(ctrl.kato, ctrl.checkKeepAlive)
}

func (ctrl *controller) checkKeepAlive() {
	ctrl.mu.Lock()
	if ctrl.dead || ctrl.kato <= 0 {
		ctrl.mu.Unlock()
		return
	}
	idle := time.Since(ctrl.started) - time.Duration(ctrl.lastSeen.Load())
	if idle < ctrl.kato {
		ctrl.kaTimer.Reset(ctrl.kato - idle)
		ctrl.mu.Unlock()
		return
	}
	ctrl.mu.Unlock()
	ctrl.log.Warn("keep alive timeout: ending the controller and all its queues", "kato", ctrl.kato, "idle", idle.Round(time.Millisecond))
	ctrl.closeQueues(true)
}

// closeQueues closes the I/O queues and, if admin, the admin queue (which
// ends the controller once its connection has wound down).
func (ctrl *controller) closeQueues(admin bool) {
	ctrl.mu.Lock()
	for _, c := range ctrl.ioQueues {
		c.close()
	}
	ctrl.mu.Unlock()
	if admin {
		ctrl.admin.close()
	}
}

// destroy ends the controller: called when its admin queue's connection is
// gone.
func (ctrl *controller) destroy() {
	ctrl.t.mu.Lock()
	if ctrl.t.ctrls[ctrl.id] == ctrl {
		delete(ctrl.t.ctrls, ctrl.id)
	}
	ctrl.t.mu.Unlock()
	ctrl.mu.Lock()
	ctrl.dead = true
	ctrl.ready.Store(false)
	if ctrl.kaTimer != nil {
		ctrl.kaTimer.Stop()
		ctrl.kaTimer = nil
	}
	for _, c := range ctrl.ioQueues {
		c.close()
	}
	// Held AERs die with the admin queue's connection: nothing to answer.
	ctrl.aers = nil
	ctrl.mu.Unlock()
	ctrl.log.Info("controller ended")
}

// addIOQueue registers an I/O queue; false if the qid is taken or the
// controller has ended.
func (ctrl *controller) addIOQueue(qid uint16, c *conn) bool {
	ctrl.mu.Lock()
	defer ctrl.mu.Unlock()
	if ctrl.dead || ctrl.ioQueues[qid] != nil {
		return false
	}
	ctrl.ioQueues[qid] = c
	return true
}

func (ctrl *controller) removeIOQueue(qid uint16, c *conn) {
	ctrl.mu.Lock()
	defer ctrl.mu.Unlock()
	if ctrl.ioQueues[qid] == c {
		delete(ctrl.ioQueues, qid)
	}
}

// logError records a failed command in the error log.
func (ctrl *controller) logError(qid uint16, cmd *command, st nvme.Status) {
	s := cmd.SQE()
	e := nvme.ErrorLogEntryFields{
		SQID:          qid,
		CID:           s.CID(),
		Status:        st,
		ParamLocation: 0xffff,
		NSID:          s.NSID(),
		TrType:        nvme.TrTypeTCP,
	}
	if qid != 0 {
		switch s.Opcode() {
		case nvme.IORead, nvme.IOWrite, nvme.IOWriteZeroes:
			e.LBA = s.SLBA()
		}
	}
	ctrl.mu.Lock()
	ctrl.errCount++
	e.ErrorCount = ctrl.errCount
	ctrl.errLog[ctrl.errCount%errorLogSlots] = e
	ctrl.mu.Unlock()
}

// capValue is the CAP property.
func (t *Target) capValue() uint64 {
	return uint64(t.cfg.MaxQueueSize-1) | // MQES
		1<<16 | // CQR: queues must be contiguous
		capTimeout<<24 | // TO
		1<<37 // CSS: NVM command set (MPSMIN = MPSMAX = 0: 4 KiB pages)
}

// versionValue is VS: NVMe 1.3.
const versionValue = 0x00010300

// setCC applies a CC write: enable, disable (a controller reset: its I/O
// queues go) and shutdown (namespaces flushed). ctrl.mu held.
func (ctrl *controller) setCC(v uint32) {
	old := ctrl.cc
	ctrl.cc = v
	en, wasEn := v&nvme.CCEnable != 0, old&nvme.CCEnable != 0
	switch {
	case en && !wasEn:
		// IOSQES 6, IOCQES 4, MPS 0 (4 KiB), AMS 0 (round robin), CSS 0 (NVM).
		const mask = 0xf<<20 | 0xf<<16 | 0x7<<11 | 0xf<<7 | 0x7<<4
		if v&mask != (4<<20 | 6<<16) {
			ctrl.log.Warn("CC.EN with unsupported settings: controller fatal status", "cc", v)
			ctrl.csts = nvme.CSTSFatal
			ctrl.ready.Store(false)
			return
		}
		ctrl.csts = nvme.CSTSReady
		ctrl.ready.Store(true)
	case !en && wasEn:
		ctrl.csts &^= nvme.CSTSReady | nvme.CSTSFatal | nvme.CSTSShstMask
		ctrl.ready.Store(false)
		for _, c := range ctrl.ioQueues {
			c.close()
		}
	}
	if v&nvme.CCShutdownMask != 0 && old&nvme.CCShutdownMask == 0 {
		ctrl.csts = ctrl.csts&^nvme.CSTSShstMask | nvme.CSTSShstRunning
		ctrl.flushAll()
		ctrl.csts = ctrl.csts&^nvme.CSTSShstMask | nvme.CSTSShstDone
		ctrl.log.Info("controller shut down")
	}
}

// flushAll flushes every namespace (shutdown, Flush of NSID FFFFFFFFh).
func (ctrl *controller) flushAll() error {
	var first error
	if ctrl.discovery {
		return nil
	}
	for _, ns := range ctrl.t.ns {
		if err := ns.st.Flush(); err != nil {
			ctrl.log.Error("flush failed", "nsid", ns.id, "err", err)
			if first == nil {
				first = err
			}
		}
	}
	return first
}
