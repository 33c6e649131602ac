package bench

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
	"time"
)

// Report is a benchmark run's results, as written to results.json.
type Report struct {
	Started        time.Time `json:"started"`
	Command        []string  `json:"command"`
	Machine        Machine   `json:"machine"`
	FioVersion     string    `json:"fio_version"`
	RuntimeSeconds float64   `json:"runtime_per_job_s"`
	// Rounds is how often each job ran in each mode; Runs has the
	// medians, RoundRuns every run.
	Rounds         int    `json:"rounds"`
	NamespaceBytes int64  `json:"namespace_bytes"`
	LoadBefore     string `json:"load_average_before"`
	LoadAfter      string `json:"load_average_after"`
	// RTT is one loopback TCP round trip between two processes: of the
	// RTTRounds (before and after the jobs), the one with the lower p50.
	RTT       *RTT     `json:"loopback_rtt"`
	RTTRounds []RTT    `json:"loopback_rtt_rounds"`
	Runs      []Result `json:"runs"`
	RoundRuns []Result `json:"round_runs,omitempty"`
	Targets   []Target `json:"targets"`
}

// Result is one job in one mode. CPU figures are per GiB read, in
// milliseconds of CPU time.
type Result struct {
	Job       string `json:"job"`
	Mode      string `json:"mode"`
	RW        string `json:"rw"`
	BlockSize int    `json:"block_size"`
	IODepth   int    `json:"iodepth"`

	IOPS  float64 `json:"iops"`
	MiBps float64 `json:"mib_per_s"`
	// P50Micro and P99Micro are fio's total latency (lat: submission to
	// completion); ClatP50Micro and ClatP99Micro its completion latency.
	P50Micro     float64 `json:"lat_p50_us"`
	P99Micro     float64 `json:"lat_p99_us"`
	ClatP50Micro float64 `json:"clat_p50_us"`
	ClatP99Micro float64 `json:"clat_p99_us"`
	Bytes        uint64  `json:"bytes"`
	Seconds      float64 `json:"seconds"` // fio's runtime
	// WindowSeconds is the wall time between the CPU samples (fio's
	// whole life).
	WindowSeconds float64 `json:"window_s"`

	// MountCPUSeconds is the mount's (or the null file system's) process
	// CPU time; NICCPUSeconds the simulated NIC's part of it (NICAccounted
	// when the mount reports it); HostCPUSeconds the rest.
	MountCPUSeconds  float64 `json:"mount_cpu_s"`
	NICCPUSeconds    float64 `json:"nic_cpu_s"`
	NICAccounted     bool    `json:"nic_accounted"`
	HostCPUSeconds   float64 `json:"host_cpu_s"`
	TargetCPUSeconds float64 `json:"target_cpu_s"`
	FioCPUSeconds    float64 `json:"fio_cpu_s"`
	HostCPUPerGiB    float64 `json:"host_cpu_ms_per_gib"`
	NICCPUPerGiB     float64 `json:"nic_cpu_ms_per_gib"`
	TargetCPUPerGiB  float64 `json:"target_cpu_ms_per_gib"`
	FioCPUPerGiB     float64 `json:"fio_cpu_ms_per_gib"`

	// Ratios against the same job: offload/software with the same digest
	// setting (offload modes), and mount/null FUSE (mount modes).
	VsSoftwareMiBps   *float64 `json:"offload_vs_software_mib_per_s,omitempty"`
	VsSoftwareHostCPU *float64 `json:"offload_vs_software_host_cpu,omitempty"`
	VsNullMiBps       *float64 `json:"vs_null_fuse_mib_per_s,omitempty"`

	// Load1 is the 1-minute load average at the end of the run: other
	// work on the machine shows here.
	Load1 float64 `json:"load_1m_after"`

	// Counters are the changes of the mount's counters over the run.
	Counters map[string]uint64 `json:"counters,omitempty"`

	// Round is the round of a single run (RoundRuns); Rounds, in Runs,
	// how many runs the medians are of (0 or 1: a single run).
	Round  int `json:"round,omitempty"`
	Rounds int `json:"rounds,omitempty"`
}

// median is the median of runs of one job in one mode: each figure the
// median of its own (so IOPS and latency may come from different rounds);
// the counters and the CPU seconds are those of the round with the median
// throughput.
func median(runs []Result) Result {
	if len(runs) == 0 {
		return Result{}
	}
	byMiBps := slices.Clone(runs)
	slices.SortFunc(byMiBps, func(a, b Result) int { return cmp.Compare(a.MiBps, b.MiBps) })
	m := byMiBps[len(byMiBps)/2]
	m.Round, m.Rounds = 0, len(runs)
	for _, f := range []func(*Result) *float64{
		func(r *Result) *float64 { return &r.IOPS },
		func(r *Result) *float64 { return &r.MiBps },
		func(r *Result) *float64 { return &r.P50Micro },
		func(r *Result) *float64 { return &r.P99Micro },
		func(r *Result) *float64 { return &r.ClatP50Micro },
		func(r *Result) *float64 { return &r.ClatP99Micro },
		func(r *Result) *float64 { return &r.HostCPUPerGiB },
		func(r *Result) *float64 { return &r.NICCPUPerGiB },
		func(r *Result) *float64 { return &r.TargetCPUPerGiB },
		func(r *Result) *float64 { return &r.FioCPUPerGiB },
		func(r *Result) *float64 { return &r.Load1 },
	} {
		vs := make([]float64, len(runs))
		for i := range runs {
			vs[i] = *f(&runs[i])
		}
		slices.Sort(vs)
		v := vs[len(vs)/2]
		if len(vs)%2 == 0 {
			v = (vs[len(vs)/2-1] + vs[len(vs)/2]) / 2
		}
		*f(&m) = v
	}
	return m
}

func (r *Result) summary() string {
	s := fmt.Sprintf("%8.0f IOPS %8.1f MiB/s  p50 %6.0f us  p99 %6.0f us  host %5.0f ms/GiB", r.IOPS, r.MiBps, r.P50Micro, r.P99Micro, r.HostCPUPerGiB)
	if r.NICAccounted {
		s += fmt.Sprintf("  NIC %4.0f ms/GiB", r.NICCPUPerGiB)
	}
	return s + fmt.Sprintf("  (load %.2f)", r.Load1)
}

// Target is one of issue 6's performance targets, as measured.
type Target struct {
	ID       string  `json:"id"`
	What     string  `json:"what"`
	Measured bool    `json:"measured"`
	Value    float64 `json:"value,omitempty"`
	Limit    float64 `json:"limit,omitempty"`
	AtMost   bool    `json:"at_most,omitempty"` // Value <= Limit meets it (else Value >= Limit)
	Met      bool    `json:"met"`
	Detail   string  `json:"detail"`
}

func (t Target) String() string {
	if !t.Measured {
		return fmt.Sprintf("(%s) %s: not measured: %s", t.ID, t.What, t.Detail)
	}
	cmp, verdict := ">=", "met"
	if t.AtMost {
		cmp = "<="
	}
	if !t.Met {
		if t.AtMost {
			verdict = fmt.Sprintf("MISSED: %.2fx over", t.Value/t.Limit)
		} else {
			verdict = fmt.Sprintf("MISSED: %.0f%% of the target", 100*t.Value/t.Limit)
		}
	}
	return fmt.Sprintf("(%s) %s: %.2f (target %s %.2f) %s; %s", t.ID, t.What, t.Value, cmp, t.Limit, verdict, t.Detail)
}

// find returns the run of job in mode.
func (rep *Report) find(job, mode string) *Result {
	for i := range rep.Runs {
		if rep.Runs[i].Job == job && rep.Runs[i].Mode == mode {
			return &rep.Runs[i]
		}
	}
	return nil
}

func ratio(a, b float64) *float64 {
	if b == 0 || math.IsNaN(a/b) || math.IsInf(a/b, 0) {
		return nil
	}
	r := a / b
	return &r
}

// complete fills in the ratios and the targets.
func (rep *Report) complete() {
	for i := range rep.Runs {
		r := &rep.Runs[i]
		m, _ := modeByName(r.Mode)
		if m.Null {
			continue
		}
		if null := rep.find(r.Job, "null"); null != nil {
			r.VsNullMiBps = ratio(r.MiBps, null.MiBps)
		}
		if cp, ok := m.Counterpart(); ok {
			if sw := rep.find(r.Job, cp); sw != nil {
				r.VsSoftwareMiBps = ratio(r.MiBps, sw.MiBps)
				r.VsSoftwareHostCPU = ratio(r.HostCPUPerGiB, sw.HostCPUPerGiB)
			}
		}
	}
	rep.Targets = rep.targets()
}

func modeByName(name string) (Mode, bool) {
	for _, m := range Modes {
		if m.Name == name {
			return m, true
		}
	}
	return Mode{}, false
}

// targets measures issue 6's targets (a)-(d) on the runs there are.
func (rep *Report) targets() []Target {
	var ts []Target
	missing := func(id, what string, need ...string) Target {
		return Target{ID: id, What: what, Detail: "needs the runs " + strings.Join(need, ", ") + " (--jobs, --modes)"}
	}

	// (a) Host CPU per GiB, 128 KiB reads with data digest, offload/software.
	whatA := "host CPU per GiB, randread 128K QD16 with data digest, offload/software"
	off, sw := rep.find("128k-qd16", "offload-ddgst"), rep.find("128k-qd16", "software-ddgst")
	if off != nil && sw != nil && sw.HostCPUPerGiB > 0 {
		v := off.HostCPUPerGiB / sw.HostCPUPerGiB
		ts = append(ts, Target{ID: "a", What: whatA, Measured: true, Value: v, Limit: 0.5, AtMost: true, Met: v <= 0.5,
			Detail: fmt.Sprintf("host %.0f vs %.0f ms/GiB (NIC %.0f ms/GiB); all of the mount process: %.0f vs %.0f ms/GiB",
				off.HostCPUPerGiB, sw.HostCPUPerGiB, off.NICCPUPerGiB, off.HostCPUPerGiB+off.NICCPUPerGiB, sw.HostCPUPerGiB)})
	} else {
		ts = append(ts, missing("a", whatA, "128k-qd16 in offload-ddgst and software-ddgst"))
	}

	// (b) The offload's throughput gain against the upper bound: a host
	// that skips the copy and the CRC altogether (skip-ddgst).
	whatB := "randread 128K QD16 with data digest, throughput gain over software: offload's / skipping copy and CRC's"
	skip := rep.find("128k-qd16", "skip-ddgst")
	if off != nil && sw != nil && skip != nil && sw.MiBps > 0 {
		gOff, gSkip := off.MiBps/sw.MiBps-1, skip.MiBps/sw.MiBps-1
		detail := fmt.Sprintf("offload %+.0f%%, skip %+.0f%% (%.0f, %.0f vs %.0f MiB/s)", 100*gOff, 100*gSkip, off.MiBps, skip.MiBps, sw.MiBps)
		if saved := sw.HostCPUPerGiB - skip.HostCPUPerGiB; saved > 0 {
			// What the throughput gain cannot show when the NIC's work
			// runs on the host's CPUs: the host CPU the offload saves, as
			// a part of what skipping saves.
			detail += fmt.Sprintf("; host CPU per GiB %.0f offload, %.0f skip vs %.0f software: the offload saves %.2f of what skipping saves",
				off.HostCPUPerGiB, skip.HostCPUPerGiB, sw.HostCPUPerGiB, (sw.HostCPUPerGiB-off.HostCPUPerGiB)/saved)
		}
		if gSkip > 0 {
			v := gOff / gSkip
			ts = append(ts, Target{ID: "b", What: whatB, Measured: true, Value: v, Limit: 0.95, Met: v >= 0.95, Detail: detail})
		} else {
			ts = append(ts, Target{ID: "b", What: whatB, Detail: "skipping copy and CRC gained nothing here, so there is no gain to reach: " + detail})
		}
	} else {
		ts = append(ts, missing("b", whatB, "128k-qd16 in offload-ddgst, software-ddgst and skip-ddgst"))
	}

	// (c) The default mount (offload, no digest) against the null FUSE
	// ceiling, as nvmefs mount runs it when measured so.
	mode := "offload"
	for _, r := range rep.Runs {
		if r.Mode == "offload-plain" {
			mode = r.Mode
		}
	}
	whatC1 := "randread 128K QD16 MiB/s, mount (" + mode + ")/null FUSE"
	mnt, null := rep.find("128k-qd16", mode), rep.find("128k-qd16", "null")
	if mnt != nil && null != nil && null.MiBps > 0 {
		v := mnt.MiBps / null.MiBps
		ts = append(ts, Target{ID: "c", What: whatC1, Measured: true, Value: v, Limit: 0.5, Met: v >= 0.5,
			Detail: fmt.Sprintf("%.0f vs %.0f MiB/s", mnt.MiBps, null.MiBps)})
	} else {
		ts = append(ts, missing("c", whatC1, "128k-qd16 in "+mode+" and null"))
	}
	whatC2 := "randread 4K QD32 IOPS, mount (" + mode + ")/null FUSE"
	mnt, null = rep.find("4k-qd32", mode), rep.find("4k-qd32", "null")
	if mnt != nil && null != nil && null.IOPS > 0 {
		v := mnt.IOPS / null.IOPS
		ts = append(ts, Target{ID: "c", What: whatC2, Measured: true, Value: v, Limit: 0.35, Met: v >= 0.35,
			Detail: fmt.Sprintf("%.0f vs %.0f IOPS", mnt.IOPS, null.IOPS)})
	} else {
		ts = append(ts, missing("c", whatC2, "4k-qd32 in "+mode+" and null"))
	}

	// (d) 4K QD1 p50 against the null round trip plus a loopback TCP one.
	whatD := "randread 4K QD1 p50, mount (" + mode + ")/(null FUSE p50 + loopback TCP RTT p50)"
	mnt, null = rep.find("4k-qd1", mode), rep.find("4k-qd1", "null")
	if mnt != nil && null != nil && rep.RTT != nil {
		floor := null.P50Micro + rep.RTT.P50Micro
		v := mnt.P50Micro / floor
		ts = append(ts, Target{ID: "d", What: whatD, Measured: true, Value: v, Limit: 1.5, AtMost: true, Met: v <= 1.5,
			Detail: fmt.Sprintf("%.0f us vs %.0f + %.0f = %.0f us", mnt.P50Micro, null.P50Micro, rep.RTT.P50Micro, floor)})
	} else {
		ts = append(ts, missing("d", whatD, "4k-qd1 in "+mode+" and null"))
	}
	return ts
}

// jobTitle is a job's table title.
func jobTitle(name string) string {
	for _, j := range Jobs {
		if j.Name == name {
			return j.Title
		}
	}
	return name
}

func modeTitle(name string) string {
	if m, ok := modeByName(name); ok {
		return m.Title
	}
	return name
}

// WriteTable prints the results as one table, then the round trip, the
// targets and the machine.
func (rep *Report) WriteTable(w io.Writer) error {
	var b strings.Builder
	opt := func(p *float64) string {
		if p == nil {
			return ""
		}
		return fmt.Sprintf("%.2f", *p)
	}
	fmt.Fprintf(&b, "%-18s  %-15s  %8s  %8s  %7s  %7s  %16s  %19s  %8s\n", "", "", "", "", "lat", "lat", "CPU ms per GiB", "vs software", "mount/")
	fmt.Fprintf(&b, "%-18s  %-15s  %8s  %8s  %7s  %7s  %7s  %7s  %8s  %9s  %8s\n", "job", "mode", "IOPS", "MiB/s", "p50 us", "p99 us", "host", "NIC", "MiB/s", "host CPU", "null")
	last := ""
	for i := range rep.Runs {
		r := &rep.Runs[i]
		if last != "" && r.Job != last {
			b.WriteString("\n")
		}
		last = r.Job
		nic := "-"
		if r.NICAccounted {
			nic = fmt.Sprintf("%.0f", r.NICCPUPerGiB)
		}
		fmt.Fprintf(&b, "%-18s  %-15s  %8.0f  %8.1f  %7.0f  %7.0f  %7.0f  %7s  %8s  %9s  %8s\n",
			jobTitle(r.Job), modeTitle(r.Mode), r.IOPS, r.MiBps, r.P50Micro, r.P99Micro, r.HostCPUPerGiB, nic,
			opt(r.VsSoftwareMiBps), opt(r.VsSoftwareHostCPU), opt(r.VsNullMiBps))
	}
	b.WriteString("\n")
	if rep.RTT != nil {
		fmt.Fprintf(&b, "loopback TCP round trip between two processes (%d/%d bytes): p50 %.1f us, p99 %.1f us", echoAsk, echoAnswer, rep.RTT.P50Micro, rep.RTT.P99Micro)
		if len(rep.RTTRounds) > 1 {
			var p50s []string
			for _, r := range rep.RTTRounds {
				p50s = append(p50s, fmt.Sprintf("%.1f", r.P50Micro))
			}
			fmt.Fprintf(&b, " (the lowest of p50 %s us, before and after the jobs)", strings.Join(p50s, ", "))
		}
		b.WriteString("\n")
	}
	b.WriteString("issue 6 targets:\n")
	for _, t := range rep.Targets {
		fmt.Fprintf(&b, "  %s\n", t)
	}
	fmt.Fprintf(&b, "machine: %s; %s, fio %s; %v per job; load average %s before, %s after\n",
		rep.Machine, rep.Machine.GoVersion, strings.TrimPrefix(rep.FioVersion, "fio-"), time.Duration(rep.RuntimeSeconds*float64(time.Second)), rep.LoadBefore, rep.LoadAfter)
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJSON writes the report to path.
func (rep *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
