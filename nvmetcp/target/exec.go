package target

import (
	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
)

const (
	fuseMask     = 0x03
	dsmRangeLen  = 16
	dsmMaxRanges = 256
)

// plan checks a command before any data moves and says which data it has:
// its direction and exact length. Everything that can fail without touching
// a namespace fails here, so that no R2T is sent for a doomed command.
func (c *conn) plan(cmd *command) (direction, uint32, nvme.Status) {
	s := cmd.SQE()
	if s.Flags()&fuseMask != 0 || s.Flags()&nvme.FlagsPSDTMask == 0 {
		// No fused operations; Fabrics commands use SGLs only.
		return noData, 0, nvme.StatusInvalidField | nvme.StatusDNR
	}
	if s.Opcode() == nvme.OpcodeFabrics {
		switch s.FabricsType() {
		case nvme.FabricsConnect:
			if c.connected {
				return noData, 0, nvme.StatusCommandSequenceError | nvme.StatusDNR
			}
			return hostToCtrl, nvme.ConnectDataLen, nvme.StatusSuccess
		case nvme.FabricsPropertyGet, nvme.FabricsPropertySet, nvme.FabricsDisconnect:
			if !c.connected {
				return noData, 0, nvme.StatusCommandSequenceError | nvme.StatusDNR
			}
			return noData, 0, nvme.StatusSuccess
		}
		return noData, 0, nvme.StatusInvalidOpcode | nvme.StatusDNR
	}
	if !c.connected || !c.ctrl.ready.Load() {
		// Only Fabrics commands before Connect and CC.EN.
		return noData, 0, nvme.StatusCommandSequenceError | nvme.StatusDNR
	}
	if c.qid == 0 {
		return c.planAdmin(s)
	}
	return c.planIO(s)
}

func (c *conn) planAdmin(s nvme.SQE) (direction, uint32, nvme.Status) {
	switch s.Opcode() {
	case nvme.AdminIdentify:
		return ctrlToHost, nvme.IdentifyDataLen, nvme.StatusSuccess
	case nvme.AdminGetLogPage:
		n := s.LogPageLen()
		if n > uint64(c.t.cfg.MaxTransfer) {
			return noData, 0, nvme.StatusInvalidField | nvme.StatusDNR
		}
		return ctrlToHost, uint32(n), nvme.StatusSuccess
	}
	return noData, 0, nvme.StatusSuccess
}

// lbaRange checks an LBA range of a namespace and returns it in bytes.
func (t *Target) lbaRange(ns *namespace, slba, nlb uint64) (off, n int64, st nvme.Status) {
	if slba > ns.blocks || nlb > ns.blocks-slba {
		return 0, 0, nvme.StatusLBAOutOfRange | nvme.StatusDNR
	}
	return int64(slba << t.lbaShift), int64(nlb << t.lbaShift), nvme.StatusSuccess
}

func (c *conn) planIO(s nvme.SQE) (direction, uint32, nvme.Status) {
	t := c.t
	switch s.Opcode() {
	case nvme.IORead, nvme.IOWrite:
		ns := t.namespace(s.NSID())
		if ns == nil {
			return noData, 0, nvme.StatusInvalidNamespace | nvme.StatusDNR
		}
		_, n, st := t.lbaRange(ns, s.SLBA(), uint64(s.NLB()))
		if !st.Success() {
			return noData, 0, st
		}
		if n > int64(t.cfg.MaxTransfer) {
			return noData, 0, nvme.StatusInvalidField | nvme.StatusDNR
		}
		if s.Opcode() == nvme.IORead {
			return ctrlToHost, uint32(n), nvme.StatusSuccess
		}
		return hostToCtrl, uint32(n), nvme.StatusSuccess
	case nvme.IOWriteZeroes:
		ns := t.namespace(s.NSID())
		if ns == nil {
			return noData, 0, nvme.StatusInvalidNamespace | nvme.StatusDNR
		}
		_, _, st := t.lbaRange(ns, s.SLBA(), uint64(s.NLB()))
		return noData, 0, st
	case nvme.IOFlush:
		if s.NSID() != nvme.NSIDAll && t.namespace(s.NSID()) == nil {
			return noData, 0, nvme.StatusInvalidNamespace | nvme.StatusDNR
		}
		return noData, 0, nvme.StatusSuccess
	case nvme.IODatasetMgmt:
		if t.namespace(s.NSID()) == nil {
			return noData, 0, nvme.StatusInvalidNamespace | nvme.StatusDNR
		}
		ranges := s.CDW10()&0xff + 1
		return hostToCtrl, ranges * dsmRangeLen, nvme.StatusSuccess
	}
	return noData, 0, nvme.StatusInvalidOpcode | nvme.StatusDNR
}

// immediate reports whether an I/O command (planned) runs on the reader:
// a command of one namespace whose store never waits.
func (c *conn) immediate(s nvme.SQE) bool {
	switch s.Opcode() {
	case nvme.IORead, nvme.IOWrite, nvme.IOWriteZeroes, nvme.IODatasetMgmt, nvme.IOFlush:
		ns := c.t.namespace(s.NSID())
		return ns != nil && ns.immediate
	}
	return false
}

// run executes a planned command whose data is in. held: the command stays
// outstanding without an answer (an Asynchronous Event Request).
func (c *conn) run(cmd *command) (result uint64, st nvme.Status, held bool) {
	s := cmd.SQE()
	if s.Opcode() == nvme.OpcodeFabrics {
		res, st := c.fabrics(cmd)
		return res, st, false
	}
	if c.qid == 0 {
		return c.admin(cmd)
	}
	res, st := c.io(cmd)
	return res, st, false
}
