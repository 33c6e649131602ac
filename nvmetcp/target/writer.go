package target

import (
	"net"
	"sync"
	"time"
)

// releaser is told when the bytes of a frame are no longer needed (written,
// or dropped because the connection ended).
type releaser interface{ release() }

// frame is one unit of output: the byte slices of one or more PDUs, sent in
// order and never interleaved with another frame.
type frame struct {
	iov  [][]byte
	done releaser
}

// writer is a connection's single writer: frames are queued from any
// goroutine and one goroutine sends everything queued with one writev.
type writer struct {
	nc   net.Conn
	mu   sync.Mutex
	q    []frame
	term []byte // a TermReq to send instead of anything else, then stop
	stop bool
	dead bool // no more frames are accepted
	wake chan struct{}
	done chan struct{}
	// fail ends the connection after a write error, so that the reader
	// stops too.
	fail func()
	// stall bounds each writeChunk bytes of a write: a peer that stops
	// reading fails the write instead of holding the writer forever.
	stall time.Duration
}

// writeChunk is how much of a batch must be written within the stall
// timeout; a longer batch is written in several calls.
const writeChunk = 4 << 20

func newWriter(nc net.Conn, fail func(), stall time.Duration) *writer {
	return &writer{nc: nc, wake: make(chan struct{}, 1), done: make(chan struct{}), fail: fail, stall: stall}
}

// write writes iov (consuming it) under a deadline renewed every writeChunk
// bytes or so.
func (w *writer) write(iov net.Buffers) error {
	for len(iov) > 0 {
		n, size := 0, 0
		for n < len(iov) && (n == 0 || size+len(iov[n]) <= writeChunk) {
			size += len(iov[n])
			n++
		}
		if err := w.nc.SetWriteDeadline(time.Now().Add(w.stall)); err != nil {
			return err
		}
		part := iov[:n]
		if _, err := part.WriteTo(w.nc); err != nil {
			return err
		}
		iov = iov[n:]
	}
	return nil
}

func (w *writer) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// send queues f; if the writer has stopped, f is released at once.
func (w *writer) send(f frame) {
	w.mu.Lock()
	if w.dead {
		w.mu.Unlock()
		if f.done != nil {
			f.done.release()
		}
		return
	}
	w.q = append(w.q, f)
	w.mu.Unlock()
	w.signal()
}

// terminate drops everything queued, sends pdu (a TermReq) and stops.
func (w *writer) terminate(pdu []byte) {
	w.mu.Lock()
	if !w.dead {
		w.term = pdu
	}
	w.mu.Unlock()
	w.signal()
}

// shutdown stops the writer after what is queued has been sent.
func (w *writer) shutdown() {
	w.mu.Lock()
	w.stop = true
	w.mu.Unlock()
	w.signal()
}

// run sends frames until shutdown, terminate or a write error, then releases
// whatever is left. It closes done when it returns.
func (w *writer) run(writeTimeout time.Duration) {
	defer close(w.done)
	var batch []frame
	var iov net.Buffers
	for range w.wake {
		for {
			w.mu.Lock()
			if w.term != nil {
				term := w.term
				w.dead = true
				dropped := w.q
				w.q = nil
				w.mu.Unlock()
				releaseAll(dropped)
				w.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
				w.nc.Write(term)
				return
			}
			if len(w.q) == 0 {
				stop := w.stop
				if stop {
					w.dead = true
				}
				w.mu.Unlock()
				if stop {
					return
				}
				break
			}
			batch, w.q = w.q, batch[:0]
			w.mu.Unlock()

			iov = iov[:0]
			for _, f := range batch {
				iov = append(iov, f.iov...)
			}
			err := w.write(iov) // consumes a copy of the slice header

			clear(iov) // drop references into released buffers
			releaseAll(batch)
			clear(batch)
			batch = batch[:0]
			if err != nil {
				w.mu.Lock()
				w.dead = true
				dropped := w.q
				w.q = nil
				w.mu.Unlock()
				releaseAll(dropped)
				w.fail()
				return
			}
		}
	}
}

func releaseAll(fs []frame) {
	for _, f := range fs {
		if f.done != nil {
			f.done.release()
		}
	}
}
