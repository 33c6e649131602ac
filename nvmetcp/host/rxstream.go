package host

import (
	"io"
	"net"
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
}

// rxBufLen is the header buffer: large enough that a burst of small PDUs
// (4 KiB reads) costs one read system call, small enough that big payloads
// mostly bypass it.
const rxBufLen = 32 << 10

func newSocketStream(conn net.Conn, st *queueStats) *socketStream {
	return &socketStream{conn: conn, buf: make([]byte, rxBufLen), stats: st}
}

func (s *socketStream) startPDU() {}

func (s *socketStream) pduVerified() bool { return false }

func (s *socketStream) fill() error {
	s.r, s.w = 0, 0
	n, err := s.conn.Read(s.buf)
	s.w = n
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
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
	}
	return nil
}

func (s *socketStream) readPayload(dst []byte) error {
	n := copy(dst, s.buf[s.r:s.w])
	s.r += n
	s.stats.bytesCopied.Add(uint64(n))
	if n == len(dst) {
		return nil
	}
	if _, err := io.ReadFull(s.conn, dst[n:]); err != nil {
		return unexpectedEOF(err)
	}
	s.stats.bytesDirect.Add(uint64(len(dst) - n))
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
	}
	return nil
}

func unexpectedEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
