package target

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
	"github.com/nvmefs/nvmefs/nvmetcp/target/store"
	"github.com/nvmefs/nvmefs/nvmetcp/wire"
)

var updateCorpus = flag.Bool("update-corpus", false, "rewrite the seed corpus in testdata/fuzz")

// A fuzz input is a mode byte and the bytes a host sends. The mode byte:
//
//	bits 0-1: what the harness sends first, and waits to be answered:
//	          0 nothing, 1 ICReq, 2 ICReq + admin Connect + CC.EN,
//	          3 ICReq + I/O queue Connect (qid 1) to a controller the
//	          harness set up on another connection
//	bit 2:    the ICReq asks for header digests
//	bit 3:    the ICReq asks for data digests
//	bit 4:    seal: the harness walks the bytes as PDUs (by PLEN) and
//	          writes correct digests where they claim to have some, so that
//	          mutations get past the digest checks
const (
	fuzzPrefixMask = 0x03
	fuzzHDGST      = 0x04
	fuzzDDGST      = 0x08
	fuzzSeal       = 0x10

	fuzzPrefixNone  = 0
	fuzzPrefixICReq = 1
	fuzzPrefixAdmin = 2
	fuzzPrefixIO    = 3

	fuzzIOQueueDepth = 32
	fuzzConnectCID   = 0x7777
)

// The fuzzed target's limits: small, so that whatever the bytes ask, its
// memory stays well under fuzzHeapLimit.
var fuzzConfig = Config{
	SubsystemNQN:     testSubNQN,
	MaxTransfer:      64 << 10,
	InCapsuleSize:    8 << 10,
	MaxH2CData:       8 << 10,
	R2TSize:          4096,
	MaxQueueSize:     64,
	MaxIOQueues:      2,
	HandshakeTimeout: 2 * time.Second,
	StallTimeout:     2 * time.Second,
	TermLinger:       100 * time.Millisecond,
}

// fuzzHeapLimit bounds the live heap of the fuzzing process after any input.
const fuzzHeapLimit = 256 << 20

// rangeCheckedStore records any access the target makes outside the store:
// the target must check ranges before it calls the store.
type rangeCheckedStore struct {
	store.Store
	mu  sync.Mutex
	bad []string
}

func (s *rangeCheckedStore) check(op string, off, n int64) {
	if off < 0 || n < 0 || off > s.Size() || n > s.Size()-off {
		s.mu.Lock()
		s.bad = append(s.bad, fmt.Sprintf("%s [%d, +%d) of a %d-byte namespace", op, off, n, s.Size()))
		s.mu.Unlock()
	}
}

func (s *rangeCheckedStore) ReadAt(p []byte, off int64) (int, error) {
	s.check("read", off, int64(len(p)))
	return s.Store.ReadAt(p, off)
}

func (s *rangeCheckedStore) WriteAt(p []byte, off int64) (int, error) {
	s.check("write", off, int64(len(p)))
	return s.Store.WriteAt(p, off)
}

func (s *rangeCheckedStore) Deallocate(off, n int64) error {
	s.check("deallocate", off, n)
	return s.Store.Deallocate(off, n)
}

func (s *rangeCheckedStore) WriteZeroes(off, n int64) error {
	s.check("write zeroes", off, n)
	return s.Store.WriteZeroes(off, n)
}

func (s *rangeCheckedStore) violations() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.bad...)
}

// targetFuzzer is one target, shared by the inputs a fuzzing process runs,
// and a bystander host session that must keep working whatever they do.
type targetFuzzer struct {
	tt        *testTarget
	ns        []*rangeCheckedStore
	bystander *ioSession
	baseConns int
	checks    int
}

func newTargetFuzzer(tb testing.TB) *targetFuzzer {
	fz := &targetFuzzer{}
	cfg := fuzzConfig
	for _, spec := range []string{"mem:1M", "mem:64K"} {
		st := &rangeCheckedStore{Store: mustMem(tb, spec)}
		// A known pattern, so that a read that comes back is checked
		// against the store, not against zeros.
		b := pattern(int(st.Size()), uint64(len(fz.ns)+1))
		if _, err := st.WriteAt(b, 0); err != nil {
			tb.Fatal(err)
		}
		fz.ns = append(fz.ns, st)
		cfg.Namespaces = append(cfg.Namespaces, st)
	}
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	fz.tt = startTarget(tb, cfg)
	fz.bystander = openSession(tb, fz.tt.addr, clientOpts{}, testHostNQN2, 1, 16)
	fz.baseConns = fz.conns()
	return fz
}

func (fz *targetFuzzer) conns() int {
	fz.tt.mu.Lock()
	defer fz.tt.mu.Unlock()
	return len(fz.tt.conns)
}

// fuzzParams is what the harness and the target negotiate for mode.
func fuzzParams(mode uint8) wire.Params {
	return wire.Params{HeaderDigest: mode&fuzzHDGST != 0, DataDigest: mode&fuzzDDGST != 0, MaxData: 1 << 20}
}

// run sends one input on a fresh connection and checks that the target
// ended it cleanly, wrote nothing outside a namespace, gave everything back
// and still serves the bystander.
func (fz *targetFuzzer) run(t *testing.T, data []byte) {
	if len(data) == 0 {
		return
	}
	mode := data[0]
	p := fuzzParams(mode)
	stream := append([]byte(nil), data[1:]...)
	if mode&fuzzSeal != 0 {
		sealStream(stream, p)
	}

	var admin *client
	var cntlid uint16
	if mode&fuzzPrefixMask == fuzzPrefixIO {
		admin = dialClient(t, fz.tt.addr, clientOpts{})
		cntlid = admin.adminSession(t, testSubNQN, testHostNQN, 0)
		must(t, "number of queues", admin.features(true, nvme.FeatNumQueues, nvme.NumQueuesValue(1, 1)))
	}
	nc, err := net.DialTimeout("tcp", fz.tt.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := sendPrefix(nc, mode, p, cntlid); err != nil {
		t.Fatalf("prefix: %v", err)
	}

	// Drain what the target sends, so that it never waits on us, until it
	// closes the connection.
	closed := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, nc)
		closed <- err
	}()
	nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := nc.Write(stream); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("the target stopped reading without closing the connection")
		}
		// Closed by the target after a fatal error: fine.
	}
	nc.(*net.TCPConn).CloseWrite()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the target did not close the connection within 10 s of the host's EOF")
	}
	nc.Close()
	if admin != nil {
		admin.Close()
	}

	// Every connection of this input ends, with its goroutines.
	deadline := time.Now().Add(5 * time.Second)
	for delay := 50 * time.Microsecond; fz.conns() > fz.baseConns; delay = min(2*delay, 10*time.Millisecond) {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d connections left, want %d\n%s", fz.conns(), fz.baseConns, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(delay)
	}
	for i, ns := range fz.ns {
		if bad := ns.violations(); len(bad) > 0 {
			t.Fatalf("namespace %d accessed out of range: %s", i+1, strings.Join(bad, "; "))
		}
	}
	fz.checkBystander(t, data)
	fz.checkHeap(t)
}

// checkBystander reads a block the input selects through the bystander's
// I/O queue and compares it with the store.
func (fz *targetFuzzer) checkBystander(t *testing.T, data []byte) {
	h := fnv.New32a()
	h.Write(data)
	ns := fz.ns[0]
	lba := uint64(h.Sum32()) % uint64(ns.Size()/512-8)
	got := make([]byte, 4096)
	must(t, "bystander read", fz.bystander.io[0].read(1, lba, got, 512))
	want := make([]byte, 4096)
	if _, err := ns.Store.ReadAt(want, int64(lba)*512); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("bystander read of LBA %d differs from the namespace", lba)
	}
	fz.checks++
	if fz.checks%16 == 0 {
		_, r := fz.bystander.admin.identify(nvme.CNSController, 0)
		must(t, "bystander identify", r)
	}
}

var heapSample = []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}

func (fz *targetFuzzer) checkHeap(t *testing.T) {
	metrics.Read(heapSample)
	if v := heapSample[0].Value.Uint64(); v > fuzzHeapLimit {
		runtime.GC()
		metrics.Read(heapSample)
		if v := heapSample[0].Value.Uint64(); v > fuzzHeapLimit {
			t.Fatalf("heap of %d MiB after an input, limit %d MiB", v>>20, fuzzHeapLimit>>20)
		}
	}
}

// sendPrefix sends what the mode's prefix asks for and waits for each
// answer, so that the input starts from a known state.
func sendPrefix(nc net.Conn, mode uint8, p wire.Params, cntlid uint16) error {
	prefix := mode & fuzzPrefixMask
	if prefix == fuzzPrefixNone {
		return nil
	}
	nc.SetDeadline(time.Now().Add(5 * time.Second))
	defer nc.SetDeadline(time.Time{})
	var icreq [wire.ICReqLen]byte
	wire.ICReq(icreq[:]).Encode(&wire.ICReqFields{HeaderDigest: p.HeaderDigest, DataDigest: p.DataDigest, MaxR2T: 3})
	if _, err := nc.Write(icreq[:]); err != nil {
		return err
	}
	var rx wire.Params
	rd := wire.NewReader(nc, wire.ToHost, &rx)
	if _, l, err := rd.Next(); err != nil || l.Type != wire.TypeICResp {
		return fmt.Errorf("ICResp: %v %v", l.Type, err)
	}
	rx = p
	if prefix == fuzzPrefixICReq {
		return nil
	}
	exchange := func(b []byte) error {
		if _, err := nc.Write(b); err != nil {
			return err
		}
		h, l, err := rd.Next()
		if err != nil || l.Type != wire.TypeCapsuleResp {
			return fmt.Errorf("response: %v %v", l.Type, err)
		}
		if st := wire.CapsuleResp(h).CQE().Status(); !st.Success() {
			return st
		}
		return nil
	}
	var s fuzzStream
	s.p = p
	qid, id := uint16(0), uint16(nvme.CntlIDDynamic)
	if prefix == fuzzPrefixIO {
		qid, id = 1, cntlid
	}
	s.connect(qid, id, testHostNQN)
	if err := exchange(s.take()); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	if prefix == fuzzPrefixAdmin {
		var sqe [nvme.SQELen]byte
		nvme.SQE(sqe[:]).EncodeProperty(&nvme.PropertyFields{Set: true, Offset: nvme.PropCC, Value: nvme.CCEnable | 6<<16 | 4<<20})
		s.capsuleSQE(sqe, fuzzConnectCID, nil)
		if err := exchange(s.take()); err != nil {
			return fmt.Errorf("CC.EN: %w", err)
		}
	}
	return nil
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

// fuzzStream builds what a host sends, for the prefix and the seeds.
type fuzzStream struct {
	p wire.Params
	b []byte
}

func (s *fuzzStream) take() []byte {
	b := s.b
	s.b = nil
	return b
}

func (s *fuzzStream) pdu(hdr, data []byte) {
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

func (s *fuzzStream) capsuleSQE(sqe [nvme.SQELen]byte, cid uint16, data []byte) {
	var b [wire.MaxHeaderBuf]byte
	copy(wire.CapsuleCmd(b[:]).Encode(), sqe[:])
	nvme.SQE(wire.CapsuleCmd(b[:]).SQE()).SetCID(cid)
	s.pdu(s.p.Seal(b[:], len(data)), data)
}

func (s *fuzzStream) capsule(f nvme.SQEFields, data []byte) {
	var sqe [nvme.SQELen]byte
	nvme.SQE(sqe[:]).Encode(&f)
	s.capsuleSQE(sqe, f.CID, data)
}

func (s *fuzzStream) connect(qid, cntlid uint16, hostNQN string) {
	var sqe [nvme.SQELen]byte
	nvme.SQE(sqe[:]).EncodeConnect(&nvme.ConnectFields{QID: qid, SQSize: fuzzIOQueueDepth - 1})
	data := make([]byte, nvme.ConnectDataLen)
	nvme.ConnectData(data).Encode(&nvme.ConnectDataFields{HostID: testHostID, CntlID: cntlid, SubNQN: testSubNQN, HostNQN: hostNQN})
	s.capsuleSQE(sqe, fuzzConnectCID, data)
}

func (s *fuzzStream) h2c(cid, ttag uint16, off uint32, data []byte, last bool) {
	var b [wire.MaxHeaderBuf]byte
	var fl wire.Flags
	if last {
		fl = wire.FlagLast
	}
	wire.DataHeader(b[:]).Encode(&wire.DataFields{Type: wire.TypeH2CData, Flags: fl, CCCID: cid, TTag: ttag, DataOffset: off, DataLen: uint32(len(data))})
	s.pdu(s.p.Seal(b[:], len(data)), data)
}

func (s *fuzzStream) raw(b []byte) { s.b = append(s.b, b...) }

type targetSeed struct {
	name string
	mode uint8
	data []byte
}

// targetSeeds are well-formed sessions and the classic attacks, each from
// the prefix it needs.
func targetSeeds() []targetSeed {
	var seeds []targetSeed
	add := func(name string, mode uint8, build func(s *fuzzStream)) {
		s := &fuzzStream{p: fuzzParams(mode)}
		build(s)
		seeds = append(seeds, targetSeed{name, mode, s.take()})
	}
	read := func(cid uint16, nsid uint32, slba uint64, n int) nvme.SQEFields {
		f := rwFields(nvme.IORead, nsid, slba, uint32(n/512), n, false)
		f.CID = cid
		return f
	}
	write := func(cid uint16, nsid uint32, slba uint64, n int, inCapsule bool) nvme.SQEFields {
		f := rwFields(nvme.IOWrite, nsid, slba, uint32(n/512), n, inCapsule)
		f.CID = cid
		return f
	}
	data := func(n int) []byte { return pattern(n, uint64(n)) }
	icreq := func(f wire.ICReqFields) []byte {
		b := make([]byte, wire.ICReqLen)
		wire.ICReq(b).Encode(&f)
		return b
	}

	// No prefix: the handshake itself.
	add("icreq-connect-admin", fuzzPrefixNone, func(s *fuzzStream) {
		s.raw(icreq(wire.ICReqFields{MaxR2T: 3}))
		s.connect(0, nvme.CntlIDDynamic, testHostNQN)
	})
	add("icreq-bad-pfv", fuzzPrefixNone, func(s *fuzzStream) {
		b := icreq(wire.ICReqFields{})
		b[8] = 1
		s.raw(b)
	})
	add("icreq-hpda-31-digests", fuzzPrefixNone, func(s *fuzzStream) {
		s.raw(icreq(wire.ICReqFields{HPDA: 31, HeaderDigest: true, DataDigest: true, MaxR2T: 0xffffffff}))
	})
	add("capsule-before-icreq", fuzzPrefixNone, func(s *fuzzStream) {
		s.capsule(read(1, 1, 0, 4096), nil)
	})
	add("truncated-icreq", fuzzPrefixNone, func(s *fuzzStream) {
		s.raw(icreq(wire.ICReqFields{})[:40])
	})
	add("garbage", fuzzPrefixNone, func(s *fuzzStream) {
		s.raw(bytes.Repeat([]byte{0x04, 0xff, 0x48, 0xff, 0xff, 0xff, 0xff, 0x7f}, 16))
	})

	// After ICReq: Connect and what comes before it.
	add("connect-discovery-log", fuzzPrefixICReq, func(s *fuzzStream) {
		var sqe [nvme.SQELen]byte
		nvme.SQE(sqe[:]).EncodeConnect(&nvme.ConnectFields{SQSize: 31})
		cd := make([]byte, nvme.ConnectDataLen)
		nvme.ConnectData(cd).Encode(&nvme.ConnectDataFields{HostID: testHostID, CntlID: nvme.CntlIDDynamic, SubNQN: nvme.DiscoveryNQN, HostNQN: testHostNQN})
		s.capsuleSQE(sqe, 1, cd)
		nvme.SQE(sqe[:]).EncodeProperty(&nvme.PropertyFields{Set: true, Offset: nvme.PropCC, Value: nvme.CCEnable | 6<<16 | 4<<20})
		s.capsuleSQE(sqe, 2, nil)
		nvme.SQE(sqe[:]).EncodeGetLogPage(&nvme.GetLogPageFields{LID: nvme.LogDiscovery, Len: 4096})
		s.capsuleSQE(sqe, 3, nil)
	})
	add("connect-unknown-subsystem", fuzzPrefixICReq, func(s *fuzzStream) {
		var sqe [nvme.SQELen]byte
		nvme.SQE(sqe[:]).EncodeConnect(&nvme.ConnectFields{SQSize: 31})
		cd := make([]byte, nvme.ConnectDataLen)
		nvme.ConnectData(cd).Encode(&nvme.ConnectDataFields{HostID: testHostID, CntlID: nvme.CntlIDDynamic, SubNQN: "nqn.2026-01.io.nvmefs:other", HostNQN: testHostNQN})
		s.capsuleSQE(sqe, 1, cd)
	})
	add("connect-io-queue-unknown-cntlid", fuzzPrefixICReq, func(s *fuzzStream) {
		s.connect(1, 0x1234, testHostNQN)
		s.capsule(read(1, 1, 0, 4096), nil)
	})
	add("connect-data-via-r2t", fuzzPrefixICReq, func(s *fuzzStream) {
		var sqe [nvme.SQELen]byte
		nvme.SQE(sqe[:]).EncodeConnect(&nvme.ConnectFields{SQSize: 31})
		nvme.SQE(sqe[:]).DPTR().Encode(&nvme.SGLFields{Length: nvme.ConnectDataLen, ID: nvme.SGLTransportData})
		s.capsuleSQE(sqe, 1, nil)
		cd := make([]byte, nvme.ConnectDataLen)
		nvme.ConnectData(cd).Encode(&nvme.ConnectDataFields{HostID: testHostID, CntlID: nvme.CntlIDDynamic, SubNQN: testSubNQN, HostNQN: testHostNQN})
		s.h2c(1, 1, 0, cd, true)
	})
	add("read-before-connect", fuzzPrefixICReq, func(s *fuzzStream) {
		s.capsule(read(1, 1, 0, 4096), nil)
	})
	add("second-icreq", fuzzPrefixICReq, func(s *fuzzStream) {
		s.raw(icreq(wire.ICReqFields{}))
	})

	// Admin queue.
	add("admin-identify-logs-features", fuzzPrefixAdmin, func(s *fuzzStream) {
		var sqe [nvme.SQELen]byte
		nvme.SQE(sqe[:]).EncodeIdentify(&nvme.IdentifyFields{CNS: nvme.CNSController})
		s.capsuleSQE(sqe, 1, nil)
		nvme.SQE(sqe[:]).EncodeIdentify(&nvme.IdentifyFields{CNS: nvme.CNSNamespace, NSID: 1})
		s.capsuleSQE(sqe, 2, nil)
		nvme.SQE(sqe[:]).EncodeGetLogPage(&nvme.GetLogPageFields{LID: nvme.LogError, Len: 4096})
		s.capsuleSQE(sqe, 3, nil)
		nvme.SQE(sqe[:]).EncodeGetLogPage(&nvme.GetLogPageFields{LID: nvme.LogSMART, NSID: nvme.NSIDAll, Len: 512})
		s.capsuleSQE(sqe, 4, nil)
		nvme.SQE(sqe[:]).EncodeFeatures(&nvme.FeaturesFields{Set: true, FID: nvme.FeatNumQueues, Value: nvme.NumQueuesValue(2, 2)})
		s.capsuleSQE(sqe, 5, nil)
		s.capsule(nvme.SQEFields{Opcode: nvme.AdminKeepAlive, Flags: nvme.FlagsPSDTSGL, CID: 6}, nil)
		s.capsule(nvme.SQEFields{Opcode: nvme.AdminAsyncEvent, Flags: nvme.FlagsPSDTSGL, CID: 7}, nil)
	})
	add("admin-log-page-beyond-mdts", fuzzPrefixAdmin, func(s *fuzzStream) {
		var sqe [nvme.SQELen]byte
		nvme.SQE(sqe[:]).EncodeGetLogPage(&nvme.GetLogPageFields{LID: nvme.LogError, Len: 1 << 30})
		s.capsuleSQE(sqe, 1, nil)
	})
	add("admin-shutdown-disconnect", fuzzPrefixAdmin, func(s *fuzzStream) {
		var sqe [nvme.SQELen]byte
		nvme.SQE(sqe[:]).EncodeProperty(&nvme.PropertyFields{Set: true, Offset: nvme.PropCC, Value: nvme.CCEnable | 6<<16 | 4<<20 | 1<<14})
		s.capsuleSQE(sqe, 1, nil)
		s.capsule(nvme.SQEFields{Opcode: nvme.OpcodeFabrics, Flags: nvme.FlagsPSDTSGL, CID: 2, NSID: uint32(nvme.FabricsDisconnect)}, nil)
	})
	add("admin-duplicate-cid", fuzzPrefixAdmin, func(s *fuzzStream) {
		s.capsule(nvme.SQEFields{Opcode: nvme.AdminAsyncEvent, Flags: nvme.FlagsPSDTSGL, CID: 5}, nil)
		s.capsule(nvme.SQEFields{Opcode: nvme.AdminAsyncEvent, Flags: nvme.FlagsPSDTSGL, CID: 5}, nil)
	})

	// I/O queue (depth 32, R2Ts of 4 KiB, up to 4 outstanding).
	add("io-read-write-flush", fuzzPrefixIO, func(s *fuzzStream) {
		s.capsule(read(1, 1, 0, 4096), nil)
		s.capsule(write(2, 1, 8, 4096, true), data(4096))
		s.capsule(write(3, 1, 16, 8192, false), nil)
		s.h2c(3, 1, 0, data(4096), true)
		s.h2c(3, 2, 4096, data(4096), true)
		s.capsule(nvme.SQEFields{Opcode: nvme.IOFlush, Flags: nvme.FlagsPSDTSGL, CID: 4, NSID: 1}, nil)
		s.capsule(nvme.SQEFields{Opcode: nvme.IOWriteZeroes, Flags: nvme.FlagsPSDTSGL, CID: 5, NSID: 2, CDW10: 4, CDW12: 7}, nil)
	})
	add("io-dsm-deallocate", fuzzPrefixIO, func(s *fuzzStream) {
		r := make([]byte, 32)
		binary.LittleEndian.PutUint32(r[4:], 8)
		binary.LittleEndian.PutUint64(r[8:], 100)
		binary.LittleEndian.PutUint32(r[20:], 16)
		binary.LittleEndian.PutUint64(r[24:], 112)
		s.capsule(nvme.SQEFields{Opcode: nvme.IODatasetMgmt, Flags: nvme.FlagsPSDTSGL, CID: 1, NSID: 2, CDW10: 1, CDW11: 4,
			DPTR: nvme.SGLFields{Length: 32, ID: nvme.SGLInCapsule}}, r)
	})
	add("io-read-last-block-and-beyond", fuzzPrefixIO, func(s *fuzzStream) {
		s.capsule(read(1, 2, 127, 512), nil)
		s.capsule(read(2, 2, 127, 1024), nil)
		s.capsule(read(3, 2, 1<<63, 512), nil)
		s.capsule(write(4, 2, 128, 512, true), data(512))
	})
	add("io-h2c-unknown-cid", fuzzPrefixIO, func(s *fuzzStream) {
		s.h2c(9, 1, 0, data(512), true)
	})
	add("io-h2c-beyond-r2t", fuzzPrefixIO, func(s *fuzzStream) {
		s.capsule(write(1, 1, 0, 4096, false), nil)
		s.h2c(1, 1, 0, data(8192), true)
	})
	add("io-h2c-wrong-offset", fuzzPrefixIO, func(s *fuzzStream) {
		s.capsule(write(1, 1, 0, 8192, false), nil)
		s.h2c(1, 2, 0, data(4096), true)
	})
	add("io-h2c-wrong-ttag", fuzzPrefixIO, func(s *fuzzStream) {
		s.capsule(write(1, 1, 0, 4096, false), nil)
		s.h2c(1, 77, 0, data(4096), true)
	})
	add("io-oversized-plen", fuzzPrefixIO, func(s *fuzzStream) {
		var b [wire.MaxHeaderBuf]byte
		f := write(1, 1, 0, 4096, true)
		wire.CapsuleCmd(b[:]).Encode().Encode(&f)
		h := s.p.Seal(b[:], 4096)
		binary.LittleEndian.PutUint32(h[4:], 0xfffffff0)
		s.raw(h)
		s.raw(data(4096))
	})
	add("io-truncated-capsule", fuzzPrefixIO, func(s *fuzzStream) {
		s.capsule(write(1, 1, 0, 4096, true), data(4096))
		s.b = s.b[:len(s.b)-1000]
	})
	add("io-more-than-queue-depth", fuzzPrefixIO, func(s *fuzzStream) {
		for cid := uint16(0); cid < fuzzIOQueueDepth+2; cid++ {
			s.capsule(write(cid, 1, uint64(cid), 512, false), nil)
		}
	})
	add("io-beyond-mdts", fuzzPrefixIO, func(s *fuzzStream) {
		s.capsule(read(1, 1, 0, 128<<10), nil)
		s.capsule(write(2, 1, 0, 128<<10, false), nil)
	})
	add("io-h2c-termreq", fuzzPrefixIO, func(s *fuzzStream) {
		var b [wire.MaxHeaderBuf]byte
		wire.TermReq(b[:]).Encode(&wire.TermReqFields{Type: wire.TypeH2CTermReq, FES: wire.FESInvalidHeader})
		var none wire.Params
		s.raw(none.Seal(b[:], 0))
	})
	// With digests (sealed: mutations keep valid digests).
	add("io-digests-read-write", fuzzPrefixIO|fuzzHDGST|fuzzDDGST|fuzzSeal, func(s *fuzzStream) {
		s.capsule(read(1, 1, 0, 4096), nil)
		s.capsule(write(2, 1, 8, 4096, true), data(4096))
		s.capsule(write(3, 1, 16, 4096, false), nil)
		s.h2c(3, 1, 0, data(4096), true)
	})
	add("io-digests-bad-data-digest", fuzzPrefixIO|fuzzHDGST|fuzzDDGST, func(s *fuzzStream) {
		s.capsule(write(1, 1, 8, 4096, true), data(4096))
		s.b[len(s.b)-1] ^= 0xff
		s.capsule(read(2, 1, 8, 4096), nil)
	})
	add("admin-header-digest", fuzzPrefixAdmin|fuzzHDGST|fuzzSeal, func(s *fuzzStream) {
		var sqe [nvme.SQELen]byte
		nvme.SQE(sqe[:]).EncodeIdentify(&nvme.IdentifyFields{CNS: nvme.CNSActiveNSList})
		s.capsuleSQE(sqe, 1, nil)
	})
	return seeds
}

func (s targetSeed) corpusFile() []byte {
	return fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", append([]byte{s.mode}, s.data...))
}

// TestFuzzTargetCorpus keeps testdata/fuzz/FuzzTargetConn in step with
// targetSeeds (go test -run TestFuzzTargetCorpus -update-corpus rewrites it).
func TestFuzzTargetCorpus(t *testing.T) {
	for _, s := range targetSeeds() {
		path := filepath.Join("testdata", "fuzz", "FuzzTargetConn", "seed-"+s.name)
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
			t.Errorf("%s is missing or stale (go test -run TestFuzzTargetCorpus -update-corpus): %v", path, err)
		}
	}
}

// FuzzTargetConn feeds the target what a host might send, after one of the
// prefixes above, on a real loopback connection: the target must not panic,
// must end the connection (at the latest after the host's EOF) and give back
// its goroutines, must not access a namespace out of range, must keep its
// heap bounded, and must keep serving a well-behaved host (the bystander,
// whose reads are checked against the store after every input).
//
//	go test ./nvmetcp/target -run '^$' -fuzz FuzzTargetConn -fuzztime 3m -fuzzminimizetime 20x
//
// (A minimization time given as a count: a timed one that runs out kills
// the worker, and restarting it costs more than the inputs.)
func FuzzTargetConn(f *testing.F) {
	fz := newTargetFuzzer(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		fz.run(t, data)
	})
}
