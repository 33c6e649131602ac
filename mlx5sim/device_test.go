package mlx5sim

import (
	"bytes"
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/ddp"
	"github.com/nvmefs/nvmefs/nvmetcp/wire"
)

// doneRecorder is a ULP that counts TeardownDone per IO.
type doneRecorder struct {
	mu    sync.Mutex
	dones map[*ddp.IO]int
	reqs  int
}

func newDoneRecorder() *doneRecorder { return &doneRecorder{dones: make(map[*ddp.IO]int)} }

func (r *doneRecorder) ResyncRequest(ddp.Seq) { r.mu.Lock(); r.reqs++; r.mu.Unlock() }
func (r *doneRecorder) TeardownDone(io *ddp.IO) {
	r.mu.Lock()
	r.dones[io]++
	r.mu.Unlock()
}

func (r *doneRecorder) count(io *ddp.IO) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.dones[io]
}

func (r *doneRecorder) total() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.dones {
		n += c
	}
	return n
}

func newIO(tag uint16, size int) *ddp.IO {
	buf := make([]byte, size)
	return &ddp.IO{Tag: tag, SG: ddp.SG(buf, nil), Len: size}
}

type otherConfig struct{}

func (otherConfig) Protocol() string { return "iscsi" }

func TestNewDefaults(t *testing.T) {
	d, err := newDev(Config{})
	if err != nil {
		t.Fatal(err)
	}
	l := d.Limits()
	if l.MaxSGL != 128 || l.IOThreshold != 32<<10 || l.FullTagRange || l.MaxIOBytes() != 512<<10 {
		t.Errorf("limits %+v", l)
	}
	if d.MTU() != 1448 || d.Name() != "mlx5sim" {
		t.Errorf("MTU %d, name %q", d.MTU(), d.Name())
	}
	sup, en := d.Capabilities()
	if sup != ddp.CapPlacement|ddp.CapRxCRC || en != sup {
		t.Errorf("capabilities %v / %v", sup, en)
	}
	for _, bad := range []Config{{MTU: -1}, {MTU: MaxMTU + 1}, {MaxSGL: -3}, {LossRate: 1.5}, {SetupFailRate: -0.1}, {Capabilities: 8}, {MaxPDUData: -1}} {
		if _, err := New(bad); err == nil {
			t.Errorf("New(%+v) accepted", bad)
		}
	}
	if err := d.SetLossRate(2); err == nil {
		t.Error("loss rate 2 accepted")
	}
	if err := d.SetCapabilities(ddp.CapRxCRC | 4); !errors.Is(err, ddp.ErrNotSupported) {
		t.Errorf("unsupported capability: %v", err)
	}
	d2, _ := newDev(Config{Capabilities: ddp.CapRxCRC})
	if err := d2.SetCapabilities(ddp.CapPlacement); !errors.Is(err, ddp.ErrNotSupported) {
		t.Errorf("capability the device lacks: %v", err)
	}
}

// TestStatsNames: the driver's counters come first, in its order.
func TestStatsNames(t *testing.T) {
	d, _ := newDev(Config{})
	want := []string{"rx_nvmeotcp_sk_add", "rx_nvmeotcp_sk_add_fail", "rx_nvmeotcp_sk_del", "rx_nvmeotcp_ddp_setup",
		"rx_nvmeotcp_ddp_setup_fail", "rx_nvmeotcp_ddp_teardown", "rx_nvmeotcp_drop", "rx_nvmeotcp_resync",
		"rx_nvmeotcp_offload_packets", "rx_nvmeotcp_offload_bytes", "rx_nvmeotcp_packets", "rx_nvmeotcp_bytes"}
	st := d.Stats()
	if len(st) < len(want) {
		t.Fatalf("%d counters", len(st))
	}
	for i, n := range want {
		if st[i].Name != n || st[i].Value != 0 {
			t.Errorf("counter %d: %+v, want %s 0", i, st[i], n)
		}
	}
	if d.Stat("rx_nvmeotcp_resync") != 0 || d.Stat("nonsense") != 0 {
		t.Error("Stat by name")
	}
}

// TestSkAddErrors: SkAdd refuses what it cannot offload and leaves the
// connection to the caller, counting each failure.
func TestSkAddErrors(t *testing.T) {
	d, _ := newDev(Config{})
	hc, tc := tcpPair(t)
	ulp := newDoneRecorder()
	good := wire.OffloadConfig{QueueSize: 8}
	cases := []struct {
		cfg  ddp.Config
		ulp  ddp.ULP
		conn net.Conn
		want error
	}{
		{otherConfig{}, ulp, hc, ddp.ErrNotSupported},
		{nil, ulp, hc, ddp.ErrNotSupported},
		{(*wire.OffloadConfig)(nil), ulp, hc, ddp.ErrNotSupported},
		{wire.OffloadConfig{QueueSize: 0}, ulp, hc, ErrBadConfig},
		{wire.OffloadConfig{QueueSize: 1<<16 + 1}, ulp, hc, ErrBadConfig},
		{wire.OffloadConfig{QueueSize: 8, PFV: 1}, ulp, hc, ErrBadConfig},
		{wire.OffloadConfig{QueueSize: 8, HPDA: 32}, ulp, hc, ErrBadConfig},
		{good, nil, hc, ErrBadConfig},
		{good, ulp, nil, ErrBadConfig},
	}
	for i, c := range cases {
		if s, err := d.SkAdd(c.conn, c.cfg, c.ulp); !errors.Is(err, c.want) || s != nil {
			t.Errorf("case %d: %v, want %v", i, err, c.want)
		}
	}
	d.SetCapabilities(0)
	if _, err := d.SkAdd(hc, good, ulp); !errors.Is(err, ddp.ErrNotSupported) {
		t.Errorf("no capability on: %v", err)
	}
	d.SetCapabilities(ddp.CapRxCRC)
	d.SetDown(true)
	if _, err := d.SkAdd(hc, &good, ulp); !errors.Is(err, ddp.ErrDeviceDown) {
		t.Errorf("device down: %v", err)
	}
	if got := d.Stat("rx_nvmeotcp_sk_add_fail"); got != uint64(len(cases)+2) {
		t.Errorf("sk_add_fail %d, want %d", got, len(cases)+2)
	}
	// The connection is untouched: it still carries bytes both ways.
	if _, err := tc.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	hc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 5)
	if _, err := io.ReadFull(hc, buf); err != nil || string(buf) != "hello" {
		t.Errorf("connection after failed SkAdds: %q %v", buf, err)
	}
	d.SetDown(false)
	s, err := d.SkAdd(hc, &good, ulp)
	if err != nil {
		t.Fatalf("SkAdd after up: %v", err)
	}
	s.Close()
	if d.Stat("rx_nvmeotcp_sk_add") != 1 || d.Stat("rx_nvmeotcp_sk_del") != 1 {
		t.Errorf("sk_add %d, sk_del %d", d.Stat("rx_nvmeotcp_sk_add"), d.Stat("rx_nvmeotcp_sk_del"))
	}
}

// TestSetupErrors: the table's bounds, busy tags, MaxSGL and malformed
// lists; the full tag range when the device has it.
func TestSetupErrors(t *testing.T) {
	d, _ := newDev(Config{MaxSGL: 4})
	ulp := newDoneRecorder()
	s := skAdd4(t, d, ulp)
	if err := s.Setup(newIO(4, 4096)); !errors.Is(err, ddp.ErrNoResources) {
		t.Errorf("tag 4 of a 4-deep queue: %v", err)
	}
	io0 := newIO(0, 16<<10)
	if err := s.Setup(io0); err != nil {
		t.Fatalf("tag 0: %v", err)
	}
	if err := s.Setup(newIO(0, 4096)); !errors.Is(err, ddp.ErrNoResources) {
		t.Errorf("busy tag: %v", err)
	}
	long := make([]byte, 5*4096)
	sg := ddp.SG(long, nil)
	if err := s.Setup(&ddp.IO{Tag: 1, SG: sg, Len: len(long)}); !errors.Is(err, ddp.ErrSGLTooLong) {
		t.Errorf("%d pieces with MaxSGL 4: %v", len(sg), err)
	}
	buf := make([]byte, 3*4096)
	for i, io := range []*ddp.IO{
		{Tag: 1, SG: [][]byte{buf[:4096], buf[4096:5000], buf[8192:]}, Len: 4096 + 904 + 4096}, // short middle piece
		{Tag: 1, SG: [][]byte{buf[:4096]}, Len: 100},                                           // Len mismatch
		{Tag: 1, SG: nil, Len: 0},
		{Tag: 1, SG: [][]byte{buf[:8192]}, Len: 8192}, // a piece above a page
		nil,
	} {
		if err := s.Setup(io); err == nil {
			t.Errorf("malformed IO %d accepted", i)
		}
	}
	s.Teardown(io0)
	waitFor(t, func() bool { return ulp.count(io0) == 1 })
	if err := s.Setup(newIO(0, 4096)); err != nil {
		t.Errorf("tag 0 after its TeardownDone: %v", err)
	}
	if d.Stat("rx_nvmeotcp_ddp_setup") != 2 || d.Stat("rx_nvmeotcp_ddp_setup_fail") != 8 {
		t.Errorf("setup %d, fail %d", d.Stat("rx_nvmeotcp_ddp_setup"), d.Stat("rx_nvmeotcp_ddp_setup_fail"))
	}

	full, _ := newDev(Config{FullTagRange: true})
	hc2, _ := tcpPair(t)
	s2, err := full.SkAdd(hc2, wire.OffloadConfig{}, ulp)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if err := s2.Setup(newIO(65535, 4096)); err != nil {
		t.Errorf("tag 65535 with the full range: %v", err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5s")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestCloseTearsDown: Close with mappings outstanding (one torn down with
// its TeardownDone still delayed) calls TeardownDone for each exactly
// once before it returns, ends Recv, and leaves no goroutine behind.
func TestCloseTearsDown(t *testing.T) {
	base := runtime.NumGoroutine()
	func() {
		d, _ := newDev(Config{TeardownDelay: time.Hour})
		hc, tc := tcpPair(t)
		ulp := newDoneRecorder()
		s, err := d.SkAdd(hc, wire.OffloadConfig{QueueSize: 8}, ulp)
		if err != nil {
			t.Fatal(err)
		}
		var ios []*ddp.IO
		for tag := range uint16(5) {
			io := newIO(tag, 8192)
			if err := s.Setup(io); err != nil {
				t.Fatal(err)
			}
			ios = append(ios, io)
		}
		s.Teardown(ios[0])
		// Traffic in flight: Recv is blocked when Close comes.
		snd := newSender(wire.OffloadConfig{QueueSize: 4})
		tc.Write(snd.resp(1))
		seg, err := s.Recv()
		if err != nil || len(seg.Bytes) != wire.CapsuleRespHdrLen {
			t.Fatalf("Recv: %d bytes, %v", len(seg.Bytes), err)
		}
		recvErr := make(chan error, 1)
		go func() {
			_, err := s.Recv()
			recvErr <- err
		}()
		closed := make(chan struct{})
		go func() { s.Close(); close(closed) }()
		select {
		case <-closed:
		case <-time.After(5 * time.Second):
			t.Fatal("Close did not return")
		}
		for i, io := range ios {
			if n := ulp.count(io); n != 1 {
				t.Errorf("IO %d: %d TeardownDone calls", i, n)
			}
		}
		select {
		case err := <-recvErr:
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("blocked Recv after Close: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Recv still blocked after Close")
		}
		if _, err := s.Recv(); !errors.Is(err, net.ErrClosed) {
			t.Errorf("Recv after Close: %v", err)
		}
		s.Close()
		s.Teardown(ios[1])
		if err := s.Setup(newIO(6, 4096)); err == nil {
			t.Error("Setup after Close succeeded")
		}
		time.Sleep(10 * time.Millisecond)
		if ulp.total() != len(ios) {
			t.Errorf("%d TeardownDone calls after a second Close and a late Teardown, want %d", ulp.total(), len(ios))
		}
		if d.Stat("rx_nvmeotcp_ddp_teardown") != 5 || d.Stat("rx_nvmeotcp_sk_del") != 1 {
			t.Errorf("teardown %d, sk_del %d", d.Stat("rx_nvmeotcp_ddp_teardown"), d.Stat("rx_nvmeotcp_sk_del"))
		}
		hc.Close()
		tc.Close()
	}()
	waitGoroutines(t, base)
}

// TestDownUp takes the device down under traffic: Recv returns
// ErrDeviceDown and delivers nothing more, SkAdd and Setup fail, Teardown
// and Close still complete; up again, a new socket offloads as before.
func TestDownUp(t *testing.T) {
	base := runtime.NumGoroutine()
	func() {
		d, _ := newDev(Config{})
		hc, tc := tcpPair(t)
		ulp := newDoneRecorder()
		oc := wire.OffloadConfig{DataDigest: true, QueueSize: 4}
		s, err := d.SkAdd(hc, oc, ulp)
		if err != nil {
			t.Fatal(err)
		}
		io0, io1 := newIO(0, 64<<10), newIO(1, 64<<10)
		if s.Setup(io0) != nil || s.Setup(io1) != nil {
			t.Fatal("Setup")
		}
		snd := newSender(oc)
		stop := make(chan struct{})
		writerDone := make(chan struct{})
		go func() {
			defer close(writerDone)
			pdu := snd.c2h(0, 0, data(64<<10, 1), wire.FlagLast, 0)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := tc.Write(pdu); err != nil {
					return
				}
			}
		}()
		var got int
		for got < 1<<20 {
			seg, err := s.Recv()
			if err != nil {
				t.Fatalf("Recv before down: %v", err)
			}
			got += len(seg.Bytes)
		}
		d.SetDown(true)
		if !d.Down() {
			t.Error("Down() false")
		}
		for range 3 {
			if seg, err := s.Recv(); !errors.Is(err, ddp.ErrDeviceDown) || len(seg.Bytes) != 0 {
				t.Fatalf("Recv while down: %d bytes, %v", len(seg.Bytes), err)
			}
		}
		if err := s.Setup(newIO(2, 4096)); !errors.Is(err, ddp.ErrDeviceDown) {
			t.Errorf("Setup while down: %v", err)
		}
		if _, err := d.SkAdd(hc, oc, ulp); !errors.Is(err, ddp.ErrDeviceDown) {
			t.Errorf("SkAdd while down: %v", err)
		}
		s.Teardown(io0)
		waitFor(t, func() bool { return ulp.count(io0) == 1 })
		s.Close()
		if ulp.count(io1) != 1 {
			t.Error("Close while down did not tear io1 down")
		}
		close(stop)
		hc.Close()
		tc.Close()
		<-writerDone

		d.SetDown(false)
		sc := newScriptOn(t, d, oc)
		m := sc.buffer(0, 64<<10, true)
		sc.send(sc.snd.c2h(0, 0, data(64<<10, 2), wire.FlagLast|wire.FlagSuccess, 0))
		sc.end()
		if m.placed != 64<<10 {
			t.Errorf("placed %d after up", m.placed)
		}
		sc.sock.Close()
	}()
	waitGoroutines(t, base)
}

// TestTeardownDoneTiming: with no delay and nothing ahead of it, a
// mapping's TeardownDone comes from within Teardown; with a delay, later,
// from the completion goroutine, never before the delay.
func TestTeardownDoneTiming(t *testing.T) {
	d, _ := newDev(Config{})
	ulp := newDoneRecorder()
	s := skAdd4(t, d, ulp)
	io0 := newIO(0, 8192)
	if err := s.Setup(io0); err != nil {
		t.Fatal(err)
	}
	s.Teardown(io0)
	if n := ulp.count(io0); n != 1 {
		t.Errorf("no delay: %d TeardownDone calls when Teardown returned, want 1", n)
	}
	s.Teardown(io0) // not mapped any more: ignored
	d.SetTeardownDelay(50 * time.Millisecond)
	io1 := newIO(1, 8192)
	if err := s.Setup(io1); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	s.Teardown(io1)
	if ulp.count(io1) != 0 {
		t.Error("delayed teardown done within Teardown")
	}
	waitFor(t, func() bool { return ulp.count(io1) == 1 })
	if dt := time.Since(t0); dt < 50*time.Millisecond {
		t.Errorf("TeardownDone after %v, want the 50ms delay", dt)
	}
	if ulp.count(io0) != 1 || d.Stat("rx_nvmeotcp_ddp_teardown") != 2 {
		t.Errorf("TeardownDone calls %d, %d; teardown counter %d", ulp.count(io0), ulp.count(io1), d.Stat("rx_nvmeotcp_ddp_teardown"))
	}
}

// TestInterrupt: Interrupt makes the Recv that waits return ErrInterrupted
// and changes nothing of the stream: what arrives after comes whole, and a
// batch already at hand comes before a pending interrupt is looked at.
func TestInterrupt(t *testing.T) {
	d, _ := newDev(Config{})
	hc, tc := tcpPair(t)
	s, err := d.SkAdd(hc, wire.OffloadConfig{QueueSize: 4}, newDoneRecorder())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got := make(chan error, 1)
	go func() {
		_, err := s.Recv()
		got <- err
	}()
	time.Sleep(20 * time.Millisecond) // Recv waits
	s.Interrupt()
	select {
	case err := <-got:
		if err != ddp.ErrInterrupted {
			t.Fatalf("interrupted Recv: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Interrupt did not wake Recv")
	}
	snd := newSender(wire.OffloadConfig{QueueSize: 4})
	want := append(snd.resp(1), snd.resp(2)...)
	if _, err := tc.Write(want); err != nil {
		t.Fatal(err)
	}
	var stream []byte
	for len(stream) < len(want) {
		if len(stream) > 0 {
			s.Interrupt() // pending while bytes are at hand or arrive
		}
		seg, err := s.Recv()
		if err == ddp.ErrInterrupted {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		stream = append(stream, seg.Bytes...)
	}
	if !bytes.Equal(stream, want) {
		t.Errorf("stream after interrupts: %x, want %x", stream, want)
	}
}

// skAdd4 offloads one end of a new loopback connection, queue size 4; the
// socket is closed when the test ends.
func skAdd4(t *testing.T, d *Device, ulp ddp.ULP) ddp.Socket {
	t.Helper()
	hc, _ := tcpPair(t)
	s, err := d.SkAdd(hc, wire.OffloadConfig{QueueSize: 4}, ulp)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
