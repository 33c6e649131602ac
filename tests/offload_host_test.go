package tests

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/nvmefs/nvmefs/ddp"
	"github.com/nvmefs/nvmefs/mlx5sim"
	"github.com/nvmefs/nvmefs/nvmetcp/host"
	"github.com/nvmefs/nvmefs/nvmetcp/target"
	"github.com/nvmefs/nvmefs/nvmetcp/target/store"
	"github.com/nvmefs/nvmefs/nvmetcp/wire"
)

// Host-level tests of the DDP receive offload: our host (nvmetcp/host)
// with a simulated NIC (mlx5sim) against our target in this process, over
// loopback TCP. Every read is compared with the namespace's content; the
// counters of host and NIC show which path the bytes took; after each test
// every DDP setup has its teardown, every sk_add its sk_del, and the
// goroutines are back to their count before it.

const (
	offloadNQN    = "nqn.2026-01.io.nvmefs:offload-test"
	offloadNSSize = 4 << 20
	offloadBS     = 512
)

var offloadHostID = [16]byte{0x0f, 0xf1, 0x0a, 0xd0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}

// offloadRig is a target, an optional proxy, a NIC and a host.
type offloadRig struct {
	t     *testing.T
	data  []byte // the namespace's content
	addr  string // where the host connects (the target or the proxy)
	dev   *mlx5sim.Device
	c     *host.Controller
	base  int // goroutines before the rig
	stops []func()
	done  bool
}

type rigConfig struct {
	target  target.Config
	nic     *mlx5sim.Config // nil: no offload device
	host    func(*host.Options)
	through func(t *testing.T, backend string) string // a proxy between host and target
}

func startOffloadRig(t *testing.T, rc rigConfig) *offloadRig {
	t.Helper()
	rig := &offloadRig{t: t, base: runtime.NumGoroutine()}
	t.Cleanup(rig.close)
	mem, err := store.NewMem(offloadNSSize)
	if err != nil {
		t.Fatal(err)
	}
	rig.data = make([]byte, offloadNSSize)
	rnd := rand.New(rand.NewPCG(uint64(len(t.Name())), 99))
	for i := 0; i < len(rig.data); i += 8 {
		v := rnd.Uint64()
		for k := range 8 {
			rig.data[i+k] = byte(v >> (8 * k))
		}
	}
	if _, err := mem.WriteAt(rig.data, 0); err != nil {
		t.Fatal(err)
	}
	cfg := rc.target
	cfg.SubsystemNQN = offloadNQN
	cfg.Namespaces = []store.Store{mem}
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	tgt, err := target.New(cfg)
	if err != nil {
		mem.Close()
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- tgt.Serve(ln) }()
	rig.stops = append(rig.stops, func() { tgt.Close(); <-served; mem.Close() })
	rig.addr = ln.Addr().String()
	if rc.through != nil {
		rig.addr = rc.through(t, rig.addr)
	}
	o := host.Options{
		HostNQN: "nqn.2014-08.org.nvmexpress:uuid:0ff10ad0-0102-0304-0506-0708090a0b0c", HostID: offloadHostID,
		NrIOQueues: 2, QueueSize: 32,
		IOTimeout: 10 * time.Second, ReconnectDelay: 100 * time.Millisecond, CtrlLossTmo: time.Minute,
		KeepAliveTmo: -1,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if rc.nic != nil {
		rig.dev, err = mlx5sim.New(*rc.nic)
		if err != nil {
			t.Fatal(err)
		}
		o.Offload = rig.dev
	}
	if rc.host != nil {
		rc.host(&o)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rig.c, err = host.Connect(ctx, rig.addr, offloadNQN, o)
	if err != nil {
		t.Fatal(err)
	}
	return rig
}

// close closes the host, checks the NIC's sockets are all gone, stops the
// target and waits for the goroutines to come back to their count before
// the rig. Tests call it to check; Cleanup calls it in any case.
func (rig *offloadRig) close() {
	t := rig.t
	t.Helper()
	if rig.done {
		return
	}
	rig.done = true
	if rig.c != nil {
		rig.c.Close()
		if d := rig.dev; d != nil {
			if add, del := d.Stat("rx_nvmeotcp_sk_add"), d.Stat("rx_nvmeotcp_sk_del"); add != del {
				t.Errorf("after Close: %d sk_add, %d sk_del", add, del)
			}
			if s, td := d.Stat("rx_nvmeotcp_ddp_setup"), d.Stat("rx_nvmeotcp_ddp_teardown"); s != td {
				t.Errorf("after Close: %d DDP setups, %d teardowns", s, td)
			}
		}
	}
	for i := len(rig.stops) - 1; i >= 0; i-- {
		rig.stops[i]()
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > rig.base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Errorf("%d goroutines after the test, %d before:\n%s", runtime.NumGoroutine(), rig.base, buf[:runtime.Stack(buf, true)])
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// checkIdle checks that every DDP setup has been torn down, as the host and
// the NIC count them, with no command in flight.
func (rig *offloadRig) checkIdle() {
	t := rig.t
	t.Helper()
	if rig.dev == nil {
		return
	}
	// Completion waits for TeardownDone: once every read returned, the
	// counts match (a read abandoned by its context may lag a moment).
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := rig.c.Stats().Total
		ds, dt := rig.dev.Stat("rx_nvmeotcp_ddp_setup"), rig.dev.Stat("rx_nvmeotcp_ddp_teardown")
		if s.DDPSetups == s.DDPTeardowns && ds == dt && ds == s.DDPSetups {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("idle: host %d setups, %d teardowns; NIC %d setups, %d teardowns", s.DDPSetups, s.DDPTeardowns, ds, dt)
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// offloadReadSizes are the sizes reads take: below, at and above the NIC's
// threshold (32 KiB), up to more than one command (MaxTransfer is 512 KiB
// with the NIC's 128 pages).
var offloadReadSizes = []int{512, 4096, 8192 + 512, 32<<10 - 512, 32 << 10, 33<<10 + 512, 64 << 10, 128 << 10, 200 << 10, 512 << 10, 1 << 20}

// alignedBuf returns n bytes starting skew bytes after a page boundary.
func alignedBuf(n, skew int) []byte {
	b := make([]byte, n+2*ddp.PageSize)
	off := int(-uintptr(unsafe.Pointer(unsafe.SliceData(b))) & (ddp.PageSize - 1))
	return b[off+skew : off+skew+n : off+skew+n]
}

// readLoad runs reads of random sizes and offsets on workers goroutines
// (count reads in all, or until ctx ends when count is 0) and checks every
// byte. Half the buffers start off a page boundary.
func (rig *offloadRig) readLoad(ctx context.Context, workers, count int, sizes []int) (reads int64, err error) {
	var next, done atomic.Int64
	var mu sync.Mutex
	var first error
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(uint64(w), 7))
			for ctx.Err() == nil {
				if count > 0 && next.Add(1) > int64(count) {
					return
				}
				size := sizes[rnd.IntN(len(sizes))]
				skew := 0
				if rnd.IntN(2) == 1 {
					skew = offloadBS * (1 + rnd.IntN(7))
				}
				buf := alignedBuf(size, skew)
				for i := range buf {
					buf[i] = 0xee
				}
				lba := uint64(rnd.IntN((offloadNSSize-size)/offloadBS + 1))
				err := rig.c.Read(ctx, 1, lba, buf)
				if err == nil && !bytes.Equal(buf, rig.data[lba*offloadBS:lba*offloadBS+uint64(size)]) {
					err = fmt.Errorf("read of %d bytes at block %d (buffer skew %d) returned wrong data", size, lba, skew)
				}
				if err != nil {
					if count == 0 && ctx.Err() != nil {
						return
					}
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					return
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	return done.Load(), first
}

func (rig *offloadRig) mustRead(workers, count int, sizes []int) {
	rig.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := rig.readLoad(ctx, workers, count, sizes); err != nil {
		rig.t.Fatal(err)
	}
}

// placedIsSkipped checks that the bytes the NIC placed are exactly the
// bytes whose copy the host skipped: the host skips only where source and
// destination are the same memory, so the reads returned the NIC's bytes
// in place.
func (rig *offloadRig) placedIsSkipped() {
	rig.t.Helper()
	placed, skipped := rig.dev.Stat("rx_nvmeotcp_offload_bytes"), rig.c.Stats().Total.BytesPlaced
	if placed != skipped {
		rig.t.Errorf("the NIC placed %d bytes, the host skipped the copy of %d", placed, skipped)
	}
}

func TestOffloadHostReads(t *testing.T) {
	for _, tv := range []struct {
		name string
		cfg  target.Config
	}{
		{"one-pdu", target.Config{}},
		{"pdus-8k-success", target.Config{MaxC2HData: 8192, C2HSuccess: true}},
		{"pdus-5000", target.Config{MaxC2HData: 5000}},
	} {
		for _, dv := range []struct {
			name      string
			hdr, data bool
			inline    bool // the NIC's engines run in the host's receiver
		}{{"plain", false, false, false}, {"ddgst", false, true, false}, {"hdgst-ddgst", true, true, false},
			{"plain-inline", false, false, true}, {"hdgst-ddgst-inline", true, true, true}} {
			t.Run(tv.name+"/"+dv.name, func(t *testing.T) {
				rig := startOffloadRig(t, rigConfig{
					target: tv.cfg,
					nic:    &mlx5sim.Config{Seed: 1, Inline: dv.inline},
					host:   func(o *host.Options) { o.HeaderDigest, o.DataDigest = dv.hdr, dv.data },
				})
				info := rig.c.Info()
				if info.MaxSegments != mlx5sim.DefaultMaxSGL || info.MaxTransfer != mlx5sim.DefaultMaxSGL*ddp.PageSize {
					t.Errorf("limits: %d segments, %d bytes per command; want the NIC's %d pages", info.MaxSegments, info.MaxTransfer, mlx5sim.DefaultMaxSGL)
				}
				rig.mustRead(4, 80, offloadReadSizes)
				s := rig.c.Stats().Total
				if got := rig.dev.Stat("rx_nvmeotcp_sk_add"); got != 2 || s.Offloads != 2 || s.OffloadFails != 0 {
					t.Errorf("sk_add: NIC %d, host %d (%d failed); want 2 I/O queues offloaded", got, s.Offloads, s.OffloadFails)
				}
				if rig.dev.Stat("rx_nvmeotcp_offload_bytes") == 0 || s.BytesPlaced == 0 || s.DDPSetups == 0 {
					t.Errorf("nothing offloaded: NIC placed %d bytes, host skipped %d, %d setups", rig.dev.Stat("rx_nvmeotcp_offload_bytes"), s.BytesPlaced, s.DDPSetups)
				}
				if s.BytesCopied == 0 {
					t.Error("no byte copied: reads below the threshold should be")
				}
				if dv.data {
					if s.CRCOffloaded == 0 {
						t.Errorf("no data digest offloaded (%d in software)", s.CRCSoftware)
					}
				} else if s.CRCOffloaded+s.CRCSoftware != 0 {
					t.Errorf("data digests checked without data digests: %d offloaded, %d software", s.CRCOffloaded, s.CRCSoftware)
				}
				if s.DigestErrors != 0 || s.Errors != 0 || s.ResyncRequests != 0 {
					t.Errorf("on a clean link: %d digest errors, %d errors, %d resync requests", s.DigestErrors, s.Errors, s.ResyncRequests)
				}
				if s.InFlightMax < 2 {
					t.Errorf("InFlightMax %d with 4 readers", s.InFlightMax)
				}
				rig.placedIsSkipped()
				rig.checkIdle()
				rig.close()
			})
		}
	}
}

func TestOffloadHostTrackerLoss(t *testing.T) {
	for _, tc := range []struct {
		loss   float64
		inline bool
	}{{0.01, false}, {0.2, false}, {0.2, true}} {
		loss := tc.loss
		t.Run(fmt.Sprintf("%v-inline=%v", loss, tc.inline), func(t *testing.T) {
			rig := startOffloadRig(t, rigConfig{
				target: target.Config{MaxC2HData: 16 << 10},
				nic:    &mlx5sim.Config{Seed: 3, LossRate: loss, Inline: tc.inline},
				host:   func(o *host.Options) { o.HeaderDigest, o.DataDigest = true, true },
			})
			rig.mustRead(4, 120, []int{4096, 32 << 10, 128 << 10, 512 << 10})
			s := rig.c.Stats().Total
			req := rig.dev.Stat("rx_nvmeotcp_resync")
			if req == 0 || s.ResyncRequests != req || s.ResyncYes == 0 || s.ResyncYes+s.ResyncNo > req {
				t.Errorf("resync: NIC asked %d times; host saw %d, answered %d yes, %d no", req, s.ResyncRequests, s.ResyncYes, s.ResyncNo)
			}
			if ok := rig.dev.Stat("sim_resync_ok"); ok == 0 {
				t.Error("the NIC never resumed tracking after a resync")
			}
			// Offload resumes after resyncs: placement and CRC offload go on.
			if s.BytesPlaced == 0 || s.CRCOffloaded == 0 || s.CRCSoftware == 0 {
				t.Errorf("placed %d bytes, %d digests offloaded, %d in software", s.BytesPlaced, s.CRCOffloaded, s.CRCSoftware)
			}
			if s.DigestErrors != 0 {
				t.Errorf("%d digest errors on a clean link", s.DigestErrors)
			}
			t.Logf("loss %v: %d resync requests (%d yes, %d no), %d bytes placed, %d copied, %d digests offloaded, %d in software",
				loss, req, s.ResyncYes, s.ResyncNo, s.BytesPlaced, s.BytesCopied, s.CRCOffloaded, s.CRCSoftware)
			rig.placedIsSkipped()
			rig.checkIdle()
			rig.close()
		})
	}
}

func TestOffloadHostSetupFailures(t *testing.T) {
	rig := startOffloadRig(t, rigConfig{
		target: target.Config{MaxC2HData: 32 << 10, C2HSuccess: true},
		nic:    &mlx5sim.Config{Seed: 5, SetupFailRate: 0.5},
		host:   func(o *host.Options) { o.DataDigest = true },
	})
	rig.mustRead(4, 100, []int{32 << 10, 128 << 10, 256 << 10})
	s := rig.c.Stats().Total
	if s.DDPSetups == 0 || s.DDPSetupFails == 0 || s.DDPSetupFails != rig.dev.Stat("rx_nvmeotcp_ddp_setup_fail") {
		t.Errorf("setups: %d ok, %d failed (NIC: %d failed); want both paths", s.DDPSetups, s.DDPSetupFails, rig.dev.Stat("rx_nvmeotcp_ddp_setup_fail"))
	}
	if s.BytesPlaced == 0 || s.BytesCopied == 0 {
		t.Errorf("%d bytes placed, %d copied: want both", s.BytesPlaced, s.BytesCopied)
	}
	rig.placedIsSkipped()
	rig.checkIdle()
	rig.close()
}

func TestOffloadHostTeardownDelay(t *testing.T) {
	const delay = 3 * time.Millisecond
	rig := startOffloadRig(t, rigConfig{
		target: target.Config{MaxC2HData: 8192},
		nic:    &mlx5sim.Config{Seed: 6, TeardownDelay: delay},
		host:   func(o *host.Options) { o.DataDigest = true },
	})
	rig.mustRead(4, 60, []int{4096, 64 << 10, 512 << 10})
	// A read completes only after TeardownDone: reads that were set up
	// take at least the delay.
	start := time.Now()
	buf := alignedBuf(64<<10, 0)
	if err := rig.c.Read(context.Background(), 1, 0, buf); err != nil || !bytes.Equal(buf, rig.data[:64<<10]) {
		t.Fatalf("read: %v (or wrong data)", err)
	}
	if took := time.Since(start); took < delay {
		t.Errorf("an offloaded read completed in %v, before its teardown (%v)", took, delay)
	}
	rig.placedIsSkipped()
	rig.checkIdle()
	rig.close()
}

// A read abandoned by its context while its buffer is mapped: the buffer is
// unmapped before Read returns (the NIC writes nothing into it after).
func TestOffloadHostAbandonedRead(t *testing.T) {
	rig := startOffloadRig(t, rigConfig{
		target: target.Config{MaxC2HData: 4096},
		nic:    &mlx5sim.Config{Seed: 8, TeardownDelay: time.Millisecond},
		host:   func(o *host.Options) { o.DataDigest = true },
	})
	for i := range 40 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(50+i*20)*time.Microsecond)
		buf := alignedBuf(512<<10, 0)
		err := rig.c.Read(ctx, 1, 0, buf)
		cancel()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			t.Fatal(err)
		}
		// Whatever happened, the buffer is the caller's again: nothing
		// may write into it from now on.
		snap := append([]byte(nil), buf...)
		time.Sleep(2 * time.Millisecond)
		if !bytes.Equal(snap, buf) {
			t.Fatal("the buffer changed after Read returned")
		}
	}
	rig.mustRead(2, 20, []int{128 << 10})
	rig.checkIdle()
	rig.close()
}

func TestOffloadHostNICDownUp(t *testing.T) {
	rig := startOffloadRig(t, rigConfig{
		target: target.Config{MaxC2HData: 16 << 10},
		nic:    &mlx5sim.Config{Seed: 9},
		host:   func(o *host.Options) { o.DataDigest = true },
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	var reads int64
	loadErr := make(chan error, 1)
	go func() {
		n, err := rig.readLoad(loadCtx, 4, 0, []int{4096, 128 << 10, 512 << 10})
		reads = n
		loadErr <- err
	}()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for !cond() {
			if ctx.Err() != nil {
				t.Fatalf("%s: not within the test's time", what)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	for round := range 2 {
		adds := rig.dev.Stat("rx_nvmeotcp_sk_add")
		placed := rig.dev.Stat("rx_nvmeotcp_offload_bytes")
		rec := rig.c.Stats().Recoveries
		waitFor("offloaded reads before the NIC goes down", func() bool { return rig.dev.Stat("rx_nvmeotcp_offload_bytes") > placed+(1<<20) })
		rig.dev.SetDown(true)
		waitFor("error recovery after the NIC went down", func() bool { return rig.c.Stats().Recoveries > rec })
		rig.dev.SetDown(false)
		waitFor("offload re-added by the reconnect", func() bool { return rig.dev.Stat("rx_nvmeotcp_sk_add") >= adds+2 })
		placed = rig.dev.Stat("rx_nvmeotcp_offload_bytes")
		waitFor("offloaded reads after the reconnect", func() bool { return rig.dev.Stat("rx_nvmeotcp_offload_bytes") > placed+(1<<20) })
		t.Logf("round %d: recoveries %d, sk_add %d", round, rig.c.Stats().Recoveries, rig.dev.Stat("rx_nvmeotcp_sk_add"))
	}
	// Down through the reconnect: the new queues run in software (sk_add
	// fails) and the reads go on, exact.
	fails := rig.c.Stats().Total.OffloadFails
	rec := rig.c.Stats().Recoveries
	rig.dev.SetDown(true)
	waitFor("error recovery", func() bool { return rig.c.Stats().Recoveries > rec })
	waitFor("a reconnect in software", func() bool { return rig.c.Stats().Total.OffloadFails >= fails+2 && rig.c.Info().OffloadedQueues == 0 })
	copied := rig.c.Stats().Total.BytesDirect
	waitFor("software reads after the reconnect", func() bool { return rig.c.Stats().Total.BytesDirect > copied+(1<<20) })
	rig.dev.SetDown(false)
	stopLoad()
	if err := <-loadErr; err != nil {
		t.Fatal(err)
	}
	s := rig.c.Stats().Total
	t.Logf("%d reads exact through 3 NIC down/up; %d retries, %d dropped packets", reads, s.Retries, rig.dev.Stat("rx_nvmeotcp_drop"))
	rig.checkIdle()
	rig.close()
}

// A device that maps any 16-bit tag: command ids keep their generation.
func TestOffloadHostFullTagRange(t *testing.T) {
	rig := startOffloadRig(t, rigConfig{
		target: target.Config{MaxC2HData: 16 << 10},
		nic:    &mlx5sim.Config{Seed: 14, FullTagRange: true},
		host:   func(o *host.Options) { o.DataDigest = true },
	})
	rig.mustRead(4, 60, []int{4096, 64 << 10, 512 << 10})
	if s := rig.c.Stats().Total; s.DDPSetups == 0 || s.DDPSetupFails != 0 || s.BytesPlaced == 0 {
		t.Errorf("%d setups, %d refused, %d bytes placed", s.DDPSetups, s.DDPSetupFails, s.BytesPlaced)
	}
	rig.placedIsSkipped()
	rig.checkIdle()
	rig.close()
}

func TestOffloadHostOffAndCapabilities(t *testing.T) {
	for _, v := range []struct {
		name string
		nic  bool
		caps ddp.Capability
	}{
		{"no-device", false, 0},
		{"placement-off", true, ddp.CapRxCRC},
		{"rx-crc-off", true, ddp.CapPlacement},
	} {
		t.Run(v.name, func(t *testing.T) {
			rc := rigConfig{
				target: target.Config{MaxC2HData: 16 << 10},
				host:   func(o *host.Options) { o.DataDigest = true },
			}
			if v.nic {
				rc.nic = &mlx5sim.Config{Seed: 10}
			}
			rig := startOffloadRig(t, rc)
			if rig.dev != nil {
				if err := rig.dev.SetCapabilities(v.caps); err != nil {
					t.Fatal(err)
				}
			}
			rig.mustRead(4, 60, offloadReadSizes)
			s := rig.c.Stats().Total
			switch v.name {
			case "no-device":
				if s.Offloads != 0 || s.BytesPlaced != 0 || s.CRCOffloaded != 0 || s.CRCSoftware == 0 {
					t.Errorf("software path: %d offloads, %d placed, %d digests offloaded, %d in software", s.Offloads, s.BytesPlaced, s.CRCOffloaded, s.CRCSoftware)
				}
				if info := rig.c.Info(); info.MaxSegments != 0 || info.MaxTransfer != host.DefaultMaxTransfer {
					t.Errorf("without a NIC: %d segments, %d bytes per command", info.MaxSegments, info.MaxTransfer)
				}
			case "placement-off":
				if s.DDPSetups != 0 || s.BytesPlaced != 0 || s.CRCOffloaded == 0 {
					t.Errorf("placement off: %d setups, %d bytes placed, %d digests offloaded", s.DDPSetups, s.BytesPlaced, s.CRCOffloaded)
				}
			case "rx-crc-off":
				if s.BytesPlaced == 0 || s.CRCOffloaded != 0 || s.CRCSoftware == 0 {
					t.Errorf("rx-crc off: %d placed, %d digests offloaded, %d in software", s.BytesPlaced, s.CRCOffloaded, s.CRCSoftware)
				}
			}
			if rig.dev != nil {
				rig.placedIsSkipped()
			}
			rig.checkIdle()
			rig.close()
		})
	}
}

// corruptingProxy relays PDUs between host and target and flips one payload
// byte of the next C2HData PDU on an I/O queue each time it is armed.
type corruptingProxy struct {
	*hostileProxy
}

func (p corruptingProxy) arm() {
	p.attack.Store(&proxyAttack{wire.TypeC2HData, flipPayload})
}

// flipPayload flips a byte in the middle of a C2HData PDU's payload, not
// its digest: the data digest no longer matches.
func flipPayload(pdu []byte) []byte {
	pdo := int(pdu[3])
	dl := int(wire.DataHeader(pdu).DataLen())
	if dl > 0 && pdo+dl <= len(pdu) {
		pdu[pdo+dl/2] ^= 0x40
	}
	return pdu
}

func TestOffloadHostCorruptedPayload(t *testing.T) {
	for _, withNIC := range []bool{true, false} {
		t.Run(map[bool]string{true: "offload", false: "software"}[withNIC], func(t *testing.T) {
			var px corruptingProxy
			rc := rigConfig{
				target: target.Config{MaxC2HData: 32 << 10},
				host:   func(o *host.Options) { o.HeaderDigest, o.DataDigest = true, true; o.NrIOQueues = 1 },
				through: func(t *testing.T, backend string) string {
					px = corruptingProxy{newHostileProxy(t, backend)}
					return px.Addr()
				},
			}
			if withNIC {
				rc.nic = &mlx5sim.Config{Seed: 11}
			}
			rig := startOffloadRig(t, rc)
			rig.stops = append(rig.stops, px.Close)
			for i := range 20 {
				px.arm()
				size := []int{32 << 10, 128 << 10, 4096}[i%3]
				buf := alignedBuf(size, 0)
				lba := uint64(i * 64)
				if err := rig.c.Read(context.Background(), 1, lba, buf); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(buf, rig.data[lba*offloadBS:lba*offloadBS+uint64(size)]) {
					t.Fatalf("read %d returned corrupted data", i)
				}
			}
			s := rig.c.Stats().Total
			if fired := px.fired.Load(); fired == 0 || s.DigestErrors != uint64(fired) || s.Retries < uint64(fired) {
				t.Errorf("%d PDUs corrupted: %d digest errors, %d retries", fired, s.DigestErrors, s.Retries)
			}
			if withNIC {
				if bad := rig.dev.Stat("sim_crc_bad"); bad != uint64(px.fired.Load()) || s.BytesPlaced == 0 {
					t.Errorf("the NIC found %d bad digests of %d corrupted PDUs; %d bytes placed", bad, px.fired.Load(), s.BytesPlaced)
				}
				rig.placedIsSkipped()
			}

			// A read whose every answer is corrupted fails with a data
			// digest error after its retries: corrupted bytes are never
			// delivered as data.
			var always *proxyAttack
			always = &proxyAttack{wire.TypeC2HData, func(pdu []byte) []byte {
				px.attack.Store(always) // again for the next one
				return flipPayload(pdu)
			}}
			px.attack.Store(always)
			before := rig.c.Stats().Total.DigestErrors
			buf := alignedBuf(64<<10, 0)
			err := rig.c.Read(context.Background(), 1, 0, buf)
			px.attack.Store(nil)
			if !errors.Is(err, wire.ErrDataDigest) {
				t.Fatalf("read under constant corruption: %v, want a data digest error", err)
			}
			if n := rig.c.Stats().Total.DigestErrors - before; n < 6 {
				t.Errorf("%d digest errors for a read tried 6 times", n)
			}
			rig.checkIdle()
			rig.close()
		})
	}
}

// A soak under every fault at once: tracker loss, refused setups, delayed
// teardowns, capabilities switched at run time, reads abandoned by their
// context, the NIC going down and up, and a writer reading back its own
// writes (R2T on offloaded queues). Every read is exact; at the end every
// setup has its teardown. NVMEFS_SOAK sets its length (default 3 s); run it
// with -race.
func TestOffloadHostSoak(t *testing.T) {
	length := 3 * time.Second
	if v := os.Getenv("NVMEFS_SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("NVMEFS_SOAK=%q: %v", v, err)
		}
		length = d
	}
	rig := startOffloadRig(t, rigConfig{
		target: target.Config{MaxC2HData: 24 << 10, C2HSuccess: true, R2TSize: 16 << 10},
		nic:    &mlx5sim.Config{Seed: 12, LossRate: 0.02, SetupFailRate: 0.1, TeardownDelay: 200 * time.Microsecond, MTU: 4000},
		host:   func(o *host.Options) { o.HeaderDigest, o.DataDigest = true, true; o.QueueSize = 16 },
	})
	// The writer owns the last 512 KiB; readers read the rest.
	const region = 512 << 10
	readable := offloadNSSize - region
	ctx, cancel := context.WithTimeout(context.Background(), length+time.Minute)
	defer cancel()
	soakCtx, stop := context.WithTimeout(ctx, length)
	defer stop()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	report := func(err error) {
		select {
		case errs <- err:
		default:
		}
	}
	var reads, abandoned, writes atomic.Int64
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(uint64(w), 13))
			sizes := []int{4096, 32 << 10, 100 << 10, 512 << 10, 1 << 20}
			for soakCtx.Err() == nil {
				size := sizes[rnd.IntN(len(sizes))]
				buf := alignedBuf(size, offloadBS*rnd.IntN(2))
				lba := uint64(rnd.IntN((readable-size)/offloadBS + 1))
				rctx, rcancel := ctx, context.CancelFunc(func() {})
				if rnd.IntN(10) == 0 {
					rctx, rcancel = context.WithTimeout(ctx, time.Duration(rnd.IntN(300))*time.Microsecond)
				}
				err := rig.c.Read(rctx, 1, lba, buf)
				rcancel()
				switch {
				case err != nil && rctx.Err() != nil && ctx.Err() == nil:
					abandoned.Add(1)
				case err != nil:
					report(err)
					return
				case !bytes.Equal(buf, rig.data[lba*offloadBS:lba*offloadBS+uint64(size)]):
					report(fmt.Errorf("read of %d bytes at block %d: wrong data", size, lba))
					return
				default:
					reads.Add(1)
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		base := uint64(readable / offloadBS)
		wbuf, rbuf := alignedBuf(region, 0), alignedBuf(region, 0)
		for i := 0; soakCtx.Err() == nil; i++ {
			for k := range wbuf {
				wbuf[k] = byte(k*31 + i)
			}
			if err := rig.c.Write(ctx, 1, base, wbuf); err != nil {
				report(fmt.Errorf("write %d: %w", i, err))
				return
			}
			if err := rig.c.Read(ctx, 1, base, rbuf); err != nil || !bytes.Equal(rbuf, wbuf) {
				report(fmt.Errorf("reading back write %d: %v (or wrong data)", i, err))
				return
			}
			writes.Add(1)
		}
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		caps := []ddp.Capability{ddp.CapPlacement | ddp.CapRxCRC, ddp.CapRxCRC, ddp.CapPlacement, ddp.CapPlacement | ddp.CapRxCRC}
		tick := time.NewTicker(length / 8)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-soakCtx.Done():
				rig.dev.SetDown(false)
				rig.dev.SetCapabilities(ddp.CapPlacement | ddp.CapRxCRC)
				return
			case <-tick.C:
			}
			rig.dev.SetCapabilities(caps[i%len(caps)])
			if i%4 == 2 {
				rig.dev.SetDown(true)
				time.Sleep(20 * time.Millisecond)
				rig.dev.SetDown(false)
			}
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	s := rig.c.Stats().Total
	t.Logf("%d reads exact, %d abandoned, %d writes read back; recoveries %d; NIC: %d placed bytes, %d resyncs, %d setups (%d refused), %d sk_add",
		reads.Load(), abandoned.Load(), writes.Load(), rig.c.Stats().Recoveries, rig.dev.Stat("rx_nvmeotcp_offload_bytes"),
		rig.dev.Stat("rx_nvmeotcp_resync"), s.DDPSetups, s.DDPSetupFails, rig.dev.Stat("rx_nvmeotcp_sk_add"))
	if reads.Load() == 0 || writes.Load() == 0 || s.BytesPlaced == 0 || s.ResyncYes == 0 {
		t.Errorf("the soak did not exercise the offload: %d reads, %d writes, %d bytes placed, %d resyncs confirmed", reads.Load(), writes.Load(), s.BytesPlaced, s.ResyncYes)
	}
	rig.checkIdle()
	rig.close()
}
