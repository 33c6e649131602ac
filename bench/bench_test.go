package bench

import (
	"bytes"
	"context"
	"image/png"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestSelect(t *testing.T) {
	jobs, err := SelectJobs("128k-qd16, 4k-qd1")
	if err != nil || len(jobs) != 2 || jobs[0].Name != "4k-qd1" || jobs[1].Name != "128k-qd16" {
		t.Errorf("SelectJobs: %v, %v; want 4k-qd1 then 128k-qd16", jobs, err)
	}
	if all, _ := SelectJobs("all"); len(all) != len(Jobs) {
		t.Errorf("all jobs: %d, want %d", len(all), len(Jobs))
	}
	if _, err := SelectJobs("4k-qd1,8k"); err == nil || !strings.Contains(err.Error(), `"8k"`) || !strings.Contains(err.Error(), "1m-seq") {
		t.Errorf("unknown job: %v; want it named with the known ones", err)
	}
	modes, err := SelectModes("null,offload")
	if err != nil || len(modes) != 2 || modes[0].Name != "offload" || !modes[1].Null {
		t.Errorf("SelectModes: %v, %v", modes, err)
	}
	for _, m := range Modes {
		cp, ok := m.Counterpart()
		switch {
		case (m.Offload || m.Discard) && (!ok || cp != map[bool]string{false: "software", true: "software-ddgst"}[m.Digest]):
			t.Errorf("%s: counterpart %q, %v", m.Name, cp, ok)
		case !m.Offload && !m.Discard && ok:
			t.Errorf("%s has a counterpart %q", m.Name, cp)
		}
	}
}

func TestMountChildArgs(t *testing.T) {
	for _, m := range []MountChild{
		{Mountpoint: "/tmp/x y", Addr: "127.0.0.1:4420", NQN: NQN, Offload: true, Digest: false, AccountNIC: true},
		{Mountpoint: "/m", Addr: "127.0.0.1:1", NQN: NQN, Digest: true, CPUProfile: "/tmp/p.pprof"},
		{Mountpoint: "/m", Addr: "127.0.0.1:1", NQN: NQN, Digest: true, Discard: true},
	} {
		got, err := ParseMountChild(m.Args())
		if err != nil || got != m {
			t.Errorf("round trip: %+v, %v; want %+v", got, err, m)
		}
	}
	for _, args := range [][]string{
		{"/x", "a", "n", "offload=true", "ddgst=false"},
		{"/x", "a", "n", "offload=maybe", "ddgst=false", "accountnic=true"},
		{"/x", "a", "n", "ddgst=true", "offload=true", "accountnic=true"},
		{"/x", "a", "n", "offload=true", "ddgst=true", "accountnic=true", "discard=false", "cpuprofile="},
		{"/x", "a", "n", "offload=true", "ddgst=true", "accountnic=true", "cpuprofile=/p"},
		{"/x", "a", "n", "offload=true", "ddgst=true", "accountnic=true", "discard=yes"},
	} {
		if _, err := ParseMountChild(args); err == nil {
			t.Errorf("ParseMountChild(%q) accepted", args)
		}
	}
}

// A report as fio 3.33 writes it, cut to what parseFio reads, after a note
// fio prints first.
const fioJSON = `note: both iodepth >= 1 and synchronous I/O engine are selected, queue depth will be capped at 1
{
  "fio version" : "fio-3.33",
  "jobs" : [
    {
      "jobname" : "4k-qd1",
      "error" : 0,
      "read" : {
        "io_bytes" : 41943040,
        "bw_bytes" : 20971520,
        "iops" : 5120.5,
        "runtime" : 2000,
        "clat_ns" : {"percentile" : {"50.000000" : 150000, "99.000000" : 400000}},
        "lat_ns" : {"percentile" : {"50.000000" : 170000, "99.000000" : 450000}}
      },
      "usr_cpu" : 10.0,
      "sys_cpu" : 30.0
    }
  ]
}`

func TestParseFio(t *testing.T) {
	r, err := parseFio([]byte(fioJSON))
	if err != nil {
		t.Fatal(err)
	}
	want := fioResult{IOPS: 5120.5, BWBytes: 20971520, IOBytes: 41943040, Runtime: 2 * time.Second,
		P50: 170 * time.Microsecond, P99: 450 * time.Microsecond, ClatP50: 150 * time.Microsecond, ClatP99: 400 * time.Microsecond,
		UsrCPU: 10, SysCPU: 30, Version: "fio-3.33"}
	if r != want {
		t.Errorf("parseFio:\n got %+v\nwant %+v", r, want)
	}
	for name, doc := range map[string]string{
		"job error":     strings.Replace(fioJSON, `"error" : 0`, `"error" : 5`, 1),
		"nothing read":  strings.Replace(fioJSON, `"io_bytes" : 41943040`, `"io_bytes" : 0`, 1),
		"no lat p99":    strings.Replace(fioJSON, `"99.000000" : 450000`, `"99.500000" : 450000`, 1),
		"not JSON":      "fio: some failure",
		"two jobs":      strings.Replace(fioJSON, `"jobs" : [`, `"jobs" : [{"read":{}},`, 1),
		"truncated doc": fioJSON[:len(fioJSON)/2],
	} {
		if _, err := parseFio([]byte(doc)); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

func TestProcCPU(t *testing.T) {
	rusage := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			t.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	before, err := procCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// Burn 100 ms of CPU, as getrusage counts it (however loaded the
	// machine), and compare.
	ru0 := rusage()
	for rusage()-ru0 < 100*time.Millisecond {
	}
	spent := rusage() - ru0
	after, err := procCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if d := after - before; d < spent-40*time.Millisecond || d > spent+40*time.Millisecond {
		t.Errorf("/proc/self/stat counted %v of CPU, getrusage %v", d, spent)
	}
	if _, err := procCPU(1 << 30); err == nil {
		t.Error("CPU time of a process that does not exist")
	}
}

func TestReadStats(t *testing.T) {
	p := filepath.Join(t.TempDir(), "stats")
	os.WriteFile(p, []byte("fuse_reads: 12\nsim_engine_cpu_ns: 123456789\nweird line\nneg: -1\n"), 0o644)
	m, err := readStats(p)
	if err != nil || m["fuse_reads"] != 12 || m[nicCPUCounter] != 123456789 || len(m) != 2 {
		t.Errorf("readStats: %v, %v", m, err)
	}
}

// sampleReport has every job in every mode, with made-up figures chosen so
// that the targets come out both ways.
func sampleReport() *Report {
	rep := &Report{Machine: Machine{CPUs: 2, CPUModel: "Test CPU", Kernel: "6.1"}, RTT: &RTT{Samples: 100, P50Micro: 40, P99Micro: 90}, LoadBefore: "0.1 0.2 0.3", LoadAfter: "0.4 0.5 0.6", RuntimeSeconds: 8}
	for _, j := range Jobs {
		for _, m := range Modes {
			r := Result{Job: j.Name, Mode: m.Name, BlockSize: j.BS, IODepth: j.IODepth, MiBps: 100, IOPS: 100 * (1 << 20) / float64(j.BS), P50Micro: 200, P99Micro: 900, HostCPUPerGiB: 1000}
			switch {
			case m.Null:
				r.MiBps, r.IOPS, r.P50Micro, r.HostCPUPerGiB = 400, r.IOPS*4, 20, 300
			case m.Offload:
				r.MiBps, r.IOPS, r.HostCPUPerGiB = 150, r.IOPS*1.5, 400
				r.NICAccounted, r.NICCPUPerGiB = m.AccountNIC, 200
			case m.Discard:
				r.MiBps, r.IOPS, r.HostCPUPerGiB = 200, r.IOPS*2, 300
			}
			rep.Runs = append(rep.Runs, r)
		}
	}
	rep.complete()
	return rep
}

func TestReportRatiosAndTargets(t *testing.T) {
	rep := sampleReport()
	off := rep.find("128k-qd16", "offload-ddgst")
	if off.VsSoftwareMiBps == nil || *off.VsSoftwareMiBps != 1.5 || *off.VsSoftwareHostCPU != 0.4 || *off.VsNullMiBps != 150.0/400 {
		t.Errorf("offload-ddgst ratios: %v %v %v", off.VsSoftwareMiBps, off.VsSoftwareHostCPU, off.VsNullMiBps)
	}
	if sw := rep.find("128k-qd16", "software"); sw.VsSoftwareMiBps != nil || *sw.VsNullMiBps != 0.25 {
		t.Errorf("software ratios: %v %v", sw.VsSoftwareMiBps, sw.VsNullMiBps)
	}
	if null := rep.find("4k-qd1", "null"); null.VsNullMiBps != nil {
		t.Error("the null file system compared with itself")
	}
	want := map[string]struct {
		measured, met bool
		value         float64
	}{
		"a":  {true, true, 0.4},
		"b":  {true, false, 0.5 / 1.0},
		"c1": {true, false, 150.0 / 400},
		"c2": {true, true, 1.5 / 4},
		"d":  {true, false, 200.0 / 60},
	}
	ids := []string{"a", "b", "c1", "c2", "d"}
	if len(rep.Targets) != len(ids) {
		t.Fatalf("%d targets, want %d: %v", len(rep.Targets), len(ids), rep.Targets)
	}
	for i, tg := range rep.Targets {
		w := want[ids[i]]
		if tg.Measured != w.measured || tg.Met != w.met || (w.measured && (tg.Value < w.value-1e-9 || tg.Value > w.value+1e-9)) {
			t.Errorf("target %s: %+v; want %+v", ids[i], tg, w)
		}
	}
	if !strings.Contains(rep.Targets[4].What, "offload-plain") {
		t.Errorf("target d compares %q, want the plain offload mount", rep.Targets[4].What)
	}
}

func TestWriteTable(t *testing.T) {
	var b bytes.Buffer
	if err := sampleReport().WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, j := range Jobs {
		for _, m := range Modes {
			if !strings.Contains(out, j.Title) || !strings.Contains(out, m.Title) {
				t.Errorf("table lacks %s / %s", j.Title, m.Title)
			}
		}
	}
	for _, s := range []string{"(a) host CPU per GiB", "(b) ", "MISSED", "loopback TCP round trip", "load average 0.1 0.2 0.3 before"} {
		if !strings.Contains(out, s) {
			t.Errorf("table lacks %q:\n%s", s, out)
		}
	}
	if n := strings.Count(out, "\nrandread 4K QD1 "); n != len(Modes) {
		t.Errorf("%d rows of randread 4K QD1, want %d", n, len(Modes))
	}
}

func TestWriteChart(t *testing.T) {
	p := filepath.Join(t.TempDir(), "bench.png")
	if err := sampleReport().WriteChart(p); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	b := img.Bounds()
	if b.Dx() < len(Jobs)*chartPanelW || b.Dy() < 2*chartPanelH {
		t.Errorf("chart is %v, too small for %d panels", b, 2*len(Jobs))
	}
	// Bars are drawn: the offload colour appears.
	found := false
	want := modeStyles["offload"].full
	for y := b.Min.Y; y < b.Max.Y && !found; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			if uint8(r>>8) == want.R && uint8(g>>8) == want.G && uint8(bl>>8) == want.B {
				found = true
				break
			}
		}
	}
	if !found {
		t.Error("no offload bar in the chart")
	}
}

func TestNiceStepAndCompact(t *testing.T) {
	for _, c := range []struct{ in, want float64 }{{0.3, 0.5}, {7, 10}, {120, 200}, {2000, 2000}, {0, 1}} {
		if got := niceStep(c.in); got != c.want {
			t.Errorf("niceStep(%v) = %v, want %v", c.in, got, c.want)
		}
	}
	for _, c := range []struct {
		in   float64
		want string
	}{{0, "0"}, {0.25, "0.25"}, {9.5, "9.5"}, {12, "12"}, {12.34, "12.3"}, {833.2, "833"}, {12345, "12.3k"}, {123456, "123k"}} {
		if got := compact(c.in); got != c.want {
			t.Errorf("compact(%v) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestEchoRTT(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- ServeEcho(ln) }()
	defer func() {
		ln.Close()
		if err := <-served; err != nil {
			t.Errorf("ServeEcho: %v", err)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rtt, err := measureRTT(ctx, ln.Addr().String(), 200)
	if err != nil {
		t.Fatal(err)
	}
	if rtt.Samples != 200 || rtt.P50Micro <= 0 || rtt.P99Micro < rtt.P50Micro {
		t.Errorf("RTT %+v", rtt)
	}
}

// The null file system answers reads of any size with zeros, short at the
// end, through a real mount with direct I/O.
func TestNullFS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting FUSE needs root")
	}
	if f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0); err != nil {
		t.Skipf("no /dev/fuse: %v", err)
	} else {
		f.Close()
	}
	dir := t.TempDir()
	const size = 3<<20 + 4096
	srv, err := MountNull(dir, size)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
			syscall.Unmount(dir, syscall.MNT_DETACH)
		}
	}()
	f, err := os.OpenFile(filepath.Join(dir, NullFile), os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || st.Size() != size {
		t.Fatalf("stat: %v, %v; want %d bytes", st, err, size)
	}
	buf, err := syscall.Mmap(-1, 0, 1<<20, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(buf)
	for _, c := range []struct {
		off  int64
		n    int
		want int
	}{{0, 4096, 4096}, {4096, 128 << 10, 128 << 10}, {1 << 20, 1 << 20, 1 << 20}, {3 << 20, 1 << 20, 4096}, {size, 4096, 0}} {
		for i := range buf {
			buf[i] = 0xa5
		}
		n, err := f.ReadAt(buf[:c.n], c.off)
		if n != c.want || (err != nil && !(c.want < c.n && err == io.EOF)) {
			t.Errorf("read %d at %d: %d, %v; want %d", c.n, c.off, n, err, c.want)
		}
		if !bytes.Equal(buf[:n], make([]byte, n)) {
			t.Errorf("read %d at %d: not zeros", c.n, c.off)
		}
	}
}

// median takes each figure's median on its own, and the counters of the
// round with the median throughput; with an even count, the mean of the
// middle two.
func TestMedian(t *testing.T) {
	runs := []Result{
		{Job: "4k-qd1", Mode: "software", Round: 1, MiBps: 1, IOPS: 256, P50Micro: 5, HostCPUPerGiB: 30, Counters: map[string]uint64{"fuse_reads": 1}},
		{Job: "4k-qd1", Mode: "software", Round: 2, MiBps: 3, IOPS: 768, P50Micro: 1, HostCPUPerGiB: 10, Counters: map[string]uint64{"fuse_reads": 3}},
		{Job: "4k-qd1", Mode: "software", Round: 3, MiBps: 2, IOPS: 512, P50Micro: 9, HostCPUPerGiB: 20, Counters: map[string]uint64{"fuse_reads": 2}},
	}
	m := median(runs)
	if m.MiBps != 2 || m.IOPS != 512 || m.P50Micro != 5 || m.HostCPUPerGiB != 20 || m.Counters["fuse_reads"] != 2 || m.Rounds != 3 || m.Round != 0 || m.Job != "4k-qd1" {
		t.Errorf("median of 3: %+v", m)
	}
	m = median(runs[:2])
	if m.MiBps != 2 || m.P50Micro != 3 || m.HostCPUPerGiB != 20 || m.Rounds != 2 {
		t.Errorf("median of 2: %+v", m)
	}
	if runs[0].P50Micro != 5 || runs[1].MiBps != 3 {
		t.Error("median changed its input")
	}
}
