package bench

import (
	"context"
	"fmt"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/nvmefs/nvmefs/fusefs"
)

// NullFile is the null file system's one file.
const NullFile = "null"

// zeros is what every READ of the null file system replies with: the
// reply is written from it as is, with no copy and no fill.
var zeros [1 << 20]byte

// MountNull mounts the null file system at dir: one file of size bytes
// that reads as zeros, served without a network or a copy, with the very
// mount options of an nvmefs mount (direct I/O, CAP_ASYNC_DIO,
// MaxBackground, 1 MiB MaxWrite, no splice). What fio gets from it is the
// FUSE ceiling of the machine. Unmount it with the returned server.
func MountNull(dir string, size int64) (*fuse.Server, error) {
	opts := fusefs.MountOptions(&fusefs.Config{FsName: "nvmefs-null"})
	opts.MountOptions.Name = "nvmefs-null"
	srv, err := fs.Mount(dir, &nullRoot{size: size}, opts)
	if err != nil {
		return nil, fmt.Errorf("null file system: mount %s: %w", dir, err)
	}
	return srv, nil
}

type nullRoot struct {
	fs.Inode
	size int64
}

var _ fs.NodeOnAdder = (*nullRoot)(nil)

func (r *nullRoot) OnAdd(ctx context.Context) {
	f := r.NewPersistentInode(ctx, &nullFile{size: r.size}, fs.StableAttr{Mode: syscall.S_IFREG, Ino: 2})
	r.AddChild(NullFile, f, false)
}

type nullFile struct {
	fs.Inode
	size int64
}

var (
	_ fs.NodeOpener    = (*nullFile)(nil)
	_ fs.NodeGetattrer = (*nullFile)(nil)
	_ fs.NodeReader    = (*nullFile)(nil)
)

// Open: direct I/O, as an nvmefs mount without --cache.
func (f *nullFile) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return nil, fuse.FOPEN_DIRECT_IO, 0
}

func (f *nullFile) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o444
	out.Size = uint64(f.size)
	out.Blocks = (uint64(f.size) + 511) / 512
	out.Blksize = 4096
	out.Nlink = 1
	return 0
}

func (f *nullFile) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n := int64(min(len(dest), len(zeros)))
	if off >= f.size {
		n = 0
	} else if off+n > f.size {
		n = f.size - off
	}
	return fuse.ReadResultData(zeros[:n]), 0
}
