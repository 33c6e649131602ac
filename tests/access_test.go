package tests

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/nvmetcp/host"
	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
)

const (
	// strangerNQN is not on the target's --allow-host list.
	strangerNQN = "nqn.2014-08.org.nvmexpress:uuid:73747261-0000-4000-8000-000000000003"
)

var strangerID = [16]byte{0x73, 0x74, 3}

// Access control of `nvmefs serve --allow-host`: a host not on the list
// can neither connect to the subsystem nor see it in the discovery log, and
// a Connect that names an unknown subsystem, a controller the host does not
// own or a queue beyond what was granted is refused with the NVMe status
// (and Connect DW0) the specification gives, seen by our host library and by
// a scripted host. The allowed well-behaved host keeps working throughout,
// and serve's file descriptors come back to idle after each scenario.
func TestAccessControl(t *testing.T) {
	backing := t.TempDir() + "/ns1"
	writePatternFile(t, backing, hostileNSSize, 1)
	initial := make([]byte, goodBlocks*512)
	for s := 0; s < goodBlocks; s++ {
		fillPatternSector(initial[s*512:], uint64(goodLBA+s), 1)
	}
	srv := startServe(t, "--nqn", hostileNQN, "--ns", backing, "--allow-host", goodHostNQN, "--allow-host", rawHostNQN)
	good := startGoodHost(t, srv.Addr, goodHostOptions(goodHostNQN, goodHostID), goodLBA, initial)
	goodCntlID := good.c.Info().CntlID
	good.alive(t, "start")
	idle := srv.usage(t)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	wantStatus := func(t *testing.T, what string, err error, want nvme.Status) {
		t.Helper()
		var st nvme.Status
		if !errors.As(err, &st) {
			t.Fatalf("%s: %v, want NVMe status %v", what, err, want)
		}
		if st.Code() != want.Code() {
			t.Fatalf("%s: status %v, want %v", what, st, want)
		}
		if !st.DNR() {
			t.Errorf("%s: status %v without Do Not Retry", what, st)
		}
	}
	wantRaw := func(t *testing.T, what string, st nvme.Status, dw0 uint64, want nvme.Status, wantDW0 uint64) {
		t.Helper()
		if st.Code() != want.Code() || !st.DNR() {
			t.Errorf("%s: status %v, want %v with DNR", what, st, want)
		}
		if dw0 != wantDW0 {
			t.Errorf("%s: DW0 %#x, want %#x (IATTR<<16 | IPO)", what, dw0, wantDW0)
		}
	}
	scenarios := 0
	scenario := func(name string, f func(t *testing.T)) {
		scenarios++
		t.Run(name, func(t *testing.T) {
			t.Run("attempt", f)
			good.alive(t, name)
			srv.waitIdle(t, idle, name)
		})
	}
	strangerOpts := goodHostOptions(strangerNQN, strangerID)

	scenario("host not on the list cannot connect", func(t *testing.T) {
		c, err := host.Connect(ctx, srv.Addr, hostileNQN, strangerOpts)
		if err == nil {
			c.Close()
			t.Fatal("a host not on --allow-host connected")
		}
		wantStatus(t, "connect", err, nvme.StatusConnectInvalidHost)
		if !strings.Contains(srv.Log(), strangerNQN) {
			t.Errorf("serve did not log the refused host %s", strangerNQN)
		}
		// Nor with a scripted host, nor by naming the allowed host's
		// controller for an I/O queue.
		r := dialRaw(t, srv.Addr)
		r.icReq()
		st, dw0 := r.connect(0, nvme.CntlIDDynamic, hostileNQN, strangerNQN, strangerID)
		wantRaw(t, "admin connect", st, dw0, nvme.StatusConnectInvalidHost, 1<<16|512)
		r = dialRaw(t, srv.Addr)
		r.icReq()
		st, dw0 = r.connect(1, goodCntlID, hostileNQN, strangerNQN, strangerID)
		wantRaw(t, "I/O connect to another host's controller", st, dw0, nvme.StatusConnectInvalidHost, 1<<16|512)
	})
	scenario("discovery shows nothing to a host not on the list", func(t *testing.T) {
		ents, err := host.Discover(ctx, srv.Addr, strangerOpts)
		if err != nil {
			t.Fatalf("discover as a stranger: %v", err)
		}
		if len(ents) != 0 {
			t.Errorf("a host not on --allow-host discovers %d records: %+v", len(ents), ents)
		}
		ents, err = host.Discover(ctx, srv.Addr, goodHostOptions(goodHostNQN, goodHostID))
		if err != nil {
			t.Fatalf("discover as an allowed host: %v", err)
		}
		if len(ents) != 1 || ents[0].SubNQN != hostileNQN || ents[0].ServiceID != srv.Addr[strings.LastIndexByte(srv.Addr, ':')+1:] {
			t.Errorf("an allowed host discovers %+v, want one record of %s at port %d", ents, hostileNQN, srv.Port)
		}
	})
	scenario("unknown subsystem NQN", func(t *testing.T) {
		_, err := host.Connect(ctx, srv.Addr, "nqn.2026-01.io.nvmefs:no-such-subsystem", goodHostOptions(goodHostNQN, goodHostID))
		wantStatus(t, "connect", err, nvme.StatusConnectInvalidParam)
		r := dialRaw(t, srv.Addr)
		r.icReq()
		st, dw0 := r.connect(0, nvme.CntlIDDynamic, "nqn.2026-01.io.nvmefs:no-such-subsystem", rawHostNQN, rawHostID)
		wantRaw(t, "raw connect", st, dw0, nvme.StatusConnectInvalidParam, 1<<16|256) // SUBNQN, in the data
	})
	scenario("controller id the host does not own", func(t *testing.T) {
		// An allowed host naming the well-behaved host's controller.
		r := dialRaw(t, srv.Addr)
		r.icReq()
		st, dw0 := r.connect(1, goodCntlID, hostileNQN, rawHostNQN, rawHostID)
		wantRaw(t, "another allowed host's controller", st, dw0, nvme.StatusConnectInvalidParam, 1<<16|16) // CNTLID
		// The right host NQN with another host ID is another host.
		r = dialRaw(t, srv.Addr)
		r.icReq()
		st, dw0 = r.connect(1, goodCntlID, hostileNQN, goodHostNQN, rawHostID)
		wantRaw(t, "the controller's host NQN with another host ID", st, dw0, nvme.StatusConnectInvalidParam, 1<<16|16)
		// A controller id nobody has.
		r = dialRaw(t, srv.Addr)
		r.icReq()
		st, dw0 = r.connect(1, 0xfffe, hostileNQN, rawHostNQN, rawHostID)
		wantRaw(t, "a controller id nobody has", st, dw0, nvme.StatusConnectInvalidParam, 1<<16|16)
		// A static controller id on the admin queue.
		r = dialRaw(t, srv.Addr)
		r.icReq()
		st, dw0 = r.connect(0, goodCntlID, hostileNQN, rawHostNQN, rawHostID)
		wantRaw(t, "an admin queue naming a controller", st, dw0, nvme.StatusConnectInvalidParam, 1<<16|16)
	})
	scenario("queue beyond what was granted", func(t *testing.T) {
		admin := dialRaw(t, srv.Addr)
		cntlid := admin.adminSession(rawHostNQN, rawHostID, 2) // 2 I/O queues granted
		for _, qid := range []uint16{3, 64, 0xffff} {
			r := dialRaw(t, srv.Addr)
			r.icReq()
			st, dw0 := r.connect(qid, cntlid, hostileNQN, rawHostNQN, rawHostID)
			wantRaw(t, "qid beyond the grant", st, dw0, nvme.StatusConnectInvalidParam, 42) // QID, in the SQE
		}
		// Granted queues connect, once each.
		q1 := dialRaw(t, srv.Addr)
		q1.ioQueue(1, cntlid)
		r := dialRaw(t, srv.Addr)
		r.icReq()
		st, dw0 := r.connect(1, cntlid, hostileNQN, rawHostNQN, rawHostID)
		wantRaw(t, "qid already connected", st, dw0, nvme.StatusConnectInvalidParam, 42)
		if st, _ := q1.command(rwSQE(nvme.IORead, 1, 0, 8, 4096, false), nil); !st.Success() {
			t.Errorf("read on the granted queue: %v", st)
		}
	})
	t.Logf("%d access scenarios", scenarios)
}
