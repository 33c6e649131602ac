package host

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/ddp"
	"github.com/nvmefs/nvmefs/nvmetcp/target"
	"github.com/nvmefs/nvmefs/nvmetcp/target/store"
)

// Tests against our own target (nvmetcp/target), in process, over loopback.

type testTarget struct {
	cfg    target.Config
	tgt    *target.Target
	addr   string
	served chan error
}

const testNQN = "nqn.2026-01.io.nvmefs:host-test"

// startTarget serves mem namespaces of the given sizes, each filled with a
// pattern (fillPattern, seed nsid<<40).
func startTarget(t testing.TB, cfg target.Config, sizes ...string) *testTarget {
	t.Helper()
	if cfg.SubsystemNQN == "" {
		cfg.SubsystemNQN = testNQN
	}
	if cfg.Logger == nil {
		cfg.Logger = testOpts().Logger
	}
	if cfg.Namespaces == nil {
		for i, spec := range sizes {
			st, err := store.Open(spec)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			b := make([]byte, st.Size())
			fillPattern(b, int64(i+1)<<40)
			if _, err := st.WriteAt(b, 0); err != nil {
				t.Fatal(err)
			}
			cfg.Namespaces = append(cfg.Namespaces, st)
		}
	}
	tt := &testTarget{cfg: cfg}
	tt.serve(t, "127.0.0.1:0")
	return tt
}

func (tt *testTarget) serve(t testing.TB, addr string) {
	t.Helper()
	tgt, err := target.New(tt.cfg)
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	for i := 0; i < 100; i++ {
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	tt.tgt, tt.addr, tt.served = tgt, ln.Addr().String(), make(chan error, 1)
	go func() { tt.served <- tgt.Serve(ln) }()
	t.Cleanup(func() { tt.close() })
}

func (tt *testTarget) close() {
	tt.tgt.Close()
	<-tt.served
	tt.served <- nil // later calls do not block
}

// restart closes the target and serves the same namespaces on the same
// address after down.
func (tt *testTarget) restart(t testing.TB, down time.Duration) {
	t.Helper()
	tt.close()
	time.Sleep(down)
	tt.serve(t, tt.addr)
}

// nsData reads a namespace's store.
func (tt *testTarget) nsData(t testing.TB, nsid uint32) []byte {
	st := tt.cfg.Namespaces[nsid-1]
	b := make([]byte, st.Size())
	if _, err := st.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestConnectIdentify(t *testing.T) {
	tt := startTarget(t, target.Config{MaxTransfer: 128 << 10, MaxIOQueues: 3, MaxQueueSize: 64}, "mem:4M", "mem:1M")
	o := testOpts()
	o.NrIOQueues = 8
	o.QueueSize = 128
	c := connectT(t, tt.addr, testNQN, o)
	info := c.Info()
	if info.IOQueues != 3 || info.QueueSize != 64 || info.MaxTransfer != 128<<10 || info.SubNQN != testNQN || info.CntlID == 0 {
		t.Errorf("info %+v", info)
	}
	if info.InCapsule != target.DefaultInCapsuleSize || info.MaxH2CData != target.DefaultMaxH2CData {
		t.Errorf("in-capsule %d, MAXH2CDATA %d", info.InCapsule, info.MaxH2CData)
	}
	nss := c.Namespaces()
	if len(nss) != 2 || nss[0].Size() != 4<<20 || nss[1].Size() != 1<<20 || nss[0].BlockSize != 512 || nss[0].NGUID == ([16]byte{}) {
		t.Errorf("namespaces %+v", nss)
	}
	if err := c.Close(); err != nil {
		t.Errorf("Close (shutdown): %v", err)
	}
}

func TestReadWriteAllSizes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cfg    target.Config
		hd, dd bool
	}{
		{"plain", target.Config{MaxTransfer: 256 << 10}, false, false},
		{"digests", target.Config{MaxTransfer: 256 << 10}, true, true},
		{"multiPDU", target.Config{MaxTransfer: 256 << 10, MaxC2HData: 8192}, false, true},
		{"multiPDU+success+R2T", target.Config{MaxTransfer: 512 << 10, MaxC2HData: 16 << 10, C2HSuccess: true, R2TSize: 32 << 10, MaxH2CData: 4096, InCapsuleSize: 4096}, true, true},
		{"noInCapsule", target.Config{InCapsuleSize: 0, MaxH2CData: 8192}, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tt := startTarget(t, tc.cfg, "mem:8M")
			o := testOpts()
			o.HeaderDigest, o.DataDigest = tc.hd, tc.dd
			c := connectT(t, tt.addr, testNQN, o)
			want := tt.nsData(t, 1)
			ctx := testCtx(t, 60*time.Second)
			for _, size := range readWriteSizes {
				lba := uint64(3 + size/512)
				got := make([]byte, size)
				if err := c.Read(ctx, 1, lba, got); err != nil {
					t.Fatalf("read %d: %v", size, err)
				}
				if !bytes.Equal(got, want[lba*512:lba*512+uint64(size)]) {
					t.Fatalf("read %d at lba %d: data differs", size, lba)
				}
				w := make([]byte, size)
				fillPattern(w, int64(size)<<32|7)
				if err := c.Write(ctx, 1, lba, w); err != nil {
					t.Fatalf("write %d: %v", size, err)
				}
				copy(want[lba*512:], w)
				if err := c.Read(ctx, 1, lba, got); err != nil {
					t.Fatalf("read back %d: %v", size, err)
				}
				if !bytes.Equal(got, w) {
					t.Fatalf("read back %d: data differs", size)
				}
			}
			if !bytes.Equal(tt.nsData(t, 1), want) {
				t.Fatal("the target's namespace differs from what was written")
			}
			s := c.Stats()
			if s.Total.Errors != 0 || s.Recoveries != 0 || s.Total.DigestErrors != 0 {
				t.Errorf("errors %d recoveries %d digest errors %d", s.Total.Errors, s.Recoveries, s.Total.DigestErrors)
			}
			if tc.dd != (s.Total.CRCSoftware > 0) {
				t.Errorf("data digest %v but %d PDUs checked", tc.dd, s.Total.CRCSoftware)
			}
		})
	}
}

func TestBlockSize4K(t *testing.T) {
	tt := startTarget(t, target.Config{BlockSize: 4096}, "mem:2M")
	c := connectT(t, tt.addr, testNQN, testOpts())
	ns, _ := c.Namespace(1)
	if ns.BlockSize != 4096 || ns.Blocks != 512 {
		t.Fatalf("namespace %+v", ns)
	}
	ctx := testCtx(t, 10*time.Second)
	want := tt.nsData(t, 1)
	got := make([]byte, 64<<10)
	if err := c.Read(ctx, 1, 5, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want[5*4096:5*4096+len(got)]) {
		t.Fatal("data differs")
	}
	if err := c.Read(ctx, 1, 0, make([]byte, 512)); err == nil {
		t.Error("a 512-byte read of a 4 KiB block namespace succeeded")
	}
}

func TestFlushZeroesDeallocate(t *testing.T) {
	tt := startTarget(t, target.Config{}, "mem:64M")
	c := connectT(t, tt.addr, testNQN, testOpts())
	want := tt.nsData(t, 1)
	ctx := testCtx(t, 30*time.Second)
	if err := c.Flush(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteZeroes(ctx, 1, 100, 70000); err != nil {
		t.Fatal(err)
	}
	clear(want[100*512 : (100+70000)*512])
	if err := c.Deallocate(ctx, 1, []Range{{LBA: 80000, Blocks: 8}, {LBA: 90000, Blocks: 1000}}); err != nil {
		t.Fatal(err)
	}
	clear(want[80000*512 : 80008*512])
	clear(want[90000*512 : 91000*512])
	if !bytes.Equal(tt.nsData(t, 1), want) {
		t.Fatal("namespace differs after write zeroes and deallocate")
	}
	got := make([]byte, 1<<20)
	if err := c.Read(ctx, 1, 79900, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want[79900*512:79900*512+len(got)]) {
		t.Fatal("read after deallocate differs")
	}
}

func TestManyGoroutines(t *testing.T) {
	tt := startTarget(t, target.Config{MaxC2HData: 32 << 10, MaxTransfer: 64 << 10}, "mem:16M", "mem:4M")
	o := testOpts()
	o.QueueSize = 16 // fewer tags than goroutines
	o.DataDigest = true
	c := connectT(t, tt.addr, testNQN, o)
	want := [][]byte{nil, tt.nsData(t, 1), tt.nsData(t, 2)}
	ctx := testCtx(t, 60*time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nsid := uint32(1 + g%2)
			base := uint64(g/2) * 256 // 128 KiB per goroutine
			mine := want[nsid][base*512 : (base+256)*512]
			for i := range 30 {
				size := 512 << (i % 9) // 512 B .. 128 KiB
				lba := base + uint64((i*37)%(256-size/512+1))
				buf := make([]byte, size)
				if i%3 == 2 {
					fillPattern(buf, int64(g*1000+i)<<32)
					if err := c.Write(ctx, nsid, lba, buf); err != nil {
						errs <- err
						return
					}
					copy(mine[(lba-base)*512:], buf)
					continue
				}
				if err := c.Read(ctx, nsid, lba, buf); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(buf, mine[(lba-base)*512:(lba-base)*512+uint64(size)]) {
					errs <- fmt.Errorf("goroutine %d: read %d at %d: data differs", g, size, lba)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for nsid := uint32(1); nsid <= 2; nsid++ {
		if !bytes.Equal(tt.nsData(t, nsid), want[nsid]) {
			t.Errorf("namespace %d differs", nsid)
		}
	}
	for _, q := range c.Stats().IO {
		if q.Commands == 0 {
			t.Errorf("queue %d got no commands", q.QID)
		}
	}
}

func TestTargetRestartMidRead(t *testing.T) {
	tt := startTarget(t, target.Config{MaxC2HData: 16 << 10}, "mem:8M")
	o := testOpts()
	o.DataDigest = true
	o.ReconnectDelay = 200 * time.Millisecond
	c := connectT(t, tt.addr, testNQN, o)
	want := tt.nsData(t, 1)
	ctx := testCtx(t, 30*time.Second)
	stop := make(chan struct{})
	errs := readersCheck(ctx, c, 1, want, 8, stop)
	time.Sleep(150 * time.Millisecond)
	before := c.Stats().Total.Commands
	tt.restart(t, 500*time.Millisecond)
	deadline := time.Now().Add(10 * time.Second)
	for c.Stats().Total.Reconnects == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	for err := range errs {
		t.Error(err)
	}
	s := c.Stats()
	// Retries depend on whether reads were in flight when the target went.
	if s.Recoveries != 1 || s.Total.Reconnects == 0 {
		t.Errorf("recoveries %d reconnects %d", s.Recoveries, s.Total.Reconnects)
	}
	if s.Total.Commands <= before {
		t.Error("no command after the restart")
	}
}

func TestTargetGoneControllerLost(t *testing.T) {
	tt := startTarget(t, target.Config{}, "mem:1M")
	p := newProxy(t, tt.addr)
	o := testOpts()
	o.CtrlLossTmo = 1500 * time.Millisecond
	o.ReconnectDelay = 300 * time.Millisecond
	c := connectT(t, p.Addr(), testNQN, o)
	ctx := testCtx(t, 20*time.Second)
	// Reads in flight (the proxy holds the answers) when the target goes.
	p.stall.Store(true)
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.Read(ctx, 1, uint64(8*i), make([]byte, 4096))
		}()
	}
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	tt.close()
	p.Close()
	wg.Wait()
	took := time.Since(start)
	for i, err := range errs {
		if !errors.Is(err, ErrControllerLost) {
			t.Errorf("pending read %d: %v, want ErrControllerLost", i, err)
		}
	}
	if took < o.CtrlLossTmo-100*time.Millisecond || took > o.CtrlLossTmo+3*time.Second {
		t.Errorf("pending reads failed after %v; CtrlLossTmo %v", took, o.CtrlLossTmo)
	}
	t0 := time.Now()
	if err := c.Read(ctx, 1, 0, make([]byte, 512)); !errors.Is(err, ErrControllerLost) {
		t.Errorf("new read: %v, want ErrControllerLost", err)
	}
	if d := time.Since(t0); d > 100*time.Millisecond {
		t.Errorf("new read failed after %v", d)
	}
}

func TestStalledTargetIOTimeout(t *testing.T) {
	tt := startTarget(t, target.Config{}, "mem:2M")
	p := newProxy(t, tt.addr)
	o := testOpts()
	o.IOTimeout = 500 * time.Millisecond
	o.KeepAliveTmo = 30 * time.Second
	o.ReconnectDelay = 100 * time.Millisecond
	c := connectT(t, p.Addr(), testNQN, o)
	want := tt.nsData(t, 1)
	ctx := testCtx(t, 20*time.Second)
	p.stall.Store(true)
	stop := make(chan struct{})
	errs := readersCheck(ctx, c, 1, want, 4, stop)
	deadline := time.Now().Add(5 * time.Second)
	for c.Stats().Total.Timeouts == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if c.Stats().Total.Timeouts == 0 {
		t.Error("no I/O timeout while the target stalled")
	}
	p.stall.Store(false)
	deadline = time.Now().Add(5 * time.Second)
	for c.live.Load() == nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	before := c.Stats().Total.Commands
	time.Sleep(200 * time.Millisecond)
	close(stop)
	for err := range errs {
		t.Error(err)
	}
	if c.Stats().Total.Commands <= before {
		t.Error("no reads completed after the stall ended")
	}
}

func TestStalledTargetKeepAlive(t *testing.T) {
	tt := startTarget(t, target.Config{}, "mem:1M")
	p := newProxy(t, tt.addr)
	o := testOpts()
	o.KeepAliveTmo = 400 * time.Millisecond
	o.IOTimeout = 30 * time.Second
	o.ReconnectDelay = 100 * time.Millisecond
	c := connectT(t, p.Addr(), testNQN, o)
	p.stall.Store(true)
	deadline := time.Now().Add(5 * time.Second)
	for c.Stats().Recoveries == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if c.Stats().Recoveries == 0 {
		t.Fatal("keep-alive did not notice the stalled target")
	}
	p.stall.Store(false)
	got := make([]byte, 4096)
	if err := c.Read(testCtx(t, 10*time.Second), 1, 0, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, tt.nsData(t, 1)[:4096]) {
		t.Fatal("data differs")
	}
}

func TestDigestErrorInjected(t *testing.T) {
	tt := startTarget(t, target.Config{MaxC2HData: 16 << 10}, "mem:2M")
	p := newProxy(t, tt.addr)
	o := testOpts()
	o.DataDigest = true
	c := connectT(t, p.Addr(), testNQN, o)
	want := tt.nsData(t, 1)
	ctx := testCtx(t, 20*time.Second)
	for i := range 8 {
		if i == 1 || i == 5 {
			p.flipC2H.Store(1) // one corrupted PDU in this read
		}
		got := make([]byte, 64<<10)
		lba := uint64(i * 128)
		if err := c.Read(ctx, 1, lba, got); err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		if !bytes.Equal(got, want[lba*512:lba*512+uint64(len(got))]) {
			t.Fatalf("read %d: data differs", i)
		}
	}
	s := c.Stats()
	if p.flipped.Load() != 2 || s.Total.DigestErrors != 2 || s.Total.Retries != 2 || s.Recoveries != 0 {
		t.Errorf("flipped %d digest errors %d retries %d recoveries %d", p.flipped.Load(), s.Total.DigestErrors, s.Total.Retries, s.Recoveries)
	}
	// A corrupted copy every time: the read fails, and says why.
	p.flipC2H.Store(1000)
	if err := c.Read(ctx, 1, 0, make([]byte, 4096)); err == nil || !errors.Is(err, errDataDigest) {
		t.Fatalf("read with every copy corrupted: %v", err)
	}
}

func TestDiscover(t *testing.T) {
	tt := startTarget(t, target.Config{}, "mem:1M")
	entries, err := Discover(testCtx(t, 10*time.Second), tt.addr, testOpts())
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(tt.addr)
	found := false
	for _, e := range entries {
		if e.SubNQN == testNQN {
			found = true
			if e.TransportName() != "tcp" || e.Address != host || e.ServiceID != port || e.SubtypeName() != "nvme subsystem" {
				t.Errorf("entry %+v", e)
			}
		}
	}
	if !found {
		t.Errorf("subsystem %s not in the discovery log %+v", testNQN, entries)
	}
}

func TestHostIdentityStable(t *testing.T) {
	dir := t.TempDir()
	nqn, id, err := hostIdentityIn(dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := hostNQNPrefix + formatUUID(id); nqn != want {
		t.Errorf("NQN %q, want %q", nqn, want)
	}
	nqn2, id2, err := hostIdentityIn(dir)
	if err != nil || nqn2 != nqn || id2 != id {
		t.Errorf("second call: %q %x %v; first %q %x", nqn2, id2, err, nqn, id)
	}
	t.Setenv("XDG_CONFIG_HOME", dir)
	t.Setenv("HOME", dir)
	o, err := Options{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if o.HostNQN == "" || o.HostID == ([16]byte{}) {
		t.Errorf("defaults: %q %x", o.HostNQN, o.HostID)
	}
}

// TestBenchmarkDiscardPayload: the benchmark-only mode drops every C2HData
// payload in the kernel (the buffer keeps what it held) and checks no
// digest, while the PDU stream around it (multi-PDU reads, digests, the
// responses) stays in step: reads complete, writes still land, and the same
// controller's admin queue is untouched.
func TestBenchmarkDiscardPayload(t *testing.T) {
	tt := startTarget(t, target.Config{MaxTransfer: 256 << 10, MaxC2HData: 48 << 10}, "mem:8M")
	o := testOpts()
	o.HeaderDigest, o.DataDigest = true, true
	o.BenchmarkDiscardPayload = true
	c := connectT(t, tt.addr, testNQN, o)
	ctx := testCtx(t, 30*time.Second)
	want := tt.nsData(t, 1)
	var total uint64
	for _, size := range []int{512, 4096, 128 << 10, 256 << 10} {
		buf := bytes.Repeat([]byte{0xa5}, size)
		for range 20 {
			if err := c.Read(ctx, 1, 8, buf); err != nil {
				t.Fatalf("read %d: %v", size, err)
			}
			total += uint64(size)
		}
		if !bytes.Equal(buf, bytes.Repeat([]byte{0xa5}, size)) {
			t.Fatalf("read %d: the buffer was written", size)
		}
		if bytes.Equal(want[8*512:8*512+size], buf) {
			t.Fatal("the pattern equals the buffer's filler: the test proves nothing")
		}
	}
	w := make([]byte, 64<<10)
	fillPattern(w, 99)
	if err := c.Write(ctx, 1, 100, w); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(tt.nsData(t, 1)[100*512:100*512+len(w)], w) {
		t.Fatal("write did not land")
	}
	s := c.Stats()
	io := s.Total
	io.BytesCopied -= s.Admin.BytesCopied
	io.BytesDirect -= s.Admin.BytesDirect
	io.CRCSoftware -= s.Admin.CRCSoftware
	if io.BytesDiscarded != total || io.BytesCopied+io.BytesDirect != 0 || io.CRCSoftware != 0 || io.DigestErrors != 0 || s.Recoveries != 0 {
		t.Errorf("I/O queues: discarded %d of %d, copied %d, direct %d, CRCs %d, digest errors %d, recoveries %d",
			io.BytesDiscarded, total, io.BytesCopied, io.BytesDirect, io.CRCSoftware, io.DigestErrors, s.Recoveries)
	}
	if s.Admin.BytesCopied+s.Admin.BytesDirect == 0 || s.Admin.CRCSoftware == 0 {
		t.Errorf("admin queue: copied %d, direct %d, CRCs %d: it should receive and check as always", s.Admin.BytesCopied, s.Admin.BytesDirect, s.Admin.CRCSoftware)
	}
	o.Offload = struct{ ddp.Device }{} // refused before it is used
	if _, err := Connect(ctx, tt.addr, testNQN, o); err == nil {
		t.Error("BenchmarkDiscardPayload with Offload: no error")
	}
}
