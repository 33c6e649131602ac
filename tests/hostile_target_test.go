package tests

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/nvmetcp/host"
	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
	"github.com/nvmefs/nvmefs/nvmetcp/wire"
)

// hostileProxy stands between our host and a real `nvmefs serve`: it relays
// both directions PDU by PDU and, once armed, rewrites (or adds to) the
// first PDU of a chosen type that the controller sends on an I/O queue. To
// the host it is a hostile target that speaks the protocol well enough to
// get past ICResp and Connect.
type hostileProxy struct {
	ln      net.Listener
	backend string
	attack  atomic.Pointer[proxyAttack]
	fired   atomic.Int32

	mu    sync.Mutex
	conns []net.Conn
	wg    sync.WaitGroup
}

// proxyAttack rewrites one controller-to-host PDU of type match: rewrite
// gets the whole PDU and returns the bytes to send instead.
type proxyAttack struct {
	match   wire.Type
	rewrite func(pdu []byte) []byte
}

func newHostileProxy(t *testing.T, backend string) *hostileProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &hostileProxy{ln: ln, backend: backend}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.Close)
	return p
}

func (p *hostileProxy) Addr() string { return p.ln.Addr().String() }

func (p *hostileProxy) Close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *hostileProxy) serve() {
	defer p.wg.Done()
	for {
		hc, err := p.ln.Accept()
		if err != nil {
			return
		}
		tc, err := net.DialTimeout("tcp", p.backend, 5*time.Second)
		if err != nil {
			hc.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, hc, tc)
		p.mu.Unlock()
		var ioQueue atomic.Bool
		p.wg.Add(2)
		go func() {
			defer p.wg.Done()
			p.relayToController(hc, tc, &ioQueue)
			tc.Close()
			hc.Close()
		}()
		go func() {
			defer p.wg.Done()
			p.relayToHost(hc, tc, &ioQueue)
			hc.Close()
			tc.Close()
		}()
	}
}

// readPDU reads one PDU framed by its PLEN (at most 16 MiB: the real
// target's PDUs are far smaller).
func readPDU(r io.Reader, buf []byte) ([]byte, error) {
	var ch [wire.CommonHeaderLen]byte
	if _, err := io.ReadFull(r, ch[:]); err != nil {
		return nil, err
	}
	plen := int(binary.LittleEndian.Uint32(ch[4:]))
	if plen < wire.CommonHeaderLen || plen > 16<<20 {
		return nil, io.ErrUnexpectedEOF
	}
	buf = append(append(buf[:0], ch[:]...), make([]byte, plen-wire.CommonHeaderLen)...)
	_, err := io.ReadFull(r, buf[wire.CommonHeaderLen:])
	return buf, err
}

// relayToController notes whether the connection is an I/O queue (its
// Connect names a QID other than 0).
func (p *hostileProxy) relayToController(hc, tc net.Conn, ioQueue *atomic.Bool) {
	var buf []byte
	for {
		pdu, err := readPDU(hc, buf)
		if err != nil {
			return
		}
		buf = pdu
		if wire.Type(pdu[0]) == wire.TypeCapsuleCmd && len(pdu) >= wire.CapsuleCmdHdrLen {
			sqe := wire.CapsuleCmd(pdu).SQE()
			if sqe.Opcode() == nvme.OpcodeFabrics && sqe.FabricsType() == nvme.FabricsConnect && sqe.ConnectQID() != 0 {
				ioQueue.Store(true)
			}
		}
		if _, err := tc.Write(pdu); err != nil {
			return
		}
	}
}

func (p *hostileProxy) relayToHost(hc, tc net.Conn, ioQueue *atomic.Bool) {
	var buf []byte
	for {
		pdu, err := readPDU(tc, buf)
		if err != nil {
			return
		}
		buf = pdu
		out := pdu
		if a := p.attack.Load(); a != nil && ioQueue.Load() && wire.Type(pdu[0]) == a.match && p.attack.CompareAndSwap(a, nil) {
			out = a.rewrite(append([]byte(nil), pdu...))
			p.fired.Add(1)
		}
		if _, err := hc.Write(out); err != nil {
			return
		}
	}
}

// Our host against a hostile target (a real `nvmefs serve` behind
// hostileProxy): R2T beyond the transfer, C2HData beyond the buffer or for
// an unknown command id, a huge PLEN, a response for an unknown command id,
// an R2T for a read. Each time the host never panics and never delivers a
// wrong byte: the hit command is failed cleanly and issued again after error
// recovery, the call returns the right data (or writes it), the namespace
// holds exactly what the host wrote, and after Close the host's goroutines
// and serve's file descriptors are back to idle.
func TestHostAgainstHostileTarget(t *testing.T) {
	backing := t.TempDir() + "/ns1"
	writePatternFile(t, backing, hostileNSSize, 1)
	var img bytes.Buffer
	if err := writePattern(&img, hostileNSSize, 1); err != nil {
		t.Fatal(err)
	}
	model := img.Bytes()
	srv := startServe(t, "--nqn", hostileNQN, "--ns", backing)
	idle := srv.usage(t)
	baseGoroutines := runtime.NumGoroutine()

	px := newHostileProxy(t, srv.Addr)
	o := goodHostOptions(goodHostNQN, goodHostID)
	o.NrIOQueues, o.QueueSize = 1, 8
	o.IOTimeout, o.ReconnectDelay = 3*time.Second, 100*time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := host.Connect(ctx, px.Addr(), hostileNQN, o)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			c.Close()
		}
	}()

	const n = 64 << 10
	var lba uint64 = 256
	read := func(t *testing.T) {
		got := make([]byte, n)
		if err := c.Read(ctx, 1, lba, got); err != nil {
			t.Fatalf("read: %v", err)
		}
		if !bytes.Equal(got, model[lba*512:lba*512+n]) {
			t.Fatal("read returned wrong data")
		}
	}
	write := func(t *testing.T) {
		w := make([]byte, n)
		for i := range w {
			w[i] = byte(i*7) ^ byte(lba)
		}
		if err := c.Write(ctx, 1, lba, w); err != nil {
			t.Fatalf("write: %v", err)
		}
		copy(model[lba*512:], w)
	}
	setField := func(off int, v uint32, size int) func([]byte) []byte {
		return func(pdu []byte) []byte {
			if size == 2 {
				binary.LittleEndian.PutUint16(pdu[off:], uint16(v))
			} else {
				binary.LittleEndian.PutUint32(pdu[off:], v)
			}
			return pdu
		}
	}
	r2tFor := func(cid uint16) []byte {
		var b [wire.MaxHeaderBuf]byte
		wire.R2T(b[:]).Encode(&wire.R2TFields{CCCID: cid, TTag: 1, Len: 4096})
		var p wire.Params
		return append([]byte(nil), p.Seal(b[:], 0)...)
	}
	attacks := []struct {
		name string
		op   func(t *testing.T)
		a    proxyAttack
	}{
		{"C2HData beyond the buffer", read, proxyAttack{wire.TypeC2HData, setField(12, n, 4)}},        // DATAO = the read's length
		{"C2HData offset overflow", read, proxyAttack{wire.TypeC2HData, setField(12, 0xffffff00, 4)}}, // DATAO + DATAL wraps
		{"C2HData for an unknown command id", read, proxyAttack{wire.TypeC2HData, func(pdu []byte) []byte {
			binary.LittleEndian.PutUint16(pdu[8:], binary.LittleEndian.Uint16(pdu[8:])^0x0400)
			return pdu
		}}},
		{"C2HData with a huge PLEN", read, proxyAttack{wire.TypeC2HData, setField(4, 0xfffffff0, 4)}},
		{"R2T for a read", read, proxyAttack{wire.TypeC2HData, func(pdu []byte) []byte {
			return append(r2tFor(binary.LittleEndian.Uint16(pdu[8:])), pdu...)
		}}},
		{"response for an unknown command id", read, proxyAttack{wire.TypeCapsuleResp, func(pdu []byte) []byte {
			binary.LittleEndian.PutUint16(pdu[8+12:], binary.LittleEndian.Uint16(pdu[8+12:])^0x0800)
			return pdu
		}}},
		{"R2T beyond the transfer", write, proxyAttack{wire.TypeR2T, setField(16, n+4096, 4)}},         // R2TL
		{"R2T at an offset beyond the transfer", write, proxyAttack{wire.TypeR2T, setField(12, n, 4)}}, // R2TO
		{"R2T for an unknown command id", write, proxyAttack{wire.TypeR2T, func(pdu []byte) []byte {
			binary.LittleEndian.PutUint16(pdu[8:], binary.LittleEndian.Uint16(pdu[8:])^0x0400)
			return pdu
		}}},
		{"R2T with a huge PLEN", write, proxyAttack{wire.TypeR2T, setField(4, 0xfffffff0, 4)}},
	}
	for i, at := range attacks {
		t.Run(at.name, func(t *testing.T) {
			lba = uint64(256 + 256*i)
			before := c.Stats().Recoveries
			a := at.a
			px.attack.Store(&a)
			at.op(t)
			if px.fired.Load() != int32(i+1) {
				t.Fatalf("the attack did not fire (%d fired)", px.fired.Load())
			}
			deadline := time.Now().Add(10 * time.Second)
			for c.Stats().Recoveries == before && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if r := c.Stats().Recoveries; r != before+1 {
				t.Errorf("%d error recoveries, want 1", r-before)
			}
			// The other direction of the same region still reads right.
			read(t)
		})
	}
	if err := c.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	closed = true
	px.Close()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > baseGoroutines && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if g := runtime.NumGoroutine(); g > baseGoroutines {
		t.Errorf("%d goroutines after Close, %d before Connect", g, baseGoroutines)
	}
	srv.waitIdle(t, idle, "after the host closed")
	srv.Stop(t)
	got, err := os.ReadFile(backing)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, model) {
		t.Error("the backing file does not hold exactly what the host wrote")
	}
	t.Logf("%d attacks on the host, %d error recoveries", len(attacks), c.Stats().Recoveries)
}
