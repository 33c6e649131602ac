package host

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
	"github.com/nvmefs/nvmefs/nvmetcp/wire"
)

var updateCorpus = flag.Bool("update-corpus", false, "rewrite the seed corpus in testdata/fuzz")

// A FuzzHostQueue input is a mode byte and what the controller sends in
// answer to the host's first I/O command. The mode byte:
//
//	bit 0:    the command is a write (else a read)
//	bit 1:    header digests; bit 2: data digests (both sides)
//	bit 3:    seal: the bytes are walked as PDUs (by PLEN) and given correct
//	          digests where their flags announce some, so that mutations get
//	          past the digest checks
//	bit 6:    the command moves 32 KiB (else 4 KiB)
//	bits 4, 5 and 7 all set: the controller then keeps the connection open
//	          and silent (the host must time the command out); otherwise it
//	          closes it. Rare on purpose: each costs an I/O timeout.
const (
	hfuzzWrite = 0x01
	hfuzzHDGST = 0x02
	hfuzzDDGST = 0x04
	hfuzzSeal  = 0x08
	hfuzzHold  = 0xb0
	hfuzzLarge = 0x40

	// hfuzzCID is the command id of the host's first I/O command on a
	// fresh controller with one I/O queue: tag 1 (the queue's Connect
	// took tag 0), generation 1.
	hfuzzCID = 1<<tagBits | 1
	// hfuzzLBA is where the command reads or writes.
	hfuzzLBA = 16
	// hfuzzGuard bytes on each side of a read buffer must stay untouched.
	hfuzzGuard = 4096
	// hfuzzIOTimeout is the host's I/O timeout: what a silent controller
	// costs an input.
	hfuzzIOTimeout = 300 * time.Millisecond
)

func hfuzzLen(mode uint8) int {
	if mode&hfuzzLarge != 0 {
		return 32 << 10
	}
	return 4096
}

func hfuzzParams(mode uint8) wire.Params {
	return wire.Params{HeaderDigest: mode&hfuzzHDGST != 0, DataDigest: mode&hfuzzDDGST != 0}
}

// runHostFuzz connects a Controller to a fresh fake controller that answers
// the first I/O command with the input's bytes, and checks: no panic, the
// command ends (done, failed with an NVMe status, or issued again after
// error recovery) well within a bound, nothing is written outside a read's
// buffer or into a write's, the namespace holds the old or the new data of a
// write and nothing else, the controller serves correct data afterwards,
// and everything is given back on Close.
func runHostFuzz(t *testing.T, data []byte) {
	if len(data) == 0 {
		return
	}
	base := runtime.NumGoroutine()
	mode := data[0]
	stream := append([]byte(nil), data[1:]...)
	if mode&hfuzzSeal != 0 {
		sealStream(stream, hfuzzParams(mode))
	}

	ft := newFakeTarget(t, fakeConfig{nsSizes: []int{1 << 20}, ioccsz: 4, mqes: 32, maxH2CData: 8192})
	truth := ft.fill(1)
	o := testOpts()
	o.NrIOQueues = 1
	o.QueueSize = 8
	o.HeaderDigest, o.DataDigest = mode&hfuzzHDGST != 0, mode&hfuzzDDGST != 0
	o.IOTimeout = hfuzzIOTimeout
	o.ReconnectDelay = time.Millisecond
	o.KeepAliveTmo = -1
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := Connect(ctx, ft.Addr(), ft.cfg.nqn, o)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	defer c.Close()

	hook := func(fc *fakeConn, sqe nvme.SQE) {
		if sqe.CID() != hfuzzCID {
			t.Errorf("the first I/O command has cid %#x, the seeds assume %#x", sqe.CID(), hfuzzCID)
		}
		fc.send(stream)
		if mode&hfuzzHold != hfuzzHold {
			fc.c.Close()
		}
	}
	ft.misbehave.Store(&hook)

	n := hfuzzLen(mode)
	region := truth[hfuzzLBA*512 : hfuzzLBA*512+n]
	opCtx, opCancel := context.WithTimeout(ctx, 10*time.Second)
	defer opCancel()
	if mode&hfuzzWrite != 0 {
		w := make([]byte, n)
		fillPattern(w, 0x5eed<<32)
		keep := append([]byte(nil), w...)
		err = c.Write(opCtx, 1, hfuzzLBA, w)
		checkOpErr(t, "write", err)
		if !bytes.Equal(w, keep) {
			t.Fatal("the host wrote into a write's buffer")
		}
		ft.ns[1].mu.Lock()
		got := append([]byte(nil), ft.ns[1].data[hfuzzLBA*512:hfuzzLBA*512+n]...)
		ft.ns[1].mu.Unlock()
		switch {
		case bytes.Equal(got, keep):
			copy(truth[hfuzzLBA*512:], keep)
		case bytes.Equal(got, region):
		default:
			t.Fatal("the namespace holds neither the old nor the new data of the write")
		}
	} else {
		big := make([]byte, hfuzzGuard+n+hfuzzGuard)
		for i := range big {
			big[i] = 0xa5
		}
		buf := big[hfuzzGuard : hfuzzGuard+n] // its capacity reaches into the guard after it
		err = c.Read(opCtx, 1, hfuzzLBA, buf)
		checkOpErr(t, "read", err)
		for i, b := range append(big[:hfuzzGuard:hfuzzGuard], big[hfuzzGuard+n:]...) {
			if b != 0xa5 {
				t.Fatalf("byte %d of the guards around a read's buffer changed", i)
			}
		}
		// Which data a read that completed holds cannot be judged: a
		// controller that lies is believed. What its bytes cannot do is
		// reach outside the buffer, nor leave the host unable to read
		// the truth afterwards.
	}

	// Whatever happened, the controller now reads what the namespace holds.
	got := make([]byte, 64<<10)
	if err := c.Read(ctx, 1, 0, got); err != nil {
		t.Fatalf("read after the input: %v", err)
	}
	if !bytes.Equal(got, truth[:len(got)]) {
		t.Fatal("read after the input: wrong data")
	}
	if err := c.Close(); err != nil && !errors.Is(err, ErrClosed) {
		t.Logf("close: %v", err)
	}
	ft.Close()
	deadline := time.Now().Add(5 * time.Second)
	for delay := 50 * time.Microsecond; runtime.NumGoroutine() > base; delay = min(2*delay, 10*time.Millisecond) {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines after Close, %d before\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(delay)
	}
}

// checkOpErr accepts success or an NVMe status (a controller may fail a
// command); anything else (a timeout of the caller's context, a lost
// controller) means the host did not recover.
func checkOpErr(t *testing.T, what string, err error) {
	t.Helper()
	var st nvme.Status
	if err != nil && !errors.As(err, &st) {
		t.Fatalf("%s: %v, want success or an NVMe status", what, err)
	}
}

// sealStream walks b as a sequence of PDUs (by PLEN) and fills in the
// header and data digests that their flags announce, where they fit.
func sealStream(b []byte, p wire.Params) {
	for off := 0; off+wire.CommonHeaderLen <= len(b); {
		h := wire.Header(b[off:])
		plen, hlen, pdo := int(h.PLen()), h.HLen(), h.PDO()
		if plen < wire.CommonHeaderLen || plen > len(b)-off {
			return
		}
		pdu := b[off : off+plen]
		if p.HeaderDigest && h.Flags()&wire.FlagHDGST != 0 && hlen >= wire.CommonHeaderLen && hlen+wire.DigestLen <= plen {
			binary.LittleEndian.PutUint32(pdu[hlen:], wire.HeaderDigest(pdu[:hlen]))
		}
		if p.DataDigest && h.Flags()&wire.FlagDDGST != 0 && pdo > 0 && pdo+wire.DigestLen < plen {
			wire.PutDigest(pdu[plen-wire.DigestLen:], wire.DataDigest(pdu[pdo:plen-wire.DigestLen]))
		}
		off += plen
	}
}

// hostStream builds what a controller sends, for the seeds.
type hostStream struct {
	p wire.Params
	b []byte
}

func (s *hostStream) pdu(hdr, data []byte) {
	s.b = append(s.b, hdr...)
	if len(data) > 0 {
		s.b = append(s.b, data...)
		if s.p.DataDigest {
			var d [wire.DigestLen]byte
			wire.PutDigest(d[:], wire.DataDigest(data))
			s.b = append(s.b, d[:]...)
		}
	}
}

func (s *hostStream) c2h(cid uint16, off int, data []byte, fl wire.Flags) {
	var b [wire.MaxHeaderBuf]byte
	wire.DataHeader(b[:]).Encode(&wire.DataFields{Type: wire.TypeC2HData, Flags: fl, CCCID: cid, DataOffset: uint32(off), DataLen: uint32(len(data))})
	s.pdu(s.p.Seal(b[:], len(data)), data)
}

func (s *hostStream) resp(cid uint16, st nvme.Status) {
	var b [wire.MaxHeaderBuf]byte
	wire.CapsuleResp(b[:]).Encode(&nvme.CQEFields{CID: cid, Status: st, SQID: 1})
	s.pdu(s.p.Seal(b[:], 0), nil)
}

func (s *hostStream) r2t(cid, ttag uint16, off, n int) {
	var b [wire.MaxHeaderBuf]byte
	wire.R2T(b[:]).Encode(&wire.R2TFields{CCCID: cid, TTag: ttag, Offset: uint32(off), Len: uint32(n)})
	s.pdu(s.p.Seal(b[:], 0), nil)
}

func (s *hostStream) raw(b []byte) { s.b = append(s.b, b...) }

type hostSeed struct {
	name string
	mode uint8
	data []byte
}

// hostSeeds are honest answers and the classic attacks on a host.
func hostSeeds() []hostSeed {
	var seeds []hostSeed
	add := func(name string, mode uint8, build func(s *hostStream, n int)) {
		s := &hostStream{p: hfuzzParams(mode)}
		build(s, hfuzzLen(mode))
		seeds = append(seeds, hostSeed{name, mode, s.b})
	}
	junk := func(n int) []byte { return bytes.Repeat([]byte("hostile!"), n/8+1)[:n] }
	const cid = hfuzzCID

	add("read-honest", 0, func(s *hostStream, n int) {
		s.c2h(cid, 0, junk(n), wire.FlagLast)
		s.resp(cid, 0)
	})
	add("read-success-flag-two-pdus-digests", hfuzzHDGST|hfuzzDDGST|hfuzzSeal|hfuzzLarge, func(s *hostStream, n int) {
		s.c2h(cid, 0, junk(n/2), 0)
		s.c2h(cid, n/2, junk(n/2), wire.FlagLast|wire.FlagSuccess)
	})
	add("read-error-status", 0, func(s *hostStream, n int) {
		s.resp(cid, nvme.StatusLBAOutOfRange|nvme.StatusDNR)
	})
	add("read-c2h-beyond-buffer", 0, func(s *hostStream, n int) {
		s.c2h(cid, n-512, junk(1024), wire.FlagLast)
		s.resp(cid, 0)
	})
	add("read-c2h-offset-overflow", 0, func(s *hostStream, n int) {
		s.c2h(cid, 0xfffff000, junk(512), wire.FlagLast)
	})
	add("read-c2h-unknown-cid", 0, func(s *hostStream, n int) {
		s.c2h(cid^0x0400, 0, junk(n), wire.FlagLast)
	})
	add("read-c2h-out-of-order", hfuzzLarge, func(s *hostStream, n int) {
		s.c2h(cid, 4096, junk(4096), 0)
		s.c2h(cid, 0, junk(4096), 0)
	})
	add("read-c2h-huge-plen", 0, func(s *hostStream, n int) {
		var b [wire.MaxHeaderBuf]byte
		wire.DataHeader(b[:]).Encode(&wire.DataFields{Type: wire.TypeC2HData, Flags: wire.FlagLast, CCCID: cid, DataLen: 0xffffff00})
		h := s.p.Seal(b[:], 0xffffff00)
		s.raw(h)
		s.raw(junk(4096))
	})
	add("read-success-before-all-data", hfuzzLarge, func(s *hostStream, n int) {
		s.c2h(cid, 0, junk(4096), wire.FlagLast|wire.FlagSuccess)
	})
	add("read-response-twice", 0, func(s *hostStream, n int) {
		s.c2h(cid, 0, junk(n), wire.FlagLast)
		s.resp(cid, 0)
		s.resp(cid, 0)
	})
	add("read-r2t", 0, func(s *hostStream, n int) {
		s.r2t(cid, 1, 0, n)
	})
	add("read-truncated-then-silent", hfuzzHold, func(s *hostStream, n int) {
		s.c2h(cid, 0, junk(n), wire.FlagLast)
		s.b = s.b[:len(s.b)-100]
	})
	add("read-silent", hfuzzHold, func(s *hostStream, n int) {})
	add("read-termreq", 0, func(s *hostStream, n int) {
		var b [wire.MaxHeaderBuf]byte
		wire.TermReq(b[:]).Encode(&wire.TermReqFields{Type: wire.TypeC2HTermReq, FES: wire.FESInvalidHeader, FEI: 2})
		var none wire.Params
		s.raw(none.Seal(b[:], 0))
	})
	add("read-icresp-again", 0, func(s *hostStream, n int) {
		b := make([]byte, wire.ICRespLen)
		wire.ICResp(b).Encode(&wire.ICRespFields{MaxH2CData: 4096})
		s.raw(b)
	})
	add("read-garbage", 0, func(s *hostStream, n int) {
		s.raw(bytes.Repeat([]byte{0x07, 0xff, 0x18, 0xff}, 64))
	})
	add("read-bad-data-digest", hfuzzDDGST, func(s *hostStream, n int) {
		s.c2h(cid, 0, junk(n), wire.FlagLast)
		s.b[len(s.b)-1] ^= 0xff
		s.resp(cid, 0)
	})
	add("write-honest-r2t", hfuzzWrite|hfuzzLarge, func(s *hostStream, n int) {
		s.r2t(cid, 7, 0, 8192)
	})
	add("write-r2t-beyond-transfer", hfuzzWrite, func(s *hostStream, n int) {
		s.r2t(cid, 7, n-512, 4096)
	})
	add("write-r2t-offset-overflow", hfuzzWrite, func(s *hostStream, n int) {
		s.r2t(cid, 7, 0xfffffe00, 0x1000)
	})
	add("write-second-r2t", hfuzzWrite|hfuzzLarge, func(s *hostStream, n int) {
		s.r2t(cid, 7, 0, 4096)
		s.r2t(cid, 8, 4096, 4096)
	})
	add("write-response-before-data", hfuzzWrite|hfuzzLarge, func(s *hostStream, n int) {
		s.r2t(cid, 7, 0, n)
		s.resp(cid, 0)
	})
	add("write-c2h", hfuzzWrite, func(s *hostStream, n int) {
		s.c2h(cid, 0, junk(n), wire.FlagLast)
	})
	add("write-success-without-data", hfuzzWrite, func(s *hostStream, n int) {
		s.resp(cid, 0)
	})
	add("write-r2t-header-digest", hfuzzWrite|hfuzzHDGST|hfuzzSeal, func(s *hostStream, n int) {
		s.r2t(cid, 7, 0, n)
	})
	return seeds
}

func (s hostSeed) corpusFile() []byte {
	return fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", append([]byte{s.mode}, s.data...))
}

// TestFuzzHostCorpus keeps testdata/fuzz/FuzzHostQueue in step with
// hostSeeds (go test -run TestFuzzHostCorpus -update-corpus rewrites it).
func TestFuzzHostCorpus(t *testing.T) {
	for _, s := range hostSeeds() {
		path := filepath.Join("testdata", "fuzz", "FuzzHostQueue", "seed-"+s.name)
		want := s.corpusFile()
		if *updateCorpus {
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, want, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s is missing or stale (go test -run TestFuzzHostCorpus -update-corpus): %v", path, err)
		}
	}
}

// FuzzHostQueue: a controller that completes ICResp and Connect like any
// other, then answers the host's first I/O command with arbitrary bytes,
// over real loopback TCP. See runHostFuzz for what must hold.
//
//	go test ./nvmetcp/host -run '^$' -fuzz FuzzHostQueue -fuzztime 3m -fuzzminimizetime 20x
func FuzzHostQueue(f *testing.F) {
	f.Fuzz(runHostFuzz)
}
