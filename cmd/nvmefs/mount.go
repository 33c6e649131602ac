package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/nvmefs/nvmefs/blk"
	"github.com/nvmefs/nvmefs/fusefs"
	"github.com/nvmefs/nvmefs/internal/nvmeblk"
	"github.com/nvmefs/nvmefs/mlx5sim"
	"github.com/nvmefs/nvmefs/nvmetcp/host"
	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
	"github.com/nvmefs/nvmefs/nvmetcp/target"
	"github.com/nvmefs/nvmefs/nvmetcp/target/store"
)

func init() { commands = append(commands, mountCommand) }

const (
	// embeddedNQN names the subsystem of the embedded target.
	embeddedNQN = "nqn.2026-01.io.nvmefs:embedded"
	// connectTimeout bounds connecting to the controller at start.
	connectTimeout = 30 * time.Second
	// busyDrainTimeout is how long a stop waits for open files to be
	// closed once the busy mount has been detached.
	busyDrainTimeout = 10 * time.Second
)

var mountCommand = &command{
	name:    "mount",
	args:    "MOUNTPOINT [--addr HOST:PORT --nqn NQN] [flags]",
	summary: "mount the namespaces of an NVMe/TCP subsystem as files",
	details: `
Connects to the NVM subsystem --nqn at --addr over NVMe/TCP and mounts its
namespaces at MOUNTPOINT (an existing directory) through FUSE, one regular file
per namespace, named like the kernel's block devices: nvme0n1 is namespace 1 of
the first (here: the only) controller of the mount, nvme0n2 namespace 2, and so
on. A file's size is its namespace's capacity and never changes. The
statistics (file system, block layer, host and per queue, NIC, process) are
at MOUNTPOINT/.nvmefs/stats, one "name: value" per line ('nvmefs stats
MOUNTPOINT' prints them as a table); MOUNTPOINT/.nvmefs/info says what is
mounted from where.

With the offload, MOUNTPOINT/.nvmefs/nic changes the simulated NIC at run
time: 'echo down > .nvmefs/nic' takes it down (its connections fail into the
host's error recovery and reconnect in software), 'up' brings it back (new
connections are offloaded); 'loss RATE', 'setup-fail RATE' and
'teardown-delay DURATION' set the faults of the --nic-* flags. Reading it
shows the current settings in the same form.

Without --addr, nvmefs starts an embedded NVMe/TCP target on a free port of
127.0.0.1 with one namespace of --size bytes of memory (lost at exit), says so,
and mounts it: the whole system with one command.

Reads and writes go to the target (direct I/O): nothing is cached, so nothing
stale is read when another host writes the namespace. --cache lets the kernel
page cache serve repeated reads instead. fsync is an NVMe Flush; fallocate
--punch-hole deallocates and --zero-range writes zeroes (block-aligned ranges).
The files behave like block device files: truncating fails (EINVAL), O_TRUNC
is ignored, writes past the end fail (ENOSPC); with dd, use conv=notrunc when
seeking. A shared writable mmap fails (ENODEV) unless --cache.

nvmefs runs in the foreground until SIGINT, SIGTERM or 'umount MOUNTPOINT';
then it unmounts, lets the I/O in flight finish, shuts the controller down
(CC.SHN) and exits 0. If a file is still open, it detaches the mount (umount -l)
and waits up to 10 s for it to be closed. A mount left behind by a killed
nvmefs is reported at the next mount with how to clear it; --force clears it.

Memory: the mount sets a soft limit of 128 MiB (plus an embedded target's
namespace) on its Go heap, so that go-fuse's reply buffer pools are
recycled; GOMEMLIMIT overrides it.

Needs root and /dev/fuse (no fusermount is used).`,
	setup: func(fs *pflag.FlagSet) func(*env, []string) error {
		o := &mountOptions{
			queueSize:      host.DefaultQueueSize,
			ctrlLossTmo:    host.DefaultCtrlLossTmo,
			reconnectDelay: host.DefaultReconnectDelay,
			keepAliveTmo:   host.DefaultKeepAliveTmo,
			ioTimeout:      host.DefaultIOTimeout,
			size:           "1G",
			logLevel:       logLevel{slog.LevelInfo},
		}
		fs.StringVar(&o.addr, "addr", "", "target `HOST:PORT` (port "+defaultPort+" if omitted); none: start an embedded target")
		fs.StringVar(&o.nqn, "nqn", "", "subsystem `NQN` to connect to (required with --addr)")
		fs.IntVar(&o.nrIOQueues, "nr-io-queues", 0, "I/O queues to ask for (default: one per CPU)")
		fs.IntVar(&o.queueSize, "queue-size", o.queueSize, "`DEPTH` of each I/O queue")
		fs.BoolVar(&o.hdrDigest, "hdr-digest", false, "ask for header digests (CRC32C)")
		fs.BoolVar(&o.dataDigest, "data-digest", false, "ask for data digests (CRC32C)")
		fs.StringVar(&o.hostNQN, "hostnqn", "", "host `NQN` (default: the stable one in the user's config directory)")
		fs.DurationVar(&o.ctrlLossTmo, "ctrl-loss-tmo", o.ctrlLossTmo, "give up reconnecting after `DURATION` (I/O then fails with EIO); negative: never")
		fs.DurationVar(&o.reconnectDelay, "reconnect-delay", o.reconnectDelay, "pause between reconnect attempts")
		fs.DurationVar(&o.keepAliveTmo, "keep-alive-tmo", o.keepAliveTmo, "keep-alive timeout (a Keep Alive every half of it); negative: none")
		fs.DurationVar(&o.ioTimeout, "io-timeout", o.ioTimeout, "a command unanswered for `DURATION` starts error recovery (the kernel's nvme_core.io_timeout)")
		fs.BoolVar(&o.cache, "cache", false, "let the kernel page cache serve repeated reads (default: direct I/O, every read reaches the target)")
		fs.BoolVar(&o.force, "force", false, "clear a stale mount left at MOUNTPOINT by a killed nvmefs")
		fs.StringVar(&o.size, "size", o.size, "embedded target only: namespace `SIZE` (512K, 64M, 1G, ...)")
		fs.Var(&o.logLevel, "log-level", "log `LEVEL`: debug, info, warn or error")
		fs.BoolVar(&o.offload, "offload", true, "offload the I/O queues' receive to the simulated NIC (mlx5sim: data placed in the readers' buffers, data digests checked); false: all in software")
		fs.IntVar(&o.nicMTU, "nic-mtu", mlx5sim.DefaultMTU, "NIC: stream bytes per `PACKET` (1.."+strconv.Itoa(mlx5sim.MaxMTU)+")")
		fs.Float64Var(&o.nicLoss, "nic-loss", 0, "NIC fault: fraction of packets (0..1) the offload loses track of, as after a TCP retransmission (it then resynchronises with the host)")
		fs.Float64Var(&o.nicSetupFail, "nic-setup-fail", 0, "NIC fault: fraction of read buffer mappings (0..1) refused (those reads go the software way)")
		fs.DurationVar(&o.nicTeardownDelay, "nic-teardown-delay", 0, "NIC fault: delay from the end of a read to the NIC releasing its buffer (the read completes only then)")
		fs.Uint64Var(&o.nicSeed, "nic-seed", 1, "NIC: seed of the random fault choices (reproducible runs)")
		return func(e *env, args []string) error {
			o.sizeSet = fs.Changed("size")
			o.nicSet = fs.Changed("nic-mtu") || fs.Changed("nic-loss") || fs.Changed("nic-setup-fail") || fs.Changed("nic-teardown-delay") || fs.Changed("nic-seed")
			return mount(e, o, args)
		}
	},
}

type mountOptions struct {
	addr, nqn, hostNQN          string
	nrIOQueues, queueSize       int
	hdrDigest, dataDigest       bool
	ctrlLossTmo, reconnectDelay time.Duration
	keepAliveTmo, ioTimeout     time.Duration
	cache, force                bool
	size                        string
	sizeSet                     bool
	logLevel                    logLevel

	// The simulated NIC.
	offload               bool
	nicMTU                int
	nicLoss, nicSetupFail float64
	nicTeardownDelay      time.Duration
	nicSeed               uint64
	nicSet                bool // a --nic-* flag was given

	// discardPayload: host.Options.BenchmarkDiscardPayload, for nvmefs
	// bench's mount child only (no flag sets it).
	discardPayload bool
}

func (o *mountOptions) validate(args []string) (mountpoint string, size int64, err error) {
	if len(args) != 1 {
		return "", 0, usagef("want exactly one MOUNTPOINT, got %d arguments", len(args))
	}
	if o.addr != "" {
		if o.sizeSet {
			return "", 0, usagef("--size is for the embedded target, started only without --addr")
		}
		if _, _, err := net.SplitHostPort(o.addr); err != nil {
			o.addr = net.JoinHostPort(strings.Trim(o.addr, "[]"), defaultPort)
		}
	} else {
		size, err = store.ParseSize(o.size)
		if err != nil || size < 4096 {
			return "", 0, usagef("--size %q: want a size of at least 4K, e.g. 64M or 1G", o.size)
		}
		if size%512 != 0 {
			return "", 0, usagef("--size %q is not a multiple of 512 bytes", o.size)
		}
	}
	if o.nqn != "" {
		if err := checkNQN(o.nqn); err != nil {
			return "", 0, usagef("--nqn: %v", err)
		}
		if o.nqn == discoveryNQN {
			return "", 0, usagef("--nqn: %s is the discovery subsystem, which has no namespaces; 'nvmefs discover --addr %s' lists the subsystems", discoveryNQN, o.addr)
		}
	}
	if o.hostNQN != "" {
		if err := checkNQN(o.hostNQN); err != nil {
			return "", 0, usagef("--hostnqn: %v", err)
		}
	}
	if o.nrIOQueues < 0 || o.queueSize < 2 || o.queueSize > 1024 {
		return "", 0, usagef("--nr-io-queues must be >= 0 and --queue-size 2..1024")
	}
	if o.ioTimeout <= 0 {
		return "", 0, usagef("--io-timeout %v: want a positive duration", o.ioTimeout)
	}
	if err := o.validateNIC(); err != nil {
		return "", 0, err
	}
	mp, err := filepath.Abs(args[0])
	if err != nil {
		return "", 0, err
	}
	// /proc/self/mountinfo names mount points by their real path; resolve
	// the parent only, as the mount point itself may be a dead mount.
	if parent, err := filepath.EvalSymlinks(filepath.Dir(mp)); err == nil {
		mp = filepath.Join(parent, filepath.Base(mp))
	}
	return mp, size, nil
}

// validateNIC checks the --nic-* flags.
func (o *mountOptions) validateNIC() error {
	switch {
	case !o.offload && o.nicSet:
		return usagef("the --nic-* flags configure the offload: drop them or --offload=false")
	case o.nicMTU < 1 || o.nicMTU > mlx5sim.MaxMTU:
		return usagef("--nic-mtu %d: want 1..%d", o.nicMTU, mlx5sim.MaxMTU)
	case !(o.nicLoss >= 0 && o.nicLoss <= 1):
		return usagef("--nic-loss %v: want a fraction of packets, 0..1", o.nicLoss)
	case !(o.nicSetupFail >= 0 && o.nicSetupFail <= 1):
		return usagef("--nic-setup-fail %v: want a fraction of mappings, 0..1", o.nicSetupFail)
	case o.nicTeardownDelay < 0:
		return usagef("--nic-teardown-delay %v: want a duration of at least 0", o.nicTeardownDelay)
	}
	return nil
}

// nic makes the simulated NIC of the mount, nil with --offload=false.
func (o *mountOptions) nic() (*mlx5sim.Device, error) {
	if !o.offload {
		return nil, nil
	}
	return mlx5sim.New(mlx5sim.Config{
		Name: "mlx5sim0",
		// The receive engines run in the host's receiver: no hand-off
		// between goroutines per batch of segments.
		Inline:        true,
		MTU:           o.nicMTU,
		Seed:          o.nicSeed,
		LossRate:      o.nicLoss,
		SetupFailRate: o.nicSetupFail,
		TeardownDelay: o.nicTeardownDelay,
	})
}

func (o *mountOptions) hostOptions(logger *slog.Logger) host.Options {
	return host.Options{
		NrIOQueues:     o.nrIOQueues,
		QueueSize:      o.queueSize,
		HeaderDigest:   o.hdrDigest,
		DataDigest:     o.dataDigest,
		HostNQN:        o.hostNQN,
		CtrlLossTmo:    o.ctrlLossTmo,
		ReconnectDelay: o.reconnectDelay,
		KeepAliveTmo:   o.keepAliveTmo,
		IOTimeout:      o.ioTimeout,
		Logger:         logger,

		BenchmarkDiscardPayload: o.discardPayload,
	}
}

// session is one mount: what it started, in the order to stop it.
type session struct {
	e          *env
	log        *slog.Logger
	mountpoint string

	target   *target.Target
	targetLn net.Listener
	served   chan error

	ctrl    *host.Controller
	nic     *mlx5sim.Device // nil: no offload
	nicCtl  *nicControl     // .nvmefs/nic, with the NIC
	addr    string
	devices []*blk.Device
	names   []string // the devices' file names
	tags    *blk.TagSet
	bufs    *blk.Buffers
	srv     *fusefs.Server

	// extraCounters are more statistics for the stats file (the NIC's,
	// once the host is given one).
	extraCounters []func() []blk.Counter

	// abandoned: the stop gave up waiting for open files (time out or a
	// second signal); their I/O is not waited for again.
	abandoned bool
}

func mount(e *env, o *mountOptions, args []string) (err error) {
	mp, size, err := o.validate(args)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: o.logLevel.Level}))
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	limitMemory(size)

	if err := checkFUSE(); err != nil {
		return err
	}
	if err := checkMountpoint(mp, o.force, logger); err != nil {
		return err
	}
	s := &session{e: e, log: logger, mountpoint: mp}
	defer s.stop()

	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	// A signal while starting cancels the start; one that comes after the
	// watcher saw the start end is passed on through early.
	early := make(chan os.Signal, 1)
	started := make(chan struct{})
	endStart := sync.OnceFunc(func() { close(started) })
	defer endStart()
	go func() {
		select {
		case sig := <-sigs:
			logger.Info("stopping", "signal", sig.String())
			early <- sig
			cancel()
		case <-started:
		}
	}()
	if o.addr == "" {
		if o.nqn == "" {
			o.nqn = embeddedNQN
		}
		if err := s.startTarget(o.nqn, size); err != nil {
			return err
		}
	} else if o.nqn == "" {
		return usagef("--nqn is required with --addr%s", offered(ctx, o.addr, o.hostOptions(logger)))
	} else {
		s.addr = o.addr
	}
	if s.nic, err = o.nic(); err != nil {
		return err
	}
	if s.nic != nil {
		s.extraCounters = append(s.extraCounters, func() []blk.Counter { return nicCounters(s.nic) })
		s.nicCtl = newNICControl(s.nic, o, logger)
	}
	if err := s.connect(ctx, o); err != nil {
		if ctx.Err() == context.Canceled {
			return nil // stopped by a signal
		}
		return err
	}
	if err := s.mountFiles(o.cache); err != nil {
		return err
	}
	endStart()

	unmounted := make(chan struct{})
	go func() { s.srv.Wait(); close(unmounted) }()
	select {
	case <-unmounted:
		logger.Info("unmounted", "mountpoint", mp)
	case <-early:
		if s.unmount(unmounted, sigs) {
			logger.Info("unmounted", "mountpoint", mp)
		}
	case sig := <-sigs:
		logger.Info("stopping", "signal", sig.String())
		if s.unmount(unmounted, sigs) {
			logger.Info("unmounted", "mountpoint", mp)
		}
	}
	return nil
}

// baseMemoryLimit is the mount's soft memory limit (GOMEMLIMIT) beyond an
// embedded target's namespace.
const baseMemoryLimit = 128 << 20

// limitMemory sets a soft memory limit unless GOMEMLIMIT does. go-fuse
// takes each READ's reply buffer from a pool per size (a page to 1 MiB),
// which refills between collections; with GOGC alone the heap grows to
// twice what the last collection found live, pooled buffers included, and
// a mount under mixed-size I/O settles at several hundred MiB. The limit
// makes the collector run before that; the live data (requests in flight,
// at most some tens of MiB, plus an embedded memory namespace) stays well
// below it, so the collector never runs back to back.
func limitMemory(embeddedNamespace int64) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	debug.SetMemoryLimit(baseMemoryLimit + embeddedNamespace)
}

// checkFUSE: mounting without fusermount needs root and /dev/fuse.
func checkFUSE() error {
	if os.Geteuid() != 0 {
		return errors.New("mounting needs root (nvmefs mounts FUSE directly, without fusermount)")
	}
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return errors.New("/dev/fuse does not exist: load the fuse module (modprobe fuse) or, in a container, pass the device (--device /dev/fuse)")
		}
		return fmt.Errorf("cannot open /dev/fuse: %w", errors.Unwrap(err))
	}
	f.Close()
	return nil
}

// checkMountpoint checks that mp is a directory that is not mounted on, and
// clears a stale FUSE mount there when force is set. A FUSE mount whose
// server died answers ENOTCONN; stat may not show it (the kernel caches the
// root's attributes), statfs always asks the server.
func checkMountpoint(mp string, force bool, logger *slog.Logger) error {
	if fstype, ok := mountedAt(mp); ok {
		var sfs unix.Statfs_t
		if err := unix.Statfs(mp, &sfs); err != unix.ENOTCONN {
			hint := ""
			if force {
				hint = " (--force only clears stale mounts)"
			}
			return fmt.Errorf("%s is busy: a %s file system is mounted there; unmount it first (umount %s)%s", mp, fstype, mp, hint)
		}
		if !force {
			return fmt.Errorf("%s is a stale FUSE mount (the nvmefs that served it is gone): clear it with 'umount -l %s', or mount with --force", mp, mp)
		}
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("--force: clearing the stale mount at %s: %w", mp, err)
		}
		logger.Warn("cleared a stale mount (umount -l)", "mountpoint", mp)
		return checkMountpoint(mp, false, logger)
	}
	var st unix.Stat_t
	err := unix.Stat(mp, &st)
	switch {
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("mount point %s does not exist (create it: mkdir -p %s)", mp, mp)
	case err != nil:
		return fmt.Errorf("mount point %s: %w", mp, err)
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return fmt.Errorf("mount point %s is not a directory", mp)
	}
	return nil
}

// mountedAt reports whether something is mounted at mp, and its type, from
// /proc/self/mountinfo.
func mountedAt(mp string) (fstype string, ok bool) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 || unescapeMountinfo(fields[4]) != mp {
			continue
		}
		fstype = "?"
		for i, f := range fields {
			if f == "-" && i+1 < len(fields) {
				fstype = fields[i+1]
			}
		}
		ok = true // keep going: the last mount at mp is the visible one
	}
	return fstype, ok
}

// unescapeMountinfo undoes the octal escapes (\040 for a space) of
// /proc/self/mountinfo paths.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// startTarget starts the embedded target: one memory namespace on a free
// loopback port.
func (s *session) startTarget(nqn string, size int64) error {
	mem, err := store.NewMem(size)
	if err != nil {
		return fmt.Errorf("embedded target: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		mem.Close()
		return fmt.Errorf("embedded target: %w", err)
	}
	tgt, err := target.New(target.Config{
		SubsystemNQN: nqn,
		Namespaces:   []store.Store{mem},
		Logger:       s.log.With("component", "embedded-target"),
		ListenAddr:   ln.Addr().String(),
	})
	if err != nil {
		ln.Close()
		mem.Close()
		return fmt.Errorf("embedded target: %w", err)
	}
	s.target, s.targetLn, s.addr = tgt, ln, ln.Addr().String()
	s.served = make(chan error, 1)
	go func() { s.served <- tgt.Serve(ln) }()
	fmt.Fprintf(s.e.stdout, "no --addr: started an embedded NVMe/TCP target at %s, subsystem %s, namespace 1: %s of memory (lost at exit)\n",
		s.addr, nqn, humanBytes(size))
	return nil
}

// connect connects the controller, saying clearly why it cannot.
func (s *session) connect(ctx context.Context, o *mountOptions) error {
	opts := o.hostOptions(s.log)
	if s.nic != nil {
		opts.Offload = s.nic
	}
	c, err := host.Connect(ctx, s.addr, o.nqn, opts)
	if err != nil {
		var opErr *net.OpError
		var st nvme.Status
		switch {
		case ctx.Err() != nil && errors.Is(err, ctx.Err()):
			if ctx.Err() == context.DeadlineExceeded {
				return fmt.Errorf("connecting to %s at %s: no answer within %v", o.nqn, s.addr, connectTimeout)
			}
			return err
		case errors.As(err, &opErr) && opErr.Op == "dial":
			return fmt.Errorf("cannot reach the target at %s: %v", s.addr, opErr.Err)
		case errors.As(err, &st):
			if list, known := discoverNQNs(ctx, s.addr, opts); list != nil && !known[o.nqn] {
				return fmt.Errorf("the target at %s has no subsystem %s; it offers: %s", s.addr, o.nqn, strings.Join(list, ", "))
			}
			return fmt.Errorf("the target at %s refused the connection to %s: %w", s.addr, o.nqn, err)
		}
		return fmt.Errorf("connecting to %s at %s: %w", o.nqn, s.addr, err)
	}
	s.ctrl = c
	info := c.Info()
	digests := "none"
	switch {
	case info.HeaderDigest && info.DataDigest:
		digests = "header and data"
	case info.HeaderDigest:
		digests = "header"
	case info.DataDigest:
		digests = "data"
	}
	fmt.Fprintf(s.e.stdout, "connected to %s at %s: controller %d, %d I/O queues of depth %d, up to %s per command, digests: %s\n",
		o.nqn, s.addr, info.CntlID, info.IOQueues, info.QueueSize, humanBytes(int64(info.MaxTransfer)), digests)
	fmt.Fprintln(s.e.stdout, s.offloadLine())
	return nil
}

// offloadLine says how the I/O queues receive.
func (s *session) offloadLine() string {
	if s.nic == nil {
		return "receive offload: off (--offload=false): the host copies and checks every byte"
	}
	lim := s.nic.Limits()
	ci := s.ctrl.Info()
	return fmt.Sprintf("receive offload: %s (simulated mlx5, MTU %d) on %d of %d I/O queues: reads of %s and more are placed in the reader's buffer (up to %s per command), data digests checked by the NIC",
		s.nic.Name(), s.nic.MTU(), ci.OffloadedQueues, ci.IOQueues, humanBytes(int64(lim.IOThreshold)), humanBytes(int64(lim.MaxIOBytes())))
}

// nicCounters are the NIC's counters under their driver names.
func nicCounters(d *mlx5sim.Device) []blk.Counter {
	st := d.Stats()
	cs := make([]blk.Counter, len(st))
	for i, c := range st {
		cs[i] = blk.Counter{Name: c.Name, Value: c.Value}
	}
	return cs
}

// discoverNQNs lists the NVM subsystems the discovery controller at addr
// offers (nil if it cannot be read).
func discoverNQNs(ctx context.Context, addr string, opts host.Options) ([]string, map[string]bool) {
	entries, err := host.Discover(ctx, addr, opts)
	if err != nil {
		return nil, nil
	}
	list, known := []string{}, map[string]bool{}
	for _, en := range entries {
		if en.SubsystemType == 2 && !known[en.SubNQN] {
			list = append(list, en.SubNQN)
			known[en.SubNQN] = true
		}
	}
	if len(list) == 0 {
		list = append(list, "(no NVM subsystem)")
	}
	return list, known
}

// offered is a hint for a missing --nqn: what the target offers.
func offered(ctx context.Context, addr string, opts host.Options) string {
	list, _ := discoverNQNs(ctx, addr, opts)
	if list == nil {
		return ""
	}
	return fmt.Sprintf("; the target at %s offers: %s", addr, strings.Join(list, ", "))
}

// mountFiles makes a blk Device of every namespace and mounts them.
func (s *session) mountFiles(cache bool) error {
	nss := s.ctrl.Namespaces()
	if len(nss) == 0 {
		return fmt.Errorf("the subsystem at %s has no active namespace to mount", s.addr)
	}
	info := s.ctrl.Info()
	s.tags = blk.NewTagSet(max(info.IOQueues, 1) * max(info.QueueSize, 1))
	s.bufs = blk.DefaultBuffers()
	var files []fusefs.File
	var lines []string
	for _, ns := range nss {
		// The NIC's scatter list bounds the pages of one command (max_segments).
		be, err := nvmeblk.New(s.ctrl, ns.ID, nvmeblk.Options{MaxSegments: info.MaxSegments})
		if err != nil {
			return err
		}
		dev, err := blk.New(be, blk.Options{Tags: s.tags, Buffers: s.bufs})
		if err != nil {
			return fmt.Errorf("namespace %d: %w", ns.ID, err)
		}
		name := fmt.Sprintf("nvme0n%d", ns.ID)
		s.devices, s.names = append(s.devices, dev), append(s.names, name)
		files = append(files, fusefs.File{Name: name, Device: dev})
		lines = append(lines, fmt.Sprintf("%s (%s, %d-byte blocks)", name, humanBytes(ns.Size()), ns.BlockSize))
	}
	var controls []fusefs.Control
	if s.nicCtl != nil {
		controls = append(controls, s.nicCtl.control())
	}
	srv, err := fusefs.Mount(s.mountpoint, fusefs.Config{
		Files:    files,
		Stats:    s.counters,
		Info:     s.info,
		Controls: controls,
		Cache:    cache,
		FsName:   "nvmefs:" + info.SubNQN,
		Logger:   s.log,
	})
	if err != nil {
		return err
	}
	s.srv = srv
	fmt.Fprintf(s.e.stdout, "mounted at %s: %s\n", s.mountpoint, strings.Join(lines, ", "))
	fmt.Fprintf(s.e.stdout, "statistics: nvmefs stats %s; stop with Ctrl-C or umount %s\n", s.mountpoint, s.mountpoint)
	return nil
}

// counters are the stats file's counters after fusefs's own: each
// namespace's block layer, the controller's tags, host and queues, the
// buffer pool, then the extra ones.
func (s *session) counters() []blk.Counter {
	var cs []blk.Counter
	add := func(prefix string, more []blk.Counter) {
		for _, c := range more {
			cs = append(cs, blk.Counter{Name: prefix + c.Name, Value: c.Value})
		}
	}
	for i, d := range s.devices {
		add(s.names[i]+"_", d.Counters())
	}
	add("nvme0_", s.tags.Counters())
	add("nvme0_", nvmeblk.Counters(s.ctrl.Stats()))
	add("", s.bufs.Counters())
	for _, f := range s.extraCounters {
		add("", f())
	}
	// The process itself: a leak shows here first. The live heap is what
	// the last GC found reachable, steadier than what is in use now.
	live := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(live)
	var liveBytes uint64
	if live[0].Value.Kind() == metrics.KindUint64 {
		liveBytes = live[0].Value.Uint64()
	}
	return append(cs,
		blk.Counter{Name: "process_goroutines", Value: uint64(runtime.NumGoroutine())},
		blk.Counter{Name: "process_heap_live_bytes", Value: liveBytes})
}

// info is the text of .nvmefs/info.
func (s *session) info() string {
	ci := s.ctrl.Info()
	var b strings.Builder
	fmt.Fprintf(&b, "nvme0: %s at %s, controller %d, model %q, serial %q, firmware %q\n",
		ci.SubNQN, s.addr, ci.CntlID, ci.Model, ci.Serial, ci.Firmware)
	fmt.Fprintf(&b, "nvme0: %d I/O queues of depth %d, up to %d bytes per command, header digest %v, data digest %v\n",
		ci.IOQueues, ci.QueueSize, ci.MaxTransfer, ci.HeaderDigest, ci.DataDigest)
	fmt.Fprintf(&b, "nvme0: %s\n", s.offloadLine())
	for _, ns := range s.ctrl.Namespaces() {
		fmt.Fprintf(&b, "nvme0n%d: namespace %d, %d bytes (%d blocks of %d bytes)\n", ns.ID, ns.ID, ns.Size(), ns.Blocks, ns.BlockSize)
	}
	return b.String()
}

// unmount stops a mount on a signal: unmount, or, while a file is open,
// detach and wait a bounded time for it to be closed.
// It reports whether every request was answered.
func (s *session) unmount(unmounted <-chan struct{}, sigs <-chan os.Signal) bool {
	err := s.srv.Unmount()
	if err == nil {
		return true
	}
	s.log.Warn("the mount is busy (a file is open): detaching it (umount -l); waiting for open files to be closed",
		"mountpoint", s.mountpoint, "err", err, "wait", busyDrainTimeout)
	if err := unix.Unmount(s.mountpoint, unix.MNT_DETACH); err != nil {
		s.log.Error("umount -l", "mountpoint", s.mountpoint, "err", err)
	}
	select {
	case <-unmounted:
		return true
	case <-time.After(busyDrainTimeout):
		s.log.Warn("files still open: stopping anyway; their I/O fails from now on")
	case sig := <-sigs:
		s.log.Warn("second signal: stopping at once", "signal", sig.String())
	}
	s.abandoned = true
	return false
}

// stop releases what the session started, last first: the block devices
// (they wait for I/O in flight), the controller (CC.SHN), the target.
// After an abandoned unmount the I/O still in flight belongs to the files
// that were not closed in time (it may be waiting for a target that is
// gone): the controller is closed under it at once, which fails it,
// rather than after another wait.
func (s *session) stop() {
	if s.ctrl != nil {
		// Devices first: they drain, and the controller still serves them.
		closed := make(chan struct{})
		go func() {
			for _, d := range s.devices {
				d.Close()
			}
			close(closed)
		}()
		drain := busyDrainTimeout
		if s.abandoned {
			drain = 0
		}
		select {
		case <-closed:
		case <-time.After(drain):
			s.log.Warn("I/O still in flight: closing the controller under it")
		}
		if err := s.ctrl.Close(); err != nil {
			s.log.Warn("controller shutdown", "err", err)
		} else {
			s.log.Info("controller shut down")
		}
		<-closed
	}
	if s.bufs != nil {
		s.bufs.Close()
	}
	if s.target != nil {
		s.target.Close()
		if err := <-s.served; err != nil && !errors.Is(err, target.ErrClosed) {
			s.log.Warn("embedded target", "err", err)
		}
	}
}

// humanBytes writes n in binary units: 1 GiB, 512 MiB, 1.5 KiB.
func humanBytes(n int64) string {
	units := []string{"bytes", "KiB", "MiB", "GiB", "TiB", "PiB"}
	v, u := float64(n), 0
	for v >= 1024 && u < len(units)-1 {
		v /= 1024
		u++
	}
	if u == 0 {
		return fmt.Sprintf("%d bytes", n)
	}
	return strings.TrimSuffix(strings.TrimSuffix(strconv.FormatFloat(v, 'f', 1, 64), "0"), ".") + " " + units[u]
}
