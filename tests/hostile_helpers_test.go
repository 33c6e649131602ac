package tests

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/nvmetcp/host"
	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
	"github.com/nvmefs/nvmefs/nvmetcp/wire"
)

// Helpers of the hostile-peer tests (hostile_*_test.go, access_test.go):
// what /proc says about a process we started, a raw scripted NVMe/TCP host,
// and a well-behaved host that checks every byte it reads.

const (
	hostileNQN = "nqn.2026-01.io.nvmefs:hostile"
	// goodHostNQN is the well-behaved host's identity.
	goodHostNQN = "nqn.2014-08.org.nvmexpress:uuid:6f6f6467-0000-4000-8000-000000000001"
	rawHostNQN  = "nqn.2014-08.org.nvmexpress:uuid:72617700-0000-4000-8000-000000000002"
)

var (
	goodHostID = [16]byte{0x67, 0x6f, 0x6f, 0x64, 1}
	rawHostID  = [16]byte{0x72, 0x61, 0x77, 2}
)

// procUsage is what /proc/PID says about a process this test started.
type procUsage struct {
	FDs, Threads int
	RSSKiB       int64
}

func (u procUsage) String() string {
	return fmt.Sprintf("%d fds, %d threads, %d MiB resident", u.FDs, u.Threads, u.RSSKiB>>10)
}

func readProcUsage(pid int) (procUsage, error) {
	var u procUsage
	ents, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "fd"))
	if err != nil {
		return u, err
	}
	u.FDs = len(ents)
	status, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return u, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		switch k {
		case "Threads":
			u.Threads, _ = strconv.Atoi(f[0])
		case "VmRSS":
			u.RSSKiB, _ = strconv.ParseInt(f[0], 10, 64)
		}
	}
	return u, nil
}

func (p *serveProc) pid() int { return p.cmd.Process.Pid }

// usage reads the serve process's /proc usage; it fails the test if the
// process is gone.
func (p *serveProc) usage(t testing.TB) procUsage {
	t.Helper()
	select {
	case <-p.exited:
		t.Fatalf("nvmefs serve (pid %d) died: %v; log:\n%s", p.pid(), p.waitErr, p.Log())
	default:
	}
	u, err := readProcUsage(p.pid())
	if err != nil {
		t.Fatalf("/proc of nvmefs serve (pid %d): %v", p.pid(), err)
	}
	return u
}

// Bounds on the serve process after a scenario: its file descriptors come
// back to the idle count, and the Go runtime, which keeps the threads it
// made, has not made many.
const (
	resourceSettle = 20 * time.Second
	threadBound    = 64
)

// waitIdle waits until serve's fd count is back to idle.FDs and checks its
// threads; it returns what it saw last.
func (p *serveProc) waitIdle(t testing.TB, idle procUsage, what string) procUsage {
	t.Helper()
	deadline := time.Now().Add(resourceSettle)
	for {
		u := p.usage(t)
		if u.FDs <= idle.FDs {
			if u.Threads > threadBound {
				t.Errorf("%s: serve has %d threads (idle %d), more than %d", what, u.Threads, idle.Threads, threadBound)
			}
			return u
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: serve still has %s %v later, idle was %s", what, u, resourceSettle, idle)
			return u
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// rawPeer is a scripted NVMe/TCP host: it sends exactly what a test says
// and reads what comes back, PDU by PDU.
type rawPeer struct {
	t  testing.TB
	nc net.Conn
	tx wire.Params // what it sends
	rx wire.Params // what it accepts
	rd *wire.Reader
}

func dialRaw(t testing.TB, addr string) *rawPeer {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { nc.Close() })
	r := &rawPeer{t: t, nc: nc, rx: wire.Params{MaxData: 16 << 20}}
	r.rd = wire.NewReader(nc, wire.ToHost, &r.rx)
	return r
}

func (r *rawPeer) write(b ...[]byte) error {
	r.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	bufs := net.Buffers(b)
	_, err := bufs.WriteTo(r.nc)
	return err
}

// icReq sends an ICReq and checks the ICResp.
func (r *rawPeer) icReq() {
	r.t.Helper()
	b := make([]byte, wire.ICReqLen)
	wire.ICReq(b).Encode(&wire.ICReqFields{MaxR2T: 0})
	if err := r.write(b); err != nil {
		r.t.Fatalf("ICReq: %v", err)
	}
	if typ, _, err := r.next(); err != nil || typ != wire.TypeICResp {
		r.t.Fatalf("ICResp: got %v, %v", typ, err)
	}
}

// next reads one PDU: its type, a copy of its header and its data (which
// must be small).
func (r *rawPeer) next() (wire.Type, wire.Header, error) {
	r.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	h, l, err := r.rd.Next()
	if err != nil {
		return 0, nil, err
	}
	hdr := append(wire.Header(nil), h...)
	if l.DataLen > 0 {
		if err := r.rd.Discard(); err != nil {
			return l.Type, hdr, err
		}
	}
	return l.Type, hdr, nil
}

// capsuleBytes encodes a command capsule with in-capsule data.
func (r *rawPeer) capsuleBytes(f nvme.SQEFields, data []byte) []byte {
	var b [wire.MaxHeaderBuf]byte
	wire.CapsuleCmd(b[:]).Encode().Encode(&f)
	return append(append([]byte(nil), r.tx.Seal(b[:], len(data))...), data...)
}

// command sends a capsule and returns the CQE of its response, skipping
// the data and R2Ts that come before it.
func (r *rawPeer) command(f nvme.SQEFields, data []byte) (nvme.Status, uint64) {
	r.t.Helper()
	if err := r.write(r.capsuleBytes(f, data)); err != nil {
		r.t.Fatalf("capsule: %v", err)
	}
	for {
		typ, h, err := r.next()
		if err != nil {
			r.t.Fatalf("waiting for the response to opcode %#x cid %d: %v", f.Opcode, f.CID, err)
		}
		if typ == wire.TypeCapsuleResp {
			cqe := wire.CapsuleResp(h).CQE()
			if cqe.CID() != f.CID {
				r.t.Fatalf("response for cid %d, want %d", cqe.CID(), f.CID)
			}
			return cqe.Status(), cqe.Result()
		}
		if typ == wire.TypeC2HTermReq {
			r.t.Fatalf("C2HTermReq %v instead of a response", wire.FES(wire.TermReq(h).FES()))
		}
	}
}

// connect sends a Fabrics Connect and returns its status and DW0.
func (r *rawPeer) connect(qid, cntlid uint16, subNQN, hostNQN string, hostID [16]byte) (nvme.Status, uint64) {
	r.t.Helper()
	var sqe [nvme.SQELen]byte
	nvme.SQE(sqe[:]).EncodeConnect(&nvme.ConnectFields{QID: qid, SQSize: 31})
	f := sqeFieldsOf(sqe)
	f.CID = 0x7001
	data := make([]byte, nvme.ConnectDataLen)
	nvme.ConnectData(data).Encode(&nvme.ConnectDataFields{HostID: hostID, CntlID: cntlid, SubNQN: subNQN, HostNQN: hostNQN})
	return r.command(f, data)
}

// adminSession connects an admin queue for hostNQN, enables the controller,
// asks for queues I/O queues and returns the controller id.
func (r *rawPeer) adminSession(hostNQN string, hostID [16]byte, queues int) uint16 {
	r.t.Helper()
	r.icReq()
	st, res := r.connect(0, nvme.CntlIDDynamic, hostileNQN, hostNQN, hostID)
	if !st.Success() {
		r.t.Fatalf("admin connect: %v", st)
	}
	var sqe [nvme.SQELen]byte
	nvme.SQE(sqe[:]).EncodeProperty(&nvme.PropertyFields{Set: true, Offset: nvme.PropCC, Value: nvme.CCEnable | 6<<16 | 4<<20})
	f := sqeFieldsOf(sqe)
	f.CID = 1
	if st, _ := r.command(f, nil); !st.Success() {
		r.t.Fatalf("CC.EN: %v", st)
	}
	for deadline := time.Now().Add(5 * time.Second); ; {
		nvme.SQE(sqe[:]).EncodeProperty(&nvme.PropertyFields{Offset: nvme.PropCSTS})
		f = sqeFieldsOf(sqe)
		f.CID = 2
		if st, v := r.command(f, nil); st.Success() && v&nvme.CSTSReady != 0 {
			break
		}
		if time.Now().After(deadline) {
			r.t.Fatal("CSTS.RDY not set")
		}
		time.Sleep(5 * time.Millisecond)
	}
	nvme.SQE(sqe[:]).EncodeFeatures(&nvme.FeaturesFields{Set: true, FID: nvme.FeatNumQueues, Value: nvme.NumQueuesValue(queues, queues)})
	f = sqeFieldsOf(sqe)
	f.CID = 3
	if st, _ := r.command(f, nil); !st.Success() {
		r.t.Fatalf("number of queues: %v", st)
	}
	return uint16(res)
}

// ioQueue connects an I/O queue of controller cntlid for the raw host.
func (r *rawPeer) ioQueue(qid, cntlid uint16) {
	r.t.Helper()
	r.icReq()
	if st, _ := r.connect(qid, cntlid, hostileNQN, rawHostNQN, rawHostID); !st.Success() {
		r.t.Fatalf("I/O queue %d connect: %v", qid, st)
	}
}

// terminated waits for a C2HTermReq and the end of the connection, and
// returns the TermReq's FES (0 if the connection ended without one).
func (r *rawPeer) terminated() wire.FES {
	r.t.Helper()
	var fes wire.FES
	for {
		typ, h, err := r.next()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || isReset(err) {
				return fes
			}
			r.t.Fatalf("waiting for the target to end the connection: %v", err)
		}
		if typ == wire.TypeC2HTermReq {
			fes = wire.FES(wire.TermReq(h).FES())
		}
	}
}

func isReset(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "broken pipe"))
}

// closedWithin reads what the target sends until it closes the connection
// and returns how long that took; after limit it fails the test.
func (r *rawPeer) closedWithin(limit time.Duration) time.Duration {
	r.t.Helper()
	start := time.Now()
	r.nc.SetReadDeadline(start.Add(limit))
	_, err := io.Copy(io.Discard, r.nc)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		r.t.Fatalf("the target kept the connection open for %v", limit)
	}
	return time.Since(start)
}

func sqeFieldsOf(sqe [nvme.SQELen]byte) nvme.SQEFields {
	s := nvme.SQE(sqe[:])
	d := s.DPTR()
	return nvme.SQEFields{
		Opcode: s.Opcode(), Flags: s.Flags(), CID: s.CID(), NSID: s.NSID(),
		DPTR:  nvme.SGLFields{Address: d.Address(), Length: d.Length(), ID: d.ID()},
		CDW10: s.CDW(10), CDW11: s.CDW(11), CDW12: s.CDW(12), CDW13: s.CDW(13), CDW14: s.CDW(14), CDW15: s.CDW(15),
	}
}

// rwSQE is a Read or Write of nlb 512-byte blocks at slba with a transport
// (R2T/C2HData) or in-capsule SGL of n bytes.
func rwSQE(op uint8, cid uint16, slba uint64, nlb uint32, n int, inCapsule bool) nvme.SQEFields {
	sgl := nvme.SGLFields{Length: uint32(n), ID: nvme.SGLTransportData}
	if inCapsule {
		sgl.ID = nvme.SGLInCapsule
	}
	return nvme.SQEFields{Opcode: op, Flags: nvme.FlagsPSDTSGL, CID: cid, NSID: 1, DPTR: sgl,
		CDW10: uint32(slba), CDW11: uint32(slba >> 32), CDW12: nlb - 1}
}

// goodHost is a well-behaved host (nvmetcp/host) that writes and reads back
// its own region of namespace 1 without pause, checking every byte against
// a model, while the attacks go on.
type goodHost struct {
	c        *host.Controller
	lba      uint64 // first block of its region
	blocks   int
	model    []byte
	cancel   context.CancelFunc
	done     chan struct{}
	mu       sync.Mutex
	err      error
	ops      atomic.Int64
	verified atomic.Int64 // bytes read back and compared
}

// goodHostOptions are the options of a well-behaved host: a 5 s I/O
// timeout, quick reconnects.
func goodHostOptions(hostNQN string, hostID [16]byte) host.Options {
	return host.Options{
		HostNQN: hostNQN, HostID: hostID,
		NrIOQueues: 2, QueueSize: 32,
		IOTimeout: 5 * time.Second, ReconnectDelay: 200 * time.Millisecond, CtrlLossTmo: 60 * time.Second,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

// startGoodHost connects and starts the loop on [lba, lba+blocks) of
// namespace 1, whose current content is initial.
func startGoodHost(t testing.TB, addr string, opts host.Options, lba uint64, initial []byte) *goodHost {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := host.Connect(ctx, addr, hostileNQN, opts)
	if err != nil {
		t.Fatalf("good host: connect: %v", err)
	}
	g := &goodHost{c: c, lba: lba, blocks: len(initial) / 512, model: append([]byte(nil), initial...), done: make(chan struct{})}
	var lctx context.Context
	lctx, g.cancel = context.WithCancel(context.Background())
	go g.loop(lctx)
	t.Cleanup(func() { g.stop(t) })
	return g
}

func (g *goodHost) fail(err error) {
	g.mu.Lock()
	if g.err == nil {
		g.err = err
	}
	g.mu.Unlock()
}

func (g *goodHost) failed() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err
}

// loop writes a random run of blocks, reads back a random run, and checks
// it against the model, until ctx ends or something is wrong.
func (g *goodHost) loop(ctx context.Context) {
	defer close(g.done)
	rnd := rand.New(rand.NewPCG(42, 7))
	for i := 0; ctx.Err() == nil; i++ {
		n := 1 + rnd.IntN(64)
		first := rnd.IntN(g.blocks - n + 1)
		span := g.model[first*512 : (first+n)*512]
		opCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		if i%2 == 0 {
			buf := make([]byte, len(span))
			for j := range buf {
				buf[j] = byte(rnd.Uint32())
			}
			if err := g.c.Write(opCtx, 1, g.lba+uint64(first), buf); err != nil {
				cancel()
				if ctx.Err() == nil {
					g.fail(fmt.Errorf("write of blocks [%d, +%d): %w", first, n, err))
				}
				return
			}
			copy(span, buf)
		} else {
			buf := make([]byte, len(span))
			if err := g.c.Read(opCtx, 1, g.lba+uint64(first), buf); err != nil {
				cancel()
				if ctx.Err() == nil {
					g.fail(fmt.Errorf("read of blocks [%d, +%d): %w", first, n, err))
				}
				return
			}
			if !bytes.Equal(buf, span) {
				cancel()
				g.fail(fmt.Errorf("read of blocks [%d, +%d) returned wrong data", first, n))
				return
			}
			g.verified.Add(int64(len(buf)))
		}
		cancel()
		g.ops.Add(1)
		// Leave the machine's two CPUs to the target and the attacks.
		time.Sleep(time.Millisecond)
	}
}

// alive checks that the host is still making progress with correct data.
func (g *goodHost) alive(t testing.TB, what string) {
	t.Helper()
	start := g.ops.Load()
	deadline := time.Now().Add(15 * time.Second)
	for g.ops.Load() < start+10 {
		if err := g.failed(); err != nil {
			t.Fatalf("%s: the well-behaved host failed: %v", what, err)
		}
		select {
		case <-g.done:
			t.Fatalf("%s: the well-behaved host stopped: %v", what, g.failed())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: the well-behaved host made no progress for 15 s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stop ends the loop, reads the whole region back against the model and
// closes the controller.
func (g *goodHost) stop(t testing.TB) {
	t.Helper()
	if g.cancel == nil {
		return
	}
	g.cancel()
	g.cancel = nil
	<-g.done
	defer g.c.Close()
	if err := g.failed(); err != nil {
		t.Errorf("the well-behaved host failed: %v", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	buf := make([]byte, len(g.model))
	if err := g.c.Read(ctx, 1, g.lba, buf); err != nil {
		t.Errorf("the well-behaved host's final read: %v", err)
		return
	}
	if !bytes.Equal(buf, g.model) {
		t.Errorf("the well-behaved host's region differs from its model at the end")
		return
	}
	g.verified.Add(int64(len(buf)))
	t.Logf("well-behaved host: %d operations, %d MiB read back and verified", g.ops.Load(), g.verified.Load()>>20)
}
