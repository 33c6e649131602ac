package target

import (
	"net"
	"strconv"
	"time"

	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
)

// admin runs an admin command.
func (c *conn) admin(cmd *command) (uint64, nvme.Status, bool) {
	s := cmd.SQE()
	ctrl := c.ctrl
	switch s.Opcode() {
	case nvme.AdminIdentify:
		return 0, c.identify(cmd), false
	case nvme.AdminGetLogPage:
		return 0, c.getLogPage(cmd), false
	case nvme.AdminSetFeatures:
		res, st := ctrl.setFeatures(s)
		return res, st, false
	case nvme.AdminGetFeatures:
		res, st := ctrl.getFeatures(s)
		return res, st, false
	case nvme.AdminKeepAlive:
		ctrl.touch()
		return 0, nvme.StatusSuccess, false
	case nvme.AdminAsyncEvent:
		ctrl.mu.Lock()
		defer ctrl.mu.Unlock()
		if len(ctrl.aers) >= aerLimit {
			return 0, nvme.StatusAsyncEventLimit | nvme.StatusDNR, false
		}
		// Held until there is an event to report (none in a fixed
		// namespace set) or the controller ends.
		ctrl.aers = append(ctrl.aers, cmd)
		return 0, 0, true
	case nvme.AdminAbort:
		// Commands run to completion here: report "not aborted" (DW0 bit 0).
		return 1, nvme.StatusSuccess, false
	}
	return 0, nvme.StatusInvalidOpcode | nvme.StatusDNR, false
}

// identify fills the command's 4096 bytes of Identify data.
func (c *conn) identify(cmd *command) nvme.Status {
	s := cmd.SQE()
	t := c.t
	ctrl := c.ctrl
	buf := cmd.setData(nvme.IdentifyDataLen)
	cns := s.IdentifyCNS()
	if ctrl.discovery && cns != nvme.CNSController {
		return nvme.StatusInvalidField | nvme.StatusDNR
	}
	switch cns {
	case nvme.CNSController:
		nvme.IdentifyController(buf).Encode(ctrl.identifyFields())
	case nvme.CNSNamespace:
		ns := t.namespace(s.NSID())
		if ns == nil {
			return nvme.StatusInvalidNamespace | nvme.StatusDNR
		}
		f := nvme.IdentifyNamespaceFields{
			NSZE:   ns.blocks,
			NCAP:   ns.blocks,
			NUSE:   ns.blocks,
			NMIC:   nvme.NMICShared,
			DLFEAT: nvme.DLFEATReadZeroes | nvme.DLFEATWriteZeroesDeac,
			NGUID:  ns.nguid,
		}
		f.LBAFormats[0] = nvme.LBAFormat{LBADS: uint8(t.lbaShift)}
		nvme.IdentifyNamespace(buf).Encode(&f)
	case nvme.CNSActiveNSList:
		after := s.NSID()
		if after >= nvme.IdentifyNSIDInvalid {
			return nvme.StatusInvalidNamespace | nvme.StatusDNR
		}
		var ids []uint32
		for _, ns := range t.ns {
			if ns.id > after {
				ids = append(ids, ns.id)
			}
		}
		nvme.NSList(buf).Encode(ids)
	case nvme.CNSNSDescList:
		ns := t.namespace(s.NSID())
		if ns == nil {
			return nvme.StatusInvalidNamespace | nvme.StatusDNR
		}
		nvme.NSDescList(buf).Encode([]nvme.NSDescriptor{
			{Type: nvme.NIDTNGUID, ID: ns.nguid[:]},
			{Type: nvme.NIDTUUID, ID: ns.uuid[:]},
			{Type: nvme.NIDTCSI, ID: []byte{nvme.CSINVM}},
		})
	case nvme.CNSCSNamespace, nvme.CNSCSController:
		// The NVM command set's specific structures: nothing beyond
		// the base ones to report (all zero: no limits, no extended
		// LBA formats).
		if s.IdentifyCSI() != nvme.CSINVM {
			return nvme.StatusInvalidField | nvme.StatusDNR
		}
		if cns == nvme.CNSCSNamespace && t.namespace(s.NSID()) == nil {
			return nvme.StatusInvalidNamespace | nvme.StatusDNR
		}
		clear(buf)
	default:
		return nvme.StatusInvalidField | nvme.StatusDNR
	}
	return nvme.StatusSuccess
}

// identifyFields is the controller's Identify Controller data.
func (ctrl *controller) identifyFields() *nvme.IdentifyControllerFields {
	t := ctrl.t
	f := &nvme.IdentifyControllerFields{
		Serial:   t.cfg.Serial,
		Model:    t.cfg.Model,
		Firmware: t.cfg.Firmware,
		CntlID:   ctrl.id,
		Version:  versionValue,
		// Not CTRATT.TBKAS: hosts keep sending Keep Alive whatever the
		// traffic, which is safer with hosts whose TBKAS polling races
		// the timeout (Linux before its KA frequency fix).
		CTRATT:    nvme.CTRATTHostID128,
		MDTS:      t.mdtsField,
		ACL:       3,
		AERL:      aerLimit - 1,
		FRMW:      nvme.FRMWSlot1ReadOnly | nvme.FRMWOneSlot,
		LPA:       nvme.LPAExtendedData,
		ELPE:      errorLogSlots - 1,
		KAS:       1, // 100 ms
		SQES:      nvme.SQESNVMe,
		CQES:      nvme.CQESNVMe,
		MaxCmd:    uint16(min(t.cfg.MaxQueueSize, 0xffff)),
		SGLS:      nvme.SGLSSupported | nvme.SGLSOffset,
		IORCSZ:    nvme.CQELen / 16,
		MSDBD:     1,
		CntrlType: nvme.CtrlTypeIO,
		SubNQN:    ctrl.subNQN,
	}
	if ctrl.discovery {
		f.CntrlType = nvme.CtrlTypeDiscovery
		f.MDTS = 0
		return f
	}
	f.CMIC = nvme.CMICMultiCtrl
	f.OAES = nvme.OAESNSAttrChanged
	f.LPA |= nvme.LPASMARTPerNS | nvme.LPACmdEffects
	f.NN = uint32(len(t.ns))
	f.ONCS = nvme.ONCSDSM | nvme.ONCSWriteZeroes
	f.VWC = nvme.VWCPresent | nvme.VWCFlushAllNS
	f.IOCCSZ = (nvme.SQELen + t.cfg.InCapsuleSize) / 16
	return f
}

// getLogPage fills the command's data with the requested part of a log page.
func (c *conn) getLogPage(cmd *command) nvme.Status {
	s := cmd.SQE()
	ctrl := c.ctrl
	lid := s.LogPageID()
	var page []byte
	switch {
	case lid == nvme.LogError:
		page = ctrl.errorLog()
	case lid == nvme.LogDiscovery && ctrl.discovery:
		page = c.discoveryLog()
	case ctrl.discovery:
		return nvme.StatusInvalidField | nvme.StatusDNR
	case lid == nvme.LogSMART:
		var st nvme.Status
		if page, st = ctrl.smartLog(s.NSID()); !st.Success() {
			return st
		}
	case lid == nvme.LogFirmwareSlot:
		page = make([]byte, nvme.FirmwareSlotLogLen)
		nvme.FirmwareSlotLog(page).Encode(&nvme.FirmwareSlotLogFields{ActiveSlot: 1, Revisions: [7]string{c.t.cfg.Firmware}})
	case lid == nvme.LogChangedNS:
		page = make([]byte, nvme.ChangedNSListLen)
		ctrl.mu.Lock()
		nvme.NSList(page).Encode(ctrl.changedNS)
		if !s.LogPageRAE() {
			ctrl.changedNS = nil
		}
		ctrl.mu.Unlock()
	case lid == nvme.LogCommandEffects:
		page = commandEffects()
	default:
		return nvme.StatusInvalidField | nvme.StatusDNR
	}
	off := s.LogPageOffset()
	if off%4 != 0 || off > uint64(len(page)) {
		return nvme.StatusInvalidField | nvme.StatusDNR
	}
	// The length was bounded by MDTS in plan; past the page's end the
	// host reads zeroes.
	buf := cmd.setData(int(s.LogPageLen()))
	n := copy(buf, page[off:])
	clear(buf[n:])
	return nvme.StatusSuccess
}

func (ctrl *controller) errorLog() []byte {
	page := make([]byte, errorLogSlots*nvme.ErrorLogEntryLen)
	ctrl.mu.Lock()
	defer ctrl.mu.Unlock()
	// Newest first.
	for i := 0; i < errorLogSlots && uint64(i) < ctrl.errCount; i++ {
		e := ctrl.errLog[(ctrl.errCount-uint64(i))%errorLogSlots]
		nvme.ErrorLogEntry(page[i*nvme.ErrorLogEntryLen:]).Encode(&e)
	}
	return page
}

// smartLog reports one namespace (LPA bit 0) or, for NSID 0 or FFFFFFFFh,
// the whole controller.
func (ctrl *controller) smartLog(nsid uint32) ([]byte, nvme.Status) {
	t := ctrl.t
	var set []*namespace
	switch {
	case nsid == 0 || nsid == nvme.NSIDAll:
		set = t.ns
	case t.namespace(nsid) != nil:
		set = []*namespace{t.namespace(nsid)}
	default:
		return nil, nvme.StatusInvalidNamespace | nvme.StatusDNR
	}
	var rd, wr, rc, wc, me uint64
	for _, ns := range set {
		rd += ns.bytesRead.Load()
		wr += ns.bytesWritten.Load()
		rc += ns.reads.Load()
		wc += ns.writes.Load()
		me += ns.mediaErrors.Load()
	}
	ctrl.mu.Lock()
	errs := ctrl.errCount
	ctrl.mu.Unlock()
	page := make([]byte, nvme.SMARTLogLen)
	nvme.SMARTLog(page).Encode(&nvme.SMARTLogFields{
		AvailableSpare:   100,
		SpareThreshold:   10,
		DataUnitsRead:    nvme.DataUnits(rd),
		DataUnitsWritten: nvme.DataUnits(wr),
		HostReads:        rc,
		HostWrites:       wc,
		PowerCycles:      1,
		PowerOnHours:     uint64(time.Since(t.started).Hours()),
		MediaErrors:      me,
		ErrorLogEntries:  errs,
	})
	return page, nvme.StatusSuccess
}

func commandEffects() []byte {
	var f nvme.CommandEffectsLogFields
	for _, op := range []uint8{nvme.AdminGetLogPage, nvme.AdminIdentify, nvme.AdminAbort, nvme.AdminSetFeatures,
		nvme.AdminGetFeatures, nvme.AdminAsyncEvent, nvme.AdminKeepAlive} {
		f.Admin[op] = nvme.EffectsCSUPP
	}
	f.IO[nvme.IORead] = nvme.EffectsCSUPP
	f.IO[nvme.IOFlush] = nvme.EffectsCSUPP
	for _, op := range []uint8{nvme.IOWrite, nvme.IOWriteZeroes, nvme.IODatasetMgmt} {
		f.IO[op] = nvme.EffectsCSUPP | nvme.EffectsLBCC
	}
	page := make([]byte, nvme.CommandEffectsLogLen)
	nvme.CommandEffectsLog(page).Encode(&f)
	return page
}

// discoveryLog lists the NVM subsystem, unless the host is not allowed on
// it: a refused host discovers nothing.
func (c *conn) discoveryLog() []byte {
	t := c.t
	var entries []nvme.DiscoveryLogEntryFields
	if t.hostAllowed(c.ctrl.hostNQN) {
		addr, port := c.discoveryAddr()
		fam := uint8(nvme.AdrFamIPv4)
		if ip := net.ParseIP(addr); ip != nil && ip.To4() == nil {
			fam = nvme.AdrFamIPv6
		}
		entries = append(entries, nvme.DiscoveryLogEntryFields{
			TrType:  nvme.TrTypeTCP,
			AdrFam:  fam,
			SubType: nvme.SubTypeNVM,
			TReq:    nvme.TReqNotSpecified,
			PortID:  1,
			CntlID:  nvme.CntlIDDynamic,
			ASQSZ:   32,
			TrSvcID: port,
			SubNQN:  t.cfg.SubsystemNQN,
			TrAddr:  addr,
			SecType: nvme.TCPSecTypeNone,
		})
	}
	page := make([]byte, nvme.DiscoveryLogHeaderLen+len(entries)*nvme.DiscoveryLogEntryLen)
	nvme.DiscoveryLogHeader(page).Encode(&nvme.DiscoveryLogHeaderFields{GenCtr: 1, NumRec: uint64(len(entries))})
	for i := range entries {
		nvme.DiscoveryLogEntry(page[nvme.DiscoveryLogHeaderLen+i*nvme.DiscoveryLogEntryLen:]).Encode(&entries[i])
	}
	return page
}

// discoveryAddr is the address a host should connect to: ListenAddr, or
// where this connection arrived when ListenAddr is empty or a wildcard.
func (c *conn) discoveryAddr() (host, port string) {
	local, _ := c.nc.LocalAddr().(*net.TCPAddr)
	if h, p, err := net.SplitHostPort(c.t.cfg.ListenAddr); err == nil {
		host, port = h, p
	}
	if ip := net.ParseIP(host); (host == "" || ip != nil && ip.IsUnspecified()) && local != nil {
		host = local.IP.String()
	}
	if port == "" && local != nil {
		port = strconv.Itoa(local.Port)
	}
	return host, port
}

// setFeatures runs Set Features.
func (ctrl *controller) setFeatures(s nvme.SQE) (uint64, nvme.Status) {
	if s.FeatureSave() {
		return 0, nvme.StatusFeatureNotSaveable | nvme.StatusDNR
	}
	v := s.FeatureValue()
	ctrl.mu.Lock()
	defer ctrl.mu.Unlock()
	f := &ctrl.features
	switch fid := s.FeatureID(); {
	case fid == nvme.FeatKeepAliveTimer:
		kato := time.Duration(v) * time.Millisecond
		if kato > ctrl.t.cfg.MaxKATO {
			return 0, nvme.StatusInvalidField | nvme.StatusDNR
		}
		ctrl.kato = kato
		ctrl.armKeepAlive()
		return 0, nvme.StatusSuccess
	case fid == nvme.FeatAsyncEventConfig:
		if ctrl.discovery {
			f.asyncEvents = 0
		} else {
			f.asyncEvents = v & nvme.AECNSAttrNotices
		}
		return 0, nvme.StatusSuccess
	case ctrl.discovery:
		return 0, nvme.StatusInvalidField | nvme.StatusDNR
	case fid == nvme.FeatNumQueues:
		sq, cq := nvme.NumQueues(v)
		if sq > 0xffff || cq > 0xffff { // 0's based FFFFh is invalid
			return 0, nvme.StatusInvalidField | nvme.StatusDNR
		}
		if len(ctrl.ioQueues) > 0 {
			return 0, nvme.StatusCommandSequenceError | nvme.StatusDNR
		}
		sq = min(sq, ctrl.t.cfg.MaxIOQueues)
		cq = min(cq, ctrl.t.cfg.MaxIOQueues)
		ctrl.grantedIO = min(sq, cq)
		return uint64(nvme.NumQueuesValue(sq, cq)), nvme.StatusSuccess
	case fid == nvme.FeatVolatileWC:
		f.writeCache = v&nvme.VWCEnable != 0
		if !f.writeCache {
			ctrl.flushAll()
		}
		return 0, nvme.StatusSuccess
	case fid == nvme.FeatArbitration:
		f.arbitration = v
		return 0, nvme.StatusSuccess
	case fid == nvme.FeatTemperature:
		sel, th, ok := tempSelect(v)
		if !ok {
			return 0, nvme.StatusInvalidField | nvme.StatusDNR
		}
		if sel == 15 { // all sensors
			for i := range f.tempThresholds {
				f.tempThresholds[i][th] = uint16(v)
			}
		} else {
			f.tempThresholds[sel][th] = uint16(v)
		}
		return 0, nvme.StatusSuccess
	case fid == nvme.FeatPowerManagement:
		if v&0x1f != 0 { // one power state (NPSS 0)
			return 0, nvme.StatusInvalidField | nvme.StatusDNR
		}
		f.powerMgmt = v
		return 0, nvme.StatusSuccess
	case fid == nvme.FeatErrorRecovery:
		if v&(1<<16) != 0 { // DULBE needs NSFEAT bit 2, not offered
			return 0, nvme.StatusInvalidField | nvme.StatusDNR
		}
		f.errorRecovery = v & 0xffff
		return 0, nvme.StatusSuccess
	}
	return 0, nvme.StatusInvalidField | nvme.StatusDNR
}

// getFeatures runs Get Features.
func (ctrl *controller) getFeatures(s nvme.SQE) (uint64, nvme.Status) {
	ctrl.mu.Lock()
	defer ctrl.mu.Unlock()
	fid, sel := s.FeatureID(), s.FeatureSel()
	changeable := true
	var current, def uint32
	f := &ctrl.features
	switch {
	case fid == nvme.FeatKeepAliveTimer:
		current = uint32(ctrl.kato / time.Millisecond)
	case fid == nvme.FeatAsyncEventConfig:
		current = f.asyncEvents
	case ctrl.discovery:
		return 0, nvme.StatusInvalidField | nvme.StatusDNR
	case fid == nvme.FeatNumQueues:
		current = nvme.NumQueuesValue(ctrl.grantedIO, ctrl.grantedIO)
		def = nvme.NumQueuesValue(ctrl.t.cfg.MaxIOQueues, ctrl.t.cfg.MaxIOQueues)
	case fid == nvme.FeatVolatileWC:
		if f.writeCache {
			current = nvme.VWCEnable
		}
		def = nvme.VWCEnable
	case fid == nvme.FeatArbitration:
		current = f.arbitration
	case fid == nvme.FeatTemperature:
		sel, th, ok := tempSelect(s.FeatureValue())
		if !ok || sel == 15 {
			return 0, nvme.StatusInvalidField | nvme.StatusDNR
		}
		current = uint32(f.tempThresholds[sel][th])
		if th == 0 {
			def = defaultOverTemp
		}
	case fid == nvme.FeatPowerManagement:
		current = f.powerMgmt
	case fid == nvme.FeatErrorRecovery:
		current = f.errorRecovery
	case fid == nvme.FeatWriteAtomicity:
		changeable = false
	default:
		return 0, nvme.StatusInvalidField | nvme.StatusDNR
	}
	switch sel {
	case nvme.FeatSelCurrent:
		return uint64(current), nvme.StatusSuccess
	case nvme.FeatSelDefault, nvme.FeatSelSaved: // nothing is saveable: saved = default
		return uint64(def), nvme.StatusSuccess
	case nvme.FeatSelSupported:
		if changeable {
			return nvme.FeatCapChangeable, nvme.StatusSuccess
		}
		return 0, nvme.StatusSuccess
	}
	return 0, nvme.StatusInvalidField | nvme.StatusDNR
}

// tempSelect decodes the Temperature Threshold selectors of CDW11: TMPSEL
// (bits 19:16; 0 composite, 1-8 sensors, 15 all) and THSEL (bits 21:20; 0
// over, 1 under).
func tempSelect(v uint32) (sel, th int, ok bool) {
	sel, th = int(v>>16&0xf), int(v>>20&0x3)
	return sel, th, th <= 1 && (sel <= 8 || sel == 15)
}
