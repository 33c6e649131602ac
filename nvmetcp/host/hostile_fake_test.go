package host

import (
	"bytes"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
	"github.com/nvmefs/nvmefs/nvmetcp/wire"
)

// A controller that breaks the protocol costs the queue's association (error
// recovery), never a wrong byte delivered or written outside a buffer: the
// command is issued again on the new association and succeeds.
func TestFakeHostileController(t *testing.T) {
	c2h := func(cid uint16, off, n int, fl wire.Flags) func(b []byte) {
		return func(b []byte) {
			wire.DataHeader(b).Encode(&wire.DataFields{Type: wire.TypeC2HData, Flags: fl, CCCID: cid, DataOffset: uint32(off), DataLen: uint32(n)})
		}
	}
	r2t := func(cid uint16, off, n int) func(b []byte) {
		return func(b []byte) {
			wire.R2T(b).Encode(&wire.R2TFields{CCCID: cid, TTag: 1, Offset: uint32(off), Len: uint32(n)})
		}
	}
	junk := bytes.Repeat([]byte{0xee}, 8192)
	for _, tc := range []struct {
		name  string
		write bool
		do    func(fc *fakeConn, sqe nvme.SQE)
	}{
		{"C2HData beyond the buffer", false, func(fc *fakeConn, sqe nvme.SQE) {
			fc.sendPDU(c2h(sqe.CID(), 4096, 4096, wire.FlagLast), junk[:4096])
		}},
		{"C2HData out of order", false, func(fc *fakeConn, sqe nvme.SQE) {
			fc.sendPDU(c2h(sqe.CID(), 512, 512, 0), junk[:512])
		}},
		{"C2HData longer than the read", false, func(fc *fakeConn, sqe nvme.SQE) {
			fc.sendPDU(c2h(sqe.CID(), 0, 8192, wire.FlagLast), junk)
		}},
		{"C2HData for an unknown command", false, func(fc *fakeConn, sqe nvme.SQE) {
			fc.sendPDU(c2h(sqe.CID()^0x0400, 0, 4096, wire.FlagLast), junk[:4096])
		}},
		{"SUCCESS before all data", false, func(fc *fakeConn, sqe nvme.SQE) {
			fc.sendPDU(c2h(sqe.CID(), 0, 2048, wire.FlagLast|wire.FlagSuccess), junk[:2048])
		}},
		{"success response without data", false, func(fc *fakeConn, sqe nvme.SQE) {
			fc.respond(sqe.CID(), 0, 0)
		}},
		{"R2T for a read", false, func(fc *fakeConn, sqe nvme.SQE) {
			fc.sendPDU(r2t(sqe.CID(), 0, 4096), nil)
		}},
		{"a response after SUCCESS", false, func(fc *fakeConn, sqe nvme.SQE) {
			// The right data, then a response for the finished command.
			data := fc.ft.ns[1].data[sqe.SLBA()*512:][:4096]
			fc.sendPDU(c2h(sqe.CID(), 0, 4096, wire.FlagLast|wire.FlagSuccess), data)
			fc.respond(sqe.CID(), 0, 0)
		}},
		{"R2T beyond the write", true, func(fc *fakeConn, sqe nvme.SQE) {
			fc.sendPDU(r2t(sqe.CID(), 32<<10, 64<<10), nil)
		}},
		{"second R2T while one is outstanding", true, func(fc *fakeConn, sqe nvme.SQE) {
			fc.sendPDU(r2t(sqe.CID(), 0, 4096), nil)
			fc.sendPDU(r2t(sqe.CID(), 4096, 4096), nil)
		}},
		{"C2HData for a write", true, func(fc *fakeConn, sqe nvme.SQE) {
			fc.sendPDU(c2h(sqe.CID(), 0, 4096, wire.FlagLast), junk[:4096])
		}},
		{"a second ICResp", false, func(fc *fakeConn, sqe nvme.SQE) {
			var b [wire.ICRespLen]byte
			wire.ICResp(b[:]).Encode(&wire.ICRespFields{MaxH2CData: 4096})
			fc.send(b[:])
		}},
		{"garbage", false, func(fc *fakeConn, sqe nvme.SQE) {
			fc.send(bytes.Repeat([]byte{0x07, 0xff, 0x18, 0xff}, 64))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ft := newFakeTarget(t, fakeConfig{nsSizes: []int{1 << 20}, ioccsz: 4})
			o := testOpts()
			o.NrIOQueues = 1
			o.ReconnectDelay = 50 * time.Millisecond
			c := connectT(t, ft.Addr(), ft.cfg.nqn, o)
			want := ft.fill(1)
			ctx := testCtx(t, 10*time.Second)
			f := tc.do
			ft.misbehave.Store(&f)
			if tc.write {
				w := make([]byte, 32<<10)
				fillPattern(w, 99<<32)
				if err := c.Write(ctx, 1, 8, w); err != nil {
					t.Fatalf("write: %v", err)
				}
				copy(want[8*512:], w)
			} else {
				got := make([]byte, 4096)
				if err := c.Read(ctx, 1, 8, got); err != nil {
					t.Fatalf("read: %v", err)
				}
				if !bytes.Equal(got, want[8*512:8*512+4096]) {
					t.Fatal("read delivered wrong data")
				}
			}
			// (A late answer may start recovery after the command ended.)
			deadline := time.Now().Add(2 * time.Second)
			for c.Stats().Recoveries == 0 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if s := c.Stats(); s.Recoveries != 1 {
				t.Errorf("recoveries %d, want 1", s.Recoveries)
			}
			got := make([]byte, 64<<10)
			if err := c.Read(ctx, 1, 0, got); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want[:64<<10]) {
				t.Fatal("namespace differs")
			}
		})
	}
}
