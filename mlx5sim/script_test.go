package mlx5sim

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/ddp"
	"github.com/nvmefs/nvmefs/nvmetcp/wire"
)

// A script is a fixed stream the target writes while a fake host with its
// own mappings receives it.
type script struct {
	t      *testing.T
	dev    *Device
	sock   ddp.Socket
	host   *fakeHost
	hc, tc net.Conn
	snd    *sender
	cmds   map[uint16]*hcmd
	sent   []byte
	writes chan []byte
	wrote  chan struct{}
	dones  chan *ddp.IO
}

const sentinel = 0xa5

func newScript(t *testing.T, cfg Config, oc wire.OffloadConfig) *script {
	t.Helper()
	if oc.QueueSize == 0 {
		oc.QueueSize = 16
	}
	dev, err := newDev(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return newScriptOn(t, dev, oc)
}

func newScriptOn(t *testing.T, dev *Device, oc wire.OffloadConfig) *script {
	t.Helper()
	hc, tc := tcpPair(t)
	sc := &script{
		t:      t,
		dev:    dev,
		hc:     hc,
		tc:     tc,
		snd:    newSender(oc),
		cmds:   make(map[uint16]*hcmd),
		writes: make(chan []byte, 64),
		wrote:  make(chan struct{}),
		dones:  make(chan *ddp.IO, 1<<16),
	}
	sc.host = newFakeHost(t, oc, dev.cfg.InitialSeq)
	sc.host.keepData = true
	sc.host.mtu = dev.MTU()
	sc.host.lookup = func(tag uint16) *hcmd { return sc.cmds[tag] }
	sock, err := dev.SkAdd(hc, oc, sc)
	if err != nil {
		t.Fatal(err)
	}
	sc.sock, sc.host.sock = sock, sock
	writes := sc.writes
	go func() {
		defer close(sc.wrote)
		for b := range writes {
			if _, err := tc.Write(b); err != nil {
				return
			}
		}
		tc.(*net.TCPConn).CloseWrite()
	}()
	t.Cleanup(func() {
		sc.finish()
		sock.Close()
		select {
		case <-sc.wrote:
		case <-time.After(10 * time.Second):
			t.Error("target writer stuck")
		}
	})
	return sc
}

func (sc *script) ResyncRequest(seq ddp.Seq) { sc.host.ResyncRequest(seq) }
func (sc *script) TeardownDone(io *ddp.IO)   { sc.dones <- io }

// buffer gives tag a host buffer filled with the sentinel, mapped if map_.
func (sc *script) buffer(tag uint16, size int, map_ bool) *hcmd {
	sc.t.Helper()
	c := &hcmd{tag: tag, buf: bytes.Repeat([]byte{sentinel}, size)}
	if map_ {
		io := &ddp.IO{Tag: tag, SG: ddp.SG(c.buf, nil), Len: size}
		if err := sc.sock.Setup(io); err != nil {
			sc.t.Fatalf("Setup tag %d: %v", tag, err)
		}
		c.io = io
	}
	sc.cmds[tag] = c
	return c
}

// send queues bytes for the target to write.
func (sc *script) send(parts ...[]byte) {
	for _, p := range parts {
		sc.sent = append(sc.sent, p...)
		sc.writes <- p
	}
}

func (sc *script) finish() {
	if sc.writes != nil {
		close(sc.writes)
		sc.writes = nil
	}
}

// recv receives until the host has want bytes, or to the end of the
// stream when want is 0 (after finish), and returns Recv's error.
func (sc *script) recv(want int) error {
	sc.t.Helper()
	errc := make(chan error, 1)
	go func() {
		for want == 0 || sc.host.n < uint64(want) {
			seg, err := sc.sock.Recv()
			if err != nil {
				errc <- err
				return
			}
			sc.host.segment(seg)
		}
		errc <- nil
	}()
	select {
	case err := <-errc:
		return err
	case <-time.After(20 * time.Second):
		sc.sock.Close()
		<-errc
		sc.t.Fatalf("receive timed out at %d bytes (want %d)", sc.host.n, want)
		return nil
	}
}

// end finishes the stream, receives all of it and checks it is exact.
func (sc *script) end() {
	sc.t.Helper()
	sc.finish()
	if err := sc.recv(0); err != io.EOF {
		sc.t.Fatalf("stream ended with %v, want EOF", err)
	}
	if !bytes.Equal(sc.host.got, sc.sent) {
		sc.t.Fatalf("received %d bytes, sent %d, or they differ", len(sc.host.got), len(sc.sent))
	}
	if err := sc.host.requestError(); err != nil {
		sc.t.Error(err)
	}
}

func (sc *script) waitDone(io *ddp.IO) {
	sc.t.Helper()
	select {
	case got := <-sc.dones:
		if got != io {
			sc.t.Fatalf("TeardownDone for tag %d, want %d", got.Tag, io.Tag)
		}
	case <-time.After(5 * time.Second):
		sc.t.Fatalf("no TeardownDone for tag %d", io.Tag)
	}
}

func data(n int, serial uint32) []byte {
	b := make([]byte, n)
	fill(b, serial, 0)
	return b
}

func isAll(b []byte, v byte) bool { return bytes.Count(b, []byte{v}) == len(b) }

// TestScriptUnmappedAndBeyond: payload for an unmapped tag, a tag beyond
// the table, and a PDU reaching past its mapping is delivered unplaced;
// only the PDU inside its mapping is placed.
func TestScriptUnmappedAndBeyond(t *testing.T) {
	sc := newScript(t, Config{}, wire.OffloadConfig{DataDigest: true, QueueSize: 8})
	m := sc.buffer(1, 8192, true)
	u := sc.buffer(2, 4096, false)
	a, b, c, d := data(8192, 1), data(4096, 2), data(8192, 3), data(2048, 4)
	sc.send(
		sc.snd.c2h(2, 0, b, wire.FlagLast, 0),    // unmapped: the host copies it
		sc.snd.c2h(1, 4096, c, 0, 0),             // DATAO+DATAL beyond the mapping
		sc.snd.c2h(1000, 0, d, wire.FlagLast, 0), // a tag the queue cannot map
		sc.snd.r2t(1, 0, 100),
		sc.snd.c2h(1, 0, a, wire.FlagLast, 0), // placed
		sc.snd.resp(1), sc.snd.resp(2),
	)
	sc.end()
	if !bytes.Equal(m.buf, a) || !bytes.Equal(u.buf, b) {
		t.Error("buffers do not hold their data")
	}
	if m.placed != len(a) || m.copied != 0 || u.placed != 0 || u.copied != len(b) {
		t.Errorf("mapped: placed %d copied %d; unmapped: placed %d copied %d", m.placed, m.copied, u.placed, u.copied)
	}
	if got := stat(sc.dev, "rx_nvmeotcp_offload_bytes"); got != uint64(len(a)) {
		t.Errorf("offload bytes %d, want %d", got, len(a))
	}
	if sc.host.offloaded != 4 || sc.host.outOfRange != 1 {
		t.Errorf("%d digests offloaded, want all 4; %d PDUs beyond their buffer, want 1", sc.host.offloaded, sc.host.outOfRange)
	}
}

// TestScriptLateData: a C2HData for a tag after its TeardownDone is not
// placed: the retired buffer stays as the host left it.
func TestScriptLateData(t *testing.T) {
	sc := newScript(t, Config{}, wire.OffloadConfig{HeaderDigest: true})
	m := sc.buffer(3, 16<<10, true)
	first := data(16<<10, 5)
	sc.send(sc.snd.c2h(3, 0, first, wire.FlagLast, 0), sc.snd.resp(3))
	if err := sc.recv(len(sc.sent)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(m.buf, first) || m.placed != len(first) {
		t.Fatalf("first transfer: placed %d, data right %v", m.placed, bytes.Equal(m.buf, first))
	}
	sc.sock.Teardown(m.io)
	sc.waitDone(m.io)
	for i := range m.buf {
		m.buf[i] = poison
	}
	sc.send(sc.snd.c2h(3, 0, data(16<<10, 6), wire.FlagLast, 0), sc.snd.resp(3))
	m.abandoned = true // the host has no read for tag 3 any more
	sc.end()
	if !isAll(m.buf, poison) {
		t.Error("late data written into a buffer after its TeardownDone")
	}
	if got := stat(sc.dev, "rx_nvmeotcp_offload_bytes"); got != uint64(len(first)) {
		t.Errorf("offload bytes %d, want %d", got, len(first))
	}
}

// TestScriptTeardownMidPayload: a Teardown while the device is placing a
// PDU whose rest has not arrived completes without waiting for the peer;
// the rest of the payload arrives unplaced and the buffer is never
// written after TeardownDone.
func TestScriptTeardownMidPayload(t *testing.T) {
	for _, delay := range []time.Duration{0, 100 * time.Millisecond} {
		t.Run(fmt.Sprint(delay), func(t *testing.T) { teardownMidPayload(t, delay) })
	}
}

// teardownMidPayload: with a delay, the rest of the payload arrives
// between Teardown and TeardownDone: it must not be placed either.
func teardownMidPayload(t *testing.T, delay time.Duration) {
	sc := newScript(t, Config{TeardownDelay: delay}, wire.OffloadConfig{DataDigest: true})
	m := sc.buffer(4, 64<<10, true)
	pdu := sc.snd.c2h(4, 0, data(64<<10, 7), wire.FlagLast, 0)
	cut := wire.DataHdrLen + 10000
	sc.send(pdu[:cut])
	if err := sc.recv(cut); err != nil {
		t.Fatal(err)
	}
	placedBefore := m.placed
	if placedBefore == 0 {
		t.Fatal("nothing placed before the teardown")
	}
	// Give the engine time to block waiting for the rest.
	time.Sleep(20 * time.Millisecond)
	sc.sock.Teardown(m.io)
	if delay > 0 {
		// The rest comes before TeardownDone.
		sc.send(pdu[cut:], sc.snd.resp(4))
		if err := sc.recv(len(sc.sent)); err != nil {
			t.Fatal(err)
		}
	}
	sc.waitDone(m.io)
	for i := range m.buf {
		m.buf[i] = poison
	}
	m.abandoned = true // the host gave the read up
	var again *hcmd
	if delay == 0 {
		// The tag is mapped anew, to another buffer, before the rest
		// of the old PDU arrives: that rest must not land there.
		again = sc.buffer(4, 64<<10, true)
		again.abandoned = true
		sc.send(pdu[cut:], sc.snd.resp(4))
		if err := sc.recv(len(sc.sent)); err != nil {
			t.Fatal(err)
		}
		if again.placed != 0 || !isAll(again.buf, sentinel) {
			t.Fatalf("the old PDU's rest landed in the tag's new mapping (%d bytes placed)", again.placed)
		}
		again.abandoned = false
		next := data(64<<10, 8)
		sc.send(sc.snd.c2h(4, 0, next, wire.FlagLast|wire.FlagSuccess, 0))
		sc.end()
		if again.placed != len(next) || !bytes.Equal(again.buf, next) {
			t.Errorf("the new mapping: placed %d, data right %v", again.placed, bytes.Equal(again.buf, next))
		}
		placedBefore += again.placed
	} else {
		sc.end()
	}
	if delay == 0 && !isAll(m.buf, poison) {
		t.Error("buffer written after TeardownDone")
	}
	if again != nil {
		placedBefore -= again.placed
	}
	if m.placed != placedBefore {
		t.Errorf("placed %d bytes before the teardown, %d in all", placedBefore, m.placed)
	}
	if again != nil {
		placedBefore += again.placed
	}
	if sc.host.placedBytes != placedBefore {
		t.Errorf("%d bytes placed in all, %d before the teardown", sc.host.placedBytes, placedBefore)
	}
	// Placement stopped, tracking did not: the device still verified the
	// digest.
	if sc.host.software != 0 {
		t.Errorf("%d digests checked in software, want 0", sc.host.software)
	}
}

// TestScriptRxCRCOff: with rx-crc off nothing is CRCOK (the host fails on
// any), and placement goes on.
func TestScriptRxCRCOff(t *testing.T) {
	dev, err := newDev(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := dev.SetCapabilities(ddp.CapPlacement); err != nil {
		t.Fatal(err)
	}
	sc := newScriptOn(t, dev, wire.OffloadConfig{HeaderDigest: true, DataDigest: true, QueueSize: 4})
	sc.host.rxCRC = false
	m := sc.buffer(0, 40<<10, true)
	sc.send(sc.snd.c2h(0, 0, data(20<<10, 1), 0, 0), sc.snd.c2h(0, 20<<10, data(20<<10, 2), wire.FlagLast|wire.FlagSuccess, 0))
	sc.end()
	if m.placed != 40<<10 || sc.host.crcOKSegs != 0 || sc.host.software != 2 {
		t.Errorf("placed %d, %d CRCOK segments, %d software digests", m.placed, sc.host.crcOKSegs, sc.host.software)
	}
}

// TestScriptPlacementOff: with placement off Setup fails (the I/O goes the
// software way) and digests are still verified.
func TestScriptPlacementOff(t *testing.T) {
	dev, err := newDev(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := dev.SetCapabilities(ddp.CapRxCRC); err != nil {
		t.Fatal(err)
	}
	sc := newScriptOn(t, dev, wire.OffloadConfig{DataDigest: true, QueueSize: 4})
	buf := make([]byte, 8192)
	if err := sc.sock.Setup(&ddp.IO{Tag: 1, SG: ddp.SG(buf, nil), Len: len(buf)}); !errors.Is(err, ddp.ErrNotSupported) {
		t.Fatalf("Setup with placement off: %v, want ErrNotSupported", err)
	}
	c := sc.buffer(1, 8192, false)
	sc.send(sc.snd.c2h(1, 0, data(8192, 3), wire.FlagLast, 0), sc.snd.c2h(1, 0, data(8192, 3), wire.FlagLast, 1), sc.snd.resp(1))
	sc.end()
	if c.placed != 0 || sc.host.offloaded != 1 || sc.host.software != 1 || sc.host.digestErrors != 1 {
		t.Errorf("placed %d, offloaded %d, software %d, errors %d", c.placed, sc.host.offloaded, sc.host.software, sc.host.digestErrors)
	}
}

// TestScriptHostile: random bytes, and headers with absurd lengths, cost
// nothing but unplaced delivery: every byte arrives as sent, nothing is
// placed, mapped buffers stay untouched.
func TestScriptHostile(t *testing.T) {
	huge := func(oc wire.OffloadConfig) []byte {
		s := newSender(oc)
		h := s.c2h(1, 0, data(64, 1), wire.FlagLast, 0)
		h[4], h[5], h[6], h[7] = 0xff, 0xff, 0xff, 0xff // PLEN 4 GiB - 1
		return h
	}
	for i, tc := range []struct {
		cfg    Config
		oc     wire.OffloadConfig
		stream func(rng *rand.Rand, oc wire.OffloadConfig) []byte
	}{
		{Config{}, wire.OffloadConfig{}, func(rng *rand.Rand, _ wire.OffloadConfig) []byte { return randBytes(rng, 300<<10) }},
		{Config{MTU: 100}, wire.OffloadConfig{HeaderDigest: true, DataDigest: true}, func(rng *rand.Rand, _ wire.OffloadConfig) []byte { return randBytes(rng, 100<<10) }},
		{Config{}, wire.OffloadConfig{DataDigest: true}, func(rng *rand.Rand, oc wire.OffloadConfig) []byte {
			return append(huge(oc), randBytes(rng, 50<<10)...)
		}},
		// A device that follows a 4 GiB PDU: its payload is not placed.
		{Config{MaxPDUData: 1<<32 - 1}, wire.OffloadConfig{}, func(rng *rand.Rand, oc wire.OffloadConfig) []byte {
			return append(huge(oc), randBytes(rng, 50<<10)...)
		}},
		// Valid PDUs, then a header of random bytes, then valid PDUs: the
		// device loses track and the host (dead) refutes every candidate.
		{Config{}, wire.OffloadConfig{HeaderDigest: true}, func(rng *rand.Rand, oc wire.OffloadConfig) []byte {
			s := newSender(oc)
			var b []byte
			b = append(b, s.c2h(2, 0, data(4096, 1), wire.FlagLast, 0)...)
			b = append(b, s.resp(2)...)
			b = append(b, randBytes(rng, 24)...)
			for range 20 {
				b = append(b, s.c2h(1, 0, data(4096, 2), wire.FlagLast, 0)...)
				b = append(b, s.resp(1)...)
			}
			return b
		}},
	} {
		sc := newScript(t, tc.cfg, tc.oc)
		rng := rand.New(rand.NewPCG(uint64(i), 1))
		m := sc.buffer(1, 64<<10, true)
		stream := tc.stream(rng, tc.oc)
		for len(stream) > 0 {
			n := min(len(stream), 1+rng.IntN(8192))
			sc.send(stream[:n])
			stream = stream[n:]
		}
		sc.end()
		if !isAll(m.buf, sentinel) || m.placed != 0 {
			t.Errorf("case %d: mapped buffer written (%d bytes placed)", i, m.placed)
		}
		t.Logf("case %d: %d bytes, %d segments, %d resync requests, %d refuted", i, len(sc.sent), sc.host.segments, stat(sc.dev, "rx_nvmeotcp_resync"), stat(sc.dev, "sim_resync_fail"))
	}
}

func randBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// TestScriptStricterDevice: a PDU the host accepts but the device does not
// (larger than its MaxPDUData) makes the device lose track; it resyncs on
// a later header, the host confirms, and placement resumes.
func TestScriptStricterDevice(t *testing.T) {
	sc := newScript(t, Config{MaxPDUData: 8192}, wire.OffloadConfig{HeaderDigest: true, DataDigest: true})
	big := sc.buffer(1, 16<<10, true)
	var later []*hcmd
	var segs []ddp.Segment
	sc.host.onSegment = func(s ddp.Segment) { segs = append(segs, s) }
	resume := 0 // where tracking resumes: the first PDU sent after the host answered
	sc.send(sc.snd.c2h(1, 0, data(16<<10, 1), wire.FlagLast, 0), sc.snd.resp(1))
	start0 := len(sc.sent) // the small PDUs start here
	for i := range 10 {
		tag := uint16(2 + i)
		later = append(later, sc.buffer(tag, 4096, true))
		sc.send(sc.snd.c2h(tag, 0, data(4096, uint32(10+i)), wire.FlagLast|wire.FlagSuccess, 0))
		if i == 1 {
			// The host has parsed the candidate and answered before
			// the rest is sent: tracking resumes at its first PDU.
			if err := sc.recv(len(sc.sent)); err != nil {
				t.Fatal(err)
			}
			resume = len(sc.sent)
		}
	}
	sc.end()
	// Tracking resumes at a PDU boundary, at the latest where the PDUs
	// sent after the answer start. The first PDU after the resync is
	// placed but never CRCOK; the ones after it are both.
	pduLen := len(sc.snd.c2h(0, 0, data(4096, 0), wire.FlagLast|wire.FlagSuccess, 0))
	r := -1
	for _, s := range segs {
		if s.Placed {
			r = start0 + (int(s.Seq)-start0)/pduLen*pduLen
			break
		}
	}
	if r < 0 || r > resume {
		t.Fatalf("placement resumed at %d, want a PDU boundary in [%d, %d]", r, start0, resume)
	}
	for _, s := range segs {
		at := int(s.Seq)
		switch {
		case at >= r && at < r+pduLen && s.CRCOK:
			t.Errorf("segment at %d, in the first PDU after the resync (at %d), is CRCOK", at, r)
		case at >= r+pduLen && !s.CRCOK:
			t.Errorf("segment at %d, after the first PDU after the resync (at %d), is not CRCOK", at, r)
		}
	}
	if want := len(later) - 2 - 1; sc.host.offloaded < want {
		t.Errorf("%d digests offloaded, want at least %d", sc.host.offloaded, want)
	}
	if big.placed != 0 {
		t.Errorf("placed %d bytes of a PDU the device could not follow", big.placed)
	}
	if stat(sc.dev, "sim_lost_track") != 1 || stat(sc.dev, "sim_resync_ok") != 1 {
		t.Errorf("lost track %d times, resynced %d, want 1 and 1", stat(sc.dev, "sim_lost_track"), stat(sc.dev, "sim_resync_ok"))
	}
	placed := 0
	for i, c := range later {
		if !bytes.Equal(c.buf, data(4096, uint32(10+i))) {
			t.Errorf("tag %d: wrong data", c.tag)
		}
		placed += c.placed
	}
	if placed < 8*4096 {
		t.Errorf("placed %d bytes after the resync, want at least the last 8 PDUs' %d", placed, 8*4096)
	}
	t.Logf("placed %d of %d bytes after the resync", placed, len(later)*4096)
}

// TestScriptOverlap: a PDU that overlaps what a mapping already received
// is not placed (a mapping's bytes are written at most once), so placed
// bytes never change under the host; PDUs beyond it are placed again.
func TestScriptOverlap(t *testing.T) {
	sc := newScript(t, Config{}, wire.OffloadConfig{DataDigest: true})
	m := sc.buffer(1, 16<<10, true)
	a, b, c := data(8<<10, 1), data(8<<10, 2), data(4<<10, 3)
	sc.send(
		sc.snd.c2h(1, 0, a, 0, 0),     // placed
		sc.snd.c2h(1, 4<<10, b, 0, 0), // overlaps a: copied by the host
		sc.snd.c2h(1, 12<<10, c, wire.FlagLast|wire.FlagSuccess, 0),
	)
	sc.end()
	want := append(append(append([]byte(nil), a[:4<<10]...), b...), c...)
	if !bytes.Equal(m.buf, want) {
		t.Error("buffer does not hold the PDUs applied in order")
	}
	if m.placed != len(a)+len(c) || m.copied != len(b) {
		t.Errorf("placed %d, copied %d; want %d and %d", m.placed, m.copied, len(a)+len(c), len(b))
	}
}

// TestScriptRefuted: after a header neither side can parse, the host's
// parser is dead and refutes every candidate; the device must stay out of
// sync: nothing placed, nothing CRCOK, however long the stream goes on.
func TestScriptRefuted(t *testing.T) {
	sc := newScript(t, Config{}, wire.OffloadConfig{HeaderDigest: true, DataDigest: true})
	m := sc.buffer(1, 4096, true)
	rng := rand.New(rand.NewPCG(1, 2))
	lostAt := 0
	sc.host.onSegment = func(s ddp.Segment) {
		if lostAt > 0 && int(s.Seq)+len(s.Bytes) > lostAt && s.CRCOK {
			t.Errorf("segment at %d, after the garbage at %d, is CRCOK", s.Seq, lostAt)
		}
	}
	sc.send(sc.snd.c2h(2, 0, data(4096, 1), wire.FlagLast, 0), sc.snd.resp(2))
	lostAt = len(sc.sent)
	sc.send(randBytes(rng, 24))
	for range 3 {
		for range 4 {
			sc.send(sc.snd.c2h(1, 0, data(4096, 2), wire.FlagLast|wire.FlagSuccess, 0))
		}
		// Let the host see (and refute) the candidates before more comes.
		if err := sc.recv(len(sc.sent)); err != nil {
			t.Fatal(err)
		}
	}
	sc.end()
	if m.placed != 0 || !isAll(m.buf, sentinel) {
		t.Errorf("placed %d bytes after the stream stopped parsing", m.placed)
	}
	if stat(sc.dev, "sim_lost_track") != 1 {
		t.Errorf("lost track %d times, want 1", stat(sc.dev, "sim_lost_track"))
	}
	if sc.host.resyncNo == 0 || stat(sc.dev, "sim_resync_fail") == 0 {
		t.Errorf("host refuted %d candidates, device counts %d refutations", sc.host.resyncNo, stat(sc.dev, "sim_resync_fail"))
	}
}

// TestScriptFalseCandidate: after losing track, the device finds a fake
// header inside a payload; the next header on its chain does not parse,
// so it drops the candidate on its own, searches on, and resyncs on a
// real header.
func TestScriptFalseCandidate(t *testing.T) {
	sc := newScript(t, Config{MaxPDUData: 4096}, wire.OffloadConfig{DataDigest: true})
	payload := data(6000, 1)
	fake := newSender(wire.OffloadConfig{}).resp(9) // a plausible CapsuleResp...
	copy(payload[1000:], fake)
	clear(payload[1000+len(fake) : 1000+len(fake)+8]) // ...followed by no header at all
	sc.buffer(1, 6000, false)
	sc.send(sc.snd.c2h(1, 0, payload, wire.FlagLast, 0), sc.snd.resp(1))
	var later []*hcmd
	for i := range 6 {
		tag := uint16(2 + i)
		later = append(later, sc.buffer(tag, 4096, true))
		sc.send(sc.snd.c2h(tag, 0, data(4096, uint32(10+i)), wire.FlagLast|wire.FlagSuccess, 0))
		if i == 1 {
			if err := sc.recv(len(sc.sent)); err != nil {
				t.Fatal(err)
			}
		}
	}
	sc.end()
	// Usually the stream refutes the fake candidate at once; if a read
	// ends between it and the bytes that refute it, the host (which
	// passes it inside a payload) may answer first.
	fails, ok := stat(sc.dev, "sim_resync_fail"), stat(sc.dev, "sim_resync_ok")
	if fails < 1 || ok != 1 {
		t.Errorf("%d candidates refuted (the host refuted %d), %d confirmed; want >= 1 refuted, 1 confirmed", fails, sc.host.resyncNo, ok)
	}
	placed := 0
	for _, c := range later {
		placed += c.placed
	}
	if placed < 4*4096 {
		t.Errorf("placed %d bytes after the resync, want at least %d", placed, 4*4096)
	}
}
