package target

import (
	"encoding/binary"

	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
)

// CDW12 bits of Read, Write and Write Zeroes.
const (
	cdw12FUA  = 1 << 30
	cdw12DEAC = 1 << 25 // Write Zeroes: deallocate
	dsmAD     = 1 << 2  // DSM CDW11: deallocate
)

// io runs an I/O command (planned: namespace and range are valid).
func (c *conn) io(cmd *command) (uint64, nvme.Status) {
	t := c.t
	s := cmd.SQE()
	ns := t.namespace(s.NSID())
	switch s.Opcode() {
	case nvme.IORead:
		off, n, _ := t.lbaRange(ns, s.SLBA(), uint64(s.NLB()))
		buf := cmd.setData(int(n))
		if got, err := ns.st.ReadAt(buf, off); err != nil || got != len(buf) {
			ns.mediaErrors.Add(1)
			c.log.Error("read failed", "nsid", ns.id, "offset", off, "len", n, "err", err)
			return 0, nvme.StatusUnrecoveredRead
		}
		ns.reads.Add(1)
		ns.bytesRead.Add(uint64(n))
		return 0, nvme.StatusSuccess

	case nvme.IOWrite:
		off, n, _ := t.lbaRange(ns, s.SLBA(), uint64(s.NLB()))
		data := cmd.data()
		if int64(len(data)) != n { // plan made them equal; never write a byte more
			return 0, nvme.StatusInternalError | nvme.StatusDNR
		}
		if _, err := ns.st.WriteAt(data, off); err != nil {
			ns.mediaErrors.Add(1)
			c.log.Error("write failed", "nsid", ns.id, "offset", off, "len", n, "err", err)
			return 0, nvme.StatusWriteFault
		}
		ns.writes.Add(1)
		ns.bytesWritten.Add(uint64(n))
		cmd.dataLen = 0 // nothing goes back to the host
		return 0, c.durable(ns, s.CDW12())

	case nvme.IOWriteZeroes:
		off, n, _ := t.lbaRange(ns, s.SLBA(), uint64(s.NLB()))
		var err error
		if s.CDW12()&cdw12DEAC != 0 {
			err = ns.st.Deallocate(off, n)
		} else {
			err = ns.st.WriteZeroes(off, n)
		}
		if err != nil {
			c.log.Error("write zeroes failed", "nsid", ns.id, "offset", off, "len", n, "err", err)
			return 0, nvme.StatusWriteFault
		}
		ns.writes.Add(1)
		return 0, c.durable(ns, s.CDW12())

	case nvme.IOFlush:
		if s.NSID() == nvme.NSIDAll {
			if c.ctrl.flushAll() != nil {
				return 0, nvme.StatusWriteFault
			}
			return 0, nvme.StatusSuccess
		}
		if err := ns.st.Flush(); err != nil {
			c.log.Error("flush failed", "nsid", ns.id, "err", err)
			return 0, nvme.StatusWriteFault
		}
		return 0, nvme.StatusSuccess

	case nvme.IODatasetMgmt:
		return c.datasetManagement(cmd, ns)
	}
	return 0, nvme.StatusInvalidOpcode | nvme.StatusDNR
}

// durable makes a write durable when the host asked for it (FUA) or turned
// the volatile write cache off.
func (c *conn) durable(ns *namespace, cdw12 uint32) nvme.Status {
	c.ctrl.mu.Lock()
	cache := c.ctrl.features.writeCache
	c.ctrl.mu.Unlock()
	if cdw12&cdw12FUA == 0 && cache {
		return nvme.StatusSuccess
	}
	if err := ns.st.Flush(); err != nil {
		c.log.Error("flush failed", "nsid", ns.id, "err", err)
		return nvme.StatusWriteFault
	}
	return nvme.StatusSuccess
}

// datasetManagement deallocates the ranges listed in the data when AD is
// set; the attributes alone are hints, which need nothing done. Every range
// is checked before any is deallocated.
func (c *conn) datasetManagement(cmd *command, ns *namespace) (uint64, nvme.Status) {
	s := cmd.SQE()
	data := cmd.data()
	cmd.dataLen = 0
	if s.CDW11()&dsmAD == 0 {
		return 0, nvme.StatusSuccess
	}
	type span struct{ off, n int64 }
	var spans [dsmMaxRanges]span
	count := 0
	for i := 0; i+dsmRangeLen <= len(data); i += dsmRangeLen {
		nlb := uint64(binary.LittleEndian.Uint32(data[i+4:]))
		slba := binary.LittleEndian.Uint64(data[i+8:])
		off, n, st := c.t.lbaRange(ns, slba, nlb)
		if !st.Success() {
			return 0, st
		}
		if n > 0 {
			spans[count] = span{off, n}
			count++
		}
	}
	for _, sp := range spans[:count] {
		if err := ns.st.Deallocate(sp.off, sp.n); err != nil {
			c.log.Error("deallocate failed", "nsid", ns.id, "offset", sp.off, "len", sp.n, "err", err)
			return 0, nvme.StatusWriteFault
		}
	}
	return 0, nvme.StatusSuccess
}
