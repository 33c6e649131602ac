package faults

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// rig is the integrity tests' system: `nvmefs serve` of a file, the fault
// proxy in front of it, and `nvmefs mount` (with its simulated NIC, both
// digests) through the proxy, plus the model of the namespace.
type rig struct {
	t       testing.TB
	seed    uint64
	backing string
	model   []byte
	srv     *server
	proxy   *faultProxy
	m       *mount

	// idle is what the processes hold with the mount connected and no I/O.
	idleMountFDs, idleMountSockets, idleServeFDs int
	idleGoroutines                               uint64

	// logMark is a count of target log lines taken when a fault started.
	logMark int

	// Totals for the report.
	phases        int
	bytesVerified uint64
	faults        map[string]uint64
	load          loadStats
}

const (
	// nsSize is the namespace: small enough to verify whole after every
	// phase, large enough for 1 MiB reads in 2 MiB regions.
	nsSize = 16 << 20
	// phaseLoad is how long the workload runs in each phase.
	phaseLoad = 3 * time.Second
	// workerStop bounds how long workers may take to finish their last
	// operation once a phase ends (faults are over by then).
	workerStop = 60 * time.Second
	// goroutineSlack is how many goroutines above idle the mount may keep
	// after a phase (go-fuse keeps a few request readers).
	goroutineSlack = 24
)

func newRig(t testing.TB, seed uint64) *rig {
	t.Helper()
	needFUSE(t)
	r := &rig{t: t, seed: seed, faults: map[string]uint64{}}
	r.backing = filepath.Join(t.TempDir(), "ns.img")
	r.model = make([]byte, nsSize)
	fillRandom(rand.New(rand.NewPCG(seed, 1)), r.model)
	if err := os.WriteFile(r.backing, r.model, 0o644); err != nil {
		t.Fatal(err)
	}
	// Reads of up to 512 KiB come as several C2HData PDUs of 128 KiB.
	r.srv = startServer(t, r.backing, "--max-c2h-data", "131072")
	r.proxy = newFaultProxy(t, r.srv.Addr, seed)
	r.m = startMount(t, r.proxy.Addr(),
		"--nr-io-queues", "2", "--queue-size", "32",
		"--hdr-digest", "--data-digest",
		"--reconnect-delay", "200ms", "--ctrl-loss-tmo", "60s",
		"--nic-seed", strconv.FormatUint(seed, 10))
	if nic, err := os.ReadFile(filepath.Join(r.m.Dir, ".nvmefs", "nic")); err != nil || !strings.HasPrefix(string(nic), "state up\n") {
		t.Fatalf(".nvmefs/nic: %q, %v", nic, err)
	}
	s := r.waitIdle(nil)
	if s["rx_nvmeotcp_sk_add"] != 2 {
		t.Fatalf("%d I/O queues offloaded, want 2", s["rx_nvmeotcp_sk_add"])
	}
	var err error
	if r.idleMountFDs, r.idleMountSockets, err = r.m.fds(); err != nil {
		t.Fatal(err)
	}
	if r.idleServeFDs, _, err = r.srv.Proc().fds(); err != nil {
		t.Fatal(err)
	}
	r.idleGoroutines = s["process_goroutines"]
	t.Logf("idle: mount %d fds (%d sockets), %d goroutines; serve %d fds", r.idleMountFDs, r.idleMountSockets, r.idleGoroutines, r.idleServeFDs)
	return r
}

// waitIdle waits until no command is in flight and every DDP mapping the
// host and the NIC set up was torn down; it returns the stats then.
func (r *rig) waitIdle(what *string) map[string]uint64 {
	t := r.t
	t.Helper()
	deadline := time.Now().Add(settle)
	for {
		s := r.m.Stats(t)
		idle := s["nvme0_inflight"] == 0 &&
			s["rx_nvmeotcp_ddp_setup"] == s["rx_nvmeotcp_ddp_teardown"] &&
			s["nvme0_ddp_setup"] == s["nvme0_ddp_teardown"] &&
			s["nvme0_lost"] == 0
		if idle {
			return s
		}
		if time.Now().After(deadline) {
			name := "start"
			if what != nil {
				name = *what
			}
			t.Fatalf("%s: not idle within %v: inflight %d, NIC ddp_setup %d ddp_teardown %d, host ddp_setup %d ddp_teardown %d, lost %d",
				name, settle, s["nvme0_inflight"], s["rx_nvmeotcp_ddp_setup"], s["rx_nvmeotcp_ddp_teardown"],
				s["nvme0_ddp_setup"], s["nvme0_ddp_teardown"], s["nvme0_lost"])
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkResources waits for the mount's and the target's descriptors to be
// back to idle and checks the mount's goroutines.
func (r *rig) checkResources(name string) {
	t := r.t
	t.Helper()
	deadline := time.Now().Add(settle)
	for {
		mfds, msocks, err := r.m.fds()
		if err != nil {
			t.Fatalf("%s: mount fds: %v", name, err)
		}
		sfds, _, err := r.srv.Proc().fds()
		if err != nil {
			t.Fatalf("%s: serve fds: %v", name, err)
		}
		if mfds == r.idleMountFDs && msocks == r.idleMountSockets && sfds == r.idleServeFDs {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: after %v the mount holds %d fds (%d sockets), idle %d (%d); serve %d, idle %d",
				name, settle, mfds, msocks, r.idleMountFDs, r.idleMountSockets, sfds, r.idleServeFDs)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	// go-fuse ends surplus request readers when requests come; a few
	// reads of the stats file give it the chance.
	var g uint64
	for range 20 {
		g = r.m.Stats(t)["process_goroutines"]
		if g <= r.idleGoroutines+goroutineSlack {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("%s: the mount has %d goroutines, %d at idle", name, g, r.idleGoroutines)
}

// phase is one fault scenario of the integrity test.
type phase struct {
	name string
	// inject runs in the test goroutine while the workload runs, for
	// about phaseLoad, and ends the fault (the workload stops after it).
	inject func(r *rig)
	// check looks at the stats before and after: the fault happened and
	// was handled the expected way. It returns the faults injected.
	check func(r *rig, before, after map[string]uint64) uint64
}

// run runs phase number k: load with the fault, then the whole namespace
// verified through the mount and in the backing file, then resources.
func (r *rig) run(k int, p phase) {
	t := r.t
	t.Helper()
	before := r.m.Stats(t)
	var st loadStats
	l := startLoad(t, r.m.File(), r.model, k, r.seed+uint64(k)*7919, &st)
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			l.stop(t, workerStop, func() { r.m.Kill(t) })
		}
	}
	defer stop() // also when inject fails the test
	start := time.Now()
	p.inject(r)
	if d := phaseLoad - time.Since(start); d > 0 {
		time.Sleep(d)
	}
	stop()
	after := r.waitIdle(&p.name)
	if st.Writes.Load() == 0 || st.Reads.Load() == 0 {
		t.Errorf("%s: %d writes and %d reads completed: the workload did not run through the fault", p.name, st.Writes.Load(), st.Reads.Load())
	}
	injected := p.check(r, before, after)
	if injected == 0 {
		t.Errorf("%s: no fault injected", p.name)
	}
	verified := verifyAll(t, r.m.File(), r.backing, r.model)
	r.checkResources(p.name)

	r.phases++
	r.faults[p.name] += injected
	r.bytesVerified += verified + st.BytesVerified.Load()
	r.load.Writes.Add(st.Writes.Load())
	r.load.Reads.Add(st.Reads.Load())
	r.load.BytesWritten.Add(st.BytesWritten.Load())
	r.load.BytesRead.Add(st.BytesRead.Load())
	r.load.Zeroed.Add(st.Zeroed.Load())
	r.load.Flushes.Add(st.Flushes.Load())
	t.Logf("%s: %d faults; %d writes (%d MiB), %d reads (%d MiB), %d MiB verified; recoveries %d, retries %d, digest errors %d, resyncs %d, NIC setups %d (%d refused); mount live heap %d MiB, RSS %d MiB",
		p.name, injected, st.Writes.Load(), st.BytesWritten.Load()>>20, st.Reads.Load(), st.BytesRead.Load()>>20,
		(verified+st.BytesVerified.Load())>>20,
		delta(before, after, "nvme0_recoveries"), delta(before, after, "nvme0_retries"), delta(before, after, "nvme0_digest_errors"),
		delta(before, after, "rx_nvmeotcp_resync"), delta(before, after, "rx_nvmeotcp_ddp_setup"), delta(before, after, "rx_nvmeotcp_ddp_setup_fail"),
		after["process_heap_live_bytes"]>>20, r.m.rssKiB()>>10)
}

func delta(before, after map[string]uint64, name string) uint64 { return after[name] - before[name] }

// sleepFor sleeps d: the fault scripts' pacing.
func sleepFor(d time.Duration) { time.Sleep(d) }

// integrityPhases are the faults of issue 7 part 1, in an order where
// each finds the NIC offloading (the NIC down/up phase ends with the
// connections reset while up, so that they are offloaded again).
func integrityPhases() []phase {
	nicRate := func(name, setting, rate, counter string) phase {
		return phase{
			name: name,
			inject: func(r *rig) {
				r.m.NIC(r.t, setting+" "+rate)
				sleepFor(phaseLoad)
				r.m.NIC(r.t, setting+" 0")
			},
			check: func(r *rig, b, a map[string]uint64) uint64 {
				if delta(b, a, "rx_nvmeotcp_ddp_setup") == 0 || delta(b, a, "nvme0_rx_bytes_placed") == 0 {
					r.t.Errorf("%s: the NIC placed nothing (%d setups)", name, delta(b, a, "rx_nvmeotcp_ddp_setup"))
				}
				return delta(b, a, counter)
			},
		}
	}
	loss := func(name, rate string) phase {
		p := nicRate(name, "loss", rate, "sim_loss_injected")
		check := p.check
		p.check = func(r *rig, b, a map[string]uint64) uint64 {
			n := check(r, b, a)
			if delta(b, a, "rx_nvmeotcp_resync") == 0 || delta(b, a, "nvme0_resync_yes") == 0 {
				r.t.Errorf("%s: %d resync requests, %d answered yes", name, delta(b, a, "rx_nvmeotcp_resync"), delta(b, a, "nvme0_resync_yes"))
			}
			return n
		}
		return p
	}
	return []phase{
		loss("nic-loss-1%", "0.01"),
		loss("nic-loss-20%", "0.2"),
		nicRate("ddp-setup-fail-50%", "setup-fail", "0.5", "rx_nvmeotcp_ddp_setup_fail"),
		{
			name: "teardown-delay-5ms",
			inject: func(r *rig) {
				r.m.NIC(r.t, "teardown-delay 5ms")
				sleepFor(phaseLoad)
				r.m.NIC(r.t, "teardown-delay 0s")
			},
			check: func(r *rig, b, a map[string]uint64) uint64 {
				// Every teardown of the phase was delayed.
				return delta(b, a, "rx_nvmeotcp_ddp_teardown")
			},
		},
		{
			name: "nic-down-up-twice",
			inject: func(r *rig) {
				for range 2 {
					sleepFor(400 * time.Millisecond)
					r.m.NIC(r.t, "down")
					sleepFor(700 * time.Millisecond)
					r.m.NIC(r.t, "up")
					// The queues reconnected in software while the NIC
					// was down; a link reset makes them reconnect with
					// the NIC up, offloaded again.
					sleepFor(200 * time.Millisecond)
					r.proxy.Reset()
				}
			},
			check: func(r *rig, b, a map[string]uint64) uint64 {
				// Each down fails the offloaded queues into recovery, and
				// their reconnect while down runs in software; each reset
				// reconnects them offloaded.
				if n := delta(b, a, "nvme0_recoveries"); n < 4 {
					r.t.Errorf("nic-down-up: %d error recoveries, want at least 4 (2 downs, 2 resets)", n)
				}
				if n := delta(b, a, "rx_nvmeotcp_sk_add_fail"); n < 2 {
					r.t.Errorf("nic-down-up: %d offloads refused, want the reconnects while down to run in software", n)
				}
				if n := delta(b, a, "rx_nvmeotcp_sk_add"); n < 4 {
					r.t.Errorf("nic-down-up: %d queues offloaded, want them offloaded again after each up", n)
				}
				return 2
			},
		},
		{
			name: "payload-corruption",
			inject: func(r *rig) {
				r.logMark = strings.Count(r.srv.Log(), "data digest error")
				r.proxy.CorruptData(0.03)
				sleepFor(phaseLoad)
				r.proxy.CorruptData(0)
			},
			check: func(r *rig, b, a map[string]uint64) uint64 {
				h2c, c2h := r.proxy.DataCorrupted[0].Swap(0), r.proxy.DataCorrupted[1].Swap(0)
				if h2c == 0 || c2h == 0 {
					r.t.Errorf("payload corruption: %d PDUs to the target and %d to the host corrupted, want some each way", h2c, c2h)
				}
				// The host checks the digest of every C2HData PDU of a
				// command still waited for: each corrupted one is a digest
				// error (found by the NIC or in software) and a retry. (The
				// payload of a command whose caller left is dropped
				// unchecked; whatever happened, no corrupt byte may reach a
				// reader, which the workload checks.)
				n := delta(b, a, "nvme0_digest_errors")
				if n == 0 || n > c2h || delta(b, a, "nvme0_retries") < n {
					r.t.Errorf("payload corruption: the host saw %d digest errors and retried %d commands; the proxy corrupted %d C2HData PDUs",
						n, delta(b, a, "nvme0_retries"), c2h)
				} else if n != c2h {
					r.t.Logf("payload corruption: %d of %d corrupted C2HData PDUs were checked (FUSE requests interrupted %d, restarted %d)",
						n, c2h, delta(b, a, "fuse_interrupted"), delta(b, a, "fuse_restarted"))
				}
				// The target checks every H2C digest and fails the command
				// (which the host issues again).
				if n := uint64(strings.Count(r.srv.Log(), "data digest error") - r.logMark); n != h2c {
					r.t.Errorf("payload corruption: the target logged %d data digest errors, the proxy corrupted %d PDUs to it", n, h2c)
				}
				return h2c + c2h
			},
		},
		{
			name: "header-corruption",
			inject: func(r *rig) {
				r.proxy.CorruptHeaders(400 * time.Millisecond)
				sleepFor(phaseLoad)
				r.proxy.CorruptHeaders(0)
			},
			check: func(r *rig, b, a map[string]uint64) uint64 {
				n := r.proxy.HeaderCorrupted[0].Swap(0) + r.proxy.HeaderCorrupted[1].Swap(0)
				// Each corrupted header ends its connection: one recovery
				// (or fewer, when two hit the same association).
				if rec := delta(b, a, "nvme0_recoveries"); rec == 0 || rec > n {
					r.t.Errorf("header corruption: %d recoveries for %d corrupted headers", rec, n)
				}
				return n
			},
		},
		{
			name: "target-kill-restart",
			inject: func(r *rig) {
				sleepFor(800 * time.Millisecond)
				r.srv.Kill()
				sleepFor(time.Second)
				r.srv.Restart(r.t)
			},
			check: func(r *rig, b, a map[string]uint64) uint64 {
				if n := delta(b, a, "nvme0_recoveries"); n == 0 {
					r.t.Error("target kill: no error recovery")
				}
				if n := delta(b, a, "nvme0_reconnects"); n == 0 {
					r.t.Error("target kill: no reconnect")
				}
				return 1
			},
		},
	}
}

// TestIntegrityUnderFaults: concurrent readers and writers through the
// mount (4 writers on their own regions, O_DIRECT and unaligned; 3 readers
// O_DIRECT and unaligned, 1 with 16 asynchronous reads in flight) while,
// in turn, the NIC loses track of 1% and 20% of packets, refuses half its
// mappings, delays every teardown, goes down and up twice, the proxy
// corrupts payload bytes then header bytes (both digests on), and the
// target is killed and restarted. Every read equals the model; after each
// phase the whole namespace, read through the mount and from the backing
// file, equals the model; DDP setups equal teardowns, and descriptors and
// goroutines are back to idle.
func TestIntegrityUnderFaults(t *testing.T) {
	r := newRig(t, 1)
	start := time.Now()
	for k, p := range integrityPhases() {
		if !t.Run(p.name, func(t *testing.T) {
			r.t = t
			r.run(k, p)
		}) {
			r.t = t
			break // a broken rig would fail the later phases for the wrong reason
		}
	}
	r.t = t
	r.report(time.Since(start))
}

func (r *rig) report(d time.Duration) {
	var faults uint64
	var each []string
	for name, n := range r.faults {
		faults += n
		each = append(each, fmt.Sprintf("%s %d", name, n))
	}
	r.t.Logf("%d phases in %v: %d faults injected (%s); %d writes (%d MiB), %d fsyncs, %d MiB zeroed or deallocated, %d reads (%d MiB); %d MiB verified against the model",
		r.phases, d.Round(time.Second), faults, strings.Join(each, ", "),
		r.load.Writes.Load(), r.load.BytesWritten.Load()>>20, r.load.Flushes.Load(), r.load.Zeroed.Load()>>20,
		r.load.Reads.Load(), r.load.BytesRead.Load()>>20, r.bytesVerified>>20)
}
