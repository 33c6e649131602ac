package target

import (
	"bytes"
	"encoding/binary"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
	"github.com/nvmefs/nvmefs/nvmetcp/target/store"
	"github.com/nvmefs/nvmefs/nvmetcp/wire"
)

func TestIOErrors(t *testing.T) {
	tt := startTarget(t, Config{}) // 16 MiB: 32768 blocks
	s := openSession(t, tt.addr, clientOpts{}, testHostNQN, 1, 32)
	q := s.io[0]
	const blocks = 16 << 20 / 512
	last := pattern(512, 9)
	must(t, "write last block", q.write(1, blocks-1, last, 512, true))

	buf := make([]byte, 1024)
	wantStatus(t, "read at the end", q.read(1, blocks, buf[:512], 512), nvme.StatusLBAOutOfRange)
	wantStatus(t, "read across the end", q.read(1, blocks-1, buf, 512), nvme.StatusLBAOutOfRange)
	wantStatus(t, "read at 2^64-1", q.read(1, 1<<64-1, buf[:512], 512), nvme.StatusLBAOutOfRange)
	wantStatus(t, "write across the end", q.write(1, blocks-1, pattern(1024, 1), 512, true), nvme.StatusLBAOutOfRange)
	wantStatus(t, "R2T write across the end", q.write(1, blocks-1, pattern(32768, 1), 512, false), nvme.StatusLBAOutOfRange)
	got := make([]byte, 512)
	must(t, "read last block", q.read(1, blocks-1, got, 512))
	if !bytes.Equal(got, last) {
		t.Fatal("a failed write changed the last block")
	}
	if st := tt.ns[0].Size(); st != 16<<20 {
		t.Fatalf("store size changed: %d", st)
	}

	for _, nsid := range []uint32{0, 2, nvme.NSIDAll} {
		wantStatus(t, "read of a bad namespace", q.read(nsid, 0, buf[:512], 512), nvme.StatusInvalidNamespace)
	}
	wantStatus(t, "bad I/O opcode", q.do(&nvme.SQEFields{Opcode: 0x7e, Flags: nvme.FlagsPSDTSGL, NSID: 1}, nil, nil, nil), nvme.StatusInvalidOpcode)
	wantStatus(t, "bad admin opcode", s.admin.do(&nvme.SQEFields{Opcode: 0x7e, Flags: nvme.FlagsPSDTSGL}, nil, nil, nil), nvme.StatusInvalidOpcode)
	wantStatus(t, "bad fctype", s.admin.do(&nvme.SQEFields{Opcode: nvme.OpcodeFabrics, Flags: nvme.FlagsPSDTSGL, NSID: 0x33}, nil, nil, nil), nvme.StatusInvalidOpcode)

	// Beyond MDTS (1 MiB): 2 MiB read.
	big := make([]byte, 2<<20)
	wantStatus(t, "read beyond MDTS", q.read(1, 0, big, 512), nvme.StatusInvalidField)
	wantStatus(t, "write beyond MDTS", q.write(1, 0, big, 512, false), nvme.StatusInvalidField)

	// SGL problems.
	f := rwFields(nvme.IORead, 1, 0, 2, 512, false) // SGL says 512, NLB says 1024
	wantStatus(t, "read SGL length", q.do(&f, nil, make([]byte, 512), nil), nvme.StatusDataSGLLengthInvalid)
	f = rwFields(nvme.IORead, 1, 0, 1, 512, true) // in-capsule SGL for a read
	wantStatus(t, "read with in-capsule SGL", q.do(&f, nil, make([]byte, 512), nil), nvme.StatusSGLTypeInvalid)
	f = rwFields(nvme.IOWrite, 1, 0, 2, 1024, true)
	wantStatus(t, "in-capsule write shorter than SGL", q.do(&f, make([]byte, 512), nil, nil), nvme.StatusDataSGLLengthInvalid)
	f = rwFields(nvme.IOWrite, 1, 0, 1, 512, true)
	f.DPTR.Address = 16
	wantStatus(t, "in-capsule SGL offset", q.do(&f, make([]byte, 512), nil, nil), nvme.StatusSGLOffsetInvalid)
	f = rwFields(nvme.IOWrite, 1, 0, 1, 512, true)
	f.Flags = 0 // PRP
	wantStatus(t, "PRP data pointer", q.do(&f, make([]byte, 512), nil, nil), nvme.StatusInvalidField)
	f = rwFields(nvme.IOWrite, 1, 0, 1, 512, true)
	f.DPTR.ID = nvme.SGLTypeKeyedDataBlock << 4
	wantStatus(t, "keyed SGL", q.do(&f, make([]byte, 512), nil, nil), nvme.StatusSGLTypeInvalid)

	// The connection still works, and the errors are in the error log.
	must(t, "read after errors", q.read(1, blocks-1, got, 512))
	page, r := s.admin.getLogPage(nvme.LogError, 0, 64*4, 0)
	must(t, "error log", r)
	e0, e1 := nvme.ErrorLogEntry(page[0:64]), nvme.ErrorLogEntry(page[64:128])
	if e0.ErrorCount() == 0 || e0.ErrorCount() != e1.ErrorCount()+1 {
		t.Errorf("error counts %d, %d: want newest first", e0.ErrorCount(), e1.ErrorCount())
	}
	if e0.Status().Code() != nvme.StatusSGLTypeInvalid || e0.SQID() != 1 || e0.NSID() != 1 {
		t.Errorf("newest error: status %v sqid %d nsid %d", e0.Status(), e0.SQID(), e0.NSID())
	}
}

func TestConnectErrors(t *testing.T) {
	tt := startTarget(t, Config{AllowHosts: []string{testHostNQN}, MaxIOQueues: 2, MaxQueueSize: 256})

	// Refused host: Connect Invalid Host, IATTR 1 / IPO of HOSTNQN, logged.
	c := dialClient(t, tt.addr, clientOpts{})
	r := c.connect(0, 32, 0, nvme.CntlIDDynamic, testSubNQN, testHostNQN2)
	wantStatus(t, "refused host", r, nvme.StatusConnectInvalidHost)
	if r.Result != 1<<16|512 {
		t.Errorf("refused host DW0 %#x, want IATTR 1 IPO 512", r.Result)
	}
	if log := tt.log.String(); !strings.Contains(log, "refused host") || !strings.Contains(log, testHostNQN2) {
		t.Errorf("no log line naming the refused host:\n%s", log)
	}

	invalid := func(what string, r response, inData bool, ipo uint16) {
		t.Helper()
		wantStatus(t, what, r, nvme.StatusConnectInvalidParam)
		want := uint64(ipo)
		if inData {
			want |= 1 << 16
		}
		if r.Result != want {
			t.Errorf("%s: DW0 %#x, want %#x", what, r.Result, want)
		}
	}
	invalid("unknown subsystem", c.connect(0, 32, 0, nvme.CntlIDDynamic, "nqn.2026-01.io.nvmefs:other", testHostNQN), true, 256)
	invalid("empty host NQN", c.connect(0, 32, 0, nvme.CntlIDDynamic, testSubNQN, ""), true, 512)
	invalid("static cntlid", c.connect(0, 32, 0, 5, testSubNQN, testHostNQN), true, 16)
	invalid("sqsize 0", c.connect(0, 1, 0, nvme.CntlIDDynamic, testSubNQN, testHostNQN), false, 44)
	invalid("sqsize > MQES", c.connect(0, 257, 0, nvme.CntlIDDynamic, testSubNQN, testHostNQN), false, 44)
	invalid("KATO > limit", c.connect(0, 32, uint32(2*DefaultMaxKATO/time.Millisecond), nvme.CntlIDDynamic, testSubNQN, testHostNQN), false, 48)

	// Connect data through R2T/H2CData instead of in the capsule.
	viaR2T := dialClient(t, tt.addr, clientOpts{})
	var sqe [nvme.SQELen]byte
	nvme.SQE(sqe[:]).EncodeConnect(&nvme.ConnectFields{QID: 0, SQSize: 31})
	cf := sqeFields(sqe[:])
	cf.DPTR.ID = nvme.SGLTransportData
	cdata := make([]byte, nvme.ConnectDataLen)
	nvme.ConnectData(cdata).Encode(&nvme.ConnectDataFields{HostID: testHostID, CntlID: nvme.CntlIDDynamic, SubNQN: testSubNQN, HostNQN: testHostNQN})
	if r := must(t, "connect via R2T", viaR2T.do(&cf, nil, nil, cdata)); r.R2Ts != 1 {
		t.Errorf("connect via R2T: %d R2Ts", r.R2Ts)
	}
	viaR2T.Close()

	// Commands before Connect.
	_, r = c.identify(nvme.CNSController, 0)
	wantStatus(t, "identify before connect", r, nvme.StatusCommandSequenceError)
	wantStatus(t, "property before connect", c.property(false, false, nvme.PropCSTS, 0), nvme.StatusCommandSequenceError)

	// A good admin queue; commands before CC.EN fail.
	r = must(t, "admin connect", c.connect(0, 32, 0, nvme.CntlIDDynamic, testSubNQN, testHostNQN))
	cntlid := uint16(r.Result)
	_, r = c.identify(nvme.CNSController, 0)
	wantStatus(t, "identify before CC.EN", r, nvme.StatusCommandSequenceError)
	wantStatus(t, "second connect", c.connect(0, 32, 0, nvme.CntlIDDynamic, testSubNQN, testHostNQN), nvme.StatusCommandSequenceError)

	io := dialClient(t, tt.addr, clientOpts{})
	wantStatus(t, "I/O connect before CC.EN", io.connect(1, 32, 0, cntlid, testSubNQN, testHostNQN), nvme.StatusCommandSequenceError)
	c.enable(t)
	r = must(t, "number of queues", c.features(true, nvme.FeatNumQueues, nvme.NumQueuesValue(8, 8)))
	if sq, cq := nvme.NumQueues(uint32(r.Result)); sq != 2 || cq != 2 {
		t.Errorf("granted %d/%d queues, want 2/2", sq, cq)
	}
	invalid("unknown cntlid", io.connect(1, 32, 0, cntlid+1, testSubNQN, testHostNQN), true, 16)
	invalid("qid beyond granted", io.connect(3, 32, 0, cntlid, testSubNQN, testHostNQN), false, 42)
	other := dialClient(t, tt.addr, clientOpts{})
	// Another (allowed-list) host cannot join this controller: refused first.
	wantStatus(t, "other host's I/O connect", other.connect(1, 32, 0, cntlid, testSubNQN, testHostNQN2), nvme.StatusConnectInvalidHost)
	must(t, "I/O connect", io.connect(1, 32, 0, cntlid, testSubNQN, testHostNQN))
	dup := dialClient(t, tt.addr, clientOpts{})
	invalid("qid in use", dup.connect(1, 32, 0, cntlid, testSubNQN, testHostNQN), false, 42)
	wantStatus(t, "number of queues after I/O queues", c.features(true, nvme.FeatNumQueues, nvme.NumQueuesValue(1, 1)), nvme.StatusCommandSequenceError)
	wantStatus(t, "property get on an I/O queue", io.property(false, false, nvme.PropCSTS, 0), nvme.StatusInvalidField)
	must(t, "write", io.write(1, 0, pattern(512, 1), 512, true))
}

// fatal runs fn, which breaks the protocol on a fresh connection, and
// checks the C2HTermReq that ends it; a bystander session keeps working.
func TestFatalErrors(t *testing.T) {
	tt := startTarget(t, Config{})
	bystander := openSession(t, tt.addr, clientOpts{}, testHostNQN2, 1, 32)
	data := pattern(8192, 5)
	must(t, "bystander write", bystander.io[0].write(1, 0, data, 512, false))

	check := func(t *testing.T, ti termInfo, fes wire.FES, fei uint32, hdrPrefix []byte) {
		t.Helper()
		if ti.FES != fes || ti.FEI != fei {
			t.Errorf("TermReq FES %v FEI %d, want %v FEI %d", ti.FES, ti.FEI, fes, fei)
		}
		if len(ti.Data) > wire.TermReqMaxDataLen || !bytes.HasPrefix(ti.Data, hdrPrefix) {
			t.Errorf("TermReq data %x, want the offending header %x", ti.Data, hdrPrefix)
		}
		got := make([]byte, len(data))
		must(t, "bystander read", bystander.io[0].read(1, 0, got, 512))
		if !bytes.Equal(got, data) {
			t.Fatal("bystander data changed")
		}
	}

	t.Run("garbage", func(t *testing.T) {
		nc, rd, _ := rawConn(t, tt.addr)
		junk := []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		nc.Write(junk)
		check(t, readTermReq(t, nc, rd), wire.FESInvalidHeader, 0, junk[:8])
	})
	t.Run("garbage instead of ICReq", func(t *testing.T) {
		nc, err := net.Dial("tcp", tt.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		junk := bytes.Repeat([]byte{0xff}, 64)
		nc.Write(junk)
		rd := wire.NewReader(nc, wire.ToHost, &wire.Params{})
		check(t, readTermReq(t, nc, rd), wire.FESInvalidHeader, 0, junk[:8])
	})
	t.Run("second ICReq", func(t *testing.T) {
		nc, rd, _ := rawConn(t, tt.addr)
		var icreq [wire.ICReqLen]byte
		wire.ICReq(icreq[:]).Encode(&wire.ICReqFields{})
		nc.Write(icreq[:])
		check(t, readTermReq(t, nc, rd), wire.FESSequence, 0, icreq[:8])
	})
	t.Run("oversized PLEN", func(t *testing.T) {
		nc, rd, _ := rawConn(t, tt.addr)
		var b [wire.MaxHeaderBuf]byte
		wire.CapsuleCmd(b[:]).Encode().Encode(&nvme.SQEFields{Opcode: nvme.IOWrite})
		var p wire.Params
		hdr := p.Seal(b[:], 64<<20) // claims 64 MiB of in-capsule data
		nc.Write(hdr)
		check(t, readTermReq(t, nc, rd), wire.FESLimitExceeded, 4, hdr[:8])
	})
	t.Run("header digest", func(t *testing.T) {
		c := dialClient(t, tt.addr, clientOpts{HeaderDigest: true})
		var b [wire.MaxHeaderBuf]byte
		wire.CapsuleCmd(b[:]).Encode().Encode(&nvme.SQEFields{Opcode: nvme.AdminKeepAlive, Flags: nvme.FlagsPSDTSGL})
		hdr := c.tx.Seal(b[:], 0)
		hdr[wire.CapsuleCmdHdrLen] ^= 1
		c.nc.Write(hdr)
		ti, err := c.terminated(callTimeout)
		if ti == nil {
			t.Fatalf("no TermReq: %v", err)
		}
		check(t, *ti, wire.FESHeaderDigest, wire.CapsuleCmdHdrLen, hdr[:wire.CapsuleCmdHdrLen])
	})
	t.Run("H2CData for an unknown command", func(t *testing.T) {
		nc, rd, _ := rawConn(t, tt.addr)
		var b [wire.MaxHeaderBuf]byte
		wire.DataHeader(b[:]).Encode(&wire.DataFields{Type: wire.TypeH2CData, Flags: wire.FlagLast, CCCID: 77, DataLen: 512})
		var p wire.Params
		hdr := p.Seal(b[:], 512)
		nc.Write(append(bytes.Clone(hdr), make([]byte, 512)...))
		check(t, readTermReq(t, nc, rd), wire.FESInvalidHeader, 8, hdr[:wire.DataHdrLen])
	})
	r2tCase := func(name string, fes wire.FES, fei uint32, mutate func(f *wire.DataFields, r wire.R2TFields)) {
		t.Run(name, func(t *testing.T) {
			s := openSession(t, tt.addr, clientOpts{}, testHostNQN, 1, 32)
			q := s.io[0]
			f := rwFields(nvme.IOWrite, 1, 0, 64, 32768, false)
			k, err := q.sendManual(&f)
			if err != nil {
				t.Fatal(err)
			}
			var r wire.R2TFields
			select {
			case r = <-k.r2ts:
			case <-time.After(callTimeout):
				t.Fatal("no R2T")
			}
			df := wire.DataFields{Type: wire.TypeH2CData, Flags: wire.FlagLast, CCCID: r.CCCID, TTag: r.TTag, DataOffset: r.Offset, DataLen: r.Len}
			mutate(&df, r)
			var b [wire.MaxHeaderBuf]byte
			wire.DataHeader(b[:]).Encode(&df)
			want := bytes.Clone(q.tx.Seal(b[:], int(df.DataLen))[:wire.DataHdrLen])
			q.writeData(df, make([]byte, df.DataLen), false)
			ti, err := q.terminated(callTimeout)
			if ti == nil {
				t.Fatalf("no TermReq: %v", err)
			}
			check(t, *ti, fes, fei, want)
			// The controller's admin queue is unaffected.
			must(t, "keep alive", s.admin.do(&nvme.SQEFields{Opcode: nvme.AdminKeepAlive, Flags: nvme.FlagsPSDTSGL}, nil, nil, nil))
		})
	}
	r2tCase("H2CData wrong transfer tag", wire.FESInvalidHeader, 10, func(f *wire.DataFields, r wire.R2TFields) { f.TTag++ })
	r2tCase("H2CData wrong offset", wire.FESOutOfRange, 12, func(f *wire.DataFields, r wire.R2TFields) { f.DataOffset += 512; f.DataLen -= 512 })
	r2tCase("H2CData beyond the R2T", wire.FESOutOfRange, 16, func(f *wire.DataFields, r wire.R2TFields) { f.DataLen += 512 })
	r2tCase("H2CData LAST before the end", wire.FESInvalidHeader, 1, func(f *wire.DataFields, r wire.R2TFields) { f.DataLen -= 512 })

	t.Run("in-capsule data beyond IOCCSZ", func(t *testing.T) {
		small := startTarget(t, Config{InCapsuleSize: 4096})
		s := openSession(t, small.addr, clientOpts{}, testHostNQN, 1, 32)
		// The admin queue takes 8 KiB in a capsule (as Linux sends).
		ka := nvme.SQEFields{Opcode: nvme.AdminKeepAlive, Flags: nvme.FlagsPSDTSGL}
		must(t, "admin capsule with 8 KiB", s.admin.do(&ka, make([]byte, 8192), nil, nil))
		must(t, "I/O write of 4 KiB in the capsule", s.io[0].write(1, 0, make([]byte, 4096), 512, true))
		f := rwFields(nvme.IOWrite, 1, 0, 16, 8192, true)
		var b [wire.MaxHeaderBuf]byte
		wire.CapsuleCmd(b[:]).Encode().Encode(&f)
		want := bytes.Clone(s.io[0].tx.Seal(b[:], 8192)[:8])
		s.io[0].send(&f, make([]byte, 8192), nil, nil)
		ti, err := s.io[0].terminated(callTimeout)
		if ti == nil {
			t.Fatalf("no TermReq: %v", err)
		}
		check(t, *ti, wire.FESLimitExceeded, 4, want)
	})
	t.Run("command id in use", func(t *testing.T) {
		c := dialClient(t, tt.addr, clientOpts{})
		c.adminSession(t, testSubNQN, testHostNQN, 0)
		aer := nvme.SQEFields{Opcode: nvme.AdminAsyncEvent, Flags: nvme.FlagsPSDTSGL, CID: 500}
		if err := c.writeCapsule(&aer, nil, false); err != nil {
			t.Fatal(err)
		}
		ka := nvme.SQEFields{Opcode: nvme.AdminKeepAlive, Flags: nvme.FlagsPSDTSGL, CID: 500}
		c.writeCapsule(&ka, nil, false)
		ti, err := c.terminated(callTimeout)
		if ti == nil {
			t.Fatalf("no TermReq: %v", err)
		}
		check(t, *ti, wire.FESInvalidHeader, 10, nil)
	})
	t.Run("more commands than the queue size", func(t *testing.T) {
		c := dialClient(t, tt.addr, clientOpts{})
		must(t, "connect", c.connect(0, 2, 0, nvme.CntlIDDynamic, testSubNQN, testHostNQN))
		c.enable(t)
		for cid := uint16(1); cid <= 3; cid++ { // AERs are held: the third overflows
			aer := nvme.SQEFields{Opcode: nvme.AdminAsyncEvent, Flags: nvme.FlagsPSDTSGL, CID: 1000 + cid}
			c.writeCapsule(&aer, nil, false)
		}
		ti, err := c.terminated(callTimeout)
		if ti == nil {
			t.Fatalf("no TermReq: %v", err)
		}
		check(t, *ti, wire.FESSequence, 0, nil)
	})
	t.Run("truncated PDU", func(t *testing.T) {
		nc, rd, _ := rawConn(t, tt.addr)
		var b [wire.MaxHeaderBuf]byte
		wire.CapsuleCmd(b[:]).Encode().Encode(&nvme.SQEFields{Opcode: nvme.AdminKeepAlive})
		var p wire.Params
		hdr := p.Seal(b[:], 0)
		nc.Write(hdr[:30])
		nc.(*net.TCPConn).CloseWrite()
		nc.SetReadDeadline(time.Now().Add(callTimeout))
		if _, l, err := rd.Next(); err == nil {
			t.Fatalf("got %v after a truncated PDU, want the connection closed", l.Type)
		} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatal("the target kept the connection after a truncated PDU")
		}
		check(t, termInfo{}, 0, 0, nil)
	})
}

// TestDigestErrors: a data digest error fails the command with a transient
// transport error and keeps the connection.
func TestDigestErrors(t *testing.T) {
	tt := startTarget(t, Config{MaxH2CData: 4096})
	s := openSession(t, tt.addr, clientOpts{DataDigest: true, HeaderDigest: true}, testHostNQN, 1, 32)
	q := s.io[0]
	orig := pattern(16384, 11)
	must(t, "write", q.write(1, 0, orig, 512, false))

	f := rwFields(nvme.IOWrite, 1, 0, 8, 4096, true)
	k, err := q.sendCID(-1, &f, pattern(4096, 12), nil, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	r := k.wait(callTimeout)
	wantStatus(t, "in-capsule data digest error", r, nvme.StatusTransientTransport)
	if r.Status.DNR() {
		t.Error("transient transport error with DNR: the host would not retry")
	}
	f = rwFields(nvme.IOWrite, 1, 0, 32, 16384, false)
	k, err = q.sendCID(-1, &f, nil, nil, pattern(16384, 13), true)
	if err != nil {
		t.Fatal(err)
	}
	wantStatus(t, "H2CData digest error", k.wait(callTimeout), nvme.StatusTransientTransport)

	got := make([]byte, len(orig))
	must(t, "read", q.read(1, 0, got, 512))
	if !bytes.Equal(got, orig) {
		t.Fatal("a write with a digest error reached the namespace")
	}
	must(t, "write after errors", q.write(1, 0, pattern(16384, 14), 512, false))
}

func TestKeepAliveTimeout(t *testing.T) {
	tt := startTarget(t, Config{})
	// A controller that stays silent past its KATO loses every queue.
	idle := openSessionKATO(t, tt.addr, testHostNQN, 300)
	// One that sends Keep Alive in time stays, and so does one whose only
	// traffic is I/O (any command restarts the timer).
	busy := openSessionKATO(t, tt.addr, testHostNQN2, 300)
	reader := openSessionKATO(t, tt.addr, testHostNQN, 300)
	stop := make(chan struct{})
	kaDone := make(chan struct{})
	go func() {
		defer close(kaDone)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				busy.admin.do(&nvme.SQEFields{Opcode: nvme.AdminKeepAlive, Flags: nvme.FlagsPSDTSGL}, nil, nil, nil)
				reader.io[0].read(1, 0, make([]byte, 512), 512)
			}
		}
	}()
	defer func() { close(stop); <-kaDone }()

	start := time.Now()
	for _, c := range append([]*client{idle.admin}, idle.io...) {
		if _, err := c.terminated(5 * time.Second); err == nil {
			t.Fatal("idle controller's queue still open 5 s after a 300 ms KATO")
		}
	}
	if el := time.Since(start); el < 250*time.Millisecond {
		t.Errorf("queues closed after %v, before the KATO", el)
	}
	if !strings.Contains(tt.log.String(), "keep alive timeout") {
		t.Error("no keep alive timeout in the log")
	}
	time.Sleep(400 * time.Millisecond)
	must(t, "busy controller I/O", busy.io[0].write(1, 0, pattern(512, 1), 512, true))
	_, r := busy.admin.identify(nvme.CNSController, 0)
	must(t, "busy controller admin", r)
	_, r = reader.admin.identify(nvme.CNSController, 0)
	must(t, "I/O-only controller admin", r)
}

func openSessionKATO(tb testing.TB, addr, hostNQN string, katoMS uint32) *ioSession {
	tb.Helper()
	s := &ioSession{admin: dialClient(tb, addr, clientOpts{})}
	s.cntlid = s.admin.adminSession(tb, testSubNQN, hostNQN, katoMS)
	c := dialClient(tb, addr, clientOpts{})
	must(tb, "io connect", c.connect(1, 32, 0, s.cntlid, testSubNQN, hostNQN))
	s.io = append(s.io, c)
	return s
}

func TestAsyncEventRequests(t *testing.T) {
	tt := startTarget(t, Config{})
	c := dialClient(t, tt.addr, clientOpts{})
	c.adminSession(t, testSubNQN, testHostNQN, 0)
	// Commands run concurrently: which of aerLimit+1 AERs is refused is
	// not fixed, but exactly one is, and the others are held.
	var calls []*call
	for range aerLimit + 1 {
		k, err := c.send(&nvme.SQEFields{Opcode: nvme.AdminAsyncEvent, Flags: nvme.FlagsPSDTSGL}, nil, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		calls = append(calls, k)
	}
	// A command sent after them is answered after the refusal is sent
	// (each runs on its own, but this one needs all the AERs parsed first).
	must(t, "keep alive", c.do(&nvme.SQEFields{Opcode: nvme.AdminKeepAlive, Flags: nvme.FlagsPSDTSGL}, nil, nil, nil))
	deadline := time.After(callTimeout)
	var held []*call
	refused := 0
	for _, k := range calls {
		select {
		case <-k.done:
			wantStatus(t, "AER beyond AERL", k.resp, nvme.StatusAsyncEventLimit)
			refused++
		case <-time.After(200 * time.Millisecond):
			held = append(held, k)
		case <-deadline:
			t.Fatal("timeout")
		}
	}
	if refused != 1 || len(held) != aerLimit {
		t.Fatalf("%d AERs refused, %d held; want 1 and %d", refused, len(held), aerLimit)
	}
	r := must(t, "abort", c.do(&nvme.SQEFields{Opcode: nvme.AdminAbort, Flags: nvme.FlagsPSDTSGL, CDW10: uint32(held[0].cid) << 16}, nil, nil, nil))
	if r.Result&1 != 1 {
		t.Errorf("abort DW0 %#x: want bit 0 (not aborted)", r.Result)
	}
	for _, k := range held {
		select {
		case <-k.done:
			t.Fatalf("AER %d answered (%v): should be held", k.cid, k.resp.Status)
		default:
		}
	}
}

func TestDiscovery(t *testing.T) {
	for _, refused := range []bool{false, true} {
		allow := []string{testHostNQN}
		host := testHostNQN
		if refused {
			host = testHostNQN2
		}
		tt := startTarget(t, Config{AllowHosts: allow})
		c := dialClient(t, tt.addr, clientOpts{})
		cntlid := c.adminSession(t, nvme.DiscoveryNQN, host, 0)
		buf, r := c.identify(nvme.CNSController, 0)
		must(t, "identify", r)
		id := nvme.IdentifyController(buf)
		if id.CntrlType() != nvme.CtrlTypeDiscovery || id.SubNQN() != nvme.DiscoveryNQN || id.CntlID() != cntlid {
			t.Errorf("discovery identify: type %d subnqn %q cntlid %d", id.CntrlType(), id.SubNQN(), id.CntlID())
		}
		_, r = c.identify(nvme.CNSNamespace, 1)
		wantStatus(t, "identify namespace on discovery", r, nvme.StatusInvalidField)

		hdr, r := c.getLogPage(nvme.LogDiscovery, 0, nvme.DiscoveryLogHeaderLen, 0)
		must(t, "discovery log header", r)
		h := nvme.DiscoveryLogHeader(hdr)
		want := uint64(1)
		if refused {
			want = 0
		}
		if h.NumRec() != want || h.GenCtr() == 0 {
			t.Fatalf("refused=%v: numrec %d genctr %d, want %d records", refused, h.NumRec(), h.GenCtr(), want)
		}
		if refused {
			continue
		}
		full, r := c.getLogPage(nvme.LogDiscovery, 0, nvme.DiscoveryLogHeaderLen+nvme.DiscoveryLogEntryLen, 0)
		must(t, "discovery log", r)
		e := nvme.DiscoveryLogEntry(full[nvme.DiscoveryLogHeaderLen:])
		_, port, _ := net.SplitHostPort(tt.addr)
		if e.TrType() != nvme.TrTypeTCP || e.AdrFam() != nvme.AdrFamIPv4 || e.SubType() != nvme.SubTypeNVM ||
			e.SubNQN() != testSubNQN || e.TrAddr() != "127.0.0.1" || e.TrSvcID() != port || e.CntlID() != nvme.CntlIDDynamic {
			t.Errorf("entry: trtype %d adrfam %d subtype %d subnqn %q traddr %q trsvcid %q cntlid %#x",
				e.TrType(), e.AdrFam(), e.SubType(), e.SubNQN(), e.TrAddr(), e.TrSvcID(), e.CntlID())
		}
		// The entry alone, by offset.
		part, r := c.getLogPage(nvme.LogDiscovery, 0, nvme.DiscoveryLogEntryLen, nvme.DiscoveryLogHeaderLen)
		must(t, "discovery log entry by offset", r)
		if !bytes.Equal(part, full[nvme.DiscoveryLogHeaderLen:]) {
			t.Error("entry read by offset differs")
		}
		// No I/O queues on a discovery controller.
		io := dialClient(t, tt.addr, clientOpts{})
		wantStatus(t, "I/O connect to discovery", io.connect(1, 32, 0, cntlid, nvme.DiscoveryNQN, host), nvme.StatusConnectInvalidParam)
	}
}

func TestLogPagesAndFeatures(t *testing.T) {
	tt := startTarget(t, Config{MaxIOQueues: 4})
	s := openSession(t, tt.addr, clientOpts{}, testHostNQN, 1, 32)
	a, q := s.admin, s.io[0]
	for range 3 {
		must(t, "read", q.read(1, 0, make([]byte, 4096), 512))
	}
	must(t, "write", q.write(1, 0, make([]byte, 1024), 512, true))

	page, r := a.getLogPage(nvme.LogSMART, nvme.NSIDAll, nvme.SMARTLogLen, 0)
	must(t, "SMART", r)
	sm := nvme.SMARTLog(page)
	if sm.HostReads() != 3 || sm.HostWrites() != 1 || sm.DataUnitsRead() != 1 || sm.DataUnitsWritten() != 1 {
		t.Errorf("SMART reads %d writes %d units read %d written %d", sm.HostReads(), sm.HostWrites(), sm.DataUnitsRead(), sm.DataUnitsWritten())
	}
	page, r = a.getLogPage(nvme.LogSMART, 1, nvme.SMARTLogLen, 0)
	must(t, "SMART ns 1", r)
	if nvme.SMARTLog(page).HostReads() != 3 {
		t.Error("per-namespace SMART differs")
	}
	_, r = a.getLogPage(nvme.LogSMART, 9, nvme.SMARTLogLen, 0)
	wantStatus(t, "SMART of a bad namespace", r, nvme.StatusInvalidNamespace)
	// Offset and a copy short of the page: the tail reads as zeroes.
	page, r = a.getLogPage(nvme.LogSMART, nvme.NSIDAll, 16, 64)
	must(t, "SMART at offset", r)
	if binary.LittleEndian.Uint64(page) != 3 {
		t.Errorf("SMART host reads at offset 64: %d", binary.LittleEndian.Uint64(page))
	}
	page, r = a.getLogPage(nvme.LogSMART, nvme.NSIDAll, 64, nvme.SMARTLogLen-8)
	must(t, "SMART past the end", r)
	if !bytes.Equal(page, make([]byte, 64)) {
		t.Error("bytes past the page are not zero")
	}
	_, r = a.getLogPage(nvme.LogSMART, nvme.NSIDAll, 16, nvme.SMARTLogLen+4)
	wantStatus(t, "offset beyond the page", r, nvme.StatusInvalidField)
	_, r = a.getLogPage(nvme.LogSMART, nvme.NSIDAll, 16, 2)
	wantStatus(t, "unaligned offset", r, nvme.StatusInvalidField)
	_, r = a.getLogPage(0x42, 0, 512, 0)
	wantStatus(t, "unknown log page", r, nvme.StatusInvalidField)
	_, r = a.getLogPage(nvme.LogDiscovery, 0, 1024, 0)
	wantStatus(t, "discovery log on an I/O controller", r, nvme.StatusInvalidField)
	_, r = a.getLogPage(nvme.LogError, 0, 2*DefaultMaxTransfer, 0)
	wantStatus(t, "log page beyond MDTS", r, nvme.StatusInvalidField)

	page, r = a.getLogPage(nvme.LogFirmwareSlot, 0, nvme.FirmwareSlotLogLen, 0)
	must(t, "firmware slot", r)
	if fw := nvme.FirmwareSlotLog(page); fw.ActiveSlot() != 1 || fw.Revision(1) != DefaultFirmware {
		t.Errorf("firmware slot %d revision %q", fw.ActiveSlot(), fw.Revision(1))
	}
	page, r = a.getLogPage(nvme.LogChangedNS, 0, nvme.ChangedNSListLen, 0)
	must(t, "changed namespaces", r)
	if ids := nvme.NSList(page).IDs(); len(ids) != 0 {
		t.Errorf("changed namespaces %v: the set never changes", ids)
	}
	page, r = a.getLogPage(nvme.LogCommandEffects, 0, nvme.CommandEffectsLogLen, 0)
	must(t, "command effects", r)
	fx := nvme.CommandEffectsLog(page)
	if fx.IO(nvme.IOWrite) != nvme.EffectsCSUPP|nvme.EffectsLBCC || fx.IO(nvme.IORead) != nvme.EffectsCSUPP || fx.Admin(nvme.AdminIdentify) != nvme.EffectsCSUPP || fx.IO(0x7e) != 0 {
		t.Errorf("effects: write %#x read %#x identify %#x", fx.IO(nvme.IOWrite), fx.IO(nvme.IORead), fx.Admin(nvme.AdminIdentify))
	}

	// Features.
	r = must(t, "get number of queues", a.features(false, nvme.FeatNumQueues, 0))
	if sq, cq := nvme.NumQueues(uint32(r.Result)); sq != 1 || cq != 1 {
		t.Errorf("number of queues %d/%d, granted 1/1", sq, cq)
	}
	must(t, "set KATO", a.features(true, nvme.FeatKeepAliveTimer, 60000))
	if r := must(t, "get KATO", a.features(false, nvme.FeatKeepAliveTimer, 0)); r.Result != 60000 {
		t.Errorf("KATO %d", r.Result)
	}
	must(t, "set AEC", a.features(true, nvme.FeatAsyncEventConfig, 0xffffffff))
	if r := must(t, "get AEC", a.features(false, nvme.FeatAsyncEventConfig, 0)); r.Result != nvme.AECNSAttrNotices {
		t.Errorf("AEC %#x: want only the supported namespace notices", r.Result)
	}
	must(t, "disable write cache", a.features(true, nvme.FeatVolatileWC, 0))
	if r := must(t, "get VWC", a.features(false, nvme.FeatVolatileWC, 0)); r.Result != 0 {
		t.Errorf("VWC %#x after disabling", r.Result)
	}
	must(t, "write without cache", q.write(1, 0, make([]byte, 512), 512, true))
	must(t, "enable write cache", a.features(true, nvme.FeatVolatileWC, 1))
	must(t, "power state 0", a.features(true, nvme.FeatPowerManagement, 0))
	wantStatus(t, "power state 1", a.features(true, nvme.FeatPowerManagement, 1), nvme.StatusInvalidField)
	must(t, "arbitration", a.features(true, nvme.FeatArbitration, 0x0303))
	if r := must(t, "get arbitration", a.features(false, nvme.FeatArbitration, 0)); r.Result != 0x0303 {
		t.Errorf("arbitration %#x", r.Result)
	}
	if r := must(t, "get over temperature", a.features(false, nvme.FeatTemperature, 0)); r.Result != defaultOverTemp {
		t.Errorf("default over temperature threshold %d", r.Result)
	}
	must(t, "set under temperature of sensor 1", a.features(true, nvme.FeatTemperature, 1<<20|1<<16|250))
	if r := must(t, "get under temperature of sensor 1", a.features(false, nvme.FeatTemperature, 1<<20|1<<16)); r.Result != 250 {
		t.Errorf("under temperature threshold %d, set 250", r.Result)
	}
	wantStatus(t, "bad threshold type", a.features(true, nvme.FeatTemperature, 2<<20), nvme.StatusInvalidField)
	wantStatus(t, "timestamp", a.features(true, nvme.FeatTimestamp, 0), nvme.StatusInvalidField)
	wantStatus(t, "unknown feature", a.features(false, 0x7d, 0), nvme.StatusInvalidField)
	var sqe [nvme.SQELen]byte
	nvme.SQE(sqe[:]).EncodeFeatures(&nvme.FeaturesFields{Set: true, Save: true, FID: nvme.FeatArbitration})
	f := sqeFields(sqe[:])
	wantStatus(t, "save", a.do(&f, nil, nil, nil), nvme.StatusFeatureNotSaveable)
	nvme.SQE(sqe[:]).EncodeFeatures(&nvme.FeaturesFields{FID: nvme.FeatVolatileWC, Sel: nvme.FeatSelSupported})
	f = sqeFields(sqe[:])
	if r := must(t, "supported capabilities", a.do(&f, nil, nil, nil)); r.Result != nvme.FeatCapChangeable {
		t.Errorf("VWC capabilities %#x", r.Result)
	}
}

func TestShutdownAndReset(t *testing.T) {
	fc := &flushCounter{}
	fc.Store = mustMem(t, "mem:1M")
	tt := startTarget(t, Config{Namespaces: []store.Store{fc}})
	s := openSession(t, tt.addr, clientOpts{}, testHostNQN, 1, 32)
	must(t, "write", s.io[0].write(1, 0, make([]byte, 512), 512, true))

	// CC.EN = 0: a reset; the I/O queues go, RDY clears.
	must(t, "disable", s.admin.property(true, false, nvme.PropCC, 6<<16|4<<20))
	if _, err := s.io[0].terminated(callTimeout); err == nil {
		t.Fatal("I/O queue still open after CC.EN = 0")
	}
	if r := must(t, "CSTS", s.admin.property(false, false, nvme.PropCSTS, 0)); r.Result&nvme.CSTSReady != 0 {
		t.Errorf("CSTS %#x after disable", r.Result)
	}
	s.admin.enable(t)
	before := fc.count()
	must(t, "shutdown", s.admin.property(true, false, nvme.PropCC, nvme.CCEnable|6<<16|4<<20|1<<14))
	r := must(t, "CSTS", s.admin.property(false, false, nvme.PropCSTS, 0))
	if r.Result&nvme.CSTSShstMask != nvme.CSTSShstDone {
		t.Errorf("CSTS %#x: shutdown not complete", r.Result)
	}
	if fc.count() == before {
		t.Error("shutdown did not flush the namespace")
	}
	// Bad CC settings make the controller fatal rather than ready.
	c := dialClient(t, tt.addr, clientOpts{})
	must(t, "connect", c.connect(0, 32, 0, nvme.CntlIDDynamic, testSubNQN, testHostNQN))
	must(t, "CC with 128-byte SQEs", c.property(true, false, nvme.PropCC, nvme.CCEnable|7<<16|4<<20))
	if r := must(t, "CSTS", c.property(false, false, nvme.PropCSTS, 0)); r.Result&(nvme.CSTSFatal|nvme.CSTSReady) != nvme.CSTSFatal {
		t.Errorf("CSTS %#x, want CFS", r.Result)
	}
}

func mustMem(tb testing.TB, spec string) store.Store {
	st, err := store.Open(spec)
	if err != nil {
		tb.Fatal(err)
	}
	return st
}

func TestDisconnect(t *testing.T) {
	tt := startTarget(t, Config{})
	s := openSession(t, tt.addr, clientOpts{}, testHostNQN, 1, 32)
	q := s.io[0]
	must(t, "disconnect", q.do(&nvme.SQEFields{Opcode: nvme.OpcodeFabrics, Flags: nvme.FlagsPSDTSGL, NSID: nvme.FabricsDisconnect}, nil, nil, nil))
	if _, err := q.terminated(callTimeout); err == nil {
		t.Fatal("queue still open after Disconnect")
	}
	// The qid is free again.
	c := dialClient(t, tt.addr, clientOpts{})
	deadline := time.Now().Add(callTimeout)
	for {
		r := c.connect(1, 32, 0, s.cntlid, testSubNQN, testHostNQN)
		if r.Status.Success() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("reconnect of qid 1: %v %v", r.Status, r.Err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
