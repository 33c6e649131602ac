package mlx5sim

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/nvmefs/nvmefs/ddp"
	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
	"github.com/nvmefs/nvmefs/nvmetcp/wire"
	"golang.org/x/sys/unix"
)

// tcpPair returns the two ends of a loopback TCP connection: host (the
// side the device offloads) and target. Both close at cleanup.
func tcpPair(t testing.TB) (host, target net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	host, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var r res
	select {
	case r = <-ch:
	case <-time.After(5 * time.Second):
		host.Close()
		t.Fatal("accept timed out")
	}
	if r.err != nil {
		host.Close()
		t.Fatal(r.err)
	}
	t.Cleanup(func() { host.Close(); r.c.Close() })
	return host, r.c
}

// unixPair is a connected AF_UNIX stream pair: a real file descriptor
// (the engine's readv path) without a TCP port per use (fuzzing).
func unixPair(t testing.TB) (host, target net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	t.Cleanup(func() { conns[0].Close(); conns[1].Close() })
	return conns[0], conns[1]
}

// sender builds PDUs as a controller under the queue's parameters.
type sender struct {
	p   wire.Params
	buf []byte
}

func newSender(oc wire.OffloadConfig) *sender {
	return &sender{
		p:   wire.Params{HeaderDigest: oc.HeaderDigest, DataDigest: oc.DataDigest, TxPDA: oc.HPDA},
		buf: make([]byte, wire.MaxHeaderBuf),
	}
}

// c2h is one C2HData PDU: header, padding, data and digest. corrupt
// flips a digest byte (1) or a data byte (2).
func (s *sender) c2h(tag uint16, datao int, data []byte, flags wire.Flags, corrupt int) []byte {
	wire.DataHeader(s.buf).Encode(&wire.DataFields{Type: wire.TypeC2HData, Flags: flags, CCCID: tag, DataOffset: uint32(datao), DataLen: uint32(len(data))})
	out := append([]byte(nil), s.p.Seal(s.buf, len(data))...)
	start := len(out)
	out = append(out, data...)
	if s.p.DataDigest {
		var d [wire.DigestLen]byte
		wire.PutDigest(d[:], wire.DataDigest(data))
		out = append(out, d[:]...)
	}
	switch {
	case corrupt == 1 && s.p.DataDigest:
		out[len(out)-1] ^= 0x5a
	case corrupt == 2:
		out[start+len(data)/2] ^= 0x01
	}
	return out
}

func (s *sender) resp(tag uint16) []byte {
	wire.CapsuleResp(s.buf).Encode(&nvme.CQEFields{CID: tag})
	return append([]byte(nil), s.p.Seal(s.buf, 0)...)
}

func (s *sender) r2t(tag uint16, off, n uint32) []byte {
	wire.R2T(s.buf).Encode(&wire.R2TFields{CCCID: tag, TTag: tag, Offset: off, Len: n})
	return append([]byte(nil), s.p.Seal(s.buf, 0)...)
}

// fill is the data of read number serial at offset off.
func fill(b []byte, serial uint32, off int) {
	for i := range b {
		x := uint32(off+i) ^ serial*0x9e3779b9
		b[i] = byte(x ^ x>>8 ^ x>>16)
	}
}

// hcmd is a read as the fake host tracks it.
type hcmd struct {
	tag       uint16
	serial    uint32
	buf       []byte
	io        *ddp.IO // set when Setup succeeded
	resp      bool    // response seen
	down      bool    // TeardownDone seen
	failed    bool    // a digest error hit it
	abandoned bool    // the host gave it up: its buffer takes nothing more
	cover     []bool  // if not nil: the bytes the device placed
	placed    int     // bytes the device placed
	copied    int     // bytes the host copied
}

// fakeHost is the test ULP: a PDU parser of its own that consumes
// segments, copies what was not placed (ddp.CopySkip), checks digests the
// device did not verify, answers resync requests and checks everything
// the device claims.
type fakeHost struct {
	t         testing.TB
	p         wire.Params
	isn       ddp.Seq
	rxCRC     bool // CRCOK may be set
	sock      ddp.Socket
	onResp    func(c *hcmd) // response seen
	lookup    func(tag uint16) *hcmd
	keepData  bool // collect every byte received into got
	mtu       int  // if set: segments must not cross packet boundaries
	onSegment func(ddp.Segment)

	got  []byte
	n    uint64        // bytes received
	pub  atomic.Uint64 // n, published for ResyncRequest
	hdr  [wire.MaxHeaderBuf]byte
	pos  int // in the current PDU
	laid bool
	l    wire.Layout
	cmd  *hcmd
	dgst [wire.DigestLen]byte
	crc  uint32
	tr   ddp.CRCTracker
	dead error // the stream stopped parsing: everything else is just received

	mu         sync.Mutex
	req        ddp.Seq
	reqPending bool
	reqErr     error

	// Counts.
	pdus, dataPDUs, offloaded, software, digestErrors int
	resyncReqs, resyncYes, resyncNo                   int
	placedBytes, copiedBytes, segments, placedSegs    int
	crcOKSegs                                         int
	placedAfterResync, outOfRange                     int
	resynced                                          bool
}

func newFakeHost(t testing.TB, oc wire.OffloadConfig, isn ddp.Seq) *fakeHost {
	return &fakeHost{
		t:     t,
		p:     wire.Params{HeaderDigest: oc.HeaderDigest, DataDigest: oc.DataDigest, RxPDA: oc.HPDA, MaxData: 64 << 20},
		isn:   isn,
		rxCRC: true,
	}
}

func (h *fakeHost) seq() ddp.Seq { return h.isn + ddp.Seq(uint32(h.n)) }

// ResyncRequest records the request; the NIC must ask before the host
// has received the byte at seq.
func (h *fakeHost) ResyncRequest(seq ddp.Seq) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.resyncReqs++
	if at := h.isn + ddp.Seq(uint32(h.pub.Load())); seq.LessThan(at) && h.reqErr == nil {
		h.reqErr = fmt.Errorf("resync request for %d, host already at %d", seq, at)
	}
	h.req, h.reqPending = seq, true
}

func (h *fakeHost) TeardownDone(io *ddp.IO) {}

// answer answers the pending request when the parser is at a header
// start at seq (header true) or has passed the request.
func (h *fakeHost) answer(at ddp.Seq, header bool) {
	h.mu.Lock()
	if !h.reqPending {
		h.mu.Unlock()
		return
	}
	req := h.req
	var ok, answer bool
	switch {
	case header && req == at && h.dead == nil:
		ok, answer = true, true
	case req.LessThan(at):
		answer = true // passed without a header there
	}
	if !answer {
		h.mu.Unlock()
		return
	}
	h.reqPending = false
	if ok {
		h.resyncYes++
		h.resynced = true
	} else {
		h.resyncNo++
	}
	h.mu.Unlock()
	h.sock.Resync(req, ok)
}

func (h *fakeHost) fail(format string, args ...any) {
	h.t.Helper()
	h.t.Errorf("at stream byte %d: "+format, append([]any{h.n}, args...)...)
}

// segment consumes one segment.
func (h *fakeHost) segment(seg ddp.Segment) {
	if h.onSegment != nil {
		h.onSegment(seg)
	}
	if seg.Seq != h.seq() {
		h.fail("segment seq %d, want %d", seg.Seq, h.seq())
	}
	if len(seg.Bytes) == 0 {
		h.fail("empty segment")
	}
	if h.mtu > 0 {
		first := uint32(seg.Seq-h.isn) / uint32(h.mtu)
		if last := uint32(seg.Seq-h.isn+ddp.Seq(len(seg.Bytes)-1)) / uint32(h.mtu); first != last {
			h.fail("segment of %d bytes at %d crosses a packet boundary (MTU %d)", len(seg.Bytes), seg.Seq, h.mtu)
		}
	}
	h.segments++
	if seg.CRCOK {
		h.crcOKSegs++
		if !h.rxCRC {
			h.fail("CRCOK with rx-crc off")
		}
	}
	if seg.Placed {
		h.placedSegs++
		h.placedBytes += len(seg.Bytes)
		if h.resynced {
			h.placedAfterResync += len(seg.Bytes)
		}
	}
	if h.keepData {
		h.got = append(h.got, seg.Bytes...)
	}
	b := seg.Bytes
	counted := false
	for len(b) > 0 {
		if h.dead != nil {
			if seg.Placed {
				h.fail("placed bytes after the stream stopped parsing (%v)", h.dead)
			}
			h.n += uint64(len(b))
			break
		}
		if h.pos == 0 {
			h.tr.Reset()
			counted = false
			h.answer(h.seq(), true)
		}
		if !counted {
			h.tr.Add(seg)
			counted = true
		}
		n := h.consume(b, seg)
		b = b[n:]
		h.n += uint64(n)
		if h.pos == 0 {
			counted = false
		}
	}
	h.answer(h.seq(), false)
	h.pub.Store(h.n)
}

// consume parses bytes of the current PDU, one part at a time.
func (h *fakeHost) consume(b []byte, seg ddp.Segment) int {
	if !h.laid || h.pos < h.l.HeaderBytes() {
		if seg.Placed {
			h.fail("placed segment holds header bytes")
		}
		want := wire.CommonHeaderLen
		if h.laid {
			want = h.l.HeaderBytes()
		}
		n := min(len(b), want-h.pos)
		copy(h.hdr[h.pos:], b[:n])
		h.pos += n
		if h.pos < want {
			return n
		}
		if !h.laid {
			l, err := h.p.Layout(h.hdr[:wire.CommonHeaderLen], wire.ToHost)
			if err != nil {
				h.dead = err
				return n
			}
			h.l, h.laid = l, true
			return n
		}
		if err := h.p.VerifyHeader(wire.Header(h.hdr[:h.pos]), h.l); err != nil {
			h.dead = err
			return n
		}
		h.pdus++
		h.cmd, h.crc = nil, 0
		switch h.l.Type {
		case wire.TypeC2HData:
			h.dataPDUs++
			if h.lookup != nil {
				d := wire.DataHeader(h.hdr[:])
				h.cmd = h.lookup(d.CCCID())
				if h.cmd != nil && uint64(d.DataOffset())+uint64(d.DataLen()) > uint64(len(h.cmd.buf)) {
					// A real host fails the connection; this one only
					// keeps the PDU out of the buffer.
					h.outOfRange++
					h.cmd = nil
				}
			}
		case wire.TypeCapsuleResp:
			if h.lookup != nil {
				if c := h.lookup(wire.CapsuleResp(h.hdr[:]).CQE().CID()); c != nil && h.onResp != nil {
					h.onResp(c)
				}
			}
		}
		if h.pos == h.l.PLen {
			h.endPDU()
		}
		return n
	}
	ds, de := h.l.DataOffset, h.l.DataOffset+h.l.DataLen
	switch {
	case h.pos < ds:
		if seg.Placed {
			h.fail("placed segment holds padding")
		}
		n := min(len(b), ds-h.pos)
		h.pos += n
		return n
	case h.pos < de:
		n := min(len(b), de-h.pos)
		part := b[:n]
		if seg.Placed && n != len(seg.Bytes) {
			h.fail("placed segment of %d bytes spans more than payload (%d)", len(seg.Bytes), n)
		}
		if h.l.Type == wire.TypeC2HData {
			datao := int(wire.DataHeader(h.hdr[:]).DataOffset()) + h.pos - ds
			h.crc = wire.UpdateDigest(h.crc, part)
			c := h.cmd
			switch {
			case c != nil && seg.Placed:
				dst := c.buf[datao : datao+n]
				if unsafe.SliceData(part) != unsafe.SliceData(dst) {
					h.fail("placed bytes at %p, the mapping puts offset %d at %p", unsafe.SliceData(part), datao, unsafe.SliceData(dst))
				}
				if c.io == nil {
					h.fail("placed bytes for tag %d, which is not mapped", c.tag)
				}
				if k := ddp.CopySkip(dst, part); k != 0 {
					h.fail("CopySkip copied %d placed bytes", k)
				}
				c.placed += n
				if c.cover != nil {
					for i := range n {
						c.cover[datao+i] = true
					}
				}
			case c != nil && !c.abandoned:
				dst := c.buf[datao : datao+n]
				if k := ddp.CopySkip(dst, part); k != n {
					h.fail("CopySkip copied %d of %d unplaced bytes", k, n)
				}
				c.copied += n
				h.copiedBytes += n
			case seg.Placed:
				h.fail("placed bytes for a tag with no buffer or beyond it (datao %d len %d)", datao, n)
			}
		} else if seg.Placed {
			h.fail("placed bytes in a %v", h.l.Type)
		}
		h.pos += n
		if h.pos == h.l.PLen {
			h.endPDU()
		}
		return n
	}
	if seg.Placed {
		h.fail("placed segment holds a digest")
	}
	n := min(len(b), h.l.PLen-h.pos)
	copy(h.dgst[h.pos-de:], b[:n])
	h.pos += n
	if h.pos == h.l.PLen {
		good := wire.GetDigest(h.dgst[:]) == h.crc
		if h.tr.Offloaded() {
			h.offloaded++
			if !good {
				h.fail("every segment of a PDU with a bad data digest was CRCOK")
			}
		} else {
			h.software++
		}
		if !good {
			h.digestErrors++
			if h.cmd != nil {
				h.cmd.failed = true
			}
		}
		h.endPDU()
	}
	return n
}

func (h *fakeHost) endPDU() {
	if h.l.Type == wire.TypeC2HData && h.l.Flags&wire.FlagSuccess != 0 && h.cmd != nil && h.onResp != nil {
		h.onResp(h.cmd)
	}
	h.pos, h.laid, h.cmd = 0, false, nil
}

func (h *fakeHost) requestError() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.reqErr
}

// stat reads one device counter.
func stat(d *Device, name string) uint64 {
	for _, s := range d.Stats() {
		if s.Name == name {
			return s.Value
		}
	}
	panic("no counter " + name)
}

// waitGoroutines waits for the goroutine count to come back to base.
func waitGoroutines(t testing.TB, base int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines, want %d:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// writeChunks writes stream to c in chunks of the sizes chunk gives.
func writeChunks(c net.Conn, stream []byte, chunk func() int) error {
	for len(stream) > 0 {
		n := min(len(stream), max(chunk(), 1))
		if _, err := c.Write(stream[:n]); err != nil {
			return err
		}
		stream = stream[n:]
	}
	return nil
}

// inlineEngines: the tests run with Config.Inline (receive engines run by
// Recv); TestInlineEngines runs the package's tests again so.
var inlineEngines = os.Getenv("MLX5SIM_INLINE") == "1"

// newDev is New with the engine mode of this run.
func newDev(cfg Config) (*Device, error) {
	cfg.Inline = cfg.Inline || inlineEngines
	return New(cfg)
}

// TestInlineEngines runs every test of the package again with inline
// receive engines (a child test process with MLX5SIM_INLINE=1): the same
// contract, whichever goroutine runs the engine.
func TestInlineEngines(t *testing.T) {
	if inlineEngines {
		t.Skip("this is the inline run")
	}
	if testing.Short() {
		t.Skip("-short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.count=1", "-test.run=^Test", "-test.timeout=4m")
	cmd.Env = append(os.Environ(), "MLX5SIM_INLINE=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the tests with inline engines: %v\n%s", err, out)
	}
}
