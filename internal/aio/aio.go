// Package aio submits reads with Linux native AIO (io_setup, io_submit,
// io_getevents), as fio's libaio engine does: many O_DIRECT reads in flight
// from one thread. Tests and benchmarks use it to check that queue depth
// reaches the target through FUSE (CAP_ASYNC_DIO) without needing fio.
package aio

import (
	"errors"
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// iocb is struct iocb of linux/aio_abi.h (little-endian layout).
type iocb struct {
	data      uint64
	key       uint32
	rwFlags   int32
	opcode    uint16
	reqprio   int16
	fd        uint32
	buf       uint64
	nbytes    uint64
	offset    int64
	reserved2 uint64
	flags     uint32
	resfd     uint32
}

// event is struct io_event.
type event struct {
	data uint64
	obj  uint64
	res  int64
	res2 int64
}

const cmdPread = 0

// Context is an AIO context of a fixed depth. Its control blocks live
// outside the Go heap. It is not safe for concurrent use.
type Context struct {
	id     uintptr
	depth  int
	mem    []byte // iocbs, then the pointer array, then events
	iocbs  []iocb
	ptrs   []uintptr
	events []event
}

// New sets up a context for up to depth reads in flight.
func New(depth int) (*Context, error) {
	if depth < 1 || depth > 4096 {
		return nil, fmt.Errorf("aio: depth %d out of 1..4096", depth)
	}
	size := depth * (int(unsafe.Sizeof(iocb{})) + 8 + int(unsafe.Sizeof(event{})))
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, err
	}
	c := &Context{depth: depth, mem: mem}
	p := unsafe.Pointer(&mem[0])
	c.iocbs = unsafe.Slice((*iocb)(p), depth)
	p = unsafe.Add(p, depth*int(unsafe.Sizeof(iocb{})))
	c.ptrs = unsafe.Slice((*uintptr)(p), depth)
	p = unsafe.Add(p, depth*8)
	c.events = unsafe.Slice((*event)(p), depth)
	if _, _, e := unix.Syscall(unix.SYS_IO_SETUP, uintptr(depth), uintptr(unsafe.Pointer(&c.id)), 0); e != 0 {
		unix.Munmap(mem)
		return nil, fmt.Errorf("aio: io_setup: %w", e)
	}
	return c, nil
}

// Close destroys the context (waiting for reads in flight) and frees it.
func (c *Context) Close() error {
	_, _, e := unix.Syscall(unix.SYS_IO_DESTROY, c.id, 0, 0)
	unix.Munmap(c.mem)
	if e != 0 {
		return fmt.Errorf("aio: io_destroy: %w", e)
	}
	return nil
}

// Read is one read: len(Buf) bytes at Offset of the file. Buf must not be
// moved by the Go runtime while the read is in flight: use memory from
// mmap (Buffers does).
type Read struct {
	Buf    []byte
	Offset int64
	N      int   // bytes read, after ReadAll
	Err    error // after ReadAll
}

// ReadAll submits every read of rs on fd at once (at most the depth), then
// waits for all of them. Per-read failures are in Read.Err.
func (c *Context) ReadAll(fd int, rs []Read) error {
	if len(rs) > c.depth {
		return fmt.Errorf("aio: %d reads, depth %d", len(rs), c.depth)
	}
	for i := range rs {
		c.iocbs[i] = iocb{
			data:   uint64(i),
			opcode: cmdPread,
			fd:     uint32(fd),
			buf:    uint64(uintptr(unsafe.Pointer(unsafe.SliceData(rs[i].Buf)))),
			nbytes: uint64(len(rs[i].Buf)),
			offset: rs[i].Offset,
		}
		c.ptrs[i] = uintptr(unsafe.Pointer(&c.iocbs[i]))
	}
	submitted := 0
	for submitted < len(rs) {
		n, _, e := unix.Syscall(unix.SYS_IO_SUBMIT, c.id, uintptr(len(rs)-submitted), uintptr(unsafe.Pointer(&c.ptrs[submitted])))
		if e == syscall.EINTR || e == syscall.EAGAIN {
			continue
		}
		if e != 0 {
			if submitted > 0 {
				c.wait(rs, submitted)
			}
			return fmt.Errorf("aio: io_submit: %w", e)
		}
		submitted += int(n)
	}
	return c.wait(rs, submitted)
}

func (c *Context) wait(rs []Read, n int) error {
	for done := 0; done < n; {
		got, _, e := unix.Syscall6(unix.SYS_IO_GETEVENTS, c.id, 1, uintptr(n-done), uintptr(unsafe.Pointer(&c.events[0])), 0, 0)
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			return fmt.Errorf("aio: io_getevents: %w", e)
		}
		for _, ev := range c.events[:got] {
			r := &rs[ev.data]
			if ev.res < 0 {
				r.Err = syscall.Errno(-ev.res)
			} else {
				r.N = int(ev.res)
			}
		}
		done += int(got)
	}
	return nil
}

// Buffers returns n page-aligned buffers of size bytes, mapped outside the
// Go heap, and the function that unmaps them.
func Buffers(n, size int) ([][]byte, func(), error) {
	if n < 1 || size < 1 {
		return nil, nil, errors.New("aio: no buffers")
	}
	stride := (size + 4095) &^ 4095
	mem, err := unix.Mmap(-1, 0, n*stride, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, nil, err
	}
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = mem[i*stride : i*stride+size : i*stride+size]
	}
	return bufs, func() { unix.Munmap(mem) }, nil
}
