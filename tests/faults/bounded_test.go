package faults

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/internal/aio"
)

// Bounded failure (issue 7 part 2): a target gone for longer than
// ctrl_loss_tmo, or one that accepts but never answers, makes the mount's
// reads and writes fail with EIO in bounded time, or recover, and the mount
// still unmounts.

// prober keeps reads and writes going through a mount, each goroutine until
// its first error, and records when and how each ended.
type prober struct {
	wg     sync.WaitGroup
	mu     sync.Mutex
	ends   []probeEnd
	okLate []string // operations that succeeded though started after the cut
	cut    time.Time
}

type probeEnd struct {
	who   string
	start time.Time // of the failing operation
	at    time.Time
	err   error
}

// startProbes starts two O_DIRECT readers, two O_DIRECT writers (on their
// own quarters of the file), an unaligned writer (read-modify-write) and an
// asynchronous reader with aioDepth reads in flight.
func startProbes(t testing.TB, file string, size int) *prober {
	t.Helper()
	p := &prober{}
	quarter := size / 4
	for i := range 2 {
		p.loop(t, file, fmt.Sprintf("direct reader %d", i), os.O_RDONLY|syscall.O_DIRECT, func(f *os.File, buf []byte, rng *rand.Rand) error {
			_, err := f.ReadAt(buf[:128<<10], int64(pageSize*rng.IntN((size-128<<10)/pageSize)))
			return err
		})
		lo := i * quarter
		p.loop(t, file, fmt.Sprintf("direct writer %d", i), os.O_WRONLY|syscall.O_DIRECT, func(f *os.File, buf []byte, rng *rand.Rand) error {
			_, err := f.WriteAt(buf[:64<<10], int64(lo+pageSize*rng.IntN((quarter-64<<10)/pageSize)))
			return err
		})
	}
	p.loop(t, file, "unaligned writer", os.O_WRONLY, func(f *os.File, buf []byte, rng *rand.Rand) error {
		_, err := f.WriteAt(buf[:1000], int64(2*quarter+1+rng.IntN(quarter-2000)))
		return err
	})
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		f, err := os.OpenFile(file, os.O_RDONLY|syscall.O_DIRECT, 0)
		if err != nil {
			p.endAt("aio reader", time.Now(), err)
			return
		}
		defer f.Close()
		ac, err := aio.New(aioDepth)
		if err != nil {
			p.endAt("aio reader", time.Now(), err)
			return
		}
		defer ac.Close()
		bufs, free, err := aio.Buffers(aioDepth, 64<<10)
		if err != nil {
			p.endAt("aio reader", time.Now(), err)
			return
		}
		defer free()
		rng := rand.New(rand.NewPCG(7, 7))
		for {
			rs := make([]aio.Read, aioDepth)
			for i := range rs {
				rs[i] = aio.Read{Buf: bufs[i], Offset: int64(pageSize * rng.IntN((size-64<<10)/pageSize))}
			}
			start := time.Now()
			err := ac.ReadAll(int(f.Fd()), rs)
			for _, r := range rs {
				if err == nil && r.Err != nil {
					err = r.Err
				}
			}
			if err != nil {
				p.endAt("aio reader", start, err)
				return
			}
			p.done("aio reader", start)
		}
	}()
	return p
}

func (p *prober) loop(t testing.TB, file, who string, flag int, op func(*os.File, []byte, *rand.Rand) error) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		f, err := os.OpenFile(file, flag, 0)
		if err != nil {
			p.endAt(who, time.Now(), err)
			return
		}
		defer f.Close()
		bufs, free, err := aio.Buffers(1, 128<<10)
		if err != nil {
			p.endAt(who, time.Now(), err)
			return
		}
		defer free()
		rng := rand.New(rand.NewPCG(uint64(len(who)), uint64(who[len(who)-1])))
		for {
			start := time.Now()
			if err := op(f, bufs[0], rng); err != nil {
				p.endAt(who, start, err)
				return
			}
			p.done(who, start)
		}
	}()
}

// setCut marks the moment after which nothing may succeed.
func (p *prober) setCut(at time.Time) {
	p.mu.Lock()
	p.cut = at
	p.mu.Unlock()
}

func (p *prober) done(who string, start time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.cut.IsZero() && start.After(p.cut) && len(p.okLate) < 10 {
		p.okLate = append(p.okLate, fmt.Sprintf("%s: an operation started %v after the target was gone succeeded", who, start.Sub(p.cut)))
	}
}

func (p *prober) endAt(who string, start time.Time, err error) {
	p.mu.Lock()
	p.ends = append(p.ends, probeEnd{who: who, start: start, at: time.Now(), err: err})
	p.mu.Unlock()
}

// probeCount is how many goroutines startProbes runs.
const probeCount = 6

// wait waits until every probe ended or the deadline passed, and returns
// what ended.
func (p *prober) wait(deadline time.Time) []probeEnd {
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Until(deadline)):
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]probeEnd(nil), p.ends...)
}

// checkEIO checks that every probe ended with EIO within [lo, hi].
func checkEIO(t testing.TB, ends []probeEnd, lo, hi time.Time, ref time.Time) {
	t.Helper()
	if len(ends) != probeCount {
		var who []string
		for _, e := range ends {
			who = append(who, e.who)
		}
		t.Errorf("%d of %d readers and writers returned by %v after the fault (those that did: %s); the rest hang", len(ends), probeCount, hi.Sub(ref), strings.Join(who, ", "))
	}
	for _, e := range ends {
		switch {
		case !errors.Is(e.err, syscall.EIO):
			t.Errorf("%s: ended with %v, want EIO", e.who, e.err)
		case e.at.Before(lo) || e.at.After(hi):
			t.Errorf("%s: EIO %v after the fault, want within [%v, %v]", e.who, e.at.Sub(ref).Round(10*time.Millisecond), lo.Sub(ref), hi.Sub(ref))
		default:
			t.Logf("%s: EIO %v after the fault (operation started %v after it)", e.who, e.at.Sub(ref).Round(10*time.Millisecond), e.start.Sub(ref).Round(time.Millisecond))
		}
	}
}

// checkNewIOFails: once the controller is lost, a new read, write or
// fsync fails with EIO at once.
func checkNewIOFails(t testing.TB, file string) {
	t.Helper()
	for _, c := range []struct {
		what string
		flag int
		op   func(f *os.File) error
	}{
		{"new O_DIRECT read", os.O_RDONLY | syscall.O_DIRECT, func(f *os.File) error {
			b, free, _ := aio.Buffers(1, pageSize)
			defer free()
			_, err := f.ReadAt(b[0], 0)
			return err
		}},
		{"new read", os.O_RDONLY, func(f *os.File) error { _, err := f.ReadAt(make([]byte, 100), 7); return err }},
		{"new write", os.O_WRONLY, func(f *os.File) error { _, err := f.WriteAt(make([]byte, 100), 7); return err }},
		{"fsync", os.O_WRONLY, func(f *os.File) error { return f.Sync() }},
	} {
		f, err := os.OpenFile(file, c.flag, 0)
		if err != nil {
			t.Errorf("%s: open: %v", c.what, err)
			continue
		}
		start := time.Now()
		err = c.op(f)
		f.Close()
		if !errors.Is(err, syscall.EIO) || time.Since(start) > time.Second {
			t.Errorf("%s after the controller was lost: %v after %v, want EIO at once", c.what, err, time.Since(start))
		}
	}
}

// lostMount checks a mount whose controller is lost: the stats say so and
// it holds no socket.
func lostMount(t testing.TB, m *mount, idleFDs, idleSockets int) {
	t.Helper()
	if s := m.Stats(t); s["nvme0_lost"] != 1 {
		t.Errorf("stats: nvme0_lost %d, want 1", s["nvme0_lost"])
	}
	deadline := time.Now().Add(settle)
	for {
		fds, socks, err := m.fds()
		if err != nil {
			t.Fatal(err)
		}
		if socks == 0 && fds == idleFDs-idleSockets {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("the lost mount holds %d fds (%d sockets); idle it had %d (%d sockets)", fds, socks, idleFDs, idleSockets)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// smallNamespace writes a 4 MiB random backing file.
func smallNamespace(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ns.img")
	data := make([]byte, 4<<20)
	fillRandom(rand.New(rand.NewPCG(3, 3)), data)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// waitBusy waits until every probe has completed an operation or two, so
// that the fault finds I/O in flight.
func waitBusy(t testing.TB, m *mount) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for m.Stats(t)["nvme0_commands"] < 200 {
		if time.Now().After(deadline) {
			t.Fatal("the probes did not get going")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestTargetGoneFailsIOBounded: the target is killed (SIGKILL) under
// reads and writes and never comes back. With --ctrl-loss-tmo 3s and
// --reconnect-delay 500ms the host holds the I/O through its reconnect
// attempts, then every pending read and write, direct, unaligned and
// asynchronous, fails with EIO within ctrl_loss_tmo + 3 s of the kill (and
// none earlier than ctrl_loss_tmo - 1 s); new ones fail at once; the mount
// holds no socket; SIGTERM unmounts it and it exits 0.
func TestTargetGoneFailsIOBounded(t *testing.T) {
	needFUSE(t)
	const ctrlLoss = 3 * time.Second
	backing := smallNamespace(t)
	srv := startServer(t, backing)
	m := startMount(t, srv.Addr, "--nr-io-queues", "2", "--queue-size", "32",
		"--ctrl-loss-tmo", ctrlLoss.String(), "--reconnect-delay", "500ms")
	idleFDs, idleSockets, err := m.fds()
	if err != nil {
		t.Fatal(err)
	}
	p := startProbes(t, m.File(), 4<<20)
	t.Cleanup(func() { m.Kill(t); p.wg.Wait() }) // unblocks a hung probe
	waitBusy(t, m)

	srv.Kill()
	cut := time.Now()
	p.setCut(cut.Add(100 * time.Millisecond))
	ends := p.wait(cut.Add(ctrlLoss + 3*time.Second))
	checkEIO(t, ends, cut.Add(ctrlLoss-time.Second), cut.Add(ctrlLoss+3*time.Second), cut)
	for _, e := range p.okLate {
		t.Error(e)
	}
	checkNewIOFails(t, m.File())
	lostMount(t, m, idleFDs, idleSockets)
	if !strings.Contains(m.Log(), "controller lost") {
		t.Errorf("the mount did not log the lost controller:\n%s", m.Log())
	}
	start := time.Now()
	m.Stop(t)
	t.Logf("stopped (SIGTERM) in %v", time.Since(start).Round(time.Millisecond))
}

// TestStopDuringRecovery: the target is killed under reads and writes and
// the mount is stopped (SIGTERM) while the host still tries to reconnect
// (--ctrl-loss-tmo 60s): the mount detaches, gives the open files the
// documented 10 s, then closes the controller under the I/O still waiting
// (not after a second wait) and exits 0 within 10 s + 3 s; every reader
// and writer returns an error (none hangs, none succeeds).
func TestStopDuringRecovery(t *testing.T) {
	needFUSE(t)
	backing := smallNamespace(t)
	srv := startServer(t, backing)
	m := startMount(t, srv.Addr, "--nr-io-queues", "2", "--queue-size", "32",
		"--ctrl-loss-tmo", "60s", "--reconnect-delay", "500ms")
	p := startProbes(t, m.File(), 4<<20)
	t.Cleanup(func() { m.Kill(t); p.wg.Wait() })
	waitBusy(t, m)

	srv.Kill()
	cut := time.Now()
	p.setCut(cut.Add(100 * time.Millisecond))
	time.Sleep(time.Second)
	stop := time.Now()
	m.Stop(t) // fails the test unless it exits 0 within mountStopTimeout
	if d := time.Since(stop); d > 13*time.Second {
		t.Errorf("the mount took %v to stop, want at most the 10 s for open files + 3 s", d)
	}
	t.Logf("stopped (SIGTERM) in %v", time.Since(stop).Round(time.Millisecond))
	ends := p.wait(time.Now().Add(5 * time.Second))
	if len(ends) != probeCount {
		t.Errorf("%d of %d readers and writers returned after the mount stopped", len(ends), probeCount)
	}
	for _, e := range ends {
		if e.err == nil {
			t.Errorf("%s: ended without an error", e.who)
		}
		t.Logf("%s: %v %v after the kill", e.who, e.err, e.at.Sub(cut).Round(10*time.Millisecond))
	}
	for _, e := range p.okLate {
		t.Error(e)
	}
}

// TestUnresponsiveTarget: the proxy in front of the target freezes: it
// accepts connections and reads, but forwards nothing, as a target that
// accepts and never answers.
//   - keep-alive: the Keep Alive (every 1 s, --keep-alive-tmo 2s) goes
//     unanswered; the host starts error recovery within 1.5 keep-alive
//     timeouts + 1 s, and once the proxy thaws (after 5 s) reads and
//     writes resume: none fails, all data equals the model.
//   - io-timeout: keep-alive off, --io-timeout 2s: the host's watchdog
//     finds the commands overdue and recovers the same way.
//   - never-answers: frozen for good, --ctrl-loss-tmo 3s: every read and
//     write fails with EIO within detection + ctrl_loss_tmo + the last
//     attempt's 2 s + 3 s; `umount MOUNTPOINT` unmounts and the process
//     exits 0 by itself.
func TestUnresponsiveTarget(t *testing.T) {
	needFUSE(t)
	for _, c := range []struct {
		name   string
		flags  []string
		detect time.Duration // bound on the start of error recovery
	}{
		{"keep-alive", []string{"--keep-alive-tmo", "2s", "--io-timeout", "60s"}, 3*time.Second + time.Second},
		{"io-timeout", []string{"--keep-alive-tmo", "-1s", "--io-timeout", "2s"}, 2*time.Second + time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := &rig{t: t, seed: 11, faults: map[string]uint64{}}
			r.backing = filepath.Join(t.TempDir(), "ns.img")
			r.model = make([]byte, nsSize)
			fillRandom(rand.New(rand.NewPCG(11, 1)), r.model)
			if err := os.WriteFile(r.backing, r.model, 0o644); err != nil {
				t.Fatal(err)
			}
			r.srv = startServer(t, r.backing)
			r.proxy = newFaultProxy(t, r.srv.Addr, 11)
			r.m = startMount(t, r.proxy.Addr(), append([]string{"--nr-io-queues", "2", "--queue-size", "32",
				"--reconnect-delay", "300ms", "--ctrl-loss-tmo", "60s"}, c.flags...)...)
			s := r.waitIdle(nil)
			var err error
			if r.idleMountFDs, r.idleMountSockets, err = r.m.fds(); err != nil {
				t.Fatal(err)
			}
			if r.idleServeFDs, _, err = r.srv.Proc().fds(); err != nil {
				t.Fatal(err)
			}
			r.idleGoroutines = s["process_goroutines"]

			r.run(0, phase{
				name: c.name,
				inject: func(r *rig) {
					before := r.m.Stats(t)["nvme0_recoveries"]
					time.Sleep(500 * time.Millisecond)
					r.proxy.Freeze()
					cut := time.Now()
					var detected time.Duration
					for time.Since(cut) < 5*time.Second {
						if detected == 0 && r.m.Stats(t)["nvme0_recoveries"] > before {
							detected = time.Since(cut)
						}
						time.Sleep(50 * time.Millisecond)
					}
					r.proxy.Thaw()
					switch {
					case detected == 0:
						t.Errorf("frozen for 5 s: no error recovery started")
					case detected > c.detect:
						t.Errorf("error recovery started %v after the freeze, want within %v:\n%s", detected, c.detect, grepLines(r.m.Log(), "recovery", "timeout"))
					default:
						t.Logf("error recovery started %v after the freeze: %s", detected.Round(10*time.Millisecond), grepLines(r.m.Log(), "starting error recovery"))
					}
					// After the thaw the workload must get going again.
					thawed := r.m.Stats(t)["nvme0_commands"]
					deadline := time.Now().Add(10 * time.Second)
					for r.m.Stats(t)["nvme0_commands"] < thawed+100 {
						if time.Now().After(deadline) {
							t.Errorf("no I/O completes within 10 s of the thaw")
							break
						}
						time.Sleep(50 * time.Millisecond)
					}
				},
				check: func(r *rig, b, a map[string]uint64) uint64 {
					if delta(b, a, "nvme0_timeouts") == 0 {
						t.Errorf("no timeout counted (keep-alive or I/O)")
					}
					if delta(b, a, "nvme0_reconnects") == 0 {
						t.Errorf("no reconnect after the thaw")
					}
					return 1
				},
			})
		})
	}

	t.Run("never-answers", func(t *testing.T) {
		const ctrlLoss, kato = 3 * time.Second, 2 * time.Second
		backing := smallNamespace(t)
		srv := startServer(t, backing)
		proxy := newFaultProxy(t, srv.Addr, 12)
		m := startMount(t, proxy.Addr(), "--nr-io-queues", "2", "--queue-size", "32",
			"--keep-alive-tmo", kato.String(), "--ctrl-loss-tmo", ctrlLoss.String(), "--reconnect-delay", "300ms")
		idleFDs, idleSockets, err := m.fds()
		if err != nil {
			t.Fatal(err)
		}
		p := startProbes(t, m.File(), 4<<20)
		t.Cleanup(func() { m.Kill(t); p.wg.Wait() })
		waitBusy(t, m)

		proxy.Freeze()
		cut := time.Now()
		p.setCut(cut.Add(100 * time.Millisecond))
		// Detection (a keep-alive every kato/2 unanswered for kato), then
		// ctrl_loss_tmo, whose last attempt may run 2 s past it.
		bound := 3*kato/2 + ctrlLoss + 2*time.Second + 3*time.Second
		ends := p.wait(cut.Add(bound))
		checkEIO(t, ends, cut.Add(ctrlLoss), cut.Add(bound), cut)
		for _, e := range p.okLate {
			t.Error(e)
		}
		checkNewIOFails(t, m.File())
		lostMount(t, m, idleFDs, idleSockets)

		start := time.Now()
		if out, err := exec.Command("umount", m.Dir).CombinedOutput(); err != nil {
			t.Fatalf("umount %s: %v\n%s", m.Dir, err, out)
		}
		select {
		case <-m.exited:
			if m.waitErr != nil {
				t.Errorf("nvmefs mount exited with %v after umount:\n%s", m.waitErr, m.Log())
			}
			t.Logf("umount: the process exited %v later", time.Since(start).Round(time.Millisecond))
		case <-time.After(mountStopTimeout):
			t.Errorf("nvmefs mount still running %v after umount:\n%s", mountStopTimeout, m.Log())
		}
		proxy.Thaw()
	})
}

// grepLines returns the lines of log that contain any of words.
func grepLines(log string, words ...string) string {
	var out []string
	for _, line := range strings.Split(log, "\n") {
		for _, w := range words {
			if strings.Contains(line, w) {
				out = append(out, line)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}
