package tests

import (
	"bytes"
	"encoding/binary"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
	"github.com/nvmefs/nvmefs/nvmetcp/target"
	"github.com/nvmefs/nvmefs/nvmetcp/wire"
)

// The namespace of the attacked target: 8 MiB of the harness pattern in a
// file. The well-behaved host owns [goodLBA, goodLBA+goodBlocks); the
// attacks aim at the rest, and none of them may change a byte of it.
const (
	hostileNSSize = 8 << 20
	hostileBlocks = hostileNSSize / 512
	goodLBA       = 4096 // 2 MiB
	goodBlocks    = 4096 // 2 MiB
)

// Scripted attacks against an `nvmefs serve` process while a well-behaved
// host (nvmetcp/host) reads and writes its own region and checks every
// byte: each attack costs the attacker its connection at most, the target
// process stays up, its file descriptors come back to their idle count
// after each scenario, the well-behaved host keeps going, and at the end
// the backing file holds the pattern everywhere but in the well-behaved
// host's region, which holds exactly what it wrote.
func TestHostileHosts(t *testing.T) {
	dir := t.TempDir()
	backing := filepath.Join(dir, "ns1")
	writePatternFile(t, backing, hostileNSSize, 1)
	var img bytes.Buffer
	if err := writePattern(&img, hostileNSSize, 1); err != nil {
		t.Fatal(err)
	}
	want := img.Bytes()

	srv := startServe(t, "--nqn", hostileNQN, "--ns", backing)
	good := startGoodHost(t, srv.Addr, goodHostOptions(goodHostNQN, goodHostID), goodLBA, want[goodLBA*512:(goodLBA+goodBlocks)*512])
	good.alive(t, "start")
	idle := srv.usage(t)
	t.Logf("serve idle with the well-behaved host connected: %s", idle)

	// Each attack runs on fresh connections of a raw host with its own
	// controller (admin queue + I/O queue 1), cntlid from adminFor.
	adminFor := func(t *testing.T) (*rawPeer, *rawPeer) {
		admin := dialRaw(t, srv.Addr)
		cntlid := admin.adminSession(rawHostNQN, rawHostID, 1)
		io := dialRaw(t, srv.Addr)
		io.ioQueue(1, cntlid)
		return admin, io
	}
	expectTerm := func(t *testing.T, r *rawPeer, fes wire.FES) {
		t.Helper()
		if got := r.terminated(); got != fes {
			t.Errorf("C2HTermReq FES %v, want %v", got, fes)
		}
	}
	data := func(n int) []byte { return bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, n/4) }
	attacks := 0
	scenario := func(name string, f func(t *testing.T)) {
		attacks++
		t.Run(name, func(t *testing.T) {
			// The attack's connections are closed by its cleanups, when
			// this inner test ends.
			t.Run("attack", f)
			good.alive(t, name)
			srv.waitIdle(t, idle, name)
		})
	}

	// ---- truncated PDUs: the connection ends, nothing is executed ----
	scenario("truncated ICReq", func(t *testing.T) {
		r := dialRaw(t, srv.Addr)
		b := make([]byte, wire.ICReqLen)
		wire.ICReq(b).Encode(&wire.ICReqFields{})
		r.write(b[:40])
		r.nc.Close()
	})
	scenario("truncated capsule header", func(t *testing.T) {
		_, io := adminFor(t)
		c := io.capsuleBytes(rwSQE(nvme.IOWrite, 1, 0, 8, 4096, true), data(4096))
		io.write(c[:50])
		io.nc.Close()
	})
	scenario("truncated in-capsule data", func(t *testing.T) {
		_, io := adminFor(t)
		c := io.capsuleBytes(rwSQE(nvme.IOWrite, 1, 0, 8, 4096, true), data(4096))
		io.write(c[:len(c)-1000])
		io.nc.Close()
	})
	scenario("truncated H2CData", func(t *testing.T) {
		_, io := adminFor(t)
		io.write(io.capsuleBytes(rwSQE(nvme.IOWrite, 1, 0, 16, 8192, false), nil))
		typ, h, err := io.next()
		if err != nil || typ != wire.TypeR2T {
			t.Fatalf("want an R2T, got %v %v", typ, err)
		}
		r2t := wire.R2T(h)
		var b [wire.MaxHeaderBuf]byte
		wire.DataHeader(b[:]).Encode(&wire.DataFields{Type: wire.TypeH2CData, Flags: wire.FlagLast, CCCID: 1, TTag: r2t.TTag(), DataLen: 8192})
		io.write(io.tx.Seal(b[:], 8192), data(4096))
		io.nc.Close()
	})

	// ---- lengths and offsets out of range ----
	scenario("read and write beyond the namespace", func(t *testing.T) {
		_, io := adminFor(t)
		for i, f := range []nvme.SQEFields{
			rwSQE(nvme.IORead, 1, hostileBlocks, 1, 512, false),
			rwSQE(nvme.IORead, 2, hostileBlocks-1, 2, 1024, false),
			rwSQE(nvme.IORead, 3, 1<<64-1, 1, 512, false),
			rwSQE(nvme.IOWrite, 4, hostileBlocks-1, 2, 1024, true),
			{Opcode: nvme.IOWriteZeroes, Flags: nvme.FlagsPSDTSGL, CID: 5, NSID: 1, CDW10: hostileBlocks - 4, CDW12: 7},
		} {
			var in []byte
			if f.Opcode == nvme.IOWrite {
				in = data(1024)
			}
			if st, _ := io.command(f, in); st.Code() != nvme.StatusLBAOutOfRange.Code() {
				t.Errorf("command %d: status %v, want LBA out of range", i, st)
			}
		}
		// The queue still works.
		if st, _ := io.command(rwSQE(nvme.IORead, 6, 0, 8, 4096, false), nil); !st.Success() {
			t.Errorf("read after the errors: %v", st)
		}
	})
	scenario("transfer beyond MDTS and SGL lengths that lie", func(t *testing.T) {
		_, io := adminFor(t)
		if st, _ := io.command(rwSQE(nvme.IORead, 1, 0, 4096, 2<<20, false), nil); st.Code() != nvme.StatusInvalidField.Code() {
			t.Errorf("2 MiB read: %v, want invalid field", st)
		}
		if st, _ := io.command(rwSQE(nvme.IORead, 2, 0, 2, 512, false), nil); st.Code() != nvme.StatusDataSGLLengthInvalid.Code() {
			t.Errorf("SGL shorter than NLB: %v", st)
		}
		if st, _ := io.command(rwSQE(nvme.IOWrite, 3, 0, 2, 1024, true), data(512)); st.Code() != nvme.StatusDataSGLLengthInvalid.Code() {
			t.Errorf("in-capsule data shorter than the SGL: %v", st)
		}
	})
	scenario("deallocate with a range inside and one outside", func(t *testing.T) {
		_, io := adminFor(t)
		// The first range is the well-behaved host's region: nothing may be
		// deallocated when any range is out of bounds.
		r := make([]byte, 32)
		binary.LittleEndian.PutUint32(r[4:], 64)
		binary.LittleEndian.PutUint64(r[8:], goodLBA)
		binary.LittleEndian.PutUint32(r[20:], 8)
		binary.LittleEndian.PutUint64(r[24:], hostileBlocks-4)
		f := nvme.SQEFields{Opcode: nvme.IODatasetMgmt, Flags: nvme.FlagsPSDTSGL, CID: 1, NSID: 1, CDW10: 1, CDW11: 4,
			DPTR: nvme.SGLFields{Length: 32, ID: nvme.SGLInCapsule}}
		if st, _ := io.command(f, r); st.Code() != nvme.StatusLBAOutOfRange.Code() {
			t.Errorf("DSM: %v, want LBA out of range", st)
		}
	})
	scenario("in-capsule data beyond IOCCSZ", func(t *testing.T) {
		_, io := adminFor(t)
		io.write(io.capsuleBytes(rwSQE(nvme.IOWrite, 1, 0, 64, 32<<10, true), data(32<<10)))
		expectTerm(t, io, wire.FESLimitExceeded)
	})
	scenario("oversized PLEN", func(t *testing.T) {
		_, io := adminFor(t)
		before := srv.usage(t)
		c := io.capsuleBytes(rwSQE(nvme.IOWrite, 1, 0, 8, 4096, true), data(4096))
		binary.LittleEndian.PutUint32(c[4:], 0xffffffff)
		io.write(c)
		expectTerm(t, io, wire.FESLimitExceeded)
		if after := srv.usage(t); after.RSSKiB > before.RSSKiB+64<<10 {
			t.Errorf("resident memory grew from %d to %d MiB", before.RSSKiB>>10, after.RSSKiB>>10)
		}
	})
	scenario("PLEN shorter than the header", func(t *testing.T) {
		_, io := adminFor(t)
		c := io.capsuleBytes(rwSQE(nvme.IORead, 1, 0, 8, 4096, false), nil)
		binary.LittleEndian.PutUint32(c[4:], 8)
		io.write(c)
		expectTerm(t, io, wire.FESInvalidHeader)
	})

	// ---- data that belongs to no command, or to more than was asked ----
	scenario("H2CData for an unknown command id", func(t *testing.T) {
		_, io := adminFor(t)
		var b [wire.MaxHeaderBuf]byte
		wire.DataHeader(b[:]).Encode(&wire.DataFields{Type: wire.TypeH2CData, Flags: wire.FlagLast, CCCID: 77, TTag: 1, DataLen: 4096})
		io.write(io.tx.Seal(b[:], 4096), data(4096))
		expectTerm(t, io, wire.FESInvalidHeader)
	})
	h2cAfterR2T := func(t *testing.T, off, n uint32, ttagDelta uint16) *rawPeer {
		_, io := adminFor(t)
		io.write(io.capsuleBytes(rwSQE(nvme.IOWrite, 1, 0, 8, 4096, false), nil))
		typ, h, err := io.next()
		if err != nil || typ != wire.TypeR2T {
			t.Fatalf("want an R2T, got %v %v", typ, err)
		}
		r2t := wire.R2T(h)
		var b [wire.MaxHeaderBuf]byte
		wire.DataHeader(b[:]).Encode(&wire.DataFields{Type: wire.TypeH2CData, Flags: wire.FlagLast, CCCID: 1, TTag: r2t.TTag() + ttagDelta, DataOffset: off, DataLen: n})
		io.write(io.tx.Seal(b[:], int(n)), data(int(n)))
		return io
	}
	scenario("H2CData beyond the R2T", func(t *testing.T) {
		expectTerm(t, h2cAfterR2T(t, 0, 8192, 0), wire.FESOutOfRange)
	})
	scenario("H2CData at an offset the R2T did not ask for", func(t *testing.T) {
		expectTerm(t, h2cAfterR2T(t, 512, 512, 0), wire.FESOutOfRange)
	})
	scenario("H2CData with a transfer tag of no R2T", func(t *testing.T) {
		expectTerm(t, h2cAfterR2T(t, 0, 4096, 5), wire.FESInvalidHeader)
	})
	scenario("H2CData beyond MAXH2CDATA", func(t *testing.T) {
		expectTerm(t, h2cAfterR2T(t, 0, target.DefaultMaxH2CData+4096, 0), wire.FESLimitExceeded)
	})
	scenario("command id in use and more commands than the queue holds", func(t *testing.T) {
		_, io := adminFor(t)
		// A write waiting for its data keeps cid 1 busy.
		io.write(io.capsuleBytes(rwSQE(nvme.IOWrite, 1, 0, 8, 4096, false), nil))
		io.write(io.capsuleBytes(rwSQE(nvme.IORead, 1, 0, 8, 4096, false), nil))
		expectTerm(t, io, wire.FESInvalidHeader)

		_, io = adminFor(t)
		var out []byte
		for cid := uint16(0); cid < 40; cid++ { // the queue holds 32
			out = append(out, io.capsuleBytes(rwSQE(nvme.IOWrite, cid, uint64(cid), 1, 512, false), nil)...)
		}
		io.write(out)
		expectTerm(t, io, wire.FESSequence)
	})

	// ---- slow-loris: peers that hold a connection by sending too little ----
	t.Run("slow peers", func(t *testing.T) {
		attacks += 5
		limit := target.DefaultHandshakeTimeout + 5*time.Second
		t.Run("silent", func(t *testing.T) {
			t.Parallel()
			if d := dialRaw(t, srv.Addr).closedWithin(limit); d < target.DefaultHandshakeTimeout/2 {
				t.Errorf("closed after %v", d)
			}
		})
		t.Run("ICReq dribbled a byte a second", func(t *testing.T) {
			t.Parallel()
			r := dialRaw(t, srv.Addr)
			b := make([]byte, wire.ICReqLen)
			wire.ICReq(b).Encode(&wire.ICReqFields{})
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range b {
					select {
					case <-stop:
						return
					case <-time.After(time.Second):
					}
					if r.write(b[i:i+1]) != nil {
						return
					}
				}
			}()
			r.closedWithin(limit)
			close(stop)
			wg.Wait()
		})
		t.Run("ICReq then no Connect", func(t *testing.T) {
			t.Parallel()
			r := dialRaw(t, srv.Addr)
			r.icReq()
			r.closedWithin(limit)
		})
		t.Run("capsule dribbled after Connect", func(t *testing.T) {
			t.Parallel()
			_, io := adminFor(t)
			c := io.capsuleBytes(rwSQE(nvme.IORead, 1, 0, 8, 4096, false), nil)
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range c {
					select {
					case <-stop:
						return
					case <-time.After(time.Second):
					}
					if io.write(c[i:i+1]) != nil {
						return
					}
				}
			}()
			io.closedWithin(target.DefaultStallTimeout + 5*time.Second)
			close(stop)
			wg.Wait()
		})
		t.Run("host that stops reading", func(t *testing.T) {
			t.Parallel()
			_, io := adminFor(t)
			// A small receive buffer: 32 MiB of reads fill it whatever
			// the machine's TCP buffer sizes.
			io.nc.(*net.TCPConn).SetReadBuffer(64 << 10)
			var out []byte
			for cid := uint16(0); cid < 32; cid++ {
				out = append(out, io.capsuleBytes(rwSQE(nvme.IORead, cid, 0, 2048, 1<<20, false), nil)...)
			}
			io.write(out)
			// Read nothing: the target's writes stall once the socket
			// buffers are full, and it must give up on us.
			time.Sleep(target.DefaultStallTimeout + 5*time.Second)
			// Whatever is in our receive buffer, the connection must
			// have ended by now.
			io.closedWithin(5 * time.Second)
		})
	})
	good.alive(t, "slow peers")
	srv.waitIdle(t, idle, "slow peers")

	// ---- thousands of connections ----
	t.Run("2000 connections held", func(t *testing.T) {
		attacks++
		conns := floodConns(t, srv.Addr, 2000)
		time.Sleep(time.Second)
		u := srv.usage(t)
		t.Logf("serve with %d connections open: %s", len(conns), u)
		good.alive(t, "2000 connections held")
		for _, c := range conns {
			c.Close()
		}
		good.alive(t, "2000 connections closed")
		srv.waitIdle(t, idle, "2000 connections closed")
	})
	t.Run("2000 connections against 256 file descriptors", func(t *testing.T) {
		attacks++
		// Lower serve's file descriptor limit: accepting fails with
		// EMFILE, which must not stop it.
		var old unix.Rlimit
		lim := unix.Rlimit{Cur: 256, Max: 256}
		if err := unix.Prlimit(srv.pid(), unix.RLIMIT_NOFILE, &lim, &old); err != nil {
			t.Skipf("prlimit: %v", err)
		}
		defer unix.Prlimit(srv.pid(), unix.RLIMIT_NOFILE, &old, nil)
		conns := floodConns(t, srv.Addr, 2000)
		time.Sleep(2 * time.Second)
		u := srv.usage(t)
		t.Logf("serve with %d connections offered, limit 256: %s", len(conns), u)
		if u.FDs > 256 {
			t.Errorf("%d fds open with a limit of 256", u.FDs)
		}
		good.alive(t, "2000 connections, 256 fds")
		for _, c := range conns {
			c.Close()
		}
		srv.waitIdle(t, idle, "2000 connections against 256 fds, closed")
		// New hosts get in again.
		if err := icReqHandshake(srv.Addr, 5*time.Second); err != nil {
			t.Errorf("a new connection after the flood: %v", err)
		}
		if log := srv.Log(); !bytes.Contains([]byte(log), []byte("too many open files")) {
			t.Logf("note: serve logged no EMFILE (accept kept up?)")
		}
	})
	t.Run("1000 controllers created and dropped", func(t *testing.T) {
		attacks++
		for i := 0; i < 1000; i++ {
			r := dialRaw(t, srv.Addr)
			switch i % 3 {
			case 0:
				// Gone in the middle of a Connect whose data comes
				// through an R2T.
				r.icReq()
				var sqe [nvme.SQELen]byte
				nvme.SQE(sqe[:]).EncodeConnect(&nvme.ConnectFields{SQSize: 31})
				f := sqeFieldsOf(sqe)
				f.DPTR = nvme.SGLFields{Length: nvme.ConnectDataLen, ID: nvme.SGLTransportData}
				r.write(r.capsuleBytes(f, nil))
				if typ, _, err := r.next(); err != nil || typ != wire.TypeR2T {
					t.Fatalf("connect %d: want an R2T, got %v %v", i, typ, err)
				}
			case 1:
				r.icReq()
				if st, _ := r.connect(0, nvme.CntlIDDynamic, hostileNQN, rawHostNQN, rawHostID); !st.Success() {
					t.Fatalf("connect %d: %v", i, st)
				}
			case 2:
				// Gone with an Asynchronous Event Request held.
				r.adminSession(rawHostNQN, rawHostID, 1)
				r.write(r.capsuleBytes(nvme.SQEFields{Opcode: nvme.AdminAsyncEvent, Flags: nvme.FlagsPSDTSGL, CID: 9}, nil))
			}
			r.nc.Close()
		}
		good.alive(t, "1000 controllers")
		srv.waitIdle(t, idle, "1000 controllers")
	})

	good.stop(t)
	srv.Stop(t)
	got, err := os.ReadFile(backing)
	if err != nil {
		t.Fatal(err)
	}
	copy(want[goodLBA*512:], good.model)
	if !bytes.Equal(got, want) {
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("the backing file differs from the expected image first at byte %d (block %d)", i, i/512)
			}
		}
	}
	t.Logf("%d attack scenarios; the backing file holds exactly the pattern and the well-behaved host's writes", attacks)
}

// floodConns opens n TCP connections to addr (127.0.0.1) that send nothing;
// they are closed at the end of the test if not before.
func floodConns(t *testing.T, addr string, n int) []net.Conn {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < uint64(n)+256 {
		t.Skipf("this process may open %d files, the flood needs %d", lim.Cur, n+256)
	}
	conns := make([]net.Conn, 0, n)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for len(conns) < n {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("connection %d: %v", len(conns), err)
		}
		conns = append(conns, c)
	}
	return conns
}
