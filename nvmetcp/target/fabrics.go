package target

import (
	"time"

	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
)

// Offsets of Connect fields, reported in DW0 of Connect Invalid Parameters.
const (
	ipoQID    = 42 // SQE
	ipoSQSize = 44
	ipoKATO   = 48
	ipoCntlID = 16 // Connect data
	ipoSubNQN = 256
	ipoHost   = 512
)

// invalidParam is a Connect Invalid Parameters status with its DW0: IPO in
// bits 15:0, IATTR (the field is in the Connect data) in bit 16.
func invalidParam(inData bool, ipo uint16) (uint64, nvme.Status) {
	res := uint64(ipo)
	if inData {
		res |= 1 << 16
	}
	return res, nvme.StatusConnectInvalidParam | nvme.StatusDNR
}

// connect runs a Fabrics Connect (on the reader goroutine: the queue's state
// changes before its next command is read).
func (c *conn) connect(cmd *command) (uint64, nvme.Status) {
	if c.connected {
		return 0, nvme.StatusCommandSequenceError | nvme.StatusDNR
	}
	s := cmd.SQE()
	if s.ConnectRecFmt() != 0 {
		return 0, nvme.StatusConnectIncompatFormat | nvme.StatusDNR
	}
	d := nvme.ConnectData(cmd.data())
	qid, sqsize := s.ConnectQID(), s.ConnectSQSize()
	kato := time.Duration(s.ConnectKATO()) * time.Millisecond
	subNQN, hostNQN := d.SubNQN(), d.HostNQN()
	t := c.t

	if sqsize == 0 || int(sqsize)+1 > t.cfg.MaxQueueSize {
		return invalidParam(false, ipoSQSize)
	}
	if subNQN != t.cfg.SubsystemNQN && subNQN != nvme.DiscoveryNQN {
		c.log.Info("connect to an unknown subsystem", "subnqn", subNQN)
		return invalidParam(true, ipoSubNQN)
	}
	if !nvme.ValidNQN(hostNQN) {
		return invalidParam(true, ipoHost)
	}
	discovery := subNQN == nvme.DiscoveryNQN
	if !discovery && !t.hostAllowed(hostNQN) {
		c.log.Warn("refused host: not in the allowed host list", "host", hostNQN, "qid", qid)
		res, _ := invalidParam(true, ipoHost)
		return res, nvme.StatusConnectInvalidHost | nvme.StatusDNR
	}

	var ctrl *controller
	if qid == 0 {
		if d.CntlID() != nvme.CntlIDDynamic {
			return invalidParam(true, ipoCntlID)
		}
		if kato > t.cfg.MaxKATO {
			return invalidParam(false, ipoKATO)
		}
		ctrl = t.newController(c, subNQN, hostNQN, d.HostID(), kato)
		if ctrl == nil {
			return 0, nvme.StatusConnectCtrlBusy | nvme.StatusDNR
		}
		c.log = ctrl.log.With("qid", 0)
	} else {
		ctrl = t.lookupController(d.CntlID())
		if ctrl == nil || ctrl.hostNQN != hostNQN || ctrl.subNQN != subNQN || ctrl.hostID != d.HostID() {
			return invalidParam(true, ipoCntlID)
		}
		if ctrl.discovery {
			return invalidParam(false, ipoQID)
		}
		if !ctrl.ready.Load() {
			return 0, nvme.StatusCommandSequenceError | nvme.StatusDNR
		}
		ctrl.mu.Lock()
		granted := ctrl.grantedIO
		ctrl.mu.Unlock()
		if int(qid) > granted {
			return invalidParam(false, ipoQID)
		}
		if !ctrl.addIOQueue(qid, c) {
			return invalidParam(false, ipoQID)
		}
		c.log = ctrl.log.With("qid", qid)
	}
	c.ctrl = ctrl
	c.qid = qid
	c.connected = true
	if qid != 0 {
		// From now on in-capsule data is bounded by what Identify
		// advertises (IOCCSZ); the admin queue keeps its 8 KiB.
		c.params.MaxInCapsule = t.cfg.InCapsuleSize
	}
	c.mu.Lock()
	c.depth = int(sqsize) + 1
	c.mu.Unlock()
	c.log.Debug("queue connected", "sqsize", int(sqsize)+1)
	return uint64(ctrl.id), nvme.StatusSuccess
}

// fabrics runs the other Fabrics commands.
func (c *conn) fabrics(cmd *command) (uint64, nvme.Status) {
	s := cmd.SQE()
	switch s.FabricsType() {
	case nvme.FabricsPropertyGet:
		if c.qid != 0 {
			return 0, nvme.StatusInvalidField | nvme.StatusDNR
		}
		return c.ctrl.propertyGet(s)
	case nvme.FabricsPropertySet:
		if c.qid != 0 {
			return 0, nvme.StatusInvalidField | nvme.StatusDNR
		}
		return c.ctrl.propertySet(s)
	}
	return 0, nvme.StatusInvalidOpcode | nvme.StatusDNR
}

func (ctrl *controller) propertyGet(s nvme.SQE) (uint64, nvme.Status) {
	size8 := s.PropertyAttrib()&7 == 1
	ctrl.mu.Lock()
	defer ctrl.mu.Unlock()
	switch off := s.PropertyOffset(); {
	case size8 && off == nvme.PropCAP:
		return ctrl.t.capValue(), nvme.StatusSuccess
	case size8:
		return 0, nvme.StatusInvalidField | nvme.StatusDNR
	case off == nvme.PropVS:
		return versionValue, nvme.StatusSuccess
	case off == nvme.PropCC:
		return uint64(ctrl.cc), nvme.StatusSuccess
	case off == nvme.PropCSTS:
		return uint64(ctrl.csts), nvme.StatusSuccess
	}
	return 0, nvme.StatusInvalidField | nvme.StatusDNR
}

func (ctrl *controller) propertySet(s nvme.SQE) (uint64, nvme.Status) {
	if s.PropertyAttrib()&7 != 0 || s.PropertyOffset() != nvme.PropCC {
		return 0, nvme.StatusInvalidField | nvme.StatusDNR
	}
	ctrl.mu.Lock()
	defer ctrl.mu.Unlock()
	ctrl.setCC(uint32(s.PropertyValue()))
	return 0, nvme.StatusSuccess
}
