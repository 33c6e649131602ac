package faults

import (
	"fmt"
	"os"
	"testing"
	"time"
)

// soakEnv sets the length of TestFaultSoak; unset, it is skipped.
const soakEnv = "NVMEFS_FAULT_SOAK"

// soakLength is the soak's length, 0 when it does not run (or the value
// does not parse: the test says so).
func soakLength() time.Duration {
	d, err := time.ParseDuration(os.Getenv(soakEnv))
	if err != nil || d < 0 {
		return 0
	}
	return d
}

// TestFaultSoak repeats the integrity phases (every fault of
// TestIntegrityUnderFaults, in turn, under the same readers and writers and
// with the same checks after each) on one mount for NVMEFS_FAULT_SOAK (e.g.
// 10m; give go test a -timeout a few minutes longer). After each cycle it
// records the mount's live heap (at its last GC), resident set,
// goroutines and descriptors; at the end neither memory figure may have
// grown by more than a quarter (plus 8 MiB of heap, 16 MiB of RSS) over
// the larger of the first two cycles', which warm the pools up.
func TestFaultSoak(t *testing.T) {
	v := os.Getenv(soakEnv)
	if v == "" {
		t.Skipf("the fault soak runs on demand: %s=10m go test ./tests/faults -run TestFaultSoak -timeout 20m", soakEnv)
	}
	length := soakLength()
	if length == 0 {
		t.Fatalf("%s=%q: want a duration such as 10m", soakEnv, v)
	}
	if deadline, ok := t.Deadline(); ok && time.Until(deadline) < length+3*time.Minute {
		t.Fatalf("%s=%v needs go test -timeout of at least %v", soakEnv, length, length+3*time.Minute)
	}
	r := newRig(t, 2)
	phases := integrityPhases()
	type sample struct{ heap, rssKiB, goroutines uint64 }
	var samples []sample
	start := time.Now()
cycles:
	for cycle := 0; time.Since(start) < length; cycle++ {
		for i, p := range phases {
			k := cycle*len(phases) + i
			if !t.Run(fmt.Sprintf("cycle%d/%s", cycle, p.name), func(t *testing.T) {
				r.t = t
				r.run(k, p)
			}) {
				break cycles
			}
		}
		r.t = t
		s := r.m.Stats(t)
		sm := sample{s["process_heap_live_bytes"], uint64(r.m.rssKiB()), s["process_goroutines"]}
		samples = append(samples, sm)
		fds, socks, _ := r.m.fds()
		t.Logf("cycle %d done at %v: mount live heap %.1f MiB, RSS %.1f MiB, %d goroutines, %d fds (%d sockets)",
			cycle, time.Since(start).Round(time.Second), float64(sm.heap)/(1<<20), float64(sm.rssKiB)/1024, sm.goroutines, fds, socks)
	}
	r.t = t
	r.report(time.Since(start))
	if t.Failed() {
		return
	}
	if len(samples) < 3 {
		t.Fatalf("%d cycles in %v: too few to judge memory (give %s more time)", len(samples), length, soakEnv)
	}
	base := samples[0]
	base.heap, base.rssKiB = max(base.heap, samples[1].heap), max(base.rssKiB, samples[1].rssKiB)
	last := samples[len(samples)-1]
	if last.heap > base.heap+base.heap/4+8<<20 {
		t.Errorf("the mount's live heap grew from %d to %d bytes over %d cycles", base.heap, last.heap, len(samples))
	}
	if last.rssKiB > base.rssKiB+base.rssKiB/4+16<<10 {
		t.Errorf("the mount's RSS grew from %d to %d KiB over %d cycles", base.rssKiB, last.rssKiB, len(samples))
	}
}
