package wire

import (
	"errors"
	"fmt"
	"io"
)

// Reader frames the PDUs of one direction of a connection from a byte stream.
// Next reads and verifies a header; the payload, if any, is then read with
// ReadData or Discard before the next call to Next. Params may change between
// PDUs (after ICReq/ICResp), never during one.
type Reader struct {
	r   io.Reader
	dir Direction
	p   *Params
	buf [MaxHeaderBuf]byte
	// scratch absorbs padding and discarded payloads, so that the header
	// in buf stays valid for the caller.
	scratch [512]byte
	l       Layout
	// pending is true between Next and ReadData/Discard of a PDU with data.
	pending bool
}

// NewReader frames PDUs received in direction dir under the params p.
func NewReader(r io.Reader, dir Direction, p *Params) *Reader {
	return &Reader{r: r, dir: dir, p: p}
}

// Next reads the next PDU header. The returned Header (HLEN bytes plus header
// digest) is valid until the following call to Next. A fatal protocol error
// is an *Error; a stream that ends inside a PDU gives io.ErrUnexpectedEOF and
// one that ends between PDUs io.EOF.
func (r *Reader) Next() (Header, Layout, error) {
	if r.pending {
		if err := r.Discard(); err != nil {
			return nil, Layout{}, err
		}
	}
	if _, err := io.ReadFull(r.r, r.buf[:CommonHeaderLen]); err != nil {
		return nil, Layout{}, err
	}
	l, err := r.p.Layout(r.buf[:CommonHeaderLen], r.dir)
	if err != nil {
		return Header(r.buf[:CommonHeaderLen]), l, err
	}
	hb := l.HeaderBytes()
	if _, err := io.ReadFull(r.r, r.buf[CommonHeaderLen:hb]); err != nil {
		return nil, l, unexpected(err)
	}
	h := Header(r.buf[:hb])
	if err := r.p.VerifyHeader(h, l); err != nil {
		return h, l, err
	}
	r.l = l
	r.pending = l.DataLen > 0
	return h, l, nil
}

// ReadData reads the payload of the current PDU into dst, which must be
// exactly Layout.DataLen bytes, and checks its digest. ErrDataDigest leaves
// the stream in step: the caller fails the command, not the connection.
func (r *Reader) ReadData(dst []byte) error {
	if !r.pending {
		return errors.New("wire: ReadData without a pending payload")
	}
	if len(dst) != r.l.DataLen {
		return fmt.Errorf("wire: ReadData of %d bytes, payload is %d", len(dst), r.l.DataLen)
	}
	r.pending = false
	if err := r.skip(r.l.PadLen()); err != nil {
		return err
	}
	if _, err := io.ReadFull(r.r, dst); err != nil {
		return unexpected(err)
	}
	if r.l.DDGST == 0 {
		return nil
	}
	// The digest lands in scratch: a local array would escape to the heap
	// through io.ReadFull, one allocation per PDU.
	d := r.scratch[:DigestLen]
	if _, err := io.ReadFull(r.r, d); err != nil {
		return unexpected(err)
	}
	if want, got := GetDigest(d), DataDigest(dst); want != got {
		return fmt.Errorf("%w: %v: digest %#08x, computed %#08x", ErrDataDigest, r.l.Type, want, got)
	}
	return nil
}

// Discard skips the payload of the current PDU (padding, data and digest).
func (r *Reader) Discard() error {
	if !r.pending {
		return nil
	}
	r.pending = false
	return r.skip(r.l.TrailerBytes())
}

// skip reads and drops n bytes (no allocation).
func (r *Reader) skip(n int) error {
	for n > 0 {
		c := min(n, len(r.scratch))
		if _, err := io.ReadFull(r.r, r.scratch[:c]); err != nil {
			return unexpected(err)
		}
		n -= c
	}
	return nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
