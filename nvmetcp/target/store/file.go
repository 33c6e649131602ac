package store

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// zeroBufSize bounds the buffer used to write zeros where fallocate cannot.
const zeroBufSize = 1 << 20

// zeroBuf is only ever read from (WriteAt copies out of it).
var zeroBuf = make([]byte, zeroBufSize)

// File is a store on an existing regular file or block device, read and
// written with pread/pwrite. Its size is fixed when it is opened.
type File struct {
	f     *os.File
	path  string
	size  int64
	block bool // a block device rather than a regular file

	closed atomic.Bool

	// Set once fallocate has said the mode is not supported here, so
	// that later calls go straight to writing zeros.
	noPunch, noZeroRange atomic.Bool
}

var _ Store = (*File)(nil)

// OpenFile opens an existing regular file or block device read-write. It
// never creates a file; a directory, a character device, a pipe or an empty
// file is an error. The store holds the file exclusively while it is open: a
// block device is opened O_EXCL (so a mounted one is refused) and a regular
// file is locked (flock), so that two targets never serve the same bytes.
func OpenFile(path string) (*File, error) {
	fi, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("store: %s does not exist (a namespace must be an existing file, a block device or mem:SIZE)", path)
		}
		return nil, fmt.Errorf("store: %w", err)
	}
	mode := fi.Mode()
	flags := os.O_RDWR
	switch {
	case mode.IsDir():
		return nil, fmt.Errorf("store: %s is a directory, not a file or block device", path)
	case mode&os.ModeDevice != 0 && mode&os.ModeCharDevice == 0:
		flags |= unix.O_EXCL // on a block device: fail if mounted or held
	case mode.IsRegular():
	default:
		return nil, fmt.Errorf("store: %s is not a regular file or block device (mode %s)", path, mode)
	}
	f, err := os.OpenFile(path, flags, 0)
	if err != nil {
		if errors.Is(err, unix.EBUSY) {
			return nil, fmt.Errorf("store: %s is in use (mounted, or held by another program)", path)
		}
		return nil, fmt.Errorf("store: %w", err)
	}
	s := &File{f: f, path: path}
	if err := s.init(); err != nil {
		f.Close()
		return nil, err
	}
	return s, nil
}

// init sets the size and kind from the open file itself (the path may have
// changed between Stat and open).
func (s *File) init() error {
	fi, err := s.f.Stat()
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	mode := fi.Mode()
	switch {
	case mode.IsRegular():
		s.size = fi.Size()
	case mode&os.ModeDevice != 0 && mode&os.ModeCharDevice == 0:
		s.block = true
		var size uint64
		if err := s.control(func(fd int) (err error) {
			size, err = unix.IoctlGetUint64(fd, unix.BLKGETSIZE64)
			return err
		}); err != nil {
			return fmt.Errorf("store: %s: size of block device: %w", s.path, err)
		}
		if size > 1<<63-1 {
			return fmt.Errorf("store: %s: block device size %d too large", s.path, size)
		}
		s.size = int64(size)
	default:
		return fmt.Errorf("store: %s is not a regular file or block device (mode %s)", s.path, mode)
	}
	if !s.block {
		// The lock goes with the open file and so is dropped by Close.
		err := s.control(func(fd int) error { return unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB) })
		if errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("store: %s is in use: another program holds a lock on it (another nvmefs serve?)", s.path)
		} else if err != nil {
			return fmt.Errorf("store: %s: lock: %w", s.path, err)
		}
	}
	if s.size == 0 {
		return fmt.Errorf("store: %s is empty; a namespace needs a size (e.g. truncate -s 1G %s)", s.path, s.path)
	}
	return nil
}

// control runs fn on the file descriptor, failing with os.ErrClosed once the
// file is closed rather than racing with the close.
func (s *File) control(fn func(fd int) error) error {
	if s.closed.Load() {
		return os.ErrClosed
	}
	rc, err := s.f.SyscallConn()
	if err != nil {
		return err
	}
	var opErr error
	if err := rc.Control(func(fd uintptr) { opErr = fn(int(fd)) }); err != nil {
		return err
	}
	return opErr
}

// Size implements Store.
func (s *File) Size() int64 { return s.size }

// Path is the path the store was opened with.
func (s *File) Path() string { return s.path }

// BlockDevice reports whether the store is a block device.
func (s *File) BlockDevice() bool { return s.block }

func (s *File) String() string {
	if s.block {
		return "block device " + s.path + " (" + formatSize(s.size) + ")"
	}
	return "file " + s.path + " (" + formatSize(s.size) + ")"
}

// ReadAt implements Store.
func (s *File) ReadAt(p []byte, off int64) (int, error) {
	if s.closed.Load() {
		return 0, closedError("read")
	}
	if err := checkRange("read", off, int64(len(p)), s.size); err != nil {
		return 0, err
	}
	n, err := s.f.ReadAt(p, off)
	if err == io.EOF {
		// The file was truncated by someone else since it was opened.
		err = fmt.Errorf("store: %s: read [%d, +%d): file shorter than its size at open (%d): %w",
			s.path, off, len(p), s.size, io.ErrUnexpectedEOF)
	} else if err != nil {
		err = fmt.Errorf("store: %w", err)
	}
	return n, err
}

// WriteAt implements Store.
func (s *File) WriteAt(p []byte, off int64) (int, error) {
	if s.closed.Load() {
		return 0, closedError("write")
	}
	if err := checkRange("write", off, int64(len(p)), s.size); err != nil {
		return 0, err
	}
	n, err := s.f.WriteAt(p, off)
	if err != nil {
		err = fmt.Errorf("store: %w", err)
	}
	return n, err
}

// Flush implements Store with fdatasync.
func (s *File) Flush() error {
	if err := s.control(unix.Fdatasync); err != nil {
		return fmt.Errorf("store: %s: flush: %w", s.path, err)
	}
	return nil
}

// Deallocate implements Store by punching a hole (fallocate PUNCH_HOLE |
// KEEP_SIZE, which block devices support too), or by writing zeros where the
// file system or device cannot.
func (s *File) Deallocate(off, length int64) error {
	return s.fallocate("deallocate", unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, &s.noPunch, off, length)
}

// WriteZeroes implements Store with fallocate ZERO_RANGE | KEEP_SIZE, or by
// writing zeros where the file system or device cannot.
func (s *File) WriteZeroes(off, length int64) error {
	return s.fallocate("write zeroes", unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, &s.noZeroRange, off, length)
}

func (s *File) fallocate(op string, mode uint32, unsupported *atomic.Bool, off, length int64) error {
	if s.closed.Load() {
		return closedError(op)
	}
	if err := checkRange(op, off, length, s.size); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	if !unsupported.Load() {
		err := s.control(func(fd int) error {
			for {
				err := unix.Fallocate(fd, mode, off, length)
				if err != unix.EINTR {
					return err
				}
			}
		})
		switch {
		case err == nil:
			return nil
		case errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS):
			unsupported.Store(true)
		case errors.Is(err, unix.EINVAL):
			// Block devices refuse ranges not aligned to their
			// logical block size; zeros still do.
		default:
			return fmt.Errorf("store: %s: %s [%d, +%d): %w", s.path, op, off, length, err)
		}
	}
	return s.writeZeros(op, off, length)
}

// writeZeros writes length zero bytes at off, zeroBufSize at a time.
func (s *File) writeZeros(op string, off, length int64) error {
	for length > 0 {
		n := min(length, zeroBufSize)
		if _, err := s.f.WriteAt(zeroBuf[:n], off); err != nil {
			return fmt.Errorf("store: %s: %w", op, err)
		}
		off += n
		length -= n
	}
	return nil
}

// Close implements Store. It does not flush: call Flush first for durability.
func (s *File) Close() error {
	if s.closed.Swap(true) {
		return closedError("close")
	}
	if err := s.f.Close(); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}
