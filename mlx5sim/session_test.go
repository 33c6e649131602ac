package mlx5sim

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/ddp"
	"github.com/nvmefs/nvmefs/nvmetcp/wire"
)

// A session is a fake host and a scripted target over loopback TCP: the
// host keeps qd reads in flight, maps the large ones (Setup) before it
// asks for them, and the target answers each with C2HData PDUs and a
// response, as the options say.
type sessionOpts struct {
	dev       Config
	oc        wire.OffloadConfig
	commands  int
	qd        int
	minSize   int
	maxSize   int
	maxC2H    int     // most data per C2HData PDU (random splits below it); 0: one PDU
	success   float64 // reads ended by a SUCCESS C2HData instead of a CapsuleResp
	r2t       float64 // reads preceded by an R2T (noise the host ignores)
	corrupt   float64 // reads with one corrupted PDU (digest or data)
	threshold int     // smallest read mapped
	chunk     int     // the target writes in chunks of at most this (0: whole PDUs)
	seed      uint64
	keep      bool                   // compare the whole stream received with what was sent
	during    func(i int, d *Device) // called as read i is issued
	timeout   time.Duration
}

type session struct {
	t    testing.TB
	o    sessionOpts
	dev  *Device
	sock ddp.Socket
	host *fakeHost

	mu        sync.Mutex
	rng       *rand.Rand
	cmds      map[uint16]*hcmd
	freeTags  []uint16
	issued    int
	completed int
	done      chan struct{}
	msgs      chan [12]byte
	retired   [][]byte // buffers poisoned after TeardownDone: nothing may write them
	dupDone   int

	// Totals.
	mappedBytes, unmappedBytes, placed, copied, failedCmds int
	setupErrs                                              map[string]int

	sent      []byte
	corrupted int
}

const poison = 0xee

func runSession(t *testing.T, o sessionOpts) *session {
	t.Helper()
	if o.qd == 0 {
		o.qd = 8
	}
	if o.oc.QueueSize == 0 {
		o.oc.QueueSize = o.qd
	}
	if o.timeout == 0 {
		o.timeout = 60 * time.Second
	}
	dev, err := newDev(o.dev)
	if err != nil {
		t.Fatal(err)
	}
	hc, tc := tcpPair(t)
	s := &session{
		t:         t,
		o:         o,
		dev:       dev,
		rng:       rand.New(rand.NewPCG(o.seed, 7)),
		cmds:      make(map[uint16]*hcmd),
		done:      make(chan struct{}),
		msgs:      make(chan [12]byte, o.commands+1),
		setupErrs: make(map[string]int),
	}
	for i := range o.qd {
		s.freeTags = append(s.freeTags, uint16(i))
	}
	h := newFakeHost(t, o.oc, o.dev.InitialSeq)
	h.keepData = o.keep
	h.mtu = dev.MTU()
	h.lookup = func(tag uint16) *hcmd {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.cmds[tag]
	}
	h.onResp = s.onResp
	s.host = h
	sock, err := dev.SkAdd(hc, o.oc, s)
	if err != nil {
		t.Fatal(err)
	}
	s.sock = sock
	h.sock = sock

	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); s.target(tc) }()
	go func() {
		defer wg.Done()
		for m := range s.msgs {
			if _, err := hc.Write(m[:]); err != nil {
				return
			}
		}
	}()
	recvErr := make(chan error, 1)
	go func() {
		defer wg.Done()
		for {
			seg, err := sock.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			h.segment(seg)
		}
	}()

	s.mu.Lock()
	for range o.qd {
		s.issueLocked()
	}
	s.mu.Unlock()

	select {
	case <-s.done:
	case err := <-recvErr:
		t.Errorf("Recv ended early: %v", err)
	case <-ctx.Done():
		t.Errorf("session timed out: %d of %d reads completed", s.completed, o.commands)
	}
	// Wind down: the target sees the host's write side close; Close ends Recv.
	close(s.msgs)
	hc.(*net.TCPConn).CloseWrite()
	sock.Close()
	wg.Wait()
	if err := h.requestError(); err != nil {
		t.Error(err)
	}
	if t.Failed() {
		return s
	}
	if o.keep {
		if !bytes.Equal(h.got, s.sent) {
			at := 0
			for at < min(len(h.got), len(s.sent)) && h.got[at] == s.sent[at] {
				at++
			}
			t.Errorf("received %d bytes, sent %d; first difference at %d", len(h.got), len(s.sent), at)
		}
	}
	for i, b := range s.retired {
		for j, c := range b {
			if c != poison {
				t.Errorf("retired buffer %d written at %d after TeardownDone", i, j)
				break
			}
		}
	}
	if s.dupDone > 0 {
		t.Errorf("%d TeardownDone calls for an I/O not waiting for one", s.dupDone)
	}
	if h.digestErrors != s.corrupted {
		t.Errorf("host found %d digest errors, target corrupted %d PDUs", h.digestErrors, s.corrupted)
	}
	if st, td := stat(dev, "rx_nvmeotcp_ddp_setup"), stat(dev, "rx_nvmeotcp_ddp_teardown"); st != td {
		t.Errorf("%d setups, %d teardowns", st, td)
	}
	return s
}

// issueLocked starts the next read, mapping it when it is large enough.
func (s *session) issueLocked() {
	if s.issued >= s.o.commands || len(s.freeTags) == 0 {
		return
	}
	tag := s.freeTags[len(s.freeTags)-1]
	s.freeTags = s.freeTags[:len(s.freeTags)-1]
	serial := uint32(s.issued)
	if s.o.during != nil {
		s.o.during(s.issued, s.dev)
	}
	s.issued++
	size := s.o.minSize
	if s.o.maxSize > s.o.minSize {
		size += s.rng.IntN(s.o.maxSize - s.o.minSize + 1)
	}
	c := &hcmd{tag: tag, serial: serial, buf: make([]byte, size)}
	if size >= s.o.threshold {
		io := &ddp.IO{Tag: tag, SG: ddp.SG(c.buf, nil), Len: size}
		if err := s.sock.Setup(io); err == nil {
			c.io = io
		} else {
			s.setupErrs[err.Error()]++
		}
	}
	s.cmds[tag] = c
	var m [12]byte
	binary.LittleEndian.PutUint16(m[0:], tag)
	binary.LittleEndian.PutUint32(m[4:], serial)
	binary.LittleEndian.PutUint32(m[8:], uint32(size))
	s.msgs <- m
}

// onResp runs on the receive goroutine when a read's response arrives.
func (s *session) onResp(c *hcmd) {
	s.mu.Lock()
	if c.resp {
		s.mu.Unlock()
		s.t.Errorf("second response for tag %d", c.tag)
		return
	}
	c.resp = true
	if io := c.io; io != nil {
		// Not under s.mu: TeardownDone may come from within Teardown.
		s.mu.Unlock()
		s.sock.Teardown(io)
		return
	}
	s.completeLocked(c)
	s.mu.Unlock()
}

// ResyncRequest and TeardownDone make the session the socket's ULP.
func (s *session) ResyncRequest(seq ddp.Seq) { s.host.ResyncRequest(seq) }

func (s *session) TeardownDone(io *ddp.IO) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.cmds[io.Tag]
	if c == nil || c.io != io || !c.resp || c.down {
		s.dupDone++
		return
	}
	c.down = true
	s.completeLocked(c)
}

// completeLocked checks a finished read, retires it and issues the next.
func (s *session) completeLocked(c *hcmd) {
	delete(s.cmds, c.tag)
	s.freeTags = append(s.freeTags, c.tag)
	s.completed++
	if c.io != nil {
		s.mappedBytes += len(c.buf)
	} else {
		s.unmappedBytes += len(c.buf)
	}
	s.placed += c.placed
	s.copied += c.copied
	if c.failed {
		s.failedCmds++
	} else {
		want := make([]byte, len(c.buf))
		fill(want, c.serial, 0)
		if !bytes.Equal(c.buf, want) {
			s.t.Errorf("read %d (tag %d, %d bytes, mapped %v): wrong data", c.serial, c.tag, len(c.buf), c.io != nil)
		}
	}
	if c.io != nil && len(s.retired) < 32 {
		for i := range c.buf {
			c.buf[i] = poison
		}
		s.retired = append(s.retired, c.buf)
	}
	if s.completed == s.o.commands {
		close(s.done)
		return
	}
	s.issueLocked()
}

// target answers each read request with its PDUs.
func (s *session) target(c net.Conn) {
	o := s.o
	snd := newSender(o.oc)
	rng := rand.New(rand.NewPCG(o.seed, 11))
	var m [12]byte
	var data []byte
	for {
		if _, err := io.ReadFull(c, m[:]); err != nil {
			return
		}
		tag := binary.LittleEndian.Uint16(m[0:])
		serial := binary.LittleEndian.Uint32(m[4:])
		size := int(binary.LittleEndian.Uint32(m[8:]))
		data = append(data[:0], make([]byte, size)...)
		fill(data, serial, 0)
		var out []byte
		if rng.Float64() < o.r2t {
			out = append(out, snd.r2t(tag, 0, uint32(size))...)
		}
		success := rng.Float64() < o.success
		bad := -1
		if size > 0 && o.oc.DataDigest && rng.Float64() < o.corrupt {
			bad = rng.IntN(size) // the PDU holding this byte is corrupted
		}
		for off := 0; off < size; {
			n := size - off
			if o.maxC2H > 0 {
				n = min(n, 1+rng.IntN(o.maxC2H))
			}
			var flags wire.Flags
			if off+n == size {
				flags |= wire.FlagLast
				if success {
					flags |= wire.FlagSuccess
				}
			}
			corrupt := 0
			if bad >= off && bad < off+n {
				corrupt = 2
				if o.oc.DataDigest && rng.IntN(2) == 0 {
					corrupt = 1
				}
				s.mu.Lock()
				s.corrupted++
				s.mu.Unlock()
			}
			out = append(out, snd.c2h(tag, off, data[off:off+n], flags, corrupt)...)
			off += n
		}
		if !success {
			out = append(out, snd.resp(tag)...)
		}
		if o.keep {
			s.mu.Lock()
			s.sent = append(s.sent, out...)
			s.mu.Unlock()
		}
		chunk := func() int { return len(out) }
		if o.chunk > 0 {
			chunk = func() int { return 1 + rng.IntN(o.chunk) }
		}
		if err := writeChunks(c, out, chunk); err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.t.Logf("target: %v", err)
			}
			return
		}
	}
}
