package target

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
	"github.com/nvmefs/nvmefs/nvmetcp/wire"
)

// The test client: a small NVMe/TCP host that speaks the protocol with the
// wire codec, enough to script the target's tests and benchmarks.

const (
	testHostNQN  = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000001"
	testHostNQN2 = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000002"
	testSubNQN   = "nqn.2026-01.io.nvmefs:test"
	callTimeout  = 10 * time.Second
)

var testHostID = [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}

type clientOpts struct {
	HeaderDigest bool
	DataDigest   bool
	HPDA         uint8
	MaxR2T       uint32 // 0's based, as in ICReq
	// R2TBatch makes the client hold R2Ts until this many are unanswered
	// for a command (or the whole transfer is requested), to see that the
	// target sends several at once.
	R2TBatch int
}

// response is what a command got back.
type response struct {
	Status  nvme.Status
	Result  uint64
	SQID    uint16
	SQHD    uint16
	Success bool // ended by a C2HData with the SUCCESS flag
	C2HPDUs int  // C2HData PDUs received
	R2Ts    int  // R2Ts received
	Err     error
}

type call struct {
	cid     uint16
	out     []byte // C2HData lands here
	in      []byte // H2CData comes from here
	resp    response
	got     int // C2H bytes received
	held    []wire.R2TFields
	maxHeld int
	done    chan struct{}
	// badH2C sends the first H2CData PDU with a wrong data digest.
	badH2C bool
	// r2ts, if not nil, receives the R2Ts instead of their being answered.
	r2ts chan wire.R2TFields
}

type termInfo struct {
	FES  wire.FES
	FEI  uint32
	Data []byte
}

type client struct {
	tb     testing.TB
	nc     net.Conn
	opts   clientOpts
	tx     wire.Params // what we send: TxPDA = CPDA
	rx     wire.Params // what we receive
	rd     *wire.Reader
	maxH2C uint32

	wmu  sync.Mutex
	wbuf [wire.MaxHeaderBuf]byte

	mu      sync.Mutex
	calls   map[uint16]*call
	nextCID uint16
	err     error // why the receiver stopped
	term    *termInfo
	recvWG  sync.WaitGroup
	stopped chan struct{}
}

// dialClient connects and does the ICReq/ICResp exchange.
func dialClient(tb testing.TB, addr string, opts clientOpts) *client {
	tb.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		tb.Fatalf("dial: %v", err)
	}
	c := &client{tb: tb, nc: nc, opts: opts, calls: make(map[uint16]*call), stopped: make(chan struct{})}
	tb.Cleanup(c.Close)
	var icreq [wire.ICReqLen]byte
	wire.ICReq(icreq[:]).Encode(&wire.ICReqFields{HPDA: opts.HPDA, HeaderDigest: opts.HeaderDigest, DataDigest: opts.DataDigest, MaxR2T: opts.MaxR2T})
	if _, err := nc.Write(icreq[:]); err != nil {
		tb.Fatalf("ICReq: %v", err)
	}
	nc.SetReadDeadline(time.Now().Add(callTimeout))
	c.rd = wire.NewReader(bufio.NewReaderSize(nc, 64<<10), wire.ToHost, &c.rx)
	h, l, err := c.rd.Next()
	if err != nil {
		tb.Fatalf("ICResp: %v", err)
	}
	if l.Type != wire.TypeICResp {
		tb.Fatalf("got %v, want ICResp", l.Type)
	}
	r := wire.ICResp(h)
	if r.Digest() != digestBits(opts) {
		tb.Fatalf("ICResp digests %#x, asked %#x", r.Digest(), digestBits(opts))
	}
	if r.CPDA() != 0 {
		tb.Fatalf("CPDA %d", r.CPDA())
	}
	c.maxH2C = r.MaxH2CData()
	nc.SetReadDeadline(time.Time{})
	c.tx = wire.Params{HeaderDigest: opts.HeaderDigest, DataDigest: opts.DataDigest, TxPDA: r.CPDA()}
	c.rx = wire.Params{HeaderDigest: opts.HeaderDigest, DataDigest: opts.DataDigest, RxPDA: opts.HPDA, MaxData: 64 << 20}
	c.recvWG.Add(1)
	go c.receive()
	return c
}

func digestBits(o clientOpts) uint8 {
	var b uint8
	if o.HeaderDigest {
		b |= wire.DigestHeader
	}
	if o.DataDigest {
		b |= wire.DigestData
	}
	return b
}

// Close ends the connection and waits for the receiver.
func (c *client) Close() {
	c.nc.Close()
	c.recvWG.Wait()
}

func (c *client) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
		close(c.stopped)
	}
	calls := c.calls
	c.calls = make(map[uint16]*call)
	c.mu.Unlock()
	for _, k := range calls {
		k.resp.Err = err
		close(k.done)
	}
}

// receive dispatches what the target sends to the calls waiting for it.
func (c *client) receive() {
	defer c.recvWG.Done()
	for {
		h, l, err := c.rd.Next()
		if err != nil {
			c.fail(err)
			return
		}
		switch l.Type {
		case wire.TypeCapsuleResp:
			cqe := wire.CapsuleResp(h).CQE()
			k := c.take(cqe.CID())
			if k == nil {
				c.fail(fmt.Errorf("response for unknown cid %d", cqe.CID()))
				return
			}
			k.resp.Status, k.resp.Result, k.resp.SQID, k.resp.SQHD = cqe.Status(), cqe.Result(), cqe.SQID(), cqe.SQHD()
			close(k.done)
		case wire.TypeC2HData:
			d := wire.DataHeader(h)
			k := c.lookup(d.CCCID())
			if k == nil {
				c.fail(fmt.Errorf("C2HData for unknown cid %d", d.CCCID()))
				return
			}
			off, n := int(d.DataOffset()), int(d.DataLen())
			if off != k.got || off+n > len(k.out) {
				c.fail(fmt.Errorf("C2HData [%d,+%d) for cid %d: expected offset %d, buffer %d", off, n, k.cid, k.got, len(k.out)))
				return
			}
			if err := c.rd.ReadData(k.out[off : off+n]); err != nil {
				c.fail(err)
				return
			}
			k.got += n
			k.resp.C2HPDUs++
			last := l.Flags&wire.FlagLast != 0
			if last != (k.got == len(k.out)) {
				c.fail(fmt.Errorf("C2HData LAST flag %v at %d of %d", last, k.got, len(k.out)))
				return
			}
			if l.Flags&wire.FlagSuccess != 0 {
				c.take(k.cid)
				k.resp.Success = true
				close(k.done)
			}
		case wire.TypeR2T:
			r := wire.R2T(h)
			k := c.lookup(r.CCCID())
			if k == nil {
				c.fail(fmt.Errorf("R2T for unknown cid %d", r.CCCID()))
				return
			}
			k.resp.R2Ts++
			f := wire.R2TFields{CCCID: r.CCCID(), TTag: r.TTag(), Offset: r.R2TOffset(), Len: r.R2TLen()}
			if k.r2ts != nil {
				select {
				case k.r2ts <- f:
				default:
				}
				continue
			}
			if uint64(f.Offset)+uint64(f.Len) > uint64(len(k.in)) {
				c.fail(fmt.Errorf("R2T [%d,+%d) beyond %d bytes", f.Offset, f.Len, len(k.in)))
				return
			}
			k.held = append(k.held, f)
			k.maxHeld = max(k.maxHeld, len(k.held))
			if k.maxHeld > int(c.opts.MaxR2T)+1 {
				c.fail(fmt.Errorf("%d R2Ts outstanding, MAXR2T allows %d", k.maxHeld, c.opts.MaxR2T+1))
				return
			}
			requested := f.Offset + f.Len
			if len(k.held) >= max(c.opts.R2TBatch, 1) || int(requested) == len(k.in) {
				for _, f := range k.held {
					if err := c.sendH2C(k, f); err != nil {
						c.fail(err)
						return
					}
				}
				k.held = k.held[:0]
			}
		case wire.TypeC2HTermReq:
			tr := wire.TermReq(h)
			ti := &termInfo{FES: tr.FES(), FEI: tr.FEI(), Data: make([]byte, l.DataLen)}
			if l.DataLen > 0 {
				if err := c.rd.ReadData(ti.Data); err != nil {
					c.fail(err)
					return
				}
			}
			c.mu.Lock()
			c.term = ti
			c.mu.Unlock()
			c.fail(fmt.Errorf("C2HTermReq: %v (fei %d)", ti.FES, ti.FEI))
			return
		default:
			c.fail(fmt.Errorf("unexpected %v", l.Type))
			return
		}
	}
}

// sendH2C answers an R2T, split at MAXH2CDATA.
func (c *client) sendH2C(k *call, f wire.R2TFields) error {
	end := f.Offset + f.Len
	for off := f.Offset; off < end; {
		n := min(end-off, c.maxH2C)
		flags := wire.Flags(0)
		if off+n == end {
			flags = wire.FlagLast
		}
		payload := k.in[off : off+n]
		bad := k.badH2C
		k.badH2C = false
		if err := c.writeData(wire.DataFields{Type: wire.TypeH2CData, Flags: flags, CCCID: k.cid, TTag: f.TTag, DataOffset: off, DataLen: n}, payload, bad); err != nil {
			return err
		}
		off += n
	}
	return nil
}

// writeData sends a data PDU; badDigest sends a wrong data digest.
func (c *client) writeData(f wire.DataFields, payload []byte, badDigest bool) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	wire.DataHeader(c.wbuf[:]).Encode(&f)
	hdr := c.tx.Seal(c.wbuf[:], len(payload))
	bufs := net.Buffers{hdr, payload}
	if c.tx.DataDigest {
		var d [4]byte
		dg := wire.DataDigest(payload)
		if badDigest {
			dg ^= 1
		}
		wire.PutDigest(d[:], dg)
		bufs = append(bufs, d[:])
	}
	_, err := bufs.WriteTo(c.nc)
	return err
}

func (c *client) lookup(cid uint16) *call {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls[cid]
}

func (c *client) take(cid uint16) *call {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := c.calls[cid]
	delete(c.calls, cid)
	return k
}

// start registers a call and returns its cid. cid < 0: pick a free one.
func (c *client) start(cid int, out, in []byte, badH2C bool) (*call, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return nil, c.err
	}
	if cid < 0 {
		for {
			c.nextCID++
			if _, busy := c.calls[c.nextCID]; !busy {
				cid = int(c.nextCID)
				break
			}
		}
	}
	k := &call{cid: uint16(cid), out: out, in: in, done: make(chan struct{}), badH2C: badH2C}
	c.calls[k.cid] = k
	return k, nil
}

// send submits sqe (whose CID is set here) with in-capsule data inline (may
// be nil); out receives C2HData, in answers R2Ts.
func (c *client) send(sqe *nvme.SQEFields, inline, out, in []byte) (*call, error) {
	return c.sendCID(-1, sqe, inline, out, in, false)
}

func (c *client) sendCID(cid int, sqe *nvme.SQEFields, inline, out, in []byte, badDigest bool) (*call, error) {
	k, err := c.start(cid, out, in, badDigest && len(in) > 0)
	if err != nil {
		return nil, err
	}
	f := *sqe
	f.CID = k.cid
	if err := c.writeCapsule(&f, inline, badDigest); err != nil {
		c.take(k.cid)
		return nil, err
	}
	return k, nil
}

func (c *client) writeCapsule(f *nvme.SQEFields, inline []byte, badDigest bool) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	wire.CapsuleCmd(c.wbuf[:]).Encode().Encode(f)
	hdr := c.tx.Seal(c.wbuf[:], len(inline))
	bufs := net.Buffers{hdr}
	if len(inline) > 0 {
		bufs = append(bufs, inline)
		if c.tx.DataDigest {
			var d [4]byte
			dg := wire.DataDigest(inline)
			if badDigest {
				dg ^= 0x80
			}
			wire.PutDigest(d[:], dg)
			bufs = append(bufs, d[:])
		}
	}
	_, err := bufs.WriteTo(c.nc)
	return err
}

// sendReads starts several reads with one write (the benchmark's way of
// not measuring a syscall per command on the host side).
func (c *client) sendReads(nsid uint32, slbas []uint64, bufs [][]byte, blockSize int) ([]*call, error) {
	calls := make([]*call, len(bufs))
	out := make([]byte, 0, len(bufs)*wireCapsuleLen(c.tx))
	for i, buf := range bufs {
		k, err := c.start(-1, buf, nil, false)
		if err != nil {
			return nil, err
		}
		calls[i] = k
		f := rwFields(nvme.IORead, nsid, slbas[i], uint32(len(buf)/blockSize), len(buf), false)
		f.CID = k.cid
		var b [256]byte
		encodeCapsule(b[:], &f)
		out = append(out, c.tx.Seal(b[:], 0)...)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := c.nc.Write(out)
	return calls, err
}

// wait returns the call's response, or an error on timeout.
func (k *call) wait(timeout time.Duration) response {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-k.done:
		return k.resp
	case <-t.C:
		return response{Err: fmt.Errorf("cid %d: no response within %v", k.cid, timeout)}
	}
}

// sendManual sends a command whose R2Ts the test answers itself.
func (c *client) sendManual(sqe *nvme.SQEFields) (*call, error) {
	k, err := c.start(-1, nil, nil, false)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	k.r2ts = make(chan wire.R2TFields, 16)
	c.mu.Unlock()
	f := *sqe
	f.CID = k.cid
	if err := c.writeCapsule(&f, nil, false); err != nil {
		return nil, err
	}
	return k, nil
}

// do sends a command and waits for its response.
func (c *client) do(sqe *nvme.SQEFields, inline, out, in []byte) response {
	k, err := c.send(sqe, inline, out, in)
	if err != nil {
		return response{Err: err}
	}
	return k.wait(callTimeout)
}

// must fails the test unless r succeeded.
func must(tb testing.TB, what string, r response) response {
	tb.Helper()
	if r.Err != nil {
		tb.Fatalf("%s: %v", what, r.Err)
	}
	if !r.Status.Success() {
		tb.Fatalf("%s: %v", what, r.Status)
	}
	return r
}

// wantStatus fails the test unless r has status code st (DNR ignored).
func wantStatus(tb testing.TB, what string, r response, st nvme.Status) {
	tb.Helper()
	if r.Err != nil {
		tb.Fatalf("%s: %v", what, r.Err)
	}
	if r.Status.Code() != st.Code() {
		tb.Fatalf("%s: status %v, want %v", what, r.Status, st)
	}
}

// connect sends a Fabrics Connect with the Connect data in the capsule.
func (c *client) connect(qid, sqsize uint16, kato uint32, cntlid uint16, subNQN, hostNQN string) response {
	var sqe [nvme.SQELen]byte
	nvme.SQE(sqe[:]).EncodeConnect(&nvme.ConnectFields{QID: qid, SQSize: sqsize - 1, KATO: kato})
	data := make([]byte, nvme.ConnectDataLen)
	nvme.ConnectData(data).Encode(&nvme.ConnectDataFields{HostID: testHostID, CntlID: cntlid, SubNQN: subNQN, HostNQN: hostNQN})
	f := sqeFields(sqe[:])
	return c.do(&f, data, nil, nil)
}

// sqeFields decodes a raw SQE back into fields (to go through send).
func sqeFields(b []byte) nvme.SQEFields {
	s := nvme.SQE(b)
	return nvme.SQEFields{
		Opcode: s.Opcode(), Flags: s.Flags(), CID: s.CID(), NSID: s.NSID(),
		CDW2: s.CDW(2), CDW3: s.CDW(3), MPTR: s.MPTR(),
		DPTR:  nvme.SGLFields{Address: s.DPTR().Address(), Length: s.DPTR().Length(), ID: s.DPTR().ID()},
		CDW10: s.CDW10(), CDW11: s.CDW11(), CDW12: s.CDW12(), CDW13: s.CDW13(), CDW14: s.CDW14(), CDW15: s.CDW15(),
	}
}

func (c *client) property(set, size8 bool, off uint32, val uint64) response {
	var sqe [nvme.SQELen]byte
	nvme.SQE(sqe[:]).EncodeProperty(&nvme.PropertyFields{Set: set, Size8: size8, Offset: off, Value: val})
	f := sqeFields(sqe[:])
	return c.do(&f, nil, nil, nil)
}

// enable writes CC.EN with the NVM settings and waits for CSTS.RDY.
func (c *client) enable(tb testing.TB) {
	tb.Helper()
	const cc = nvme.CCEnable | 6<<16 | 4<<20
	must(tb, "set CC", c.property(true, false, nvme.PropCC, cc))
	deadline := time.Now().Add(callTimeout)
	for {
		r := must(tb, "get CSTS", c.property(false, false, nvme.PropCSTS, 0))
		if r.Result&nvme.CSTSReady != 0 {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("CSTS.RDY not set: %#x", r.Result)
		}
		time.Sleep(time.Millisecond)
	}
}

// adminSession connects an admin queue, enables the controller and returns
// the controller id.
func (c *client) adminSession(tb testing.TB, subNQN, hostNQN string, kato uint32) uint16 {
	tb.Helper()
	r := must(tb, "admin connect", c.connect(0, 32, kato, nvme.CntlIDDynamic, subNQN, hostNQN))
	c.enable(tb)
	return uint16(r.Result)
}

func (c *client) identify(cns uint8, nsid uint32) ([]byte, response) {
	var sqe [nvme.SQELen]byte
	nvme.SQE(sqe[:]).EncodeIdentify(&nvme.IdentifyFields{CNS: cns, NSID: nsid})
	f := sqeFields(sqe[:])
	buf := make([]byte, nvme.IdentifyDataLen)
	return buf, c.do(&f, nil, buf, nil)
}

func (c *client) getLogPage(lid uint8, nsid uint32, n uint32, off uint64) ([]byte, response) {
	var sqe [nvme.SQELen]byte
	nvme.SQE(sqe[:]).EncodeGetLogPage(&nvme.GetLogPageFields{LID: lid, NSID: nsid, Len: n, Offset: off})
	f := sqeFields(sqe[:])
	buf := make([]byte, n)
	return buf, c.do(&f, nil, buf, nil)
}

func (c *client) features(set bool, fid uint8, val uint32) response {
	var sqe [nvme.SQELen]byte
	nvme.SQE(sqe[:]).EncodeFeatures(&nvme.FeaturesFields{Set: set, FID: fid, Value: val})
	f := sqeFields(sqe[:])
	return c.do(&f, nil, nil, nil)
}

// rwFields is a Read or Write; inCapsule puts a write's data in the capsule.
func rwFields(op uint8, nsid uint32, slba uint64, nlb uint32, n int, inCapsule bool) nvme.SQEFields {
	sgl := nvme.SGLFields{Length: uint32(n), ID: nvme.SGLTransportData}
	if inCapsule {
		sgl.ID = nvme.SGLInCapsule
	}
	return nvme.SQEFields{
		Opcode: op, Flags: nvme.FlagsPSDTSGL, NSID: nsid, DPTR: sgl,
		CDW10: uint32(slba), CDW11: uint32(slba >> 32), CDW12: nlb - 1,
	}
}

// sendRead starts a read of len(buf) bytes at slba (blockSize-byte LBAs).
func (c *client) sendRead(nsid uint32, slba uint64, buf []byte, blockSize int) (*call, error) {
	f := rwFields(nvme.IORead, nsid, slba, uint32(len(buf)/blockSize), len(buf), false)
	return c.send(&f, nil, buf, nil)
}

func (c *client) read(nsid uint32, slba uint64, buf []byte, blockSize int) response {
	k, err := c.sendRead(nsid, slba, buf, blockSize)
	if err != nil {
		return response{Err: err}
	}
	return k.wait(callTimeout)
}

// write sends data in the capsule when inCapsule, else through R2Ts.
func (c *client) write(nsid uint32, slba uint64, data []byte, blockSize int, inCapsule bool) response {
	f := rwFields(nvme.IOWrite, nsid, slba, uint32(len(data)/blockSize), len(data), inCapsule)
	if inCapsule {
		return c.do(&f, data, nil, nil)
	}
	return c.do(&f, nil, nil, data)
}

// terminated waits for the target to end the connection and returns the
// C2HTermReq it sent, if any.
func (c *client) terminated(timeout time.Duration) (*termInfo, error) {
	select {
	case <-c.stopped:
	case <-time.After(timeout):
		return nil, errors.New("connection still open")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.term, c.err
}

// rawConn is a connection that has done ICReq/ICResp (no digests) and then
// lets a test write anything.
func rawConn(tb testing.TB, addr string) (net.Conn, *wire.Reader, *wire.Params) {
	tb.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		tb.Fatalf("dial: %v", err)
	}
	tb.Cleanup(func() { nc.Close() })
	var icreq [wire.ICReqLen]byte
	wire.ICReq(icreq[:]).Encode(&wire.ICReqFields{})
	nc.Write(icreq[:])
	p := &wire.Params{MaxData: 1 << 20}
	rd := wire.NewReader(nc, wire.ToHost, p)
	nc.SetReadDeadline(time.Now().Add(callTimeout))
	if _, l, err := rd.Next(); err != nil || l.Type != wire.TypeICResp {
		tb.Fatalf("ICResp: %v %v", l.Type, err)
	}
	return nc, rd, p
}

// readTermReq reads PDUs until a C2HTermReq and returns it.
func readTermReq(tb testing.TB, nc net.Conn, rd *wire.Reader) termInfo {
	tb.Helper()
	nc.SetReadDeadline(time.Now().Add(callTimeout))
	for {
		h, l, err := rd.Next()
		if err != nil {
			tb.Fatalf("waiting for C2HTermReq: %v", err)
		}
		if l.Type != wire.TypeC2HTermReq {
			rd.Discard()
			continue
		}
		tr := wire.TermReq(h)
		ti := termInfo{FES: tr.FES(), FEI: tr.FEI(), Data: make([]byte, l.DataLen)}
		if l.DataLen > 0 {
			if err := rd.ReadData(ti.Data); err != nil {
				tb.Fatalf("TermReq data: %v", err)
			}
		}
		// The target closes after the TermReq.
		if _, _, err := rd.Next(); !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			tb.Errorf("after C2HTermReq: %v, want EOF", err)
		}
		return ti
	}
}

// ctxDone is a helper for bounded loops.
func ctxDone(ctx context.Context) bool {
	select {
	case <-ctx.Done():
		return true
	default:
		return false
	}
}

func wireCapsuleLen(p wire.Params) int {
	if p.HeaderDigest {
		return wire.CapsuleCmdHdrLen + wire.DigestLen
	}
	return wire.CapsuleCmdHdrLen
}

func encodeCapsule(b []byte, f *nvme.SQEFields) {
	wire.CapsuleCmd(b).Encode().Encode(f)
}
