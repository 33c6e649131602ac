package main

import (
	"bytes"
	"context"
	"encoding/json"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/bench"
)

// nvmefs bench end to end with 1 s jobs: a target, a mount per mode and
// the null file system, each its own process; every mode's figures come
// from reads that took the path the mode names, and nothing is left behind.
func TestBenchEndToEnd(t *testing.T) {
	if err := checkFUSE(); err != nil {
		t.Skip(err)
	}
	out := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, nvmefsBin, "bench", "--runtime", "1s", "--rounds", "2", "--jobs", "4k-qd1,128k-qd16", "--size", "32M", "--out", out)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 40 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if strings.Contains(stderr.String(), errNoFio.Error()) {
		t.Skipf("fio: %s", stderr.String())
	}
	// A failed run keeps its work directory (the children's logs): show
	// them, then remove it.
	work := regexp.MustCompile(`work directory (` + regexp.QuoteMeta(os.TempDir()) + `/nvmefs-bench-work-\d+)`).FindStringSubmatch(stderr.String())
	if work != nil {
		t.Cleanup(func() {
			if t.Failed() {
				logs, _ := filepath.Glob(filepath.Join(work[1], "*.log"))
				for _, l := range logs {
					b, _ := os.ReadFile(l)
					t.Logf("%s:\n%s", l, b)
				}
			}
			os.RemoveAll(work[1])
		})
	}
	if err != nil {
		t.Fatalf("nvmefs bench: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	t.Logf("stderr:\n%s\nstdout:\n%s", stderr.String(), stdout.String())

	// Nothing left behind: no mount under the work directory, no child.
	if work == nil {
		t.Fatal("no work directory in the progress lines")
	}
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err != nil || strings.Contains(string(mi), work[1]) {
		t.Errorf("a mount under %s is left (%v)", work[1], err)
	}
	if _, err := os.Stat(work[1]); !os.IsNotExist(err) {
		t.Errorf("work directory %s left after a successful run (%v)", work[1], err)
	}
	for _, m := range regexp.MustCompile(`pid (\d+)`).FindAllStringSubmatch(stderr.String(), -1) {
		if cl, err := os.ReadFile("/proc/" + m[1] + "/cmdline"); err == nil && bytes.Contains(cl, []byte(work[1])) {
			t.Errorf("child %s still runs: %q", m[1], cl)
		}
	}

	b, err := os.ReadFile(filepath.Join(out, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep bench.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Runs) != 2*len(bench.Modes) || len(rep.RoundRuns) != 2*len(rep.Runs) || rep.Rounds != 2 {
		t.Fatalf("%d results of %d runs (%d rounds), want %d of %d", len(rep.Runs), len(rep.RoundRuns), rep.Rounds, 2*len(bench.Modes), 4*len(bench.Modes))
	}
	for _, r := range rep.RoundRuns {
		if r.Round < 1 || r.Round > 2 || r.Rounds != 0 {
			t.Errorf("%s/%s: round %d of %d", r.Job, r.Mode, r.Round, r.Rounds)
		}
	}
	for _, r := range rep.Runs {
		name := r.Job + "/" + r.Mode
		m, _ := bench.SelectModes(r.Mode)
		mode := m[0]
		if r.IOPS <= 0 || r.MiBps <= 0 || r.Bytes < uint64(r.BlockSize) || r.P50Micro <= 0 || r.P99Micro < r.P50Micro || r.MountCPUSeconds <= 0 {
			t.Errorf("%s: implausible %+v", name, r)
		}
		if want := r.IOPS * float64(r.BlockSize) / (1 << 20); r.MiBps < want*0.99 || r.MiBps > want*1.01 {
			t.Errorf("%s: %.1f MiB/s but %.0f IOPS of %d bytes", name, r.MiBps, r.IOPS, r.BlockSize)
		}
		if !stdoutHasRow(stdout.String(), r.Job, mode.Title) {
			t.Errorf("%s: no row in the table", name)
		}
		if mode.Null {
			if r.Counters != nil || r.NICAccounted || r.TargetCPUSeconds != 0 {
				t.Errorf("%s: the null file system has mount figures: %+v", name, r)
			}
			continue
		}
		c := r.Counters
		// The mount served at least what fio read.
		if c["fuse_read_bytes"] < r.Bytes {
			t.Errorf("%s: the mount served %d bytes, fio read %d", name, c["fuse_read_bytes"], r.Bytes)
		}
		if mode.AccountNIC != r.NICAccounted || (r.NICAccounted && r.NICCPUSeconds <= 0) {
			t.Errorf("%s: NIC accounted %v, %v s", name, r.NICAccounted, r.NICCPUSeconds)
		}
		// The NIC's part is part of the mount process's CPU time.
		if r.NICCPUSeconds > r.MountCPUSeconds*1.02+0.01 {
			t.Errorf("%s: NIC %.3f s of a mount process that spent %.3f s", name, r.NICCPUSeconds, r.MountCPUSeconds)
		}
		placed, crcOff, crcSW := c["nvme0_rx_bytes_placed"], c["nvme0_rx_crc_offloaded"], c["nvme0_rx_crc_software"]
		discarded, received := c["nvme0_rx_bytes_discarded"], c["nvme0_rx_bytes_copied"]+c["nvme0_rx_bytes_direct"]+c["nvme0_rx_bytes_placed"]
		switch {
		case mode.Discard && (discarded < r.Bytes || received != 0 || crcSW+crcOff != 0):
			t.Errorf("%s: skip mode discarded %d of %d bytes, received %d, checked %d digests", name, discarded, r.Bytes, received, crcSW+crcOff)
		case !mode.Discard && (discarded != 0 || received < r.Bytes):
			t.Errorf("%s: %d bytes discarded, %d received of %d read", name, discarded, received, r.Bytes)
		case !mode.Offload && (placed != 0 || crcOff != 0):
			t.Errorf("%s: software mode with %d bytes placed, %d CRCs offloaded", name, placed, crcOff)
		case mode.Offload && r.BlockSize >= 128<<10 && placed < r.Bytes/2:
			t.Errorf("%s: only %d of %d bytes placed by the NIC", name, placed, r.Bytes)
		case mode.Offload && mode.Digest && crcOff == 0:
			t.Errorf("%s: no data digest checked by the NIC", name)
		case mode.IsSoftware() && mode.Digest && crcSW == 0:
			t.Errorf("%s: no data digest checked in software", name)
		}
		if (mode.Offload || mode.Discard) && r.VsSoftwareMiBps == nil || r.VsNullMiBps == nil {
			t.Errorf("%s: ratios missing: %+v", name, r)
		}
	}
	if len(rep.Targets) != 5 || rep.RTT == nil || rep.RTT.P50Micro <= 0 || rep.Machine.CPUs <= 0 {
		t.Errorf("targets %v, RTT %v, machine %+v", rep.Targets, rep.RTT, rep.Machine)
	}
	for _, s := range []string{"issue 6 targets:", "(a) host CPU per GiB", "(d) randread 4K QD1 p50"} {
		if !strings.Contains(stdout.String(), s) {
			t.Errorf("the table lacks %q", s)
		}
	}
	if tb, err := os.ReadFile(filepath.Join(out, "table.txt")); err != nil || string(tb) != stdout.String() {
		t.Errorf("table.txt is not the table printed (%v)", err)
	}
	f, err := os.Open(filepath.Join(out, "bench.png"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if img, err := png.Decode(f); err != nil || img.Bounds().Dx() < 600 {
		t.Errorf("bench.png: %v", err)
	}
}

// stdoutHasRow: the table has a row for job (by title) in mode.
func stdoutHasRow(table, job, mode string) bool {
	jobs, _ := bench.SelectJobs(job)
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(jobs[0].Title) + ` +` + regexp.QuoteMeta(mode) + ` +\d`)
	return re.MatchString(table)
}

func TestBenchUsageErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"bench", "--jobs", "4k-qd1,2k"}, `--jobs: unknown job "2k"`},
		{[]string{"bench", "--modes", "fast"}, `--modes: unknown mode "fast"`},
		{[]string{"bench", "--size", "1000"}, "--size"},
		{[]string{"bench", "--runtime", "100ms"}, "--runtime 100ms"},
		{[]string{"bench", "extra"}, "no arguments expected"},
		{[]string{"bench", "--child", "nonsense"}, `unknown --child "nonsense"`},
		{[]string{"bench", "--child", "mount", "/x"}, "mount child: want"},
		{[]string{"bench", "--child", "mount", "/x", "a", "n", "offload=1", "ddgst=0", "accountnic=x", "discard=0"}, "accountnic"},
		{[]string{"bench", "--rounds", "0"}, "--rounds 0"},
	} {
		var so, se bytes.Buffer
		if code := run(c.args, &env{stdout: &so, stderr: &se}); code != 2 || !strings.Contains(se.String(), c.want) {
			t.Errorf("nvmefs %v: status %d, stderr %q; want 2 and %q", c.args, code, se.String(), c.want)
		}
	}
	// --child is internal: not in the help.
	var so bytes.Buffer
	run([]string{"help", "bench"}, &env{stdout: &so, stderr: &so})
	if strings.Contains(so.String(), "--child") || !strings.Contains(so.String(), "--runtime") {
		t.Errorf("help bench:\n%s", so.String())
	}
}
