package fusefs

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// textFile is a read-only file whose content is made at each open, like a
// /proc file: it reports size 0 and is read with direct I/O, so that the
// reader gets the snapshot whatever its length.
type textFile struct {
	fs.Inode
	root    *root
	content func() []byte
}

var (
	_ fs.NodeOpener    = (*textFile)(nil)
	_ fs.NodeGetattrer = (*textFile)(nil)
)

type snapshot []byte

var _ fs.FileReader = snapshot(nil)

func (t *textFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR) != 0 {
		return nil, 0, syscall.EACCES
	}
	return snapshot(t.content()), fuse.FOPEN_DIRECT_IO, 0
}

func (t *textFile) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o444
	out.Nlink = 1
	out.SetTimes(nil, &t.root.mtime, &t.root.mtime)
	return 0
}

func (s snapshot) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off >= int64(len(s)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData(s[off:min(int64(len(s)), off+int64(len(dest)))]), 0
}
