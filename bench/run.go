package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// NQN is the subsystem the benchmark's target serves.
const NQN = "nqn.2026-01.io.nvmefs:bench"

const (
	// readyTimeout bounds a child's start (a mount connects and mounts).
	readyTimeout = 30 * time.Second
	// fioSlack is how much longer than its runtime a fio run may take.
	fioSlack = 60 * time.Second
	// DefaultRTTSamples is how many loopback round trips are timed.
	DefaultRTTSamples = 5000
)

// Config is one benchmark run.
type Config struct {
	// Exe is the nvmefs binary, whose children the target (nvmefs
	// serve), the mounts (nvmefs mount, or nvmefs bench --child=mount to
	// account the NIC's CPU), the null file system and the echo peer are.
	Exe string
	// Fio is the fio binary.
	Fio string
	// Runtime is each fio job's (whole seconds, at least 1).
	Runtime time.Duration
	// Size is the namespace's and the null file's size in bytes.
	Size int64
	// Jobs and Modes to run: every job in every mode.
	Jobs  []Job
	Modes []Mode
	// Dir holds the mount points, the children's logs and fio's reports.
	Dir string
	// Progress gets a line per step and per job.
	Progress io.Writer
	// RTTSamples is how many loopback round trips to time (default
	// DefaultRTTSamples).
	RTTSamples int
	// Command is the command line, recorded with the results.
	Command []string
	// CPUProfileDir, if set, gets each mount's CPU profile over its whole
	// life (mount-MODE.pprof); every mount is then a child of the
	// benchmark, the mount's own code with a profiler.
	CPUProfileDir string
	// Rounds is how often each job runs in every mode, the modes in turn
	// (at least 1): the report gives each figure's median over them.
	Rounds int
}

// Estimate is about how long a run with cfg takes.
func (cfg *Config) Estimate() time.Duration {
	per := max(cfg.Runtime.Round(time.Second), time.Second) + 500*time.Millisecond
	return time.Duration(len(cfg.Jobs)*len(cfg.Modes)*max(cfg.Rounds, 1))*per + 5*time.Second + time.Duration(len(cfg.Modes))*time.Second
}

// The children's command lines. A child prints a ready line when it
// serves: the target logs "serving ... listen=ADDR", the others print
// the lines below.
const (
	// ChildFlag selects a child role of `nvmefs bench`.
	ChildFlag  = "child"
	ChildMount = "mount" // MountChild.Args: nvmefs mount with the NIC's CPU accounted or a profiler
	ChildNull  = "null"  // MOUNTPOINT SIZE
	ChildEcho  = "echo"  // (no arguments)

	// ReadyMounted starts the line a mount child prints once mounted.
	ReadyMounted = "mounted at "
	// ReadyEcho starts the line the echo child prints, then its address.
	ReadyEcho = "echo listening at "
)

var (
	reServing   = regexp.MustCompile(`msg=serving listen=(127\.0\.0\.1:\d+)`)
	reMounted   = regexp.MustCompile(`^` + ReadyMounted)
	reEchoReady = regexp.MustCompile(`^` + ReadyEcho + `(\S+)`)
)

// MountChild is what a mount child is asked to mount.
type MountChild struct {
	Mountpoint, Addr, NQN string
	Offload, Digest       bool
	// AccountNIC puts the NIC's engines on locked threads whose CPU
	// time the stats file reports.
	AccountNIC bool
	// Discard has the host drop the payload unread and unchecked
	// (host.Options.BenchmarkDiscardPayload).
	Discard bool
	// CPUProfile, if set, is where the child writes its CPU profile at
	// exit.
	CPUProfile string
}

// mountChildBools are a mount child's switches, in their order on the
// command line.
func (m *MountChild) bools() []struct {
	key string
	v   *bool
} {
	return []struct {
		key string
		v   *bool
	}{{"offload", &m.Offload}, {"ddgst", &m.Digest}, {"accountnic", &m.AccountNIC}, {"discard", &m.Discard}}
}

// Args are the arguments after `nvmefs bench --child mount`.
func (m MountChild) Args() []string {
	args := []string{m.Mountpoint, m.Addr, m.NQN}
	for _, b := range m.bools() {
		args = append(args, b.key+"="+strconv.FormatBool(*b.v))
	}
	if m.CPUProfile != "" {
		args = append(args, "cpuprofile="+m.CPUProfile)
	}
	return args
}

// ParseMountChild reads the arguments Args wrote.
func ParseMountChild(args []string) (MountChild, error) {
	var m MountChild
	bools := m.bools()
	if n := 3 + len(bools); len(args) != n && len(args) != n+1 {
		return MountChild{}, fmt.Errorf("mount child: want MOUNTPOINT ADDR NQN offload=BOOL ddgst=BOOL accountnic=BOOL discard=BOOL [cpuprofile=PATH], got %q", args)
	}
	m.Mountpoint, m.Addr, m.NQN = args[0], args[1], args[2]
	var errs []error
	for i, b := range bools {
		var err error
		*b.v, err = parseKeyBool(args[3+i], b.key)
		errs = append(errs, err)
	}
	if rest := args[3+len(bools):]; len(rest) == 1 {
		var ok bool
		if m.CPUProfile, ok = strings.CutPrefix(rest[0], "cpuprofile="); !ok || m.CPUProfile == "" {
			errs = append(errs, fmt.Errorf("want cpuprofile=PATH, got %q", rest[0]))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return MountChild{}, err
	}
	return m, nil
}

func parseKeyBool(s, key string) (bool, error) {
	v, ok := strings.CutPrefix(s, key+"=")
	if !ok {
		return false, fmt.Errorf("want %s=BOOL, got %q", key, s)
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("%s=%q: want true or false", key, v)
	}
	return b, nil
}

// Run runs every job in every mode and returns the results. It cleans up
// after itself (children stopped, mounts gone) whatever happens.
func Run(ctx context.Context, cfg Config) (rep *Report, err error) {
	if cfg.RTTSamples <= 0 {
		cfg.RTTSamples = DefaultRTTSamples
	}
	cfg.Runtime = max(cfg.Runtime.Round(time.Second), time.Second)
	cfg.Rounds = max(cfg.Rounds, 1)
	if len(cfg.Jobs) == 0 || len(cfg.Modes) == 0 {
		return nil, errors.New("no jobs or no modes to run")
	}
	r := &runner{cfg: cfg, progress: cfg.Progress}
	if r.progress == nil {
		r.progress = io.Discard
	}
	defer func() {
		if stopErr := r.stopAll(); err == nil && stopErr != nil {
			err = stopErr
		}
	}()
	rep = &Report{
		Started:        time.Now().UTC().Truncate(time.Second),
		Command:        cfg.Command,
		Machine:        thisMachine(),
		RuntimeSeconds: cfg.Runtime.Seconds(),
		Rounds:         cfg.Rounds,
		NamespaceBytes: cfg.Size,
		LoadBefore:     loadAvg(),
		FioVersion:     fioVersion(cfg.Fio),
	}
	r.say("machine: %s; load average %s", rep.Machine, rep.LoadBefore)
	r.say("%d jobs x %d modes x %d rounds, %v each: about %v; work directory %s",
		len(cfg.Jobs), len(cfg.Modes), cfg.Rounds, cfg.Runtime, cfg.Estimate().Round(time.Second), cfg.Dir)

	// The round trip, before the jobs and after them: on a virtual
	// machine an idle one is slower (its vCPUs halt between the
	// messages), so the lower of the two is the floor target (d) uses.
	if err := r.startEcho(ctx); err != nil {
		return nil, err
	}
	if err := r.measureRTT(ctx, rep); err != nil {
		return nil, err
	}
	if err := r.startAll(ctx); err != nil {
		return nil, err
	}
	if err := r.fill(ctx); err != nil {
		return nil, err
	}
	total, n := len(cfg.Jobs)*len(cfg.Modes)*cfg.Rounds, 0
	for _, j := range cfg.Jobs {
		// The modes in turn, round after round: each mode's runs are
		// spread over the job's time, so that a slow spell of the
		// machine weighs on every mode alike.
		first := len(rep.RoundRuns)
		for round := 1; round <= cfg.Rounds; round++ {
			for _, m := range cfg.Modes {
				n++
				run, err := r.measure(ctx, j, m)
				if err != nil {
					return nil, fmt.Errorf("%s, %s: %w", j.Title, m.Title, err)
				}
				run.Round = round
				rep.RoundRuns = append(rep.RoundRuns, run)
				r.say("[%*d/%d] %-18s %-15s %s", len(strconv.Itoa(total)), n, total, j.Title, m.Title, run.summary())
			}
		}
		for _, m := range cfg.Modes {
			var runs []Result
			for _, run := range rep.RoundRuns[first:] {
				if run.Mode == m.Name {
					runs = append(runs, run)
				}
			}
			rep.Runs = append(rep.Runs, median(runs))
		}
	}
	if err := r.measureRTT(ctx, rep); err != nil {
		return nil, err
	}
	if err := r.stopAll(); err != nil {
		return nil, err
	}
	rep.LoadAfter = loadAvg()
	rep.complete()
	return rep, nil
}

// runner holds a run's children.
type runner struct {
	cfg      Config
	progress io.Writer
	target   *child
	addr     string
	mounts   map[string]*mounted // by mode name
	echoAddr string
	children []*child // all, in start order
}

// mounted is a mount (or the null file system) of one mode.
type mounted struct {
	mode Mode
	proc *child
	dir  string
	file string // what fio reads
}

func (r *runner) say(format string, args ...any) {
	fmt.Fprintf(r.progress, format+"\n", args...)
}

func (r *runner) start(name string, args ...string) (*child, error) {
	c, err := startChild(name, filepath.Join(r.cfg.Dir, name+".log"), r.cfg.Exe, args...)
	if err != nil {
		return nil, err
	}
	r.children = append(r.children, c)
	return c, nil
}

// stopAll stops the children, last started first.
func (r *runner) stopAll() error {
	var errs []error
	for i := len(r.children) - 1; i >= 0; i-- {
		if err := r.children[i].stop(); err != nil {
			errs = append(errs, err)
		}
	}
	r.children = nil
	// A mount whose process had to be killed stays behind: detach it
	// (EINVAL: nothing is mounted there, as it should be).
	for _, m := range r.mounts {
		if err := syscall.Unmount(m.dir, syscall.MNT_DETACH); err == nil {
			errs = append(errs, fmt.Errorf("%s was still mounted after its process ended: detached it", m.dir))
		}
	}
	return errors.Join(errs...)
}

// startEcho starts the echo child, the peer of the round trips.
func (r *runner) startEcho(ctx context.Context) error {
	echo, err := r.start("echo", "bench", "--"+ChildFlag+"="+ChildEcho)
	if err != nil {
		return err
	}
	m, err := echo.waitFor(ctx, reEchoReady, readyTimeout)
	if err != nil {
		return err
	}
	r.echoAddr = m[1]
	return nil
}

// measureRTT times loopback round trips to the echo child and keeps the
// lowest p50 so far as the report's round trip.
func (r *runner) measureRTT(ctx context.Context, rep *Report) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	rtt, err := measureRTT(ctx, r.echoAddr, r.cfg.RTTSamples)
	if err != nil {
		return fmt.Errorf("loopback round trip: %w", err)
	}
	rep.RTTRounds = append(rep.RTTRounds, rtt)
	if rep.RTT == nil || rtt.P50Micro < rep.RTT.P50Micro {
		rep.RTT = &rtt
	}
	r.say("loopback TCP round trip between two processes (%d+%d bytes): p50 %.1f us, p99 %.1f us", echoAsk, echoAnswer, rtt.P50Micro, rtt.P99Micro)
	return nil
}

// startAll starts the target and one mount per mode.
func (r *runner) startAll(ctx context.Context) error {
	r.mounts = map[string]*mounted{}
	needTarget := false
	for _, m := range r.cfg.Modes {
		needTarget = needTarget || !m.Null
	}
	if needTarget {
		t, err := r.start("target", "serve", "--listen", "127.0.0.1:0", "--nqn", NQN,
			"--ns", "mem:"+strconv.FormatInt(r.cfg.Size, 10), "--log-level", "info")
		if err != nil {
			return err
		}
		m, err := t.waitFor(ctx, reServing, readyTimeout)
		if err != nil {
			return err
		}
		r.target, r.addr = t, m[1]
		r.say("target: nvmefs serve at %s, %s of memory (pid %d)", r.addr, sizeString(r.cfg.Size), t.pid())
	}
	for _, m := range r.cfg.Modes {
		dir := filepath.Join(r.cfg.Dir, "mnt-"+m.Name)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
		var args []string
		file := filepath.Join(dir, "nvme0n1")
		if m.Null {
			args = []string{"bench", "--" + ChildFlag + "=" + ChildNull, dir, strconv.FormatInt(r.cfg.Size, 10)}
			file = filepath.Join(dir, NullFile)
		} else if m.AccountNIC || m.Discard || r.cfg.CPUProfileDir != "" {
			mc := MountChild{Mountpoint: dir, Addr: r.addr, NQN: NQN, Offload: m.Offload, Digest: m.Digest, AccountNIC: m.AccountNIC, Discard: m.Discard}
			if r.cfg.CPUProfileDir != "" {
				mc.CPUProfile = filepath.Join(r.cfg.CPUProfileDir, "mount-"+m.Name+".pprof")
			}
			args = append([]string{"bench", "--" + ChildFlag + "=" + ChildMount}, mc.Args()...)
		} else {
			args = []string{"mount", dir, "--addr", r.addr, "--nqn", NQN, "--offload=" + strconv.FormatBool(m.Offload)}
			if m.Digest {
				args = append(args, "--data-digest")
			}
		}
		c, err := r.start("mount-"+m.Name, args...)
		if err != nil {
			return err
		}
		if _, err := c.waitFor(ctx, reMounted, readyTimeout); err != nil {
			return err
		}
		r.mounts[m.Name] = &mounted{mode: m, proc: c, dir: dir, file: file}
		r.say("mount %-15s pid %d at %s", m.Title, c.pid(), dir)
	}
	return nil
}

// fill writes the whole namespace once (fio's pseudo-random buffers), so
// that reads return data, not the zeros of a sparse store.
func (r *runner) fill(ctx context.Context) error {
	var via *mounted
	for _, m := range r.cfg.Modes {
		if !m.Null {
			via = r.mounts[m.Name]
			break
		}
	}
	if via == nil {
		return nil
	}
	t0 := time.Now()
	out := filepath.Join(r.cfg.Dir, "fio-fill.json")
	args := []string{"--name=fill", "--filename=" + via.file, "--rw=write", "--bs=1M", "--iodepth=4",
		"--ioengine=libaio", "--direct=1", "--invalidate=0", "--size=" + strconv.FormatInt(r.cfg.Size, 10),
		"--output-format=json", "--output=" + out}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	_, err := runFioWrite(ctx, r.cfg.Fio, args, out)
	if err != nil {
		return fmt.Errorf("filling the namespace: %w", err)
	}
	r.say("filled the namespace (%s) through the %s mount in %v", sizeString(r.cfg.Size), via.mode.Title, time.Since(t0).Round(10*time.Millisecond))
	return nil
}

// measure runs job j in mode m and measures it.
func (r *runner) measure(ctx context.Context, j Job, m Mode) (Result, error) {
	mt := r.mounts[m.Name]
	out := filepath.Join(r.cfg.Dir, "fio-"+j.Name+"-"+m.Name+".json")
	args := fioArgs(mt.file, j, r.cfg.Runtime, out)

	var before, after sample
	if err := r.sample(mt, &before); err != nil {
		return Result{}, err
	}
	t0 := time.Now()
	fctx, cancel := context.WithTimeout(ctx, r.cfg.Runtime+fioSlack)
	res, err := runFio(fctx, r.cfg.Fio, args, out)
	cancel()
	if err != nil {
		return Result{}, err
	}
	window := time.Since(t0)
	if err := r.sample(mt, &after); err != nil {
		return Result{}, err
	}
	run := Result{
		Job: j.Name, Mode: m.Name, RW: j.RW, BlockSize: j.BS, IODepth: j.IODepth,
		IOPS:          res.IOPS,
		MiBps:         res.BWBytes / (1 << 20),
		P50Micro:      micros(res.P50),
		P99Micro:      micros(res.P99),
		ClatP50Micro:  micros(res.ClatP50),
		ClatP99Micro:  micros(res.ClatP99),
		Bytes:         res.IOBytes,
		Seconds:       res.Runtime.Seconds(),
		WindowSeconds: window.Seconds(),
	}
	if f := strings.Fields(loadAvg()); len(f) > 0 {
		run.Load1, _ = strconv.ParseFloat(f[0], 64)
	}
	mountCPU := after.mountCPU - before.mountCPU
	run.MountCPUSeconds = mountCPU.Seconds()
	run.TargetCPUSeconds = (after.targetCPU - before.targetCPU).Seconds()
	run.FioCPUSeconds = (res.UsrCPU + res.SysCPU) / 100 * res.Runtime.Seconds()
	if !m.Null {
		run.Counters = map[string]uint64{}
		for _, name := range recordedCounters {
			a, okA := after.counters[name]
			b, okB := before.counters[name]
			if okA && okB {
				run.Counters[name] = a - b
			}
		}
		if ns, ok := run.Counters[nicCPUCounter]; ok && m.AccountNIC {
			run.NICCPUSeconds = float64(ns) / 1e9
			run.NICAccounted = true
		} else if m.AccountNIC {
			return Result{}, fmt.Errorf("the mount's stats file has no %s: the NIC's CPU time is not accounted", nicCPUCounter)
		}
	}
	host := max(run.MountCPUSeconds-run.NICCPUSeconds, 0)
	run.HostCPUSeconds = host
	gib := float64(res.IOBytes) / (1 << 30)
	run.HostCPUPerGiB = host * 1000 / gib
	run.NICCPUPerGiB = run.NICCPUSeconds * 1000 / gib
	run.TargetCPUPerGiB = run.TargetCPUSeconds * 1000 / gib
	run.FioCPUPerGiB = run.FioCPUSeconds * 1000 / gib
	return run, nil
}

// sample is what is read around a fio run.
type sample struct {
	mountCPU, targetCPU time.Duration
	counters            map[string]uint64
}

func (r *runner) sample(mt *mounted, s *sample) error {
	var err error
	if s.mountCPU, err = mt.proc.cpu(); err != nil {
		return err
	}
	if mt.mode.Null {
		return nil
	}
	if s.targetCPU, err = r.target.cpu(); err != nil {
		return err
	}
	s.counters, err = readStats(filepath.Join(mt.dir, ".nvmefs", "stats"))
	return err
}

// nicCPUCounter is the simulated NIC's engines' CPU time in the stats file.
const nicCPUCounter = "sim_engine_cpu_ns"

// recordedCounters are the mount's counters a run records (their change
// over the run): what says where the bytes went.
var recordedCounters = []string{
	"fuse_reads",
	"fuse_read_bytes",
	"fuse_read_dest_unaligned",
	"nvme0_commands",
	"nvme0_rx_bytes_copied",
	"nvme0_rx_bytes_direct",
	"nvme0_rx_bytes_discarded",
	"nvme0_rx_bytes_placed",
	"nvme0_rx_crc_software",
	"nvme0_rx_crc_offloaded",
	"nvme0_ddp_setup",
	"nvme0_ddp_setup_fail",
	"nvme0_resync_requests",
	"rx_nvmeotcp_offload_bytes",
	"sim_crc_ok",
	nicCPUCounter,
	"sim_engine_cpu_steps",
	"sim_engine_cpu_steps_lost",
}

// readStats reads a mount's stats file ("name: value" lines).
func readStats(path string) (map[string]uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m := map[string]uint64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, v, ok := strings.Cut(sc.Text(), ": ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseUint(v, 10, 64); err == nil {
			m[name] = n
		}
	}
	return m, sc.Err()
}

// Machine is what the benchmark ran on.
type Machine struct {
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpu_model"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"go_version"`
}

func (m Machine) String() string {
	return fmt.Sprintf("%d CPUs (%s), Linux %s", m.CPUs, m.CPUModel, m.Kernel)
}

func thisMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version(), CPUModel: "?", Kernel: "?"}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

// loadAvg is the 1, 5 and 15 minute load averages.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// sizeString writes n bytes in binary units.
func sizeString(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return strconv.FormatInt(n>>30, 10) + " GiB"
	case n >= 1<<20 && n%(1<<20) == 0:
		return strconv.FormatInt(n>>20, 10) + " MiB"
	case n >= 1<<10 && n%(1<<10) == 0:
		return strconv.FormatInt(n>>10, 10) + " KiB"
	}
	return strconv.FormatInt(n, 10) + " bytes"
}
