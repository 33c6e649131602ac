package bench

import (
	"fmt"
	"strings"
)

// Job is one fio workload.
type Job struct {
	Name    string // as --jobs names it: 4k-qd1
	Title   string // as the table shows it
	RW      string // fio's rw: randread or read
	BS      int    // block size in bytes
	IODepth int
}

// Jobs are the workloads of issue 6, in the order they run.
var Jobs = []Job{
	{Name: "4k-qd1", Title: "randread 4K QD1", RW: "randread", BS: 4 << 10, IODepth: 1},
	{Name: "4k-qd32", Title: "randread 4K QD32", RW: "randread", BS: 4 << 10, IODepth: 32},
	{Name: "128k-qd16", Title: "randread 128K QD16", RW: "randread", BS: 128 << 10, IODepth: 16},
	{Name: "1m-seq", Title: "read 1M QD1", RW: "read", BS: 1 << 20, IODepth: 1},
}

// Mode is what a job reads through: a mount configured one way, or the
// null file system.
type Mode struct {
	Name    string // as --modes names it: offload-ddgst
	Title   string // as the table shows it
	Null    bool   // the null FUSE file system (no target, no network)
	Offload bool   // the mount offloads receive to the simulated NIC
	Digest  bool   // the mount asks for data digests
	// AccountNIC: the NIC's receive engines run on locked OS threads
	// whose CPU time the mount reports, so that the NIC's part is told
	// apart (a mount child of the benchmark). Otherwise the mount is
	// `nvmefs mount` itself, and all of its CPU time counts as the host's.
	AccountNIC bool
	// Discard: the software host skips the copy and the CRC altogether
	// (host.Options.BenchmarkDiscardPayload: the kernel drops the payload):
	// the upper bound of what a receive offload can gain, for issue 6's
	// target (b). Benchmark only: a mount child; fio reads garbage.
	Discard bool
}

// Modes are the ways every job is read, in the order they run.
// offload-plain is the offload as `nvmefs mount` runs it: locking the NIC's
// engines to threads, which telling its CPU time apart needs, costs some
// latency (each wake-up of an engine is a hand-off between threads).
var Modes = []Mode{
	{Name: "software", Title: "software", Offload: false},
	{Name: "offload", Title: "offload", Offload: true, AccountNIC: true},
	{Name: "offload-plain", Title: "offload plain", Offload: true},
	{Name: "software-ddgst", Title: "software +ddgst", Offload: false, Digest: true},
	{Name: "offload-ddgst", Title: "offload +ddgst", Offload: true, Digest: true, AccountNIC: true},
	{Name: "skip-ddgst", Title: "skip +ddgst", Digest: true, Discard: true},
	{Name: "null", Title: "null FUSE", Null: true},
}

// Counterpart is the mode a mode is compared with: software with the same
// digest setting for offload and skip, and ok false for the rest.
func (m Mode) Counterpart() (string, bool) {
	if m.Null || !m.Offload && !m.Discard {
		return "", false
	}
	for _, o := range Modes {
		if o.IsSoftware() && o.Digest == m.Digest {
			return o.Name, true
		}
	}
	return "", false
}

// IsSoftware: a mount that receives, copies and checks in software.
func (m Mode) IsSoftware() bool { return !m.Null && !m.Offload && !m.Discard }

// SelectJobs returns the jobs named in a comma-separated list, in the
// standard order; "" or "all" selects every job.
func SelectJobs(list string) ([]Job, error) {
	return selectNamed(list, Jobs, func(j Job) string { return j.Name }, "job")
}

// SelectModes returns the modes named in a comma-separated list, in the
// standard order; "" or "all" selects every mode.
func SelectModes(list string) ([]Mode, error) {
	return selectNamed(list, Modes, func(m Mode) string { return m.Name }, "mode")
}

func selectNamed[T any](list string, all []T, name func(T) string, what string) ([]T, error) {
	list = strings.TrimSpace(list)
	if list == "" || list == "all" {
		return all, nil
	}
	want := map[string]bool{}
	for _, n := range strings.Split(list, ",") {
		n = strings.TrimSpace(n)
		found := false
		for _, x := range all {
			found = found || name(x) == n
		}
		if !found {
			var names []string
			for _, x := range all {
				names = append(names, name(x))
			}
			return nil, fmt.Errorf("unknown %s %q (want some of %s)", what, n, strings.Join(names, ","))
		}
		want[n] = true
	}
	var out []T
	for _, x := range all {
		if want[name(x)] {
			out = append(out, x)
		}
	}
	return out, nil
}
