package target

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
	"github.com/nvmefs/nvmefs/nvmetcp/target/store"
	"github.com/nvmefs/nvmefs/nvmetcp/wire"
)

// gatedStore blocks ReadAt while the gate is closed, to hold commands in
// the middle of their execution.
type gatedStore struct {
	store.Store
	mu      sync.Mutex
	gate    chan struct{}
	waiting chan struct{} // receives one value per blocked ReadAt
}

func (g *gatedStore) ReadAt(p []byte, off int64) (int, error) {
	g.mu.Lock()
	gate := g.gate
	g.mu.Unlock()
	if gate != nil {
		select {
		case g.waiting <- struct{}{}:
		default:
		}
		<-gate
	}
	return g.Store.ReadAt(p, off)
}

func (g *gatedStore) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.gate != nil {
		close(g.gate)
		g.gate = nil
	}
}

// waitGoroutines waits (bounded) until at most n goroutines run.
func waitGoroutines(tb testing.TB, n int, what string) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			tb.Fatalf("%s: %d goroutines, want at most %d\n%s", what, runtime.NumGoroutine(), n, buf)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestNoGoroutineLeaks: hosts that vanish mid-command, mid-transfer, after a
// fatal error or a keep-alive timeout leave nothing behind, and Close leaves
// no goroutine at all.
func TestNoGoroutineLeaks(t *testing.T) {
	time.Sleep(20 * time.Millisecond) // let earlier tests' goroutines go
	baseline := runtime.NumGoroutine()

	gs := &gatedStore{Store: mustMem(t, "mem:8M"), waiting: make(chan struct{}, 1)}
	defer gs.Store.Close()
	tgt, err := New(Config{SubsystemNQN: testSubNQN, Namespaces: []store.Store{gs}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- tgt.Serve(ln) }()
	closed := false
	defer func() {
		gs.close()
		if !closed {
			tgt.Close()
		}
	}()
	addr := ln.Addr().String()
	withServe := baseline + 1 // the accept loop

	// A host that vanishes while its read is executing.
	s := openSession(t, addr, clientOpts{}, testHostNQN, 1, 32)
	gs.mu.Lock()
	gs.gate = make(chan struct{})
	gs.mu.Unlock()
	if _, err := s.io[0].sendRead(1, 0, make([]byte, 65536), 512); err != nil {
		t.Fatal(err)
	}
	select {
	case <-gs.waiting:
	case <-time.After(callTimeout):
		t.Fatal("read never reached the store")
	}
	s.io[0].Close()
	s.admin.Close()
	gs.close()
	waitGoroutines(t, withServe, "host gone mid-read")

	// A host that vanishes in the middle of an R2T transfer.
	s = openSession(t, addr, clientOpts{DataDigest: true}, testHostNQN, 2, 32)
	f := rwFields(nvme.IOWrite, 1, 0, 256, 128<<10, false)
	k, err := s.io[0].sendManual(&f)
	if err != nil {
		t.Fatal(err)
	}
	r2t := <-k.r2ts
	s.io[0].writeData(wire.DataFields{Type: wire.TypeH2CData, CCCID: r2t.CCCID, TTag: r2t.TTag, DataLen: 4096}, make([]byte, 4096), false)
	// And one with reads in flight on its other queue, then everything.
	for i := range 16 {
		s.io[1].sendRead(1, uint64(i*8), make([]byte, 4096), 512)
	}
	for _, c := range s.io {
		c.Close()
	}
	s.admin.Close()
	waitGoroutines(t, withServe, "host gone mid-transfer")

	// Fatal errors, a half-sent PDU, a silent connection closed by the host.
	for i := range 3 {
		nc, rd, _ := rawConn(t, addr)
		switch i {
		case 0:
			nc.Write(bytes.Repeat([]byte{0x42}, 100))
			readTermReq(t, nc, rd)
		case 1:
			nc.Write([]byte{byte(wire.TypeCapsuleCmd), 0, 72, 0})
		}
		nc.Close()
	}
	waitGoroutines(t, withServe, "bad connections")

	// Held AERs, then the controller's keep-alive timeout.
	s = openSessionKATO(t, addr, testHostNQN, 200)
	s.admin.send(&nvme.SQEFields{Opcode: nvme.AdminAsyncEvent, Flags: nvme.FlagsPSDTSGL}, nil, nil, nil)
	if _, err := s.admin.terminated(callTimeout); err == nil {
		t.Fatal("KATO did not end the controller")
	}
	s.io[0].terminated(callTimeout)
	s.admin.Close()
	s.io[0].Close()
	waitGoroutines(t, withServe, "keep-alive timeout")

	// Close with live connections and commands in flight.
	s = openSession(t, addr, clientOpts{}, testHostNQN, 2, 32)
	gs.mu.Lock()
	gs.gate = make(chan struct{})
	gs.mu.Unlock()
	s.io[0].sendRead(1, 0, make([]byte, 4096), 512)
	<-gs.waiting
	closeDone := make(chan error, 1)
	go func() { closeDone <- tgt.Close() }()
	time.Sleep(20 * time.Millisecond)
	gs.close() // Close waits for the command that is in the store
	select {
	case err := <-closeDone:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(callTimeout):
		t.Fatal("Close did not return")
	}
	closed = true
	if err := <-served; err != nil {
		t.Errorf("Serve returned %v after Close, want nil", err)
	}
	for _, c := range append([]*client{s.admin}, s.io...) {
		if _, err := c.terminated(callTimeout); err == nil {
			t.Error("a connection survived Close")
		}
		c.Close()
	}
	waitGoroutines(t, baseline, "after Close")
	if err := tgt.Serve(ln); err != ErrClosed {
		t.Errorf("Serve after Close: %v", err)
	}
	if err := tgt.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestBystanders: while hosts misbehave on other connections, a session
// keeps reading and writing correctly.
func TestBystanders(t *testing.T) {
	tt := startTarget(t, Config{})
	s := openSession(t, tt.addr, clientOpts{HeaderDigest: true, DataDigest: true}, testHostNQN, 1, 64)
	stop := make(chan struct{})
	errs := make(chan error, 1)
	go func() {
		defer close(errs)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			data := pattern(16384, uint64(i))
			if r := s.io[0].write(1, uint64(i%64)*32, data, 512, i%2 == 0); r.Err != nil || !r.Status.Success() {
				errs <- fmt.Errorf("write %d: %v %v", i, r.Err, r.Status)
				return
			}
			got := make([]byte, len(data))
			if r := s.io[0].read(1, uint64(i%64)*32, got, 512); r.Err != nil || !r.Status.Success() || !bytes.Equal(got, data) {
				errs <- fmt.Errorf("read %d: %v %v equal=%v", i, r.Err, r.Status, bytes.Equal(got, data))
				return
			}
		}
	}()
	for i := range 20 {
		nc, rd, _ := rawConn(t, tt.addr)
		if i%2 == 0 {
			nc.Write(bytes.Repeat([]byte{byte(i)}, 200))
			readTermReq(t, nc, rd)
		}
		nc.Close()
		bad := dialClient(t, tt.addr, clientOpts{})
		bad.connect(0, 32, 0, nvme.CntlIDDynamic, testSubNQN, testHostNQN2)
		bad.Close()
	}
	close(stop)
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
}
