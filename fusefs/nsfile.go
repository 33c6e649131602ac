package fusefs

import (
	"context"
	"syscall"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/nvmefs/nvmefs/blk"
)

// nsFile is one namespace.
type nsFile struct {
	fs.Inode
	root *root
	dev  *blk.Device
	name string
}

var (
	_ fs.NodeOpener    = (*nsFile)(nil)
	_ fs.NodeGetattrer = (*nsFile)(nil)
	_ fs.NodeSetattrer = (*nsFile)(nil)
	_ fs.NodeReader    = (*nsFile)(nil)
	_ fs.NodeWriter    = (*nsFile)(nil)
	_ fs.NodeFsyncer   = (*nsFile)(nil)
	_ fs.NodeFlusher   = (*nsFile)(nil)
	_ fs.NodeAllocater = (*nsFile)(nil)
)

// Open answers every open: O_TRUNC is ignored as on a block device (the
// kernel leaves it to us with CAP_ATOMIC_O_TRUNC).
func (n *nsFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if n.root.cfg.Cache {
		return nil, fuse.FOPEN_KEEP_CACHE, 0
	}
	return nil, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_PARALLEL_DIRECT_WRITES, 0
}

func (n *nsFile) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.fillAttr(&out.Attr)
	return 0
}

func (n *nsFile) fillAttr(a *fuse.Attr) {
	size := uint64(n.dev.Size())
	a.Mode = syscall.S_IFREG | 0o644
	a.Size = size
	a.Blocks = (size + 511) / 512
	a.Blksize = uint32(max(n.dev.BlockSize(), blk.PageSize))
	a.Nlink = 1
	a.SetTimes(nil, &n.root.mtime, &n.root.mtime)
}

// Setattr: the size is the namespace's and cannot change (EINVAL, as
// ftruncate of a block device); neither can the mode or owner (EPERM).
// Times are accepted and not kept, so that touch and cp -p work.
func (n *nsFile) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if sz, ok := in.GetSize(); ok && sz != uint64(n.dev.Size()) {
		return syscall.EINVAL
	}
	if _, ok := in.GetMode(); ok {
		return syscall.EPERM
	}
	if _, ok := in.GetUID(); ok {
		return syscall.EPERM
	}
	if _, ok := in.GetGID(); ok {
		return syscall.EPERM
	}
	n.fillAttr(&out.Attr)
	return 0
}

// Read reads into dest, go-fuse's reply buffer, and replies from it.
func (n *nsFile) Read(ctx context.Context, f fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	st := &n.root.st
	st.reads.Add(1)
	if len(dest) > 0 && uintptr(unsafe.Pointer(unsafe.SliceData(dest)))%blk.PageSize != 0 {
		st.readDestUnaligned.Add(1)
	}
	var got int
	err := n.root.uninterrupted(ctx, func(ctx context.Context) (err error) {
		got, err = n.dev.ReadAt(ctx, dest, off)
		return err
	})
	if err != nil {
		return nil, n.root.errno("read", n.name, err)
	}
	st.readBytes.Add(uint64(got))
	return fuse.ReadResultData(dest[:got]), 0
}

func (n *nsFile) Write(ctx context.Context, f fs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	st := &n.root.st
	st.writes.Add(1)
	var got int
	err := n.root.uninterrupted(ctx, func(ctx context.Context) (err error) {
		got, err = n.dev.WriteAt(ctx, data, off)
		return err
	})
	if err != nil {
		return 0, n.root.errno("write", n.name, err)
	}
	st.writeBytes.Add(uint64(got))
	return uint32(got), 0
}

// Fsync is an NVMe Flush: the controller commits its volatile write cache.
func (n *nsFile) Fsync(ctx context.Context, f fs.FileHandle, flags uint32) syscall.Errno {
	n.root.st.fsyncs.Add(1)
	if err := n.root.uninterrupted(ctx, n.dev.Flush); err != nil {
		return n.root.errno("fsync", n.name, err)
	}
	return 0
}

// Flush (on close) has nothing to do: writes are not buffered here.
func (n *nsFile) Flush(ctx context.Context, f fs.FileHandle) syscall.Errno { return 0 }

// fallocate(2) modes, as a block device accepts them.
const (
	fallocKeepSize  = 0x01
	fallocPunchHole = 0x02
	fallocZeroRange = 0x10
)

func (n *nsFile) Allocate(ctx context.Context, f fs.FileHandle, off, size uint64, mode uint32) syscall.Errno {
	n.root.st.fallocates.Add(1)
	if off > 1<<62 || size > 1<<62 {
		return syscall.EINVAL
	}
	var err error
	switch mode {
	case fallocPunchHole | fallocKeepSize:
		err = n.root.uninterrupted(ctx, func(ctx context.Context) error {
			return n.dev.Deallocate(ctx, int64(off), int64(size))
		})
	case fallocZeroRange, fallocZeroRange | fallocKeepSize:
		err = n.root.uninterrupted(ctx, func(ctx context.Context) error {
			return n.dev.WriteZeroes(ctx, int64(off), int64(size))
		})
	default:
		return syscall.EOPNOTSUPP
	}
	if err != nil {
		return n.root.errno("fallocate", n.name, err)
	}
	return 0
}
