package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/nvmefs/nvmefs/bench"
	"github.com/nvmefs/nvmefs/blk"
	"github.com/nvmefs/nvmefs/mlx5sim"
	"github.com/nvmefs/nvmefs/nvmetcp/host"
	"github.com/nvmefs/nvmefs/nvmetcp/target/store"
)

func init() { commands = append(commands, benchCommand) }

var benchCommand = &command{
	name:    "bench",
	args:    "[--runtime DURATION] [--rounds N] [--jobs LIST] [--modes LIST] [--out DIR] [flags]",
	summary: "measure reads through a mount with fio: offload vs software vs the FUSE ceiling",
	details: `
Starts a target (nvmefs serve, one memory namespace of --size, filled with data
first) and one mount per mode, each its own process, and runs fio against the
namespace file: random reads of 4 KiB at queue depth 1 and 32, of 128 KiB at
depth 16, and sequential 1 MiB reads (--jobs 4k-qd1,4k-qd32,128k-qd16,1m-seq),
each through a mount with the receive offload on and off, data digest on and
off; through a host that skips the copy and the CRC altogether (skip-ddgst: the
upper bound of what an offload can gain; benchmark only, it reads garbage); and
through a null FUSE file system with the same mount options, which serves
zeros with no network and no copy: the FUSE ceiling of the machine (--modes
software,offload,offload-plain,software-ddgst,offload-ddgst,skip-ddgst,null).
Each job runs --rounds times in every mode, the modes in turn.

It prints a progress line per run, then one table of medians over the rounds:
IOPS, MiB/s, fio's latency p50/p99, and CPU time per GiB read split into the
host's part (the mount process's utime+stime from /proc, minus the NIC's) and
the simulated NIC's (its receive engines' thread CPU time), with the ratios
to software (same digest setting) and to the null FUSE file system, and issue
6's targets. --out gets results.json (every run too), table.txt and bench.png
(throughput and CPU per GiB per job).

Needs root, /dev/fuse and fio (installed with apt-get when missing). Nothing
else should run meanwhile: the load average is recorded with the results.
The whole run takes about (jobs x modes x rounds) x (--runtime + 0.5 s) + 10 s.`,
	setup: func(fs *pflag.FlagSet) func(*env, []string) error {
		o := &benchOptions{runtime: 3 * time.Second, rounds: 3, size: "512M"}
		fs.DurationVar(&o.runtime, "runtime", o.runtime, "each fio run's `DURATION` (whole seconds)")
		fs.IntVar(&o.rounds, "rounds", o.rounds, "runs of each job in every mode, the modes in turn: the table has the medians")
		fs.StringVar(&o.jobs, "jobs", "all", "fio jobs to run, comma-separated: 4k-qd1, 4k-qd32, 128k-qd16, 1m-seq")
		fs.StringVar(&o.modes, "modes", "all", "ways to read, comma-separated: software, offload, offload-plain, software-ddgst, offload-ddgst, skip-ddgst, null")
		fs.StringVar(&o.size, "size", o.size, "namespace `SIZE` (and the null file's)")
		fs.StringVar(&o.out, "out", "", "`DIR` for results.json, table.txt and bench.png (default: a new directory in $TMPDIR)")
		fs.StringVar(&o.fio, "fio", "", "fio binary `PATH` (default: fio from $PATH, installed with apt-get when missing)")
		fs.StringVar(&o.cpuprofile, "cpuprofile", "", "write each mount's CPU profile over the run to `DIR`/mount-MODE.pprof (for go tool pprof; one job at a time gives one profile per job)")
		fs.StringVar(&o.child, bench.ChildFlag, "", "internal: run as one of the benchmark's child processes")
		fs.MarkHidden(bench.ChildFlag)
		return func(e *env, args []string) error {
			switch o.child {
			case "":
				return runBench(e, o, args)
			case bench.ChildMount:
				return benchMountChild(e, args)
			case bench.ChildNull:
				return benchNullChild(e, args)
			case bench.ChildEcho:
				return benchEchoChild(e, args)
			}
			return usagef("unknown --%s %q", bench.ChildFlag, o.child)
		}
	},
}

type benchOptions struct {
	runtime           time.Duration
	rounds            int
	jobs, modes, size string
	out, fio, child   string
	cpuprofile        string
}

func runBench(e *env, o *benchOptions, args []string) error {
	if len(args) != 0 {
		return usagef("no arguments expected, got %q", args)
	}
	jobs, err := bench.SelectJobs(o.jobs)
	if err != nil {
		return usagef("--jobs: %v", err)
	}
	modes, err := bench.SelectModes(o.modes)
	if err != nil {
		return usagef("--modes: %v", err)
	}
	size, err := store.ParseSize(o.size)
	if err != nil || size < 1<<20 || size%(1<<20) != 0 {
		return usagef("--size %q: want a whole number of MiB, at least 1M", o.size)
	}
	if o.runtime < time.Second {
		return usagef("--runtime %v: want at least 1s", o.runtime)
	}
	if o.rounds < 1 || o.rounds > 99 {
		return usagef("--rounds %d: want 1 to 99", o.rounds)
	}
	if err := checkFUSE(); err != nil {
		return err
	}
	fio, err := findFio(e, o.fio)
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	out := o.out
	if out == "" {
		if out, err = os.MkdirTemp("", "nvmefs-bench-"); err != nil {
			return err
		}
	} else if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "nvmefs-bench-work-")
	if err != nil {
		return err
	}
	if o.cpuprofile != "" {
		if o.cpuprofile, err = filepath.Abs(o.cpuprofile); err != nil {
			return err
		}
		if err := os.MkdirAll(o.cpuprofile, 0o755); err != nil {
			return err
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	rep, err := bench.Run(ctx, bench.Config{
		Exe: exe, Fio: fio, Runtime: o.runtime, Size: size, Jobs: jobs, Modes: modes,
		Dir: work, Progress: e.stderr, Command: append([]string{"nvmefs"}, os.Args[1:]...),
		CPUProfileDir: o.cpuprofile, Rounds: o.rounds,
	})
	if err != nil {
		return fmt.Errorf("%w (the children's logs are in %s)", err, work)
	}
	os.RemoveAll(work)
	if err := rep.WriteTable(e.stdout); err != nil {
		return err
	}
	tf, err := os.Create(filepath.Join(out, "table.txt"))
	if err != nil {
		return err
	}
	rep.WriteTable(tf)
	if err := tf.Close(); err != nil {
		return err
	}
	if err := rep.WriteJSON(filepath.Join(out, "results.json")); err != nil {
		return err
	}
	if err := rep.WriteChart(filepath.Join(out, "bench.png")); err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "results: %s (results.json, table.txt, bench.png)\n", out)
	return nil
}

// errNoFio: fio is missing and could not be installed.
var errNoFio = errors.New("fio is not installed and could not be installed")

// findFio returns the fio to run: path, or fio from $PATH, installed with
// apt-get (as root) when missing.
func findFio(e *env, path string) (string, error) {
	if path != "" {
		return exec.LookPath(path)
	}
	if p, err := exec.LookPath("fio"); err == nil {
		return p, nil
	}
	if _, err := exec.LookPath("apt-get"); err != nil || os.Geteuid() != 0 {
		return "", fmt.Errorf("%w: no apt-get, or not root; install fio and try again", errNoFio)
	}
	fmt.Fprintln(e.stderr, "fio is not installed: installing it (apt-get install fio)")
	install := func(args ...string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		cmd.Stdout, cmd.Stderr = e.stderr, e.stderr
		return cmd.Run()
	}
	if err := install("install", "-y", "-qq", "--no-install-recommends", "fio"); err != nil {
		if err := install("update", "-qq"); err != nil {
			return "", fmt.Errorf("%w: apt-get update: %v", errNoFio, err)
		}
		if err := install("install", "-y", "-qq", "--no-install-recommends", "fio"); err != nil {
			return "", fmt.Errorf("%w: apt-get install fio: %v", errNoFio, err)
		}
	}
	p, err := exec.LookPath("fio")
	if err != nil {
		return "", fmt.Errorf("%w: apt-get installed no fio in $PATH", errNoFio)
	}
	return p, nil
}

// benchMountChild is a mount of the benchmark: what `nvmefs mount
// MOUNTPOINT --addr ADDR --nqn NQN [--offload=false] [--data-digest]` does,
// with what mount's flags do not offer: the NIC's receive engines on locked
// OS threads whose CPU time the stats file reports (sim_engine_cpu_ns), and
// a CPU profile.
func benchMountChild(e *env, args []string) error {
	mc, err := bench.ParseMountChild(args)
	if err != nil {
		return usagef("%v", err)
	}
	if mc.CPUProfile != "" {
		f, err := os.Create(mc.CPUProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return err
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}
	o := &mountOptions{
		addr: mc.Addr, nqn: mc.NQN,
		queueSize:      host.DefaultQueueSize,
		ctrlLossTmo:    host.DefaultCtrlLossTmo,
		reconnectDelay: host.DefaultReconnectDelay,
		keepAliveTmo:   host.DefaultKeepAliveTmo,
		ioTimeout:      host.DefaultIOTimeout,
		dataDigest:     mc.Digest,
		offload:        mc.Offload,
		discardPayload: mc.Discard,
		nicMTU:         mlx5sim.DefaultMTU,
		nicSeed:        1,
	}
	mp, _, err := o.validate([]string{mc.Mountpoint})
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	limitMemory(0) // as mount does
	if err := checkFUSE(); err != nil {
		return err
	}
	if err := checkMountpoint(mp, false, logger); err != nil {
		return err
	}
	s := &session{e: e, log: logger, mountpoint: mp, addr: o.addr}
	defer s.stop()
	if o.offload {
		s.nic, err = mlx5sim.New(mlx5sim.Config{Name: "mlx5sim0", Inline: true, MTU: o.nicMTU, Seed: o.nicSeed, AccountCPU: mc.AccountNIC})
		if err != nil {
			return err
		}
		s.extraCounters = append(s.extraCounters, func() []blk.Counter { return nicCounters(s.nic) })
	}
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	if err := s.connect(ctx, o); err != nil {
		return err
	}
	if err := s.mountFiles(false); err != nil {
		return err
	}
	unmounted := make(chan struct{})
	go func() { s.srv.Wait(); close(unmounted) }()
	select {
	case <-unmounted:
	case <-sigs:
		s.unmount(unmounted, sigs)
	}
	return nil
}

// benchNullChild serves the null file system: MOUNTPOINT SIZE.
func benchNullChild(e *env, args []string) error {
	if len(args) != 2 {
		return usagef("null child: want MOUNTPOINT SIZE, got %q", args)
	}
	size, err := strconv.ParseInt(args[1], 10, 64)
	if err != nil || size <= 0 {
		return usagef("null child: bad size %q", args[1])
	}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	if err := checkFUSE(); err != nil {
		return err
	}
	srv, err := bench.MountNull(args[0], size)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%s%s: %s, %d bytes of zeros\n", bench.ReadyMounted, args[0], bench.NullFile, size)
	unmounted := make(chan struct{})
	go func() { srv.Wait(); close(unmounted) }()
	select {
	case <-unmounted:
		return nil
	case <-sigs:
	}
	if err := srv.Unmount(); err != nil {
		// Busy (a reader left a file open): detach it.
		syscall.Unmount(args[0], syscall.MNT_DETACH)
	}
	select {
	case <-unmounted:
	case <-time.After(busyDrainTimeout):
	}
	return nil
}

// benchEchoChild answers the benchmark's loopback round trips.
func benchEchoChild(e *env, args []string) error {
	if len(args) != 0 {
		return usagef("echo child: no arguments expected")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() { <-sigs; ln.Close() }()
	fmt.Fprintf(e.stdout, "%s%s\n", bench.ReadyEcho, ln.Addr())
	return bench.ServeEcho(ln)
}
