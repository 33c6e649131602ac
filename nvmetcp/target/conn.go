package target

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
	"github.com/nvmefs/nvmefs/nvmetcp/wire"
)

// conn is one NVMe/TCP connection: one queue (admin or I/O) once connected.
type conn struct {
	t   *Target
	nc  net.Conn
	log *slog.Logger
	w   *writer
	rd  *wire.Reader
	// guard bounds the handshake and stalled PDUs; br is the buffer the
	// reader reads it through (what it holds of the next PDU tells a stall
	// from an idle host).
	guard *readGuard
	br    *bufio.Reader
	// params are set by the reader at ICReq, before any command goroutine
	// exists; only MaxInCapsule, which the reader alone uses, changes after
	// (at Connect).
	params     wire.Params
	hostMaxR2T int

	closeOnce sync.Once
	closed    chan struct{}

	// Queue state, set by the reader at Connect before it dispatches any
	// other command of the queue.
	ctrl          *controller
	qid           uint16
	connected     bool
	disconnecting bool

	mu          sync.Mutex
	cidBusy     [1 << 16 / 64]uint64
	outstanding int // commands received and not yet answered
	depth       int // the most the host may have outstanding
	sqhd        uint16
	inFlight    int // commands holding resources (up to 2*depth)
	room        chan struct{}

	h2c      map[uint16]*command // commands waiting for H2CData (reader only)
	nextTTag uint16
	cmds     sync.WaitGroup
}

func newConn(t *Target, nc net.Conn) *conn {
	c := &conn{
		t:      t,
		nc:     nc,
		log:    t.log.With("remote", nc.RemoteAddr().String()),
		closed: make(chan struct{}),
		depth:  1,
		room:   make(chan struct{}, 1),
		h2c:    make(map[uint16]*command),
	}
	c.w = newWriter(nc, c.close, t.cfg.StallTimeout)
	c.guard = newReadGuard(nc, t.cfg.HandshakeTimeout, t.cfg.StallTimeout)
	// What the reader answered leaves before it waits for more.
	c.guard.beforeRead = c.w.flush
	c.br = bufio.NewReaderSize(c.guard, 64<<10)
	c.rd = wire.NewReader(c.br, wire.ToController, &c.params)
	return c
}

// close ends the connection now: the socket is closed, so that the reader and
// the writer fail at once. Safe from any goroutine, more than once.
func (c *conn) close() {
	c.closeOnce.Do(func() {
		close(c.closed)
		c.nc.Close()
	})
}

// errDisconnect ends a connection after a Fabrics Disconnect or an
// H2CTermReq: no TermReq is sent back.
var errDisconnect = errors.New("disconnected by the host")

func (c *conn) serve() {
	go c.w.run(c.t.cfg.TermLinger)
	hdr, err := c.readLoop()

	var werr *wire.Error
	switch {
	case errors.As(err, &werr):
		c.log.Warn("fatal protocol error, terminating the connection", "err", err, "fes", uint16(werr.FES), "fei", werr.Offset)
		c.terminate(werr, hdr)
		c.close()
		c.cmds.Wait()
	default:
		if errors.Is(err, errStalled) {
			c.log.Warn("closing the connection", "err", err)
		} else if err != nil && !errors.Is(err, errDisconnect) && !isClosedErr(err) {
			c.log.Info("connection ended", "err", err)
		} else {
			c.log.Debug("connection ended", "err", err)
		}
		// Answer what is running, then stop.
		c.cmds.Wait()
		c.w.shutdown()
		<-c.w.done
		c.close()
	}
	<-c.w.done
	for cid, cmd := range c.h2c {
		delete(c.h2c, cid)
		cmd.release()
	}
	c.detach()
}

// isClosedErr reports the ordinary ways a connection ends.
func isClosedErr(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrUnexpectedEOF)
}

// terminate sends a C2HTermReq for a fatal error, then waits a little for
// the host to close, reading and dropping what it still sends, so that the
// TermReq is not lost to a reset.
func (c *conn) terminate(werr *wire.Error, hdr []byte) {
	buf := make([]byte, wire.MaxHeaderBuf+wire.TermReqMaxDataLen)
	wire.TermReq(buf).Encode(&wire.TermReqFields{Type: wire.TypeC2HTermReq, FES: werr.FES, FEI: termFEI(werr)})
	n := copy(buf[wire.TermReqHeaderLen:], hdr[:min(len(hdr), wire.TermReqMaxDataLen)])
	var p wire.Params
	h := p.Seal(buf, n)
	pdu := buf[:len(h)+n]
	// Bound the wait for a write in progress as well as the TermReq's.
	c.nc.SetWriteDeadline(time.Now().Add(c.t.cfg.TermLinger))
	c.w.terminate(pdu)
	<-c.w.done
	if tc, ok := c.nc.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	c.nc.SetReadDeadline(time.Now().Add(c.t.cfg.TermLinger))
	var scratch [4096]byte
	for {
		if _, err := c.nc.Read(scratch[:]); err != nil {
			return
		}
	}
}

// termFEI is the Fatal Error Information: the offset of the field in error,
// or, for a limit exceeded, the limit.
func termFEI(werr *wire.Error) uint32 {
	return uint32(werr.Offset)
}

// readLoop reads PDUs until the connection ends. A *wire.Error return is
// fatal and hdr is a copy of the PDU header in error (may be empty).
func (c *conn) readLoop() (hdr []byte, err error) {
	h, l, err := c.rd.Next()
	if err != nil {
		return copyHeader(h), err
	}
	if l.Type != wire.TypeICReq {
		return copyHeader(h), wire.SequenceError("%v before ICReq", l.Type)
	}
	c.icReq(wire.ICReq(h))
	for {
		if c.connected {
			c.guard.connected()
		}
		c.guard.boundary(c.br.Buffered() > 0)
		h, l, err := c.rd.Next()
		if err != nil {
			return copyHeader(h), err
		}
		switch l.Type {
		case wire.TypeCapsuleCmd:
			err = c.capsule(h, l)
			if err == nil && c.disconnecting {
				c.log.Debug("disconnect")
				return nil, errDisconnect
			}
		case wire.TypeH2CData:
			err = c.h2cData(h, l)
		case wire.TypeH2CTermReq:
			term := wire.TermReq(h)
			c.log.Warn("host terminated the connection", "fes", wire.FES(term.FES()).String(), "fei", term.FEI())
			return nil, errDisconnect
		default: // a second ICReq
			err = wire.SequenceError("unexpected %v", l.Type)
		}
		if err != nil {
			return copyHeader(h), err
		}
	}
}

func copyHeader(h wire.Header) []byte {
	if len(h) == 0 {
		return nil
	}
	return append([]byte(nil), h[:min(len(h), wire.TermReqMaxDataLen)]...)
}

// icReq negotiates the connection: digests as the host asks, our CPDA 0,
// padding of our PDUs to the host's HPDA.
func (c *conn) icReq(r wire.ICReq) {
	hd, dd := r.Digest()&wire.DigestHeader != 0, r.Digest()&wire.DigestData != 0
	c.params = wire.Params{
		HeaderDigest: hd,
		DataDigest:   dd,
		RxPDA:        0,
		TxPDA:        r.HPDA(),
		MaxData:      c.t.cfg.MaxH2CData,
		// Until Connect says which queue this is: enough for an admin
		// capsule and for the Connect data.
		MaxInCapsule: max(c.t.cfg.InCapsuleSize, adminInCapsule),
	}
	c.hostMaxR2T = int(min(uint64(r.MaxR2T())+1, maxR2TPerCommand))
	buf := make([]byte, wire.ICRespLen)
	wire.ICResp(buf).Encode(&wire.ICRespFields{CPDA: 0, HeaderDigest: hd, DataDigest: dd, MaxH2CData: c.t.cfg.MaxH2CData})
	c.w.queue(frame{iov: [][]byte{buf}})
}

// acquireSlot waits until the connection has room for one more command's
// resources: commands answered but not yet written count, so that a host
// that does not read its responses stalls instead of growing our memory.
func (c *conn) acquireSlot() bool {
	for {
		c.mu.Lock()
		if c.inFlight < 2*c.depth {
			c.inFlight++
			c.mu.Unlock()
			return true
		}
		c.mu.Unlock()
		select {
		case <-c.room:
		case <-c.closed:
			return false
		}
	}
}

func (c *conn) releaseSlot() {
	c.mu.Lock()
	c.inFlight--
	c.mu.Unlock()
	select {
	case c.room <- struct{}{}:
	default:
	}
}

// capsule handles a Command Capsule.
func (c *conn) capsule(h wire.Header, l wire.Layout) error {
	if !c.acquireSlot() {
		return net.ErrClosed
	}
	cmd := commandPool.Get().(*command)
	cmd.c = c
	cmd.inFlight = true
	copy(cmd.sqe[:], wire.CapsuleCmd(h).SQE())
	cid := cmd.cid()

	var inCapsule []byte
	digestErr := false
	if l.DataLen > 0 {
		inCapsule = cmd.setData(l.DataLen)
		if err := c.rd.ReadData(inCapsule); errors.Is(err, wire.ErrDataDigest) {
			digestErr = true
			c.log.Warn("data digest error in a command capsule", "cid", cid)
		} else if err != nil {
			cmd.release()
			return err
		}
	}

	c.mu.Lock()
	if c.cidBusy[cid/64]&(1<<(cid%64)) != 0 {
		c.mu.Unlock()
		cmd.release()
		return wire.FieldError(wire.FESInvalidHeader, wire.CommonHeaderLen+2, "command id %d is already in use", cid)
	}
	if c.outstanding >= c.depth {
		c.mu.Unlock()
		cmd.release()
		return wire.SequenceError("more than %d commands outstanding (queue size)", c.depth)
	}
	c.cidBusy[cid/64] |= 1 << (cid % 64)
	c.outstanding++
	c.sqhd++
	if int(c.sqhd) >= c.depth {
		c.sqhd = 0
	}
	c.mu.Unlock()

	if c.ctrl != nil {
		c.ctrl.touch()
	}
	if digestErr {
		c.complete(cmd, 0, nvme.StatusTransientTransport)
		return nil
	}

	dir, length, st := c.plan(cmd)
	if !st.Success() {
		c.complete(cmd, 0, st)
		return nil
	}
	sgl := cmd.SQE().DPTR()
	switch dir {
	case hostToCtrl:
		switch sgl.ID() {
		case nvme.SGLInCapsule:
			if sgl.Address() != 0 {
				c.complete(cmd, 0, nvme.StatusSGLOffsetInvalid|nvme.StatusDNR)
				return nil
			}
			if sgl.Length() != length || len(inCapsule) != int(length) {
				c.complete(cmd, 0, nvme.StatusDataSGLLengthInvalid|nvme.StatusDNR)
				return nil
			}
			c.execute(cmd)
		case nvme.SGLTransportData:
			if sgl.Length() != length || len(inCapsule) != 0 {
				c.complete(cmd, 0, nvme.StatusDataSGLLengthInvalid|nvme.StatusDNR)
				return nil
			}
			c.startH2C(cmd, length)
		default:
			c.complete(cmd, 0, nvme.StatusSGLTypeInvalid|nvme.StatusDNR)
		}
	case ctrlToHost:
		if sgl.ID() != nvme.SGLTransportData {
			c.complete(cmd, 0, nvme.StatusSGLTypeInvalid|nvme.StatusDNR)
			return nil
		}
		if sgl.Length() != length {
			c.complete(cmd, 0, nvme.StatusDataSGLLengthInvalid|nvme.StatusDNR)
			return nil
		}
		cmd.dataLen = 0
		c.execute(cmd)
	default:
		cmd.dataLen = 0
		c.execute(cmd)
	}
	return nil
}

// startH2C asks the host for a command's data with R2Ts.
func (c *conn) startH2C(cmd *command, length uint32) {
	cmd.setData(int(length))
	cmd.xferLen = length
	c.h2c[cmd.cid()] = cmd
	c.sendR2Ts(cmd)
}

// sendR2Ts issues R2Ts for the rest of a command's data, as many at once as
// the host's MAXR2T allows.
func (c *conn) sendR2Ts(cmd *command) {
	for cmd.requested < cmd.xferLen {
		slot := -1
		active := 0
		for i := range cmd.r2ts {
			if cmd.r2ts[i].active {
				active++
			} else if slot < 0 {
				slot = i
			}
		}
		if active >= c.hostMaxR2T || slot < 0 {
			return
		}
		n := cmd.xferLen - cmd.requested
		if s := c.t.cfg.R2TSize; s != 0 {
			n = min(n, s)
		}
		c.nextTTag++
		cmd.r2ts[slot] = r2t{active: true, ttag: c.nextTTag, off: cmd.requested, len: n}
		cmd.requested += n
		hb := cmd.r2tHdr[slot][:]
		wire.R2T(hb).Encode(&wire.R2TFields{CCCID: cmd.cid(), TTag: c.nextTTag, Offset: cmd.r2ts[slot].off, Len: n})
		cmd.r2tIov[slot][0] = c.params.Seal(hb, 0)
		c.w.queue(frame{iov: cmd.r2tIov[slot][:]})
	}
}

// h2cData places an H2CData PDU's payload in its command's buffer, after
// checking it against an R2T of that command.
func (c *conn) h2cData(h wire.Header, l wire.Layout) error {
	d := wire.DataHeader(h)
	cmd := c.h2c[d.CCCID()]
	if cmd == nil {
		return wire.FieldError(wire.FESInvalidHeader, 8, "H2CData for command %d, which awaits no data", d.CCCID())
	}
	var r *r2t
	for i := range cmd.r2ts {
		if cmd.r2ts[i].active && cmd.r2ts[i].ttag == d.TTag() {
			r = &cmd.r2ts[i]
			break
		}
	}
	if r == nil {
		return wire.FieldError(wire.FESInvalidHeader, 10, "H2CData with transfer tag %d, not an R2T of command %d", d.TTag(), d.CCCID())
	}
	off, n := d.DataOffset(), d.DataLen()
	if off != r.off+r.got {
		return wire.FieldError(wire.FESOutOfRange, 12, "H2CData offset %d, expected %d", off, r.off+r.got)
	}
	if uint64(off)+uint64(n) > uint64(r.off)+uint64(r.len) {
		return wire.FieldError(wire.FESOutOfRange, 16, "H2CData [%d, +%d) beyond the R2T [%d, +%d)", off, n, r.off, r.len)
	}
	done := r.got+n == r.len
	if l.Flags&wire.FlagLast != 0 && !done {
		return wire.FieldError(wire.FESInvalidHeader, 1, "H2CData LAST_PDU with %d bytes of the R2T missing", r.len-r.got-n)
	}
	if err := c.rd.ReadData(cmd.buf.b[off : off+n]); errors.Is(err, wire.ErrDataDigest) {
		c.log.Warn("data digest error in H2CData", "cid", cmd.cid(), "offset", off)
		cmd.xferError = nvme.StatusTransientTransport
	} else if err != nil {
		return err
	}
	r.got += n
	cmd.received += n
	if done {
		r.active = false
		c.sendR2Ts(cmd)
	}
	if cmd.received == cmd.xferLen {
		delete(c.h2c, cmd.cid())
		if cmd.xferError != 0 {
			c.complete(cmd, 0, cmd.xferError)
			return nil
		}
		c.execute(cmd)
	}
	return nil
}

// execute runs a command whose data (if any) is in: Connect inline, since
// the queue's state depends on it, and so are the I/O commands of a
// namespace whose store never waits (memory): running them here saves a
// goroutine and two hand-offs per command. Everything else runs on its own
// goroutine, so that a slow device holds up no other command.
func (c *conn) execute(cmd *command) {
	s := cmd.SQE()
	if s.Opcode() == nvme.OpcodeFabrics && s.FabricsType() == nvme.FabricsConnect {
		res, st := c.connect(cmd)
		c.complete(cmd, res, st)
		return
	}
	if s.Opcode() == nvme.OpcodeFabrics && s.FabricsType() == nvme.FabricsDisconnect && c.connected {
		// Answer; the reader stops, and the queue ends once what is
		// running has been answered.
		c.disconnecting = true
		c.complete(cmd, 0, nvme.StatusSuccess)
		return
	}
	if c.qid != 0 && c.immediate(s) {
		res, st := c.io(cmd)
		c.complete(cmd, res, st)
		return
	}
	c.cmds.Add(1)
	go func() {
		defer c.cmds.Done()
		res, st, held := c.run(cmd)
		if !held {
			c.completeAsync(cmd, res, st)
		}
	}()
}

// complete answers a command from the reader goroutine: the answer leaves
// with the reader's next flush, before it reads the socket again.
func (c *conn) complete(cmd *command, result uint64, st nvme.Status) {
	c.w.queue(c.answer(cmd, result, st))
}

// completeAsync answers a command from a goroutine of its own: the
// writer's goroutine sends it.
func (c *conn) completeAsync(cmd *command, result uint64, st nvme.Status) {
	c.w.send(c.answer(cmd, result, st))
}

// answer is a command's answer: its C2HData (on success) and its
// CapsuleResp, as one frame. The command id is free again before the host
// can see it.
func (c *conn) answer(cmd *command, result uint64, st nvme.Status) frame {
	s := cmd.SQE()
	cid := s.CID()
	if c.ctrl != nil {
		// Traffic based keep alive: the host counts completions.
		c.ctrl.touch()
	}
	if !st.Success() {
		if c.ctrl != nil {
			c.ctrl.logError(c.qid, cmd, st)
		}
		c.log.Debug("command failed", "qid", c.qid, "cid", cid, "opcode", s.Opcode(), "status", st.String())
	}
	c.mu.Lock()
	c.cidBusy[cid/64] &^= 1 << (cid % 64)
	c.outstanding--
	sqhd := c.sqhd
	c.mu.Unlock()

	cmd.iov = cmd.iov[:0]
	data := cmd.data()
	sendData := st.Success() && len(data) > 0 && c.dataOut(s)
	success := sendData && c.t.cfg.C2HSuccess
	if sendData {
		c.appendC2H(cmd, data, success)
	}
	if !success {
		rb := cmd.resp[:]
		wire.CapsuleResp(rb).Encode(&nvme.CQEFields{Result: result, SQHD: sqhd, SQID: c.qid, CID: cid, Status: st})
		cmd.iov = append(cmd.iov, c.params.Seal(rb, 0))
	}
	return frame{iov: cmd.iov, done: cmd}
}

// dataOut reports whether the command's data goes to the host.
func (c *conn) dataOut(s nvme.SQE) bool {
	if c.qid == 0 {
		switch s.Opcode() {
		case nvme.AdminIdentify, nvme.AdminGetLogPage:
			return true
		}
		return false
	}
	return s.Opcode() == nvme.IORead
}

// appendC2H adds the C2HData PDUs carrying data, split at MaxC2HData.
func (c *conn) appendC2H(cmd *command, data []byte, success bool) {
	chunk := len(data)
	if m := int(c.t.cfg.MaxC2HData); m > 0 && m < chunk {
		chunk = m
	}
	npdu := (len(data) + chunk - 1) / chunk
	if need := npdu * wire.MaxHeaderBuf; cap(cmd.hdrs) < need {
		cmd.hdrs = make([]byte, need)
	}
	cmd.hdrs = cmd.hdrs[:npdu*wire.MaxHeaderBuf]
	if c.params.DataDigest {
		if need := npdu * wire.DigestLen; cap(cmd.dgst) < need {
			cmd.dgst = make([]byte, need)
		}
		cmd.dgst = cmd.dgst[:npdu*wire.DigestLen]
	}
	for i := 0; i < npdu; i++ {
		off := i * chunk
		part := data[off:min(off+chunk, len(data))]
		var flags wire.Flags
		if i == npdu-1 {
			flags = wire.FlagLast
			if success {
				flags |= wire.FlagSuccess
			}
		}
		hb := cmd.hdrs[i*wire.MaxHeaderBuf : (i+1)*wire.MaxHeaderBuf]
		wire.DataHeader(hb).Encode(&wire.DataFields{Type: wire.TypeC2HData, Flags: flags, CCCID: cmd.cid(), DataOffset: uint32(off), DataLen: uint32(len(part))})
		cmd.iov = append(cmd.iov, c.params.Seal(hb, len(part)), part)
		if c.params.DataDigest {
			dg := cmd.dgst[i*wire.DigestLen : (i+1)*wire.DigestLen]
			wire.PutDigest(dg, wire.DataDigest(part))
			cmd.iov = append(cmd.iov, dg)
		}
	}
}

// detach removes the connection from its controller: the end of an admin
// queue ends the controller and all its I/O queues.
func (c *conn) detach() {
	if c.ctrl == nil {
		return
	}
	if c.qid == 0 {
		c.ctrl.destroy()
	} else {
		c.ctrl.removeIOQueue(c.qid, c)
	}
}

func (c *conn) String() string { return fmt.Sprintf("%v qid %d", c.nc.RemoteAddr(), c.qid) }
