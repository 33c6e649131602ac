package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/pflag"

	"github.com/nvmefs/nvmefs/nvmetcp/target"
	"github.com/nvmefs/nvmefs/nvmetcp/target/store"
)

const (
	// discoveryNQN is the well-known NQN of the discovery subsystem; the
	// target serves it itself, so it cannot name a subsystem of ours.
	discoveryNQN = "nqn.2014-08.org.nvmexpress.discovery"
	// maxNQNLen is the NVMe limit on an NQN, in bytes.
	maxNQNLen = 223
	// stopTimeout bounds how long a stop waits for the target's
	// connections to end before flushing the namespaces anyway.
	stopTimeout = 30 * time.Second
	// repeatSignalWindow is how soon after the first a signal counts as
	// the same stop rather than a request to exit at once.
	repeatSignalWindow = 500 * time.Millisecond
)

var serveCommand = &command{
	name:    "serve",
	args:    "--nqn NQN --ns PATH [--ns PATH ...] [flags]",
	summary: "serve files, block devices or memory as NVMe/TCP namespaces",
	details: `
Serves one NVMe subsystem over NVMe/TCP, with one namespace per --ns, numbered
from 1 in the order given. A namespace is an existing file or block device
(its size is the namespace size; it is never created or resized) or mem:SIZE,
memory that reads as zeros until written and is lost at exit (SIZE in bytes
with an optional binary suffix: mem:512K, mem:64M, mem:1G, mem:1T). A path
that starts with "mem:" is given as ./mem:... . Each size must be a multiple
of --block-size. Deallocate (trim) punches holes in files and block devices.

--nqn is required: it is the subsystem NQN hosts connect to, e.g.
nqn.2024-01.io.nvmefs:disk1. The discovery subsystem
(nqn.2014-08.org.nvmexpress.discovery) is served as well, on the same address.

Without --allow-host any host that reaches the address may connect (the
target warns of it at start). With it, only the host NQNs listed may; others
are refused at Connect and logged.

SIGINT or SIGTERM stops the target: connections are closed, every namespace
is flushed (fdatasync) and closed, and nvmefs exits 0. A second signal, more
than half a second after the first, exits at once (status 1) without flushing.

With --listen 127.0.0.1:0 the system picks a free port; the address actually
bound is logged at start ("serving" ... listen=ADDRESS).

Exit status: 0 after a clean stop, 1 when serving fails (a namespace that
cannot be opened, an address in use), 2 for bad flags.`,
	setup: func(fs *pflag.FlagSet) func(*env, []string) error {
		o := &serveOptions{blockSize: 512, logLevel: logLevel{slog.LevelInfo}}
		fs.StringVar(&o.listen, "listen", "127.0.0.1:4420", "TCP `ADDRESS` to listen on (host:port; port 0 picks a free one)")
		fs.StringVar(&o.nqn, "nqn", "", "subsystem `NQN` hosts connect to (required)")
		fs.StringArrayVar(&o.namespaces, "ns", nil, "namespace `PATH`: a file or block device, or mem:SIZE (repeatable, at least one)")
		fs.StringArrayVar(&o.allowHosts, "allow-host", nil, "`HOSTNQN` allowed to connect (repeatable; default: any host)")
		fs.IntVar(&o.blockSize, "block-size", o.blockSize, "logical block size in `BYTES`: 512, 1024, 2048 or 4096")
		fs.Var(&o.maxC2HData, "max-c2h-data", "largest C2HData payload in `BYTES`, e.g. 32K: longer reads go as several PDUs (default 0: each read is one PDU)")
		fs.BoolVar(&o.c2hSuccess, "c2h-success", false, "end a successful read with the SUCCESS flag on its last C2HData PDU instead of a response capsule")
		fs.Var(&o.logLevel, "log-level", "log `LEVEL`: debug, info, warn or error")
		return func(e *env, args []string) error { return serve(e, o, args) }
	},
}

type serveOptions struct {
	listen     string
	nqn        string
	namespaces []string
	allowHosts []string
	blockSize  int
	maxC2HData byteSize
	c2hSuccess bool
	logLevel   logLevel
}

// validate checks what can be checked before anything is opened.
func (o *serveOptions) validate(args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q (namespaces are given with --ns)", args[0])
	}
	if o.nqn == "" {
		return usagef("--nqn is required: the subsystem NQN hosts connect to, e.g. nqn.2024-01.io.nvmefs:disk1")
	}
	if err := checkNQN(o.nqn); err != nil {
		return usagef("--nqn: %v", err)
	}
	if o.nqn == discoveryNQN {
		return usagef("--nqn: %s is the discovery subsystem's NQN; choose another", discoveryNQN)
	}
	for _, h := range o.allowHosts {
		if err := checkNQN(h); err != nil {
			return usagef("--allow-host: %v", err)
		}
	}
	if len(o.namespaces) == 0 {
		return usagef("at least one --ns is required: a file, a block device or mem:SIZE")
	}
	switch o.blockSize {
	case 512, 1024, 2048, 4096:
	default:
		return usagef("--block-size %d: want 512, 1024, 2048 or 4096", o.blockSize)
	}
	return nil
}

// checkNQN checks the form of an NVMe Qualified Name.
func checkNQN(nqn string) error {
	if !strings.HasPrefix(nqn, "nqn.") {
		return fmt.Errorf("%q is not an NQN (it starts with \"nqn.\", e.g. nqn.2024-01.io.nvmefs:disk1)", nqn)
	}
	if len(nqn) > maxNQNLen {
		return fmt.Errorf("NQN %.40q... is %d bytes long, more than the %d NVMe allows", nqn, len(nqn), maxNQNLen)
	}
	if !utf8.ValidString(nqn) {
		return fmt.Errorf("NQN %q is not valid UTF-8", nqn)
	}
	if i := strings.IndexFunc(nqn, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }); i >= 0 {
		return fmt.Errorf("NQN %q contains a space or control character", nqn)
	}
	return nil
}

func serve(e *env, o *serveOptions, args []string) (err error) {
	if err := o.validate(args); err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: o.logLevel.Level}))

	// Catch stop signals from here on: one that arrives while starting
	// stops the target as soon as it runs, after the namespaces opened.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	stores, err := openNamespaces(o.namespaces, int64(o.blockSize))
	if err != nil {
		return err
	}
	// However serving ends, the namespaces are flushed and closed; a
	// failure to flush is the command's failure.
	defer func() {
		if cerr := closeNamespaces(logger, o.namespaces, stores); err == nil {
			err = cerr
		}
	}()

	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		var opErr *net.OpError
		if errors.As(err, &opErr) && opErr.Err != nil {
			err = opErr.Err // "bind: address already in use" without the repetition
		}
		return fmt.Errorf("cannot listen on %s: %w", o.listen, err)
	}
	defer ln.Close()

	tgt, err := target.New(target.Config{
		SubsystemNQN: o.nqn,
		Namespaces:   stores,
		BlockSize:    o.blockSize,
		AllowHosts:   o.allowHosts,
		MaxC2HData:   uint32(o.maxC2HData),
		C2HSuccess:   o.c2hSuccess,
		Logger:       logger,
		ListenAddr:   ln.Addr().String(),
	})
	if err != nil {
		return fmt.Errorf("target: %w", err)
	}

	logger.Info("serving", "listen", ln.Addr().String(), "nqn", o.nqn, "namespaces", len(stores), "block_size", o.blockSize)
	for i, s := range stores {
		logger.Info("namespace", "nsid", i+1, "size", s.Size(), "blocks", s.Size()/int64(o.blockSize), "backing", fmt.Sprint(s))
	}
	if len(o.allowHosts) == 0 {
		logger.Warn("no --allow-host given: ANY host that can reach " + ln.Addr().String() + " may connect and read and write every namespace")
	} else {
		logger.Info("access restricted", "allow_hosts", strings.Join(o.allowHosts, ","))
	}

	served := make(chan error, 1)
	go func() { served <- tgt.Serve(ln) }()

	select {
	case sig := <-sigs:
		logger.Info("stopping", "signal", sig.String())
		go forceExitOnSecondSignal(e, logger, sigs, time.Now())
		// Close waits for every connection to end; bound it, so that a
		// stuck one cannot keep the namespaces from being flushed.
		closed := make(chan error, 1)
		go func() { closed <- tgt.Close() }()
		deadline := time.After(stopTimeout)
		for closed != nil || served != nil {
			select {
			case cerr := <-closed:
				if cerr != nil {
					logger.Error("closing the target", "err", cerr)
				}
				closed = nil
			case serr := <-served:
				if serr != nil && !errors.Is(serr, target.ErrClosed) {
					logger.Error("serving ended with an error while stopping", "err", serr)
				}
				served = nil
			case <-deadline:
				// The namespaces are still flushed (deferred above).
				return fmt.Errorf("the target did not stop within %v", stopTimeout)
			}
		}
		return nil
	case serr := <-served:
		tgt.Close()
		if serr == nil {
			serr = errors.New("the target stopped unexpectedly")
		}
		return fmt.Errorf("serving: %w", serr)
	}
}

// forceExitOnSecondSignal exits at once on a signal that follows the first
// by more than repeatSignalWindow. Closer ones are the same stop delivered
// twice, as when a supervisor signals both the process and its group
// (coreutils timeout does), and would otherwise cost the flush.
func forceExitOnSecondSignal(e *env, logger *slog.Logger, sigs <-chan os.Signal, first time.Time) {
	for sig := range sigs {
		if time.Since(first) < repeatSignalWindow {
			logger.Debug("ignoring a repeated signal", "signal", sig.String())
			continue
		}
		fmt.Fprintf(e.stderr, "nvmefs serve: second signal (%v): exiting at once without flushing\n", sig)
		os.Exit(1)
	}
}

// openNamespaces opens every spec, or none: on an error it closes what it
// opened.
func openNamespaces(specs []string, blockSize int64) ([]store.Store, error) {
	stores := make([]store.Store, 0, len(specs))
	fail := func(err error) ([]store.Store, error) {
		for _, s := range stores {
			s.Close()
		}
		return nil, err
	}
	for i, spec := range specs {
		s, err := store.Open(spec)
		if err != nil {
			return fail(fmt.Errorf("namespace %d (--ns %s): %w", i+1, spec, err))
		}
		stores = append(stores, s)
		if s.Size()%blockSize != 0 || s.Size() < blockSize {
			return fail(fmt.Errorf("namespace %d (--ns %s): size %d bytes is not a multiple of the %d-byte block size",
				i+1, spec, s.Size(), blockSize))
		}
	}
	return stores, nil
}

// closeNamespaces flushes and closes every store, logging each, and returns
// the first error.
func closeNamespaces(logger *slog.Logger, specs []string, stores []store.Store) error {
	var first error
	for i, s := range stores {
		nsid := i + 1
		flushErr := s.Flush()
		if flushErr != nil {
			logger.Error("flushing namespace", "nsid", nsid, "ns", specs[i], "err", flushErr)
			first = firstErr(first, fmt.Errorf("flushing namespace %d (%s): %w", nsid, specs[i], flushErr))
		}
		closeErr := s.Close()
		if closeErr != nil {
			logger.Error("closing namespace", "nsid", nsid, "ns", specs[i], "err", closeErr)
			first = firstErr(first, fmt.Errorf("closing namespace %d (%s): %w", nsid, specs[i], closeErr))
		}
		if flushErr == nil && closeErr == nil {
			logger.Info("namespace flushed and closed", "nsid", nsid, "ns", specs[i])
		}
	}
	return first
}

// cmp keeps the first non-nil error.
func firstErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}
