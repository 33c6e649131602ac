package target

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

// readGuard is what a connection's reader reads the socket through: it
// bounds how long a peer may make the target wait. Until the queue is
// connected, ICReq and Connect must arrive by a fixed deadline (the
// handshake); after that a PDU the peer has started must be complete within
// a budget of time spent waiting for its bytes (a peer that dribbles a byte
// at a time runs out of it), while the wait for the first byte of the next
// PDU is not bounded: an idle host is the keep-alive timer's business.
//
// Only the reader goroutine uses it: no locking.
type readGuard struct {
	nc net.Conn
	// handshake, when not zero, is when the peer must have connected.
	handshake time.Time
	handshakeLimit,
	stallLimit time.Duration
	// idle: at a PDU boundary with nothing of the next PDU received.
	idle bool
	// left is what the PDU being received may still wait for.
	left time.Duration
	// set is the read deadline last set on nc.
	set time.Time
	// beforeRead, if set, runs before each read of nc (which may wait).
	beforeRead func()
}

var _ io.Reader = (*readGuard)(nil)

// errStalled ends a connection whose peer took too long.
var errStalled = errors.New("the host stalled")

func newReadGuard(nc net.Conn, handshake, stall time.Duration) *readGuard {
	return &readGuard{nc: nc, handshake: time.Now().Add(handshake), handshakeLimit: handshake, stallLimit: stall}
}

// connected ends the handshake phase.
func (g *readGuard) connected() { g.handshake = time.Time{} }

// boundary is called between PDUs; started says whether bytes of the next
// one have already been received (buffered).
func (g *readGuard) boundary(started bool) {
	g.idle = !started
	g.left = g.stallLimit
}

func (g *readGuard) Read(p []byte) (int, error) {
	if g.beforeRead != nil {
		g.beforeRead()
	}
	var dl, start time.Time
	switch {
	case !g.handshake.IsZero():
		dl = g.handshake
	case g.idle:
	default:
		start = time.Now()
		dl = start.Add(g.left)
	}
	if !dl.Equal(g.set) {
		if err := g.nc.SetReadDeadline(dl); err != nil {
			return 0, err
		}
		g.set = dl
	}
	n, err := g.nc.Read(p)
	switch {
	case !start.IsZero():
		g.left -= time.Since(start)
	case g.idle && n > 0:
		// The next PDU has started: its budget runs from now.
		g.idle = false
		g.left = g.stallLimit
	}
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		if !g.handshake.IsZero() {
			return n, fmt.Errorf("%w: no ICReq and Connect within %v of connecting", errStalled, g.handshakeLimit)
		}
		return n, fmt.Errorf("%w: a PDU not complete after waiting %v for its bytes", errStalled, g.stallLimit)
	}
	return n, err
}
