package faults

import (
	"io"
	"math"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/nvmetcp/wire"
)

// faultProxy relays NVMe/TCP between the host (the mount) and the target
// PDU by PDU, and on demand corrupts payload bytes, corrupts header bytes,
// or freezes: it accepts and reads, but forwards nothing until thawed, as a
// peer that accepts but never answers (or a partition that heals). It
// never recomputes a digest: what it corrupts, only a digest can catch.
type faultProxy struct {
	ln      net.Listener
	backend string

	// dataRate is the chance that a PDU carrying data (in-capsule,
	// H2CData, C2HData) with a data digest gets one payload byte flipped.
	dataRate atomic.Uint64 // float64 bits
	// headerEvery: corrupt one header byte of a PDU with a header digest
	// at most once per this interval (0: never).
	headerEvery atomic.Int64
	lastHeader  atomic.Int64

	// Corruptions done, by direction: [0] host to target, [1] target to host.
	DataCorrupted, HeaderCorrupted [2]atomic.Uint64
	Accepted                       atomic.Uint64

	gateMu sync.Mutex
	gate   chan struct{} // closed: forwarding; open: frozen

	rngMu sync.Mutex
	rng   *rand.Rand

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed chan struct{}
	wg     sync.WaitGroup
}

// maxProxyPDU bounds the PDUs the proxy buffers (a larger PLEN ends the
// connection): the mount's commands carry at most 1 MiB.
const maxProxyPDU = 8 << 20

func newFaultProxy(t testing.TB, backend string, seed uint64) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{
		ln: ln, backend: backend,
		gate:   make(chan struct{}),
		rng:    rand.New(rand.NewPCG(seed, 0x70726f7879)),
		conns:  map[net.Conn]struct{}{},
		closed: make(chan struct{}),
	}
	close(p.gate)
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

func (p *faultProxy) Addr() string { return p.ln.Addr().String() }

// CorruptData sets the chance per data PDU of a flipped payload byte.
func (p *faultProxy) CorruptData(rate float64) {
	p.dataRate.Store(math.Float64bits(rate))
}

// CorruptHeaders corrupts one header byte at most every interval (0: off).
func (p *faultProxy) CorruptHeaders(every time.Duration) { p.headerEvery.Store(int64(every)) }

// Freeze stops all forwarding (new connections are accepted and dialled
// through, but nothing passes); Thaw resumes it, with what was held.
func (p *faultProxy) Freeze() {
	p.gateMu.Lock()
	defer p.gateMu.Unlock()
	select {
	case <-p.gate:
		p.gate = make(chan struct{})
	default:
	}
}

func (p *faultProxy) Thaw() {
	p.gateMu.Lock()
	defer p.gateMu.Unlock()
	select {
	case <-p.gate:
	default:
		close(p.gate)
	}
}

// pass waits until the proxy forwards; false once it is closed.
func (p *faultProxy) pass() bool {
	p.gateMu.Lock()
	g := p.gate
	p.gateMu.Unlock()
	select {
	case <-g:
		return true
	case <-p.closed:
		return false
	}
}

// Reset closes every connection through the proxy (the host sees its
// connections drop, as after a link flap) and returns how many it closed.
func (p *faultProxy) Reset() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
	return len(p.conns)
}

// Close stops the proxy and every connection through it.
func (p *faultProxy) Close() {
	p.mu.Lock()
	select {
	case <-p.closed:
		p.mu.Unlock()
		return
	default:
	}
	close(p.closed)
	p.ln.Close()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *faultProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.closed:
		c.Close()
		return false
	default:
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *faultProxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *faultProxy) accept() {
	defer p.wg.Done()
	for {
		hc, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.Accepted.Add(1)
		if !p.track(hc) {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.untrack(hc)
			tc, err := net.DialTimeout("tcp", p.backend, 5*time.Second)
			if err != nil {
				return // the target is down: the host sees the connection close
			}
			if !p.track(tc) {
				return
			}
			defer p.untrack(tc)
			done := make(chan struct{}, 2)
			p.wg.Add(2)
			go func() { defer p.wg.Done(); p.relay(hc, tc, 0); done <- struct{}{} }()
			go func() { defer p.wg.Done(); p.relay(tc, hc, 1); done <- struct{}{} }()
			<-done // either side ending ends both
			hc.Close()
			tc.Close()
			<-done
		}()
	}
}

// relay copies PDUs from src to dst; dir 0 is host to target. When src
// ends, it returns only once the proxy forwards: a frozen proxy holds the
// end of a connection (its FIN or reset) as it holds its bytes.
func (p *faultProxy) relay(src, dst net.Conn, dir int) {
	defer p.pass()
	buf := make([]byte, 64<<10)
	for {
		if _, err := io.ReadFull(src, buf[:wire.CommonHeaderLen]); err != nil {
			return
		}
		h := wire.Header(buf[:wire.CommonHeaderLen])
		plen := int(h.PLen())
		if plen < wire.CommonHeaderLen || plen > maxProxyPDU {
			return // nothing a well-behaved peer sends; end the connection
		}
		if plen > len(buf) {
			nb := make([]byte, plen)
			copy(nb, buf[:wire.CommonHeaderLen])
			buf = nb
		}
		pdu := buf[:plen]
		if _, err := io.ReadFull(src, pdu[wire.CommonHeaderLen:]); err != nil {
			return
		}
		p.mutate(pdu, dir)
		if !p.pass() {
			return
		}
		if _, err := dst.Write(pdu); err != nil {
			return
		}
	}
}

// mutate corrupts pdu in place as configured.
func (p *faultProxy) mutate(pdu []byte, dir int) {
	h := wire.Header(pdu)
	t, flags, hlen, pdo := h.Type(), h.Flags(), h.HLen(), h.PDO()
	if hlen != wire.HeaderLen(t) || hlen > len(pdu) {
		return
	}
	switch t {
	case wire.TypeCapsuleCmd, wire.TypeCapsuleResp, wire.TypeH2CData, wire.TypeC2HData, wire.TypeR2T:
	default:
		return // connection set-up and termination carry no digests
	}
	if every := time.Duration(p.headerEvery.Load()); every > 0 && flags&wire.FlagHDGST != 0 && len(pdu) >= hlen+wire.DigestLen {
		now := time.Now().UnixNano()
		last := p.lastHeader.Load()
		if now-last >= int64(every) && p.lastHeader.CompareAndSwap(last, now) {
			i := p.intn(hlen + wire.DigestLen) // a header byte or its digest
			pdu[i] ^= byte(1 + p.intn(255))
			p.HeaderCorrupted[dir].Add(1)
			return
		}
	}
	rate := math.Float64frombits(p.dataRate.Load())
	if rate <= 0 || flags&wire.FlagDDGST == 0 || pdo == 0 {
		return
	}
	end := len(pdu) - wire.DigestLen
	if pdo >= end {
		return
	}
	if p.float() < rate {
		i := pdo + p.intn(end-pdo)
		pdu[i] ^= byte(1 + p.intn(255))
		p.DataCorrupted[dir].Add(1)
	}
}

func (p *faultProxy) intn(n int) int {
	p.rngMu.Lock()
	defer p.rngMu.Unlock()
	return p.rng.IntN(n)
}

func (p *faultProxy) float() float64 {
	p.rngMu.Lock()
	defer p.rngMu.Unlock()
	return p.rng.Float64()
}
