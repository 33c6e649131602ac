package mlx5sim

import (
	"fmt"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/ddp"
	"github.com/nvmefs/nvmefs/nvmetcp/wire"
)

// TestSessionPlacement: no digests, no faults. Every mapped read is placed
// whole by the device (the host copies nothing of it), every unmapped one
// is copied, and the stream arrives exactly as sent.
func TestSessionPlacement(t *testing.T) {
	s := runSession(t, sessionOpts{
		commands:  200,
		qd:        8,
		minSize:   512,
		maxSize:   256 << 10,
		maxC2H:    64 << 10,
		success:   0.3,
		r2t:       0.1,
		threshold: 32 << 10,
		keep:      true,
		seed:      1,
	})
	if t.Failed() {
		return
	}
	h := s.host
	if s.mappedBytes == 0 || s.unmappedBytes == 0 {
		t.Fatalf("mapped %d, unmapped %d bytes: the session does not cover both", s.mappedBytes, s.unmappedBytes)
	}
	if s.placed != s.mappedBytes {
		t.Errorf("placed %d of %d mapped bytes", s.placed, s.mappedBytes)
	}
	if s.copied != s.unmappedBytes {
		t.Errorf("copied %d bytes, %d unmapped", s.copied, s.unmappedBytes)
	}
	if got := stat(s.dev, "rx_nvmeotcp_offload_bytes"); got != uint64(s.placed) {
		t.Errorf("rx_nvmeotcp_offload_bytes %d, host saw %d placed", got, s.placed)
	}
	if got := stat(s.dev, "rx_nvmeotcp_bytes"); got != uint64(len(s.sent)) {
		t.Errorf("rx_nvmeotcp_bytes %d, sent %d", got, len(s.sent))
	}
	if r := stat(s.dev, "rx_nvmeotcp_resync"); r != 0 {
		t.Errorf("%d resync requests without faults", r)
	}
	// Without digests every in-sync segment is CRCOK (no CRC field to fail).
	if h.crcOKSegs != h.segments {
		t.Errorf("%d of %d segments CRCOK", h.crcOKSegs, h.segments)
	}
	t.Logf("%d segments (%d placed), %d PDUs, %d mapped bytes, %d unmapped; stats %v", h.segments, h.placedSegs, h.pdus, s.mappedBytes, s.unmappedBytes, s.dev.Stats())
}

// TestSessionDigests: header and data digests with PDU alignment and
// corrupted PDUs. The device verifies every good data digest (the host
// computes none of them) and never marks a corrupted PDU CRCOK.
func TestSessionDigests(t *testing.T) {
	for _, hpda := range []uint8{0, 3, 31} {
		t.Run(fmt.Sprintf("hpda=%d", hpda), func(t *testing.T) {
			s := runSession(t, sessionOpts{
				oc:        wire.OffloadConfig{HeaderDigest: true, DataDigest: true, HPDA: hpda},
				commands:  150,
				qd:        6,
				minSize:   1,
				maxSize:   160 << 10,
				maxC2H:    48 << 10,
				success:   0.5,
				r2t:       0.1,
				corrupt:   0.15,
				threshold: 4096,
				chunk:     3000,
				keep:      true,
				seed:      uint64(hpda) + 2,
			})
			if t.Failed() {
				return
			}
			h := s.host
			if s.corrupted == 0 {
				t.Fatal("no corrupted PDU in the session")
			}
			if h.software != s.corrupted {
				t.Errorf("host checked %d digests in software, want only the %d corrupted PDUs", h.software, s.corrupted)
			}
			if h.offloaded+h.software != h.dataPDUs {
				t.Errorf("%d offloaded + %d software digests, %d data PDUs", h.offloaded, h.software, h.dataPDUs)
			}
			if s.placed != s.mappedBytes {
				t.Errorf("placed %d of %d mapped bytes", s.placed, s.mappedBytes)
			}
			if bad := stat(s.dev, "sim_crc_bad"); bad != uint64(s.corrupted) {
				t.Errorf("sim_crc_bad %d, corrupted %d", bad, s.corrupted)
			}
			t.Logf("hpda %d: %d data PDUs, %d offloaded, %d corrupted, %d failed reads", hpda, h.dataPDUs, h.offloaded, s.corrupted, s.failedCmds)
		})
	}
}

// TestSessionLoss: the tracker loses 1% and then 20% of the packets. Every
// byte still arrives as sent and every read is right; the device asks for
// resyncs, the host confirms them from its own parse, and placement and
// CRC offload resume after them.
func TestSessionLoss(t *testing.T) {
	for _, tc := range []struct {
		rate    float64
		maxSize int
		maxC2H  int
	}{
		{0.01, 128 << 10, 32 << 10},
		{0.20, 16 << 10, 4 << 10},
		{1, 16 << 10, 4 << 10}, // the tracker sees nothing
	} {
		t.Run(fmt.Sprintf("loss=%v", tc.rate), func(t *testing.T) {
			s := runSession(t, sessionOpts{
				dev:       Config{LossRate: tc.rate, Seed: 42},
				oc:        wire.OffloadConfig{HeaderDigest: true, DataDigest: true, HPDA: 1},
				commands:  300,
				qd:        8,
				minSize:   1,
				maxSize:   tc.maxSize,
				maxC2H:    tc.maxC2H,
				success:   0.3,
				r2t:       0.05,
				corrupt:   0.05,
				threshold: 2048,
				keep:      true,
				seed:      9,
			})
			if t.Failed() {
				return
			}
			h, d := s.host, s.dev
			if tc.rate == 1 {
				if s.placed != 0 || h.crcOKSegs != 0 || h.resyncReqs != 0 || h.software != h.dataPDUs {
					t.Errorf("every packet lost: placed %d, %d CRCOK segments, %d resync requests, %d of %d digests in software",
						s.placed, h.crcOKSegs, h.resyncReqs, h.software, h.dataPDUs)
				}
				return
			}
			lost, reqs, ok := stat(d, "sim_loss_injected"), stat(d, "rx_nvmeotcp_resync"), stat(d, "sim_resync_ok")
			if lost == 0 || reqs == 0 || ok == 0 {
				t.Fatalf("loss %d, resync requests %d, confirmed %d: want all > 0", lost, reqs, ok)
			}
			// A confirmation that comes after the device gave the
			// candidate up (a loss broke its chain) is ignored.
			if uint64(h.resyncReqs) != reqs || uint64(h.resyncYes) < ok {
				t.Errorf("host saw %d requests, confirmed %d; device counts %d requests, %d confirmations applied", h.resyncReqs, h.resyncYes, reqs, ok)
			}
			if h.placedAfterResync == 0 {
				t.Error("nothing placed after the first resync")
			}
			if h.offloaded == 0 {
				t.Error("no data digest offloaded")
			}
			t.Logf("%d packets, %d lost to the tracker; %d resync requests, %d confirmed, %d refuted; placed %d of %d mapped bytes (%d after the first resync); %d of %d digests offloaded",
				stat(d, "rx_nvmeotcp_packets"), lost, reqs, ok, stat(d, "sim_resync_fail"), s.placed, s.mappedBytes, h.placedAfterResync, h.offloaded, h.dataPDUs)
		})
	}
}

// TestSessionSeqWrap: sequence numbers cross 2^32 mid-stream, with a small
// MTU so that headers and digests straddle packets, and losses so that
// resync requests carry wrapped sequence numbers.
func TestSessionSeqWrap(t *testing.T) {
	isn := ddp.Seq(1<<32 - 300<<10)
	s := runSession(t, sessionOpts{
		dev:       Config{InitialSeq: isn, MTU: 61, LossRate: 0.002, Seed: 5},
		oc:        wire.OffloadConfig{HeaderDigest: true, DataDigest: true, HPDA: 7},
		commands:  60,
		qd:        4,
		minSize:   100,
		maxSize:   24 << 10,
		maxC2H:    6000,
		success:   0.5,
		threshold: 1,
		chunk:     500,
		keep:      true,
		seed:      3,
	})
	if t.Failed() {
		return
	}
	if n := len(s.sent); n < 300<<10+100<<10 {
		t.Fatalf("only %d bytes sent: the stream does not cross the wrap", n)
	}
	if s.placed == 0 || s.host.offloaded == 0 {
		t.Errorf("placed %d bytes, offloaded %d digests: offload stopped at the wrap?", s.placed, s.host.offloaded)
	}
	if stat(s.dev, "sim_resync_ok") == 0 {
		t.Error("no resync confirmed")
	}
	t.Logf("%d bytes from seq %d; placed %d of %d; %d resyncs", len(s.sent), isn, s.placed, s.mappedBytes, stat(s.dev, "sim_resync_ok"))
}

// TestSessionSetupFailures: half of the Setups fail by injection; those
// reads go the software way and every read is still right.
func TestSessionSetupFailures(t *testing.T) {
	s := runSession(t, sessionOpts{
		dev:       Config{SetupFailRate: 0.5, Seed: 8},
		oc:        wire.OffloadConfig{DataDigest: true},
		commands:  120,
		qd:        8,
		minSize:   4096,
		maxSize:   64 << 10,
		maxC2H:    16 << 10,
		threshold: 4096,
		keep:      true,
		seed:      4,
	})
	if t.Failed() {
		return
	}
	fails, setups := stat(s.dev, "rx_nvmeotcp_ddp_setup_fail"), stat(s.dev, "rx_nvmeotcp_ddp_setup")
	if fails == 0 || setups == 0 || fails+setups != 120 {
		t.Errorf("%d setups, %d failed, of 120", setups, fails)
	}
	if s.placed != s.mappedBytes || s.copied != s.unmappedBytes {
		t.Errorf("placed %d of %d mapped, copied %d of %d unmapped", s.placed, s.mappedBytes, s.copied, s.unmappedBytes)
	}
	t.Logf("setup errors: %v", s.setupErrs)
}

// TestSessionTeardownDelay: TeardownDone comes 3ms after invalidation; a
// read completes only then, and buffers retired after TeardownDone are
// never written again (runSession checks the poison).
func TestSessionTeardownDelay(t *testing.T) {
	s := runSession(t, sessionOpts{
		dev:       Config{TeardownDelay: 3 * time.Millisecond},
		commands:  60,
		qd:        4,
		minSize:   32 << 10,
		maxSize:   96 << 10,
		maxC2H:    32 << 10,
		success:   0.5,
		threshold: 1,
		keep:      true,
		seed:      6,
	})
	if t.Failed() {
		return
	}
	if len(s.retired) == 0 {
		t.Fatal("no buffer retired")
	}
	if s.placed != s.mappedBytes {
		t.Errorf("placed %d of %d", s.placed, s.mappedBytes)
	}
}

// TestSessionCapabilitySwitch switches rx-crc and placement off and on
// while reads are in flight: the bytes stay exact, and nothing is CRCOK
// while rx-crc is off (the host checks that part in its parser).
func TestSessionCapabilitySwitch(t *testing.T) {
	var host *fakeHost
	s := runSession(t, sessionOpts{
		oc:        wire.OffloadConfig{HeaderDigest: true, DataDigest: true},
		commands:  160,
		qd:        4,
		minSize:   1,
		maxSize:   64 << 10,
		maxC2H:    16 << 10,
		corrupt:   0.05,
		threshold: 1,
		keep:      true,
		seed:      12,
		during: func(i int, d *Device) {
			switch i {
			case 40:
				d.SetCapabilities(ddp.CapPlacement)
			case 80:
				d.SetCapabilities(ddp.CapRxCRC)
			case 120:
				d.SetCapabilities(ddp.CapPlacement | ddp.CapRxCRC)
			}
		},
	})
	_ = host
	if t.Failed() {
		return
	}
	if s.setupErrs == nil || len(s.setupErrs) == 0 {
		t.Error("no Setup failed while placement was off")
	}
	if s.placed == 0 || s.placed == s.mappedBytes+s.unmappedBytes {
		t.Errorf("placed %d of %d bytes: the switch had no effect", s.placed, s.mappedBytes+s.unmappedBytes)
	}
}

// TestSessionAllFaults runs every fault at once (tracker loss, setup
// failures, delayed teardowns, corrupted digests, a small MTU, offloads
// switched off and on) and checks what every session checks: exact bytes,
// right reads, digest errors found, no write after TeardownDone, setups
// matched by teardowns. It also leaves no goroutine behind.
func TestSessionAllFaults(t *testing.T) {
	base := runtime.NumGoroutine()
	s := runSession(t, sessionOpts{
		dev:       Config{MTU: 512, LossRate: 0.02, SetupFailRate: 0.2, TeardownDelay: 200 * time.Microsecond, Seed: 77},
		oc:        wire.OffloadConfig{HeaderDigest: true, DataDigest: true, HPDA: 3},
		commands:  400,
		qd:        12,
		minSize:   1,
		maxSize:   96 << 10,
		maxC2H:    24 << 10,
		success:   0.4,
		r2t:       0.05,
		corrupt:   0.05,
		threshold: 2048,
		chunk:     4000,
		keep:      true,
		seed:      21,
		during: func(i int, d *Device) {
			switch i % 100 {
			case 30:
				d.SetCapabilities(ddp.CapRxCRC)
			case 50:
				d.SetCapabilities(ddp.CapPlacement)
			case 70:
				d.SetCapabilities(ddp.CapPlacement | ddp.CapRxCRC)
			}
		},
	})
	if t.Failed() {
		return
	}
	d := s.dev
	t.Logf("placed %d of %d mapped bytes; %d resyncs requested, %d confirmed; %d setups failed; %d digest errors found",
		s.placed, s.mappedBytes, stat(d, "rx_nvmeotcp_resync"), stat(d, "sim_resync_ok"), stat(d, "rx_nvmeotcp_ddp_setup_fail"), s.host.digestErrors)
	if s.placed == 0 || stat(d, "sim_resync_ok") == 0 || stat(d, "rx_nvmeotcp_ddp_setup_fail") == 0 {
		t.Error("a fault or the offload itself did not happen")
	}
	waitGoroutines(t, base)
}

// TestSessionAccountCPU: the engines' CPU time (AccountCPU), whichever
// goroutine runs them, is some of the process's and not more than all of it.
func TestSessionAccountCPU(t *testing.T) {
	for _, inline := range []bool{false, true} {
		t.Run(fmt.Sprintf("inline=%v", inline), func(t *testing.T) {
			// Goroutines in blocking system calls keep more threads
			// about, so that the engine's goroutine moves between them
			// (a thread's CPU clock says nothing of another's).
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						select {
						case <-stop:
							return
						default:
						}
						tv := syscall.Timeval{Usec: 50}
						syscall.Select(0, nil, nil, nil, &tv)
					}
				}()
			}
			var before, after syscall.Rusage
			syscall.Getrusage(syscall.RUSAGE_SELF, &before)
			s := runSession(t, sessionOpts{
				dev:       Config{AccountCPU: true, Inline: inline},
				oc:        wire.OffloadConfig{DataDigest: true},
				commands:  300,
				qd:        8,
				minSize:   4096,
				maxSize:   256 << 10,
				threshold: 32 << 10,
				seed:      2,
			})
			syscall.Getrusage(syscall.RUSAGE_SELF, &after)
			close(stop)
			wg.Wait()
			if t.Failed() {
				return
			}
			process := time.Duration(after.Utime.Nano() + after.Stime.Nano() - before.Utime.Nano() - before.Stime.Nano())
			engine := time.Duration(stat(s.dev, "sim_engine_cpu_ns"))
			if engine <= 0 || engine > process {
				t.Errorf("engines' CPU %v, the process's %v: want some of it", engine, process)
			}
		})
	}
}
