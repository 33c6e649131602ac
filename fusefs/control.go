package fusefs

import (
	"context"
	"strings"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Control is a writable file of .nvmefs that changes the running mount, as
// a sysfs attribute does: reading it returns Read() (made at each open);
// every line written to it is one command given to Write. A write(2) whose
// command Write refuses fails with EINVAL (the error is logged) and the
// lines after it are not run. A write(2) is taken as whole lines: a command
// is not continued across writes.
type Control struct {
	Name  string
	Read  func() string
	Write func(cmd string) error
}

// controlFile is a Control's inode.
type controlFile struct {
	fs.Inode
	root *root
	ctl  Control
}

var (
	_ fs.NodeOpener    = (*controlFile)(nil)
	_ fs.NodeGetattrer = (*controlFile)(nil)
	_ fs.NodeSetattrer = (*controlFile)(nil)
)

func (c *controlFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	var snap []byte
	if flags&syscall.O_ACCMODE != syscall.O_WRONLY && c.ctl.Read != nil {
		snap = []byte(c.ctl.Read())
	}
	return &controlHandle{c: c, snap: snap}, fuse.FOPEN_DIRECT_IO, 0
}

func (c *controlFile) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o644
	out.Nlink = 1
	out.SetTimes(nil, &c.root.mtime, &c.root.mtime)
	return 0
}

// Setattr accepts the truncation of `echo cmd > file` (a no-op: the file
// has no content to cut) and ignores times.
func (c *controlFile) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if sz, ok := in.GetSize(); ok && sz != 0 {
		return syscall.EINVAL
	}
	return c.Getattr(ctx, f, out)
}

// controlHandle is one open of a control file.
type controlHandle struct {
	c    *controlFile
	snap []byte
}

var (
	_ fs.FileReader = (*controlHandle)(nil)
	_ fs.FileWriter = (*controlHandle)(nil)
)

func (h *controlHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return snapshot(h.snap).Read(ctx, dest, off)
}

func (h *controlHandle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	for _, line := range strings.Split(string(data), "\n") {
		cmd := strings.TrimSpace(line)
		if cmd == "" {
			continue
		}
		if err := h.c.ctl.Write(cmd); err != nil {
			h.c.root.cfg.Logger.Warn("control command refused", "file", ".nvmefs/"+h.c.ctl.Name, "cmd", cmd, "err", err)
			return 0, syscall.EINVAL
		}
	}
	return uint32(len(data)), 0
}
