package target

import (
	"errors"
	"net"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
	"github.com/nvmefs/nvmefs/nvmetcp/wire"
)

// closedWithin reads (and drops) what the target sends on nc until it closes
// the connection, and reports how long that took; it fails the test if the
// connection is still open after limit.
func closedWithin(tb testing.TB, nc net.Conn, limit time.Duration) time.Duration {
	tb.Helper()
	start := time.Now()
	nc.SetReadDeadline(start.Add(limit))
	var b [4096]byte
	for {
		_, err := nc.Read(b[:])
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			tb.Fatalf("the target kept the connection open for %v", limit)
		}
		return time.Since(start)
	}
}

// A peer that connects and says nothing, dribbles an ICReq, stops after the
// ICReq, or stops in the middle of a capsule is cut off by the handshake
// and stall timeouts; a host that is merely idle between PDUs is not.
func TestStalledPeersAreCutOff(t *testing.T) {
	const handshake, stall = 300 * time.Millisecond, 300 * time.Millisecond
	tt := startTarget(t, Config{HandshakeTimeout: handshake, StallTimeout: stall})
	base := runtime.NumGoroutine()

	dial := func() net.Conn {
		nc, err := net.DialTimeout("tcp", tt.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		return nc
	}
	icreq := make([]byte, wire.ICReqLen)
	wire.ICReq(icreq).Encode(&wire.ICReqFields{})

	t.Run("silent", func(t *testing.T) {
		nc := dial()
		if d := closedWithin(t, nc, 5*time.Second); d < handshake/2 {
			t.Errorf("closed after %v, before the handshake timeout %v", d, handshake)
		}
	})
	t.Run("dribbled ICReq", func(t *testing.T) {
		nc := dial()
		stop := make(chan struct{})
		go func() {
			// One byte every 50 ms: progress, but never the whole ICReq
			// within the handshake timeout.
			for i := 0; i < len(icreq); i++ {
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
				if _, err := nc.Write(icreq[i : i+1]); err != nil {
					return
				}
			}
		}()
		defer close(stop)
		closedWithin(t, nc, 5*time.Second)
	})
	t.Run("ICReq then nothing", func(t *testing.T) {
		nc := dial()
		nc.Write(icreq)
		closedWithin(t, nc, 5*time.Second)
	})
	t.Run("half a capsule after Connect", func(t *testing.T) {
		c := dialClient(t, tt.addr, clientOpts{})
		must(t, "connect", c.connect(0, 31, 0, nvme.CntlIDDynamic, testSubNQN, testHostNQN))
		var b [wire.MaxHeaderBuf]byte
		encodeCapsule(b[:], &nvme.SQEFields{Opcode: nvme.AdminKeepAlive, Flags: nvme.FlagsPSDTSGL, CID: 9})
		hdr := c.tx.Seal(b[:], 0)
		c.wmu.Lock()
		c.nc.Write(hdr[:len(hdr)/2])
		c.wmu.Unlock()
		start := time.Now()
		select {
		case <-c.stopped:
		case <-time.After(5 * time.Second):
			t.Fatal("the target kept a connection with half a PDU open")
		}
		if d := time.Since(start); d < stall/2 {
			t.Errorf("cut off after %v, before the stall timeout %v", d, stall)
		}
	})
	t.Run("dribbled capsule", func(t *testing.T) {
		c := dialClient(t, tt.addr, clientOpts{})
		must(t, "connect", c.connect(0, 31, 0, nvme.CntlIDDynamic, testSubNQN, testHostNQN))
		var b [wire.MaxHeaderBuf]byte
		encodeCapsule(b[:], &nvme.SQEFields{Opcode: nvme.AdminKeepAlive, Flags: nvme.FlagsPSDTSGL, CID: 9})
		hdr := c.tx.Seal(b[:], 0)
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			for i := 0; i < len(hdr)-1; i++ {
				select {
				case <-stop:
					return
				case <-time.After(stall / 4):
				}
				c.wmu.Lock()
				_, err := c.nc.Write(hdr[i : i+1])
				c.wmu.Unlock()
				if err != nil {
					return
				}
			}
		}()
		select {
		case <-c.stopped:
		case <-time.After(5 * time.Second):
			t.Fatal("the target kept a connection dribbling a PDU open")
		}
	})
	t.Run("idle connected host stays", func(t *testing.T) {
		s := openSession(t, tt.addr, clientOpts{}, testHostNQN, 1, 31)
		time.Sleep(3 * max(handshake, stall))
		must(t, "read after idling", s.io[0].read(1, 0, make([]byte, 4096), 512))
		_, r := s.admin.identify(nvme.CNSController, 0)
		must(t, "identify after idling", r)
		s.io[0].Close()
		s.admin.Close()
	})
	waitGoroutines(t, base, "after the stalled peers")
	tt.mu.Lock()
	n := len(tt.conns)
	tt.mu.Unlock()
	if n != 0 {
		t.Errorf("%d connections left", n)
	}
}

// A listener that fails with EMFILE (no file descriptors left) does not stop
// the target: it backs off and accepts again.
func TestServeSurvivesAcceptErrors(t *testing.T) {
	tt := startTarget(t, Config{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl := &failingListener{Listener: ln, fails: 5}
	go tt.Serve(fl)
	c := dialClient(t, ln.Addr().String(), clientOpts{})
	must(t, "connect after EMFILE", c.connect(0, 31, 0, nvme.CntlIDDynamic, testSubNQN, testHostNQN))
	select {
	case err := <-tt.serve:
		t.Fatalf("the first Serve returned: %v", err)
	default:
	}
}

// failingListener fails its first Accepts with EMFILE, as a process out of
// file descriptors does.
type failingListener struct {
	net.Listener
	fails int
}

func (l *failingListener) Accept() (net.Conn, error) {
	if l.fails > 0 {
		l.fails--
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// A host that sends reads and never reads what comes back costs the target
// its connection once the socket buffers are full and the stall timeout has
// passed: the writer does not block forever, and the command buffers are
// given back.
func TestNonReadingHostIsCutOff(t *testing.T) {
	const stall = 300 * time.Millisecond
	tt := startTarget(t, Config{StallTimeout: stall})
	admin := dialClient(t, tt.addr, clientOpts{})
	cntlid := admin.adminSession(t, testSubNQN, testHostNQN, 0)
	must(t, "number of queues", admin.features(true, nvme.FeatNumQueues, nvme.NumQueuesValue(1, 1)))

	nc, rd, _ := rawConn(t, tt.addr)
	var b [wire.MaxHeaderBuf]byte
	var sqe [nvme.SQELen]byte
	nvme.SQE(sqe[:]).EncodeConnect(&nvme.ConnectFields{QID: 1, SQSize: 31})
	f := sqeFields(sqe[:])
	f.CID = 1
	cdata := make([]byte, nvme.ConnectDataLen)
	nvme.ConnectData(cdata).Encode(&nvme.ConnectDataFields{HostID: testHostID, CntlID: cntlid, SubNQN: testSubNQN, HostNQN: testHostNQN})
	encodeCapsule(b[:], &f)
	var none wire.Params
	if _, err := (&net.Buffers{none.Seal(b[:], len(cdata)), cdata}).WriteTo(nc); err != nil {
		t.Fatal(err)
	}
	h, l, err := rd.Next()
	if err != nil || l.Type != wire.TypeCapsuleResp || !wire.CapsuleResp(h).CQE().Status().Success() {
		t.Fatalf("I/O queue connect: %v %v", l.Type, err)
	}
	tt.mu.Lock()
	conns := len(tt.conns)
	tt.mu.Unlock()

	// 32 reads of 1 MiB: far more than loopback buffers.
	var out []byte
	for cid := uint16(0); cid < 32; cid++ {
		rf := rwFields(nvme.IORead, 1, uint64(cid)*2048%32768, 2048, 1<<20, false)
		rf.CID = cid + 100
		encodeCapsule(b[:], &rf)
		out = append(out, none.Seal(b[:], 0)...)
	}
	if _, err := nc.Write(out); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		tt.mu.Lock()
		n := len(tt.conns)
		tt.mu.Unlock()
		if n < conns {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a host that does not read kept its connection for 10 s (stall timeout %v)", stall)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The admin queue is not affected.
	_, r := admin.identify(nvme.CNSController, 0)
	must(t, "identify on the admin queue", r)
}
