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

// writer is a connection's output: frames are queued from any goroutine and
// whoever sends writes everything queued with one writev. The connection's
// reader queues what it answers itself without waking anybody (queue) and
// writes it on its own before it reads the socket again (flush): a command
// answered on the reader costs no hand-off between goroutines, and the
// answers to a burst of commands that arrived in one read leave in one
// writev. Frames of other goroutines (send) wake the writer's goroutine.
// One sender at a time: the reader in flush or the writer's goroutine.
type writer struct {
	nc      net.Conn
	mu      sync.Mutex
	q       []frame
	term    []byte // a TermReq to send instead of anything else, then stop
	stop    bool
	dead    bool // no more frames are accepted
	sending bool // a goroutine is writing a batch; it sends what is queued meanwhile too
	wake    chan struct{}
	done    chan struct{}
	// fail ends the connection after a write error, so that the reader
	// stops too.
	fail func()
	// stall bounds each writeChunk bytes of a write: a peer that stops
	// reading fails the write instead of holding the writer forever.
	stall time.Duration

	// The sender's (under sending): the batch taken from q and its iovecs.
	batch []frame
	iov   net.Buffers
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

// send queues f and wakes the writer's goroutine; if the writer has
// stopped, f is released at once.
func (w *writer) send(f frame) {
	if w.enqueue(f) {
		w.signal()
	}
}

// queue queues f for the reader's next flush (the reader's own frames).
func (w *writer) queue(f frame) { w.enqueue(f) }

func (w *writer) enqueue(f frame) bool {
	w.mu.Lock()
	if w.dead {
		w.mu.Unlock()
		if f.done != nil {
			f.done.release()
		}
		return false
	}
	w.q = append(w.q, f)
	w.mu.Unlock()
	return true
}

// flush writes what is queued from the calling goroutine, unless another
// sender is at work (it takes the queue when its write returns). The
// reader calls it before each read of the socket.
func (w *writer) flush() {
	w.mu.Lock()
	if len(w.q) == 0 || w.sending || w.dead || w.term != nil || w.stop {
		// term and stop are the writer goroutine's to carry out.
		pending := len(w.q) > 0
		w.mu.Unlock()
		if pending {
			w.signal()
		}
		return
	}
	w.sending = true
	w.mu.Unlock()
	w.drain()
}

// drain writes batches until the queue is empty (or a write fails), then
// gives up the sender's role. The caller set sending.
func (w *writer) drain() {
	for {
		w.mu.Lock()
		if len(w.q) == 0 || w.dead || w.term != nil {
			w.sending = false
			wakeWriter := w.term != nil || w.stop
			w.mu.Unlock()
			if wakeWriter {
				w.signal()
			}
			return
		}
		w.batch, w.q = w.q, w.batch[:0]
		w.mu.Unlock()

		w.iov = w.iov[:0]
		for _, f := range w.batch {
			w.iov = append(w.iov, f.iov...)
		}
		err := w.write(w.iov) // consumes a copy of the slice header

		clear(w.iov) // drop references into released buffers
		releaseAll(w.batch)
		clear(w.batch)
		w.batch = w.batch[:0]
		if err != nil {
			w.mu.Lock()
			w.dead = true
			w.sending = false
			dropped := w.q
			w.q = nil
			w.mu.Unlock()
			releaseAll(dropped)
			w.fail()
			w.signal() // the writer's goroutine ends
			return
		}
	}
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

// run is the writer's goroutine: it sends what others queue until
// shutdown, terminate or a write error, then releases whatever is left. It
// closes done when it returns.
func (w *writer) run(writeTimeout time.Duration) {
	defer close(w.done)
	for range w.wake {
		w.mu.Lock()
		switch {
		case w.sending:
			// The reader is writing: it sends what is queued, and
			// wakes us if there is a stop or a TermReq to carry out.
			w.mu.Unlock()
			continue
		case w.term != nil:
			term := w.term
			w.dead = true
			dropped := w.q
			w.q = nil
			w.mu.Unlock()
			releaseAll(dropped)
			w.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
			w.nc.Write(term)
			return
		case w.dead:
			w.mu.Unlock()
			return
		case len(w.q) == 0:
			stop := w.stop
			if stop {
				w.dead = true
			}
			w.mu.Unlock()
			if stop {
				return
			}
			continue
		}
		w.sending = true
		w.mu.Unlock()
		// drain sends what comes meanwhile, and wakes us for a stop or a
		// TermReq that came.
		w.drain()
	}
}

func releaseAll(fs []frame) {
	for _, f := range fs {
		if f.done != nil {
			f.done.release()
		}
	}
}
