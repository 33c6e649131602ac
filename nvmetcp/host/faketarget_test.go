package host

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
	"github.com/nvmefs/nvmefs/nvmetcp/wire"
)

// fakeTarget is a small scripted NVMe/TCP controller for the host's tests:
// enough of the protocol to connect, identify, read and write memory
// namespaces, with knobs the real target does not have (protocol
// violations, silence).
type fakeTarget struct {
	t   *testing.T
	ln  net.Listener
	cfg fakeConfig

	mu     sync.Mutex
	ns     map[uint32]*fakeNS
	ctrls  map[uint16]*fakeCtrl
	nextID uint16
	conns  map[net.Conn]bool
	closed bool
	wg     sync.WaitGroup

	// silent: answer ICReqs, nothing else (a controller that hangs).
	silent atomic.Bool
	// corruptC2H: corrupt the payload of this many C2HData PDUs.
	corruptC2H atomic.Int32
	// bogusResponse: answer the next command with a CapsuleResp for a
	// command id that is not in flight.
	bogusResponse atomic.Bool
	// connects counts admin queue connects.
	connects atomic.Int32
	// misbehave, when set, answers the next I/O command instead of the
	// normal path (once): it sends whatever PDUs it likes.
	misbehave atomic.Pointer[func(fc *fakeConn, sqe nvme.SQE)]
}

type fakeConfig struct {
	nqn        string
	nsSizes    []int // bytes per namespace
	blockSize  int
	maxC2H     int // largest C2HData payload; 0: one PDU per read
	success    bool
	ioccsz     uint32 // 16-byte units; 0: 4 (no in-capsule data)
	mdts       uint8
	cpda       uint8
	maxH2CData uint32
	r2tChunk   int // largest R2T; 0: one R2T per write
	mqes       int // CAP.MQES+1
	maxQueues  int
	oncs       uint16
}

type fakeNS struct {
	mu   sync.Mutex
	data []byte
}

type fakeCtrl struct {
	mu   sync.Mutex
	cc   uint32
	csts uint32
}

func newFakeTarget(t *testing.T, cfg fakeConfig) *fakeTarget {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return newFakeTargetOn(t, ln, cfg)
}

func newFakeTargetOn(t *testing.T, ln net.Listener, cfg fakeConfig) *fakeTarget {
	if cfg.nqn == "" {
		cfg.nqn = "nqn.2026-01.io.nvmefs:fake"
	}
	if cfg.blockSize == 0 {
		cfg.blockSize = 512
	}
	if cfg.nsSizes == nil {
		cfg.nsSizes = []int{8 << 20}
	}
	if cfg.ioccsz == 0 {
		cfg.ioccsz = 4
	}
	if cfg.maxH2CData == 0 {
		cfg.maxH2CData = 32 << 10
	}
	if cfg.mqes == 0 {
		cfg.mqes = 128
	}
	if cfg.maxQueues == 0 {
		cfg.maxQueues = 4
	}
	if cfg.oncs == 0 {
		cfg.oncs = nvme.ONCSDSM | nvme.ONCSWriteZeroes
	}
	ft := &fakeTarget{t: t, ln: ln, cfg: cfg, ns: map[uint32]*fakeNS{}, ctrls: map[uint16]*fakeCtrl{}, nextID: 1, conns: map[net.Conn]bool{}}
	for i, size := range cfg.nsSizes {
		ft.ns[uint32(i+1)] = &fakeNS{data: make([]byte, size)}
	}
	ft.wg.Add(1)
	go ft.serve()
	t.Cleanup(ft.Close)
	return ft
}

func (ft *fakeTarget) Addr() string { return ft.ln.Addr().String() }

func (ft *fakeTarget) Close() {
	ft.mu.Lock()
	if ft.closed {
		ft.mu.Unlock()
		return
	}
	ft.closed = true
	ft.ln.Close()
	for c := range ft.conns {
		c.Close()
	}
	ft.mu.Unlock()
	ft.wg.Wait()
}

func (ft *fakeTarget) serve() {
	defer ft.wg.Done()
	for {
		c, err := ft.ln.Accept()
		if err != nil {
			return
		}
		ft.mu.Lock()
		if ft.closed {
			ft.mu.Unlock()
			c.Close()
			return
		}
		ft.conns[c] = true
		ft.wg.Add(1)
		ft.mu.Unlock()
		go func() {
			defer ft.wg.Done()
			fc := &fakeConn{ft: ft, c: c}
			fc.run()
			c.Close()
			ft.mu.Lock()
			delete(ft.conns, c)
			ft.mu.Unlock()
		}()
	}
}

// fill writes a pattern into namespace nsid: byte i is a function of i.
func (ft *fakeTarget) fill(nsid uint32) []byte {
	ns := ft.ns[nsid]
	ns.mu.Lock()
	defer ns.mu.Unlock()
	fillPattern(ns.data, int64(nsid)<<40)
	return append([]byte(nil), ns.data...)
}

type fakeConn struct {
	ft    *fakeTarget
	c     net.Conn
	p     wire.Params
	qid   uint16
	ctrl  *fakeCtrl
	disc  bool
	wmu   sync.Mutex
	hdr   [wire.MaxHeaderBuf]byte
	write map[uint16]*fakeWrite
}

type fakeWrite struct {
	sqe  [nvme.SQELen]byte
	data []byte
	got  int
	r2t  int // end of the R2Ts sent
}

func (fc *fakeConn) run() {
	ft := fc.ft
	r := wire.NewReader(fc.c, wire.ToController, &fc.p)
	h, l, err := r.Next()
	if err != nil || l.Type != wire.TypeICReq {
		return
	}
	req := wire.ICReq(h)
	var b [wire.ICRespLen]byte
	hd, dd := req.Digest()&wire.DigestHeader != 0, req.Digest()&wire.DigestData != 0
	wire.ICResp(b[:]).Encode(&wire.ICRespFields{CPDA: ft.cfg.cpda, HeaderDigest: hd, DataDigest: dd, MaxH2CData: ft.cfg.maxH2CData})
	if _, err := fc.c.Write(b[:]); err != nil {
		return
	}
	fc.p = wire.Params{HeaderDigest: hd, DataDigest: dd, RxPDA: ft.cfg.cpda, TxPDA: req.HPDA(), MaxData: ft.cfg.maxH2CData, MaxInCapsule: 8192}
	fc.write = map[uint16]*fakeWrite{}
	for {
		h, l, err := r.Next()
		if err != nil {
			return
		}
		switch l.Type {
		case wire.TypeCapsuleCmd:
			var sqe [nvme.SQELen]byte
			copy(sqe[:], wire.CapsuleCmd(h).SQE())
			var data []byte
			if l.DataLen > 0 {
				data = make([]byte, l.DataLen)
				if err := r.ReadData(data); err != nil {
					return
				}
			}
			if ft.silent.Load() {
				continue
			}
			if !fc.command(sqe, data) {
				return
			}
		case wire.TypeH2CData:
			d := wire.DataHeader(h)
			w := fc.write[d.CCCID()]
			if w == nil || int(d.DataOffset()) != w.got || w.got+l.DataLen > w.r2t {
				return
			}
			if err := r.ReadData(w.data[w.got : w.got+l.DataLen]); err != nil {
				return
			}
			w.got += l.DataLen
			if w.got < w.r2t {
				continue
			}
			if w.got < len(w.data) {
				fc.sendR2T(w)
				continue
			}
			delete(fc.write, d.CCCID())
			if !fc.command(w.sqe, w.data) {
				return
			}
		default:
			return
		}
	}
}

func (fc *fakeConn) send(parts ...[]byte) bool {
	fc.wmu.Lock()
	defer fc.wmu.Unlock()
	nb := net.Buffers(parts)
	_, err := nb.WriteTo(fc.c)
	return err == nil
}

func (fc *fakeConn) respond(cid uint16, st nvme.Status, result uint64) bool {
	if fc.ft.bogusResponse.CompareAndSwap(true, false) {
		cid ^= 0x0800
	}
	var b [wire.MaxHeaderBuf]byte
	wire.CapsuleResp(b[:]).Encode(&nvme.CQEFields{CID: cid, Status: st, Result: result, SQID: fc.qid})
	return fc.send(fc.p.Seal(b[:], 0))
}

func (fc *fakeConn) sendR2T(w *fakeWrite) bool {
	n := len(w.data) - w.r2t
	if c := fc.ft.cfg.r2tChunk; c > 0 {
		n = min(n, c)
	}
	var b [wire.MaxHeaderBuf]byte
	wire.R2T(b[:]).Encode(&wire.R2TFields{CCCID: nvme.SQE(w.sqe[:]).CID(), TTag: 7, Offset: uint32(w.r2t), Len: uint32(n)})
	w.r2t += n
	return fc.send(fc.p.Seal(b[:], 0))
}

// sendPDU sends one PDU: a header encoded by enc into a header buffer,
// sealed for dataLen bytes of payload, then the payload and its digest.
func (fc *fakeConn) sendPDU(enc func(b []byte), payload []byte) bool {
	var b [wire.MaxHeaderBuf]byte
	enc(b[:])
	parts := [][]byte{fc.p.Seal(b[:], len(payload))}
	if len(payload) > 0 {
		parts = append(parts, payload)
		if fc.p.DataDigest {
			var d [4]byte
			wire.PutDigest(d[:], wire.DataDigest(payload))
			parts = append(parts, d[:])
		}
	}
	return fc.send(parts...)
}

// sendData sends a read's data as C2HData PDUs.
func (fc *fakeConn) sendData(cid uint16, data []byte) bool {
	step := len(data)
	if m := fc.ft.cfg.maxC2H; m > 0 {
		step = m
	}
	for off := 0; off < len(data); off += step {
		n := min(step, len(data)-off)
		var fl wire.Flags
		last := off+n == len(data)
		if last {
			fl = wire.FlagLast
			if fc.ft.cfg.success {
				fl |= wire.FlagSuccess
			}
		}
		var b [wire.MaxHeaderBuf]byte
		wire.DataHeader(b[:]).Encode(&wire.DataFields{Type: wire.TypeC2HData, Flags: fl, CCCID: cid, DataOffset: uint32(off), DataLen: uint32(n)})
		hdr := fc.p.Seal(b[:], n)
		payload := data[off : off+n]
		parts := [][]byte{hdr, payload}
		if fc.p.DataDigest {
			var d [4]byte
			wire.PutDigest(d[:], wire.DataDigest(payload))
			parts = append(parts, d[:])
		}
		if fc.ft.corruptC2H.Add(-1) >= 0 {
			bad := append([]byte(nil), payload...)
			bad[len(bad)/2] ^= 0x5a
			parts[1] = bad
		}
		if !fc.send(parts...) {
			return false
		}
	}
	if !fc.ft.cfg.success {
		return fc.respond(cid, 0, 0)
	}
	return true
}

// command executes one command whose data (if any) has arrived.
func (fc *fakeConn) command(sqeArr [nvme.SQELen]byte, data []byte) bool {
	ft := fc.ft
	sqe := nvme.SQE(sqeArr[:])
	cid := sqe.CID()
	// Commands that move host data: wait for it.
	dlen := int(sqe.DPTR().Length())
	isConnect := sqe.Opcode() == nvme.OpcodeFabrics && sqe.FabricsType() == nvme.FabricsConnect
	hostData := isConnect || fc.qid != 0 && (sqe.Opcode() == nvme.IOWrite || sqe.Opcode() == nvme.IODatasetMgmt)
	if hostData && data == nil && dlen > 0 {
		if dlen > 64<<20 {
			return false
		}
		w := &fakeWrite{sqe: sqeArr, data: make([]byte, dlen)}
		fc.write[cid] = w
		return fc.sendR2T(w)
	}
	if sqe.Opcode() == nvme.OpcodeFabrics {
		return fc.fabrics(sqe, data)
	}
	if fc.ctrl == nil {
		return fc.respond(cid, nvme.StatusCommandSequenceError|nvme.StatusDNR, 0)
	}
	if fc.qid == 0 {
		return fc.admin(sqe, dlen)
	}
	if f := ft.misbehave.Swap(nil); f != nil {
		(*f)(fc, sqe)
		return true
	}
	ns := ft.ns[sqe.NSID()]
	if ns == nil {
		return fc.respond(cid, nvme.StatusInvalidNamespace|nvme.StatusDNR, 0)
	}
	bs := ft.cfg.blockSize
	slba, nlb := sqe.SLBA(), int(sqe.NLB())
	inRange := func() bool { return slba*uint64(bs)+uint64(nlb*bs) <= uint64(len(ns.data)) }
	switch sqe.Opcode() {
	case nvme.IORead:
		if !inRange() {
			return fc.respond(cid, nvme.StatusLBAOutOfRange|nvme.StatusDNR, 0)
		}
		if dlen != nlb*bs {
			return fc.respond(cid, nvme.StatusDataSGLLengthInvalid|nvme.StatusDNR, 0)
		}
		buf := make([]byte, dlen)
		ns.mu.Lock()
		copy(buf, ns.data[slba*uint64(bs):])
		ns.mu.Unlock()
		return fc.sendData(cid, buf)
	case nvme.IOWrite:
		if !inRange() {
			return fc.respond(cid, nvme.StatusLBAOutOfRange|nvme.StatusDNR, 0)
		}
		if len(data) != nlb*bs {
			return fc.respond(cid, nvme.StatusDataSGLLengthInvalid|nvme.StatusDNR, 0)
		}
		ns.mu.Lock()
		copy(ns.data[slba*uint64(bs):], data)
		ns.mu.Unlock()
		return fc.respond(cid, 0, 0)
	case nvme.IOWriteZeroes:
		if !inRange() {
			return fc.respond(cid, nvme.StatusLBAOutOfRange|nvme.StatusDNR, 0)
		}
		ns.mu.Lock()
		clear(ns.data[slba*uint64(bs) : slba*uint64(bs)+uint64(nlb*bs)])
		ns.mu.Unlock()
		return fc.respond(cid, 0, 0)
	case nvme.IODatasetMgmt:
		nr := int(sqe.CDW10()&0xff) + 1
		if len(data) < 16*nr {
			return fc.respond(cid, nvme.StatusDataSGLLengthInvalid|nvme.StatusDNR, 0)
		}
		for i := range nr {
			n := uint64(binary.LittleEndian.Uint32(data[16*i+4:]))
			lba := binary.LittleEndian.Uint64(data[16*i+8:])
			if (lba+n)*uint64(bs) > uint64(len(ns.data)) {
				return fc.respond(cid, nvme.StatusLBAOutOfRange|nvme.StatusDNR, 0)
			}
			ns.mu.Lock()
			clear(ns.data[lba*uint64(bs) : (lba+n)*uint64(bs)])
			ns.mu.Unlock()
		}
		return fc.respond(cid, 0, 0)
	case nvme.IOFlush:
		return fc.respond(cid, 0, 0)
	}
	return fc.respond(cid, nvme.StatusInvalidOpcode|nvme.StatusDNR, 0)
}

func (fc *fakeConn) fabrics(sqe nvme.SQE, data []byte) bool {
	ft := fc.ft
	cid := sqe.CID()
	switch sqe.FabricsType() {
	case nvme.FabricsConnect:
		if len(data) != nvme.ConnectDataLen {
			return fc.respond(cid, nvme.StatusConnectInvalidParam|nvme.StatusDNR, 0)
		}
		cd := nvme.ConnectData(data)
		fc.disc = cd.SubNQN() == nvme.DiscoveryNQN
		if !fc.disc && cd.SubNQN() != ft.cfg.nqn {
			return fc.respond(cid, nvme.StatusConnectInvalidParam|nvme.StatusDNR, 1<<16|256)
		}
		fc.qid = sqe.ConnectQID()
		ft.mu.Lock()
		defer ft.mu.Unlock()
		if fc.qid == 0 {
			ft.connects.Add(1)
			id := ft.nextID
			ft.nextID++
			fc.ctrl = &fakeCtrl{}
			ft.ctrls[id] = fc.ctrl
			fc.p.MaxInCapsule = 8192
			return fc.respond(cid, 0, uint64(id))
		}
		fc.ctrl = ft.ctrls[cd.CntlID()]
		if fc.ctrl == nil {
			return fc.respond(cid, nvme.StatusConnectInvalidParam|nvme.StatusDNR, 1<<16|16)
		}
		fc.p.MaxInCapsule = ft.cfg.ioccsz*16 - 64
		return fc.respond(cid, 0, uint64(cd.CntlID()))
	case nvme.FabricsPropertyGet, nvme.FabricsPropertySet:
		if fc.ctrl == nil || fc.qid != 0 {
			return fc.respond(cid, nvme.StatusCommandSequenceError|nvme.StatusDNR, 0)
		}
		c := fc.ctrl
		c.mu.Lock()
		defer c.mu.Unlock()
		if sqe.FabricsType() == nvme.FabricsPropertySet {
			if sqe.PropertyOffset() != nvme.PropCC {
				return fc.respond(cid, nvme.StatusInvalidField|nvme.StatusDNR, 0)
			}
			c.cc = uint32(sqe.PropertyValue())
			c.csts = 0
			if c.cc&nvme.CCEnable != 0 {
				c.csts |= nvme.CSTSReady
			}
			if c.cc&nvme.CCShutdownMask != 0 {
				c.csts |= nvme.CSTSShstDone
			}
			return fc.respond(cid, 0, 0)
		}
		var v uint64
		switch sqe.PropertyOffset() {
		case nvme.PropCAP:
			v = uint64(ft.cfg.mqes-1) | 1<<16 | 2<<24 | 1<<37
		case nvme.PropVS:
			v = 0x10400
		case nvme.PropCC:
			v = uint64(c.cc)
		case nvme.PropCSTS:
			v = uint64(c.csts)
		default:
			return fc.respond(cid, nvme.StatusInvalidField|nvme.StatusDNR, 0)
		}
		return fc.respond(cid, 0, v)
	}
	return fc.respond(cid, nvme.StatusInvalidOpcode|nvme.StatusDNR, 0)
}

func (fc *fakeConn) admin(sqe nvme.SQE, dlen int) bool {
	ft := fc.ft
	cid := sqe.CID()
	le := binary.LittleEndian
	switch sqe.Opcode() {
	case nvme.AdminIdentify:
		b := make([]byte, nvme.IdentifyDataLen)
		switch sqe.CDW10() & 0xff {
		case nvme.CNSController:
			copy(b[4:24], "FAKE0001            ")
			copy(b[24:64], "nvmefs fake target                      ")
			b[77] = ft.cfg.mdts
			le.PutUint16(b[514:], uint16(ft.cfg.mqes))
			le.PutUint32(b[516:], uint32(len(ft.ns)))
			le.PutUint16(b[520:], ft.cfg.oncs)
			le.PutUint32(b[536:], 1|1<<20)
			nqn := ft.cfg.nqn
			if fc.disc {
				nqn = nvme.DiscoveryNQN
			}
			copy(b[768:1023], nqn)
			le.PutUint32(b[1792:], ft.cfg.ioccsz)
			le.PutUint32(b[1796:], 1)
		case nvme.CNSActiveNSList:
			for i := range len(ft.ns) {
				le.PutUint32(b[4*i:], uint32(i+1))
			}
		case nvme.CNSNamespace:
			ns := ft.ns[sqe.NSID()]
			if ns == nil {
				return fc.respond(cid, nvme.StatusInvalidNamespace|nvme.StatusDNR, 0)
			}
			bs := ft.cfg.blockSize
			le.PutUint64(b[0:], uint64(len(ns.data)/bs))
			le.PutUint64(b[8:], uint64(len(ns.data)/bs))
			lbads := 0
			for 1<<lbads < bs {
				lbads++
			}
			b[128+2] = byte(lbads)
		default:
			return fc.respond(cid, nvme.StatusInvalidField|nvme.StatusDNR, 0)
		}
		if dlen != nvme.IdentifyDataLen {
			return fc.respond(cid, nvme.StatusDataSGLLengthInvalid|nvme.StatusDNR, 0)
		}
		return fc.sendData(cid, b)
	case nvme.AdminSetFeatures:
		if sqe.CDW10()&0xff != nvme.FeatNumQueues {
			return fc.respond(cid, nvme.StatusInvalidField|nvme.StatusDNR, 0)
		}
		n := uint64(min(int(sqe.CDW11()&0xffff)+1, ft.cfg.maxQueues) - 1)
		return fc.respond(cid, 0, n|n<<16)
	case nvme.AdminKeepAlive:
		return fc.respond(cid, 0, 0)
	case nvme.AdminGetLogPage:
		if sqe.CDW10()&0xff != nvme.LogDiscovery || !fc.disc {
			return fc.respond(cid, nvme.StatusInvalidLogPage|nvme.StatusDNR, 0)
		}
		numd := int(sqe.CDW10()>>16|sqe.CDW11()<<16) + 1
		off := int(uint64(sqe.CDW12()) | uint64(sqe.CDW13())<<32)
		log := make([]byte, 1024*3)
		le.PutUint64(log[0:], 42)
		le.PutUint64(log[8:], 2)
		host, port, _ := net.SplitHostPort(ft.Addr())
		for i, nqn := range []string{ft.cfg.nqn, nvme.DiscoveryNQN} {
			e := log[1024*(i+1):]
			e[0], e[1], e[2], e[3] = 3, 1, byte(2+i), 2
			le.PutUint16(e[4:], 1)
			le.PutUint16(e[6:], 0xffff)
			le.PutUint16(e[8:], 32)
			copy(e[32:64], port)
			copy(e[256:512], nqn)
			copy(e[512:768], host)
		}
		out := make([]byte, numd*4)
		if off < len(log) {
			copy(out, log[off:])
		}
		if dlen != len(out) {
			return fc.respond(cid, nvme.StatusDataSGLLengthInvalid|nvme.StatusDNR, 0)
		}
		return fc.sendData(cid, out)
	}
	return fc.respond(cid, nvme.StatusInvalidOpcode|nvme.StatusDNR, 0)
}

// fillPattern writes a position-dependent pattern: every 8 bytes hold
// seed+offset, so that a misplaced block is caught.
func fillPattern(b []byte, seed int64) {
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], uint64(seed)+uint64(i))
	}
}

// ---- a fault-injecting TCP proxy ----

// proxy relays connections to a backend; the controller-to-host direction
// can be stalled or have a C2HData payload byte flipped.
type proxy struct {
	ln      net.Listener
	backend string
	mu      sync.Mutex
	conns   []net.Conn
	wg      sync.WaitGroup
	// flipC2H: flip a payload byte of this many C2HData PDUs.
	flipC2H atomic.Int32
	// stall: stop relaying controller-to-host bytes (connections stay open).
	stall   atomic.Bool
	flipped atomic.Int32
}

func newProxy(t *testing.T, backend string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, backend: backend}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.Close)
	return p
}

func (p *proxy) Addr() string { return p.ln.Addr().String() }

func (p *proxy) Close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *proxy) serve() {
	defer p.wg.Done()
	for {
		hc, err := p.ln.Accept()
		if err != nil {
			return
		}
		tc, err := net.DialTimeout("tcp", p.backend, 2*time.Second)
		if err != nil {
			hc.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, hc, tc)
		p.mu.Unlock()
		p.wg.Add(2)
		go func() {
			defer p.wg.Done()
			io.Copy(tc, hc)
			tc.Close()
		}()
		go func() {
			defer p.wg.Done()
			p.relayToHost(hc, tc)
			hc.Close()
		}()
	}
}

// relayToHost frames the controller's PDUs (PLEN in the common header) so
// that it can corrupt a C2HData payload.
func (p *proxy) relayToHost(hc, tc net.Conn) {
	var ch [wire.CommonHeaderLen]byte
	buf := make([]byte, 0, 1<<16)
	for {
		if _, err := io.ReadFull(tc, ch[:]); err != nil {
			return
		}
		plen := int(binary.LittleEndian.Uint32(ch[4:]))
		if plen < wire.CommonHeaderLen || plen > 64<<20 {
			return
		}
		buf = append(buf[:0], ch[:]...)
		buf = append(buf, make([]byte, plen-wire.CommonHeaderLen)...)
		if _, err := io.ReadFull(tc, buf[wire.CommonHeaderLen:]); err != nil {
			return
		}
		if wire.Type(ch[0]) == wire.TypeC2HData && p.flipC2H.Load() > 0 {
			if p.flipC2H.Add(-1) >= 0 {
				pdo := int(ch[3])
				buf[pdo+(plen-pdo)/2] ^= 0x01
				p.flipped.Add(1)
			}
		}
		for p.stall.Load() {
			time.Sleep(5 * time.Millisecond)
			if errors.Is(hc.SetReadDeadline(time.Time{}), net.ErrClosed) {
				return
			}
		}
		if _, err := hc.Write(buf); err != nil {
			return
		}
	}
}

// restart closes the target and starts a new one on the same address with
// the same namespaces (their data kept), after down has passed.
func (ft *fakeTarget) restart(t *testing.T, down time.Duration) *fakeTarget {
	t.Helper()
	addr := ft.Addr()
	ft.Close()
	time.Sleep(down)
	var ln net.Listener
	var err error
	for i := 0; i < 50; i++ {
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("listen again on %s: %v", addr, err)
	}
	nt := &fakeTarget{t: t, ln: ln, cfg: ft.cfg, ns: ft.ns, ctrls: map[uint16]*fakeCtrl{}, nextID: 100, conns: map[net.Conn]bool{}}
	nt.wg.Add(1)
	go nt.serve()
	t.Cleanup(nt.Close)
	return nt
}
