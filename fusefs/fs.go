package fusefs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/nvmefs/nvmefs/blk"
)

// File is one namespace as a file of the mount.
type File struct {
	Name   string // e.g. nvme0n1
	Device *blk.Device
}

// Config is what a mount serves and how.
type Config struct {
	Files []File
	// Stats returns the counters shown in .nvmefs/stats, in order, after
	// the file system's own (fuse_*). Called at each open of the file.
	Stats func() []blk.Counter
	// Info returns the text of .nvmefs/info (what is mounted from where);
	// nil: no such file.
	Info func() string
	// Controls are writable files of .nvmefs that change the running
	// mount (see Control).
	Controls []Control
	// Cache lets the kernel page cache serve repeated reads (no direct
	// I/O; cached pages are kept across opens).
	Cache bool
	// FsName is the mount's source as mount(8) and df show it.
	FsName string
	// Logger receives I/O errors (rate-limited). Default slog.Default().
	Logger *slog.Logger
	// Debug logs every FUSE request through Logger (very verbose).
	Debug bool
}

const (
	// maxRequest is MaxWrite: the largest READ and WRITE the kernel sends.
	maxRequest = 1 << 20
	// maxBackground is how many asynchronous requests (async direct I/O,
	// readahead) the kernel keeps in flight.
	maxBackground = 64
	// attrTimeout: sizes and modes never change, so the kernel may cache
	// them for long.
	attrTimeout = time.Hour
	// StatsPath is where the statistics are, relative to the mount point.
	StatsPath = ".nvmefs/stats"
	// InfoPath describes the files, relative to the mount point.
	InfoPath = ".nvmefs/info"
)

// Server is a mounted file system.
type Server struct {
	dir    string
	server *fuse.Server
	root   *root
}

// MountOptions returns the go-fuse options a mount with cfg uses.
func MountOptions(cfg *Config) *fs.Options {
	at := attrTimeout
	o := &fs.Options{
		AttrTimeout:  &at,
		EntryTimeout: &at,
		MountOptions: fuse.MountOptions{
			FsName:            cfg.FsName,
			Name:              "nvmefs",
			DirectMountStrict: true, // as root, no fusermount
			MaxWrite:          maxRequest,
			MaxBackground:     maxBackground,
			// Without CAP_ASYNC_DIO the kernel sends one direct-I/O read
			// of an asynchronous submitter at a time.
			ExtraCapabilities: fuse.CAP_ASYNC_DIO | fuse.CAP_ATOMIC_O_TRUNC,
			// ReadResultData with splice on costs a pipe per READ, tried
			// and abandoned: write the reply from the buffer instead.
			DisableSplice: true,
			DisableXAttrs: true,
			Debug:         cfg.Debug,
		},
	}
	if cfg.FsName == "" {
		o.MountOptions.FsName = "nvmefs"
	}
	return o
}

// Mount mounts cfg's files at dir and serves them until Unmount or an
// external umount. dir must be an existing directory that is not a mount
// point already; the caller checks that (and for stale mounts) first, to
// say clearly what is wrong.
func Mount(dir string, cfg Config) (*Server, error) {
	if len(cfg.Files) == 0 {
		return nil, errors.New("fusefs: no files to serve")
	}
	seen := map[string]bool{}
	for _, f := range cfg.Files {
		if f.Name == "" || f.Name == ".nvmefs" || strings.ContainsAny(f.Name, "/\x00") || seen[f.Name] {
			return nil, fmt.Errorf("fusefs: bad or duplicate file name %q", f.Name)
		}
		seen[f.Name] = true
	}
	metaNames := map[string]bool{"stats": true, "info": true}
	for _, c := range cfg.Controls {
		if c.Name == "" || strings.ContainsAny(c.Name, "/\x00") || metaNames[c.Name] || c.Write == nil {
			return nil, fmt.Errorf("fusefs: bad or duplicate control %q (or no Write)", c.Name)
		}
		metaNames[c.Name] = true
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	r := &root{cfg: cfg, mtime: time.Now()}
	opts := MountOptions(&cfg)
	if cfg.Debug {
		opts.MountOptions.Logger = slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug)
	}
	srv, err := fs.Mount(dir, r, opts)
	if err != nil {
		return nil, fmt.Errorf("fusefs: mount %s: %w", dir, err)
	}
	return &Server{dir: dir, server: srv, root: r}, nil
}

// Dir is the mount point.
func (s *Server) Dir() string { return s.dir }

// Unmount unmounts the file system and waits until every request in flight
// has been answered. It fails (EBUSY) while a file is open.
func (s *Server) Unmount() error { return s.server.Unmount() }

// Wait returns once the file system is unmounted (by Unmount or by an
// external umount) and every request has been answered.
func (s *Server) Wait() { s.server.Wait() }

// Counters returns the file system's own statistics.
func (s *Server) Counters() []blk.Counter { return s.root.st.counters() }

// stats are the FUSE-level counters.
type stats struct {
	reads, readBytes, readDestUnaligned atomic.Uint64
	writes, writeBytes                  atomic.Uint64
	fsyncs, fallocates, errors          atomic.Uint64
	interrupted                         atomic.Uint64
	restarted                           atomic.Uint64
}

func (s *stats) counters() []blk.Counter {
	return []blk.Counter{
		{Name: "fuse_reads", Value: s.reads.Load()},
		{Name: "fuse_read_bytes", Value: s.readBytes.Load()},
		{Name: "fuse_read_dest_unaligned", Value: s.readDestUnaligned.Load()},
		{Name: "fuse_writes", Value: s.writes.Load()},
		{Name: "fuse_write_bytes", Value: s.writeBytes.Load()},
		{Name: "fuse_fsyncs", Value: s.fsyncs.Load()},
		{Name: "fuse_fallocates", Value: s.fallocates.Load()},
		{Name: "fuse_errors", Value: s.errors.Load()},
		{Name: "fuse_interrupted", Value: s.interrupted.Load()},
		{Name: "fuse_restarted", Value: s.restarted.Load()},
	}
}

// root is the mount's root directory.
type root struct {
	fs.Inode
	cfg   Config
	mtime time.Time
	st    stats

	lastLog atomic.Int64 // unix nanoseconds of the last error logged
	dropped atomic.Uint64
}

var (
	_ fs.NodeOnAdder   = (*root)(nil)
	_ fs.NodeStatfser  = (*root)(nil)
	_ fs.NodeGetattrer = (*root)(nil)
)

func (r *root) OnAdd(ctx context.Context) {
	for i, f := range r.cfg.Files {
		n := &nsFile{root: r, dev: f.Device, name: f.Name}
		ch := r.NewPersistentInode(ctx, n, fs.StableAttr{Mode: syscall.S_IFREG, Ino: uint64(2 + i)})
		r.AddChild(f.Name, ch, false)
	}
	meta := r.NewPersistentInode(ctx, &metaDir{root: r}, fs.StableAttr{Mode: syscall.S_IFDIR, Ino: 1 << 32})
	r.AddChild(".nvmefs", meta, false)
	statsFile := &textFile{root: r, content: r.statsText}
	meta.AddChild("stats", r.NewPersistentInode(ctx, statsFile, fs.StableAttr{Mode: syscall.S_IFREG, Ino: 1<<32 + 1}), false)
	if r.cfg.Info != nil {
		info := &textFile{root: r, content: func() []byte { return []byte(r.cfg.Info()) }}
		meta.AddChild("info", r.NewPersistentInode(ctx, info, fs.StableAttr{Mode: syscall.S_IFREG, Ino: 1<<32 + 2}), false)
	}
	for i, c := range r.cfg.Controls {
		ctl := &controlFile{root: r, ctl: c}
		meta.AddChild(c.Name, r.NewPersistentInode(ctx, ctl, fs.StableAttr{Mode: syscall.S_IFREG, Ino: 1<<32 + 16 + uint64(i)}), false)
	}
}

func (r *root) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o755
	out.SetTimes(nil, &r.mtime, &r.mtime)
	return 0
}

// metaDir is .nvmefs, which holds the stats and info files and the
// controls.
type metaDir struct {
	fs.Inode
	root *root
}

var _ fs.NodeGetattrer = (*metaDir)(nil)

func (d *metaDir) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o555
	out.Nlink = 2
	out.SetTimes(nil, &d.root.mtime, &d.root.mtime)
	return 0
}

// Statfs: the file system is as big as its namespaces and full (no file
// can be created, none can grow).
func (r *root) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	const bsize = 4096
	var total uint64
	for _, f := range r.cfg.Files {
		total += uint64(f.Device.Size())
	}
	*out = fuse.StatfsOut{
		Blocks:  (total + bsize - 1) / bsize,
		Files:   uint64(len(r.cfg.Files)),
		Bsize:   bsize,
		Frsize:  bsize,
		NameLen: 255,
	}
	return 0
}

// statsText is the stats file: one "name: value" line per counter.
func (r *root) statsText() []byte {
	var b strings.Builder
	write := func(cs []blk.Counter) {
		for _, c := range cs {
			fmt.Fprintf(&b, "%s: %d\n", c.Name, c.Value)
		}
	}
	write(r.st.counters())
	if r.cfg.Stats != nil {
		write(r.cfg.Stats())
	}
	return []byte(b.String())
}

// errno maps an I/O error to what the caller of read(2) or write(2) sees,
// and logs the failures that are not the caller's doing.
func (r *root) errno(op, name string, err error) syscall.Errno {
	switch {
	case errors.Is(err, context.Canceled):
		r.st.interrupted.Add(1)
		return syscall.EINTR
	case errors.Is(err, blk.ErrInvalid):
		return syscall.EINVAL
	case errors.Is(err, blk.ErrNoSpace):
		return syscall.ENOSPC
	case errors.Is(err, blk.ErrNotSupported):
		return syscall.EOPNOTSUPP
	}
	r.st.errors.Add(1)
	r.logError(op, name, err)
	return syscall.EIO
}

// logError logs at most one I/O error a second, and how many it skipped.
func (r *root) logError(op, name string, err error) {
	now := time.Now().UnixNano()
	last := r.lastLog.Load()
	if now-last < int64(time.Second) || !r.lastLog.CompareAndSwap(last, now) {
		r.dropped.Add(1)
		return
	}
	r.cfg.Logger.Error("I/O error (EIO)", "op", op, "file", name, "err", err, "errors_not_logged", r.dropped.Swap(0))
}
