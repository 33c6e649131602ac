package host

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rxStream is where a queue's receive loop gets the controller-to-host byte
// stream from: the seam between parsing PDUs (rxLoop, the only parser) and
// moving bytes. The software path, socketStream, reads the socket itself.
// A DDP offload replaces it with a stream of segments from the NIC, which may
// already have placed a C2HData payload in the request's buffer (then the
// copy is skipped: source and destination are the same memory) and verified
// its data digest (then pduVerified is true and the parser skips the CRC).
type rxStream interface {
	// startPDU tells the stream that the parser is at the start of a PDU:
	// where an offload answers resync requests and starts a PDU's CRC state.
	startPDU()
	// readFull fills b with the next bytes of the stream (headers, padding,
	// digests): always copied.
	readFull(b []byte) error
	// readPayload delivers the next len(dst) bytes, C2HData payload, into
	// dst, the request's buffer.
	readPayload(dst []byte) error
	// skip drops the next n bytes.
	skip(n int) error
	// pduVerified reports whether the stream verified the data digest of
	// the current PDU (every byte of payload and digest since startPDU came
	// in segments whose CRC the NIC checked).
	pduVerified() bool
	// interrupt, from any goroutine, wakes the reader if it waits for
	// bytes: at the start of a PDU (nothing of it consumed since
	// startPDU) the read returns errKicked; within one it goes on waiting.
	interrupt()
	// buffered reports whether bytes not yet consumed are at hand, and
	// ready whether there are, or the connection's end is, without waiting
	// (ready may ask the socket). At a PDU boundary only.
	buffered() bool
	ready() bool
}

var _ rxStream = (*socketStream)(nil)

// socketStream is the software receive path: a small buffer for headers,
// and payload read straight from the socket into the request's buffer with
// io.ReadFull once the bytes already buffered are used up.
type socketStream struct {
	conn  net.Conn
	buf   []byte
	r, w  int
	stats *queueStats
	// atStart: nothing of the current PDU consumed since startPDU.
	atStart bool

	raw      syscall.RawConn // nil: a connection without a file descriptor
	peekFn   func(fd uintptr) bool
	peeked   bool
	peekByte byte // what a peek reads (and leaves in the socket)

	// Benchmark only (discardPayloads): payload is dropped by the kernel.
	discard  bool
	dropLeft int   // bytes still to drop
	dropErr  error // the last drop's error
	dropFn   func(fd uintptr) bool
}

// rxBufLen is the header buffer: large enough that a burst of small PDUs
// (4 KiB reads) costs one read system call, small enough that big payloads
// mostly bypass it.
const rxBufLen = 32 << 10

func newSocketStream(conn net.Conn, st *queueStats) *socketStream {
	s := &socketStream{conn: conn, buf: make([]byte, rxBufLen), stats: st}
	if sc, ok := conn.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			s.raw = raw
			s.peekFn = s.peek
		}
	}
	return s
}

func (s *socketStream) buffered() bool { return s.r < s.w }

func (s *socketStream) ready() bool {
	if s.r < s.w || s.raw == nil {
		return s.r < s.w
	}
	s.peeked = false
	if err := s.raw.Read(s.peekFn); err != nil {
		return true // the read says what it is
	}
	return s.peeked
}

// peek looks, without waiting or consuming, whether the socket has a byte
// or its end to read.
func (s *socketStream) peek(fd uintptr) bool {
	n, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&s.peekByte)), 1, unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
	s.peeked = errno != unix.EAGAIN || n > 0
	return true
}

func (s *socketStream) startPDU() { s.atStart = true }

func (s *socketStream) pduVerified() bool { return false }

// interrupt wakes a read with a read deadline in the past: the host sets
// no other read deadline once the queue runs.
func (s *socketStream) interrupt() { s.conn.SetReadDeadline(time.Unix(1, 0)) }

// read reads into p, waiting for at least one byte. An interrupt at the
// start of a PDU returns errKicked; within one, the read goes on.
func (s *socketStream) read(p []byte) (int, error) {
	for {
		n, err := s.conn.Read(p)
		if n > 0 {
			return n, nil
		}
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			s.conn.SetReadDeadline(time.Time{})
			if s.atStart {
				return 0, errKicked
			}
		case err == nil:
			return 0, io.ErrNoProgress
		default:
			return 0, err
		}
	}
}

func (s *socketStream) fill() error {
	s.r, s.w = 0, 0
	n, err := s.read(s.buf)
	s.w = n
	return err
}

func (s *socketStream) readFull(b []byte) error {
	for len(b) > 0 {
		if s.r == s.w {
			if err := s.fill(); err != nil {
				return err
			}
		}
		n := copy(b, s.buf[s.r:s.w])
		s.r += n
		b = b[n:]
		s.atStart = false
	}
	return nil
}

func (s *socketStream) readPayload(dst []byte) error {
	s.atStart = false
	if s.discard {
		return s.drop(len(dst))
	}
	n := copy(dst, s.buf[s.r:s.w])
	s.r += n
	s.stats.bytesCopied.Add(uint64(n))
	direct := 0
	for n < len(dst) {
		k, err := s.read(dst[n:])
		if err != nil {
			return unexpectedEOF(err)
		}
		n += k
		direct += k
	}
	if direct > 0 {
		s.stats.bytesDirect.Add(uint64(direct))
	}
	return nil
}

func (s *socketStream) skip(n int) error {
	for n > 0 {
		if s.r == s.w {
			if err := s.fill(); err != nil {
				return unexpectedEOF(err)
			}
		}
		c := min(n, s.w-s.r)
		s.r += c
		n -= c
		s.atStart = false
	}
	return nil
}

func unexpectedEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// discardPayloads makes readPayload drop payload instead of delivering it
// (Options.BenchmarkDiscardPayload): what is buffered is skipped, the rest
// is dropped in the kernel with recv(MSG_TRUNC), which TCP consumes
// without copying. The upper bound of a receive offload, for benchmarks.
func (s *socketStream) discardPayloads() error {
	if s.raw == nil {
		return errors.New("discarding payload needs a connection with a file descriptor")
	}
	s.discard = true
	s.dropFn = s.dropSome
	return nil
}

// drop drops the next n bytes of payload.
func (s *socketStream) drop(n int) error {
	c := min(n, s.w-s.r)
	s.r += c
	s.dropLeft = n - c
	for s.dropLeft > 0 {
		s.dropErr = nil
		if err := s.raw.Read(s.dropFn); errors.Is(err, os.ErrDeadlineExceeded) {
			s.conn.SetReadDeadline(time.Time{}) // an interrupt: go on
			continue
		} else if err != nil {
			return unexpectedEOF(err)
		}
		if s.dropErr != nil {
			return unexpectedEOF(s.dropErr)
		}
	}
	s.stats.bytesDiscarded.Add(uint64(n))
	return nil
}

// dropSome is one recv(MSG_TRUNC) attempt; false: wait until readable.
func (s *socketStream) dropSome(fd uintptr) bool {
	n, _, errno := unix.Syscall6(unix.SYS_RECVFROM, fd, 0, uintptr(s.dropLeft), unix.MSG_TRUNC|unix.MSG_DONTWAIT, 0, 0)
	switch {
	case errno == unix.EAGAIN || errno == unix.EINTR:
		return false
	case errno != 0:
		s.dropErr = errno
	case n == 0:
		s.dropErr = io.EOF
	default:
		s.dropLeft -= int(n)
	}
	return true
}
