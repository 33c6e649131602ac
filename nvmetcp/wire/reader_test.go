package wire

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"testing"
	"testing/iotest"

	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
)

func c2hData(off, n uint32, flags Flags) func([]byte) {
	return func(b []byte) {
		DataHeader(b).Encode(&DataFields{Type: TypeC2HData, Flags: flags, CCCID: 9, DataOffset: off, DataLen: n})
	}
}

func capsuleResp(cid uint16) func([]byte) {
	return func(b []byte) { CapsuleResp(b).Encode(&nvme.CQEFields{CID: cid}) }
}

// stream concatenates PDUs.
func stream(pdus ...[]byte) []byte { return bytes.Join(pdus, nil) }

// TestReaderTruncated cuts a stream of two PDUs at every byte: a cut inside a
// PDU gives io.ErrUnexpectedEOF, a cut between PDUs io.EOF.
func TestReaderTruncated(t *testing.T) {
	for _, p := range []Params{{}, {HeaderDigest: true, DataDigest: true, TxPDA: 7}} {
		first := buildPDU(&p, c2hData(0, 100, FlagLast), pattern(100))
		second := buildPDU(&p, capsuleResp(9), nil)
		full := stream(first, second)
		for cut := 0; cut <= len(full); cut++ {
			rp := receiver(p)
			r := NewReader(bytes.NewReader(full[:cut]), ToHost, &rp)
			var err error
			pdus := 0
			for err == nil {
				var l Layout
				_, l, err = r.Next()
				if err == nil && l.DataLen > 0 {
					err = r.ReadData(make([]byte, l.DataLen))
				}
				if err == nil {
					pdus++
				}
			}
			var want error = io.ErrUnexpectedEOF
			if cut == 0 || cut == len(first) || cut == len(full) {
				want = io.EOF
			}
			if err != want {
				t.Fatalf("%+v cut at %d of %d: %v after %d PDUs, want %v", p, cut, len(full), err, pdus, want)
			}
		}
	}
}

// TestReaderTruncatedDiscard cuts inside the payload that Discard skips.
func TestReaderTruncatedDiscard(t *testing.T) {
	p := Params{DataDigest: true}
	pdu := buildPDU(&p, c2hData(0, 2000, 0), pattern(2000))
	for _, cut := range []int{25, 1000, len(pdu) - 1} {
		rp := receiver(p)
		r := NewReader(bytes.NewReader(pdu[:cut]), ToHost, &rp)
		if _, _, err := r.Next(); err != nil {
			t.Fatal(err)
		}
		if err := r.Discard(); err != io.ErrUnexpectedEOF {
			t.Errorf("cut at %d: Discard %v, want io.ErrUnexpectedEOF", cut, err)
		}
	}
}

// TestReaderDataDigest: a bad data digest is ErrDataDigest, not fatal, and
// the next PDU reads fine.
func TestReaderDataDigest(t *testing.T) {
	p := Params{HeaderDigest: true, DataDigest: true, TxPDA: 3}
	bad := buildPDU(&p, c2hData(0, 512, FlagLast), pattern(512))
	bad[len(bad)-1] ^= 1 // the data digest
	badData := buildPDU(&p, c2hData(512, 512, FlagLast), pattern(512))
	badData[len(badData)-4-100] ^= 0x40 // a data byte
	good := buildPDU(&p, c2hData(1024, 512, FlagLast|FlagSuccess), pattern(512))
	rp := receiver(p)
	r := NewReader(bytes.NewReader(stream(bad, badData, good)), ToHost, &rp)
	buf := make([]byte, 512)
	for i, wantErr := range []bool{true, true, false} {
		h, l, err := r.Next()
		if err != nil {
			t.Fatalf("PDU %d: Next: %v", i, err)
		}
		if got := DataHeader(h).DataOffset(); got != uint32(512*i) {
			t.Fatalf("PDU %d: out of step: DATAO %d", i, got)
		}
		err = r.ReadData(buf[:l.DataLen])
		if wantErr {
			if !errors.Is(err, ErrDataDigest) {
				t.Fatalf("PDU %d: ReadData %v, want ErrDataDigest", i, err)
			}
			var fatal *Error
			if errors.As(err, &fatal) {
				t.Fatalf("PDU %d: data digest error %v is fatal", i, err)
			}
		} else if err != nil {
			t.Fatalf("PDU %d: %v", i, err)
		}
	}
	if !bytes.Equal(buf, pattern(512)) {
		t.Error("data of the good PDU")
	}
	if _, _, err := r.Next(); err != io.EOF {
		t.Fatalf("end: %v", err)
	}
}

// TestReaderPaddingSkipped fills the padding with garbage: the receiver
// skips it and reads the data at PDO.
func TestReaderPaddingSkipped(t *testing.T) {
	p := Params{HeaderDigest: true, TxPDA: 31}
	pdu := buildPDU(&p, c2hData(0, 64, FlagLast), pattern(64))
	if Header(pdu).PDO() != 128 {
		t.Fatalf("PDO %d", Header(pdu).PDO())
	}
	for i := 28; i < 128; i++ {
		pdu[i] = 0xee
	}
	rp := receiver(p)
	r := NewReader(iotest.OneByteReader(bytes.NewReader(stream(pdu, pdu))), ToHost, &rp)
	for i := range 2 {
		_, l, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		if l.PadLen() != 100 {
			t.Fatalf("PadLen %d", l.PadLen())
		}
		got := make([]byte, l.DataLen)
		if err := r.ReadData(got); err != nil {
			t.Fatalf("PDU %d: %v", i, err)
		}
		if !bytes.Equal(got, pattern(64)) {
			t.Fatalf("PDU %d: data % x", i, got[:8])
		}
	}
}

// TestReaderDiscard skips payloads explicitly and by calling Next again, over
// payloads larger than the Reader's scratch space.
func TestReaderDiscard(t *testing.T) {
	p := Params{HeaderDigest: true, DataDigest: true, TxPDA: 1}
	a := buildPDU(&p, c2hData(0, 3000, 0), pattern(3000))
	b := buildPDU(&p, c2hData(3000, 5, 0), pattern(5))
	c := buildPDU(&p, capsuleResp(7), nil)
	rp := receiver(p)
	r := NewReader(bytes.NewReader(stream(a, b, a, c)), ToHost, &rp)
	if err := r.Discard(); err != nil {
		t.Fatalf("Discard with nothing pending: %v", err)
	}
	if _, _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	if err := r.Discard(); err != nil {
		t.Fatal(err)
	}
	if err := r.Discard(); err != nil { // twice is harmless
		t.Fatal(err)
	}
	if err := r.ReadData(nil); err == nil {
		t.Fatal("ReadData after Discard succeeded")
	}
	h, _, err := r.Next()
	if err != nil || DataHeader(h).DataOffset() != 3000 {
		t.Fatalf("second PDU: %v %v", h, err)
	}
	// Not read: the next Next skips it.
	if _, _, err = r.Next(); err != nil {
		t.Fatal(err)
	}
	// Nor this one.
	h, l, err := r.Next()
	if err != nil || l.Type != TypeCapsuleResp || CapsuleResp(h).CQE().CID() != 7 {
		t.Fatalf("last PDU: %v %+v %v", h, l, err)
	}
	if _, _, err := r.Next(); err != io.EOF {
		t.Fatalf("end: %v", err)
	}
}

// TestReaderReadDataMisuse: a dst of the wrong size is refused without
// consuming anything.
func TestReaderReadDataMisuse(t *testing.T) {
	p := Params{}
	pdu := buildPDU(&p, c2hData(0, 16, FlagLast), pattern(16))
	rp := receiver(p)
	r := NewReader(bytes.NewReader(pdu), ToHost, &rp)
	if err := r.ReadData(make([]byte, 16)); err == nil {
		t.Fatal("ReadData before Next succeeded")
	}
	if _, _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 15, 17} {
		if err := r.ReadData(make([]byte, n)); err == nil {
			t.Fatalf("ReadData of %d bytes succeeded", n)
		}
	}
	got := make([]byte, 16)
	if err := r.ReadData(got); err != nil || !bytes.Equal(got, pattern(16)) {
		t.Fatalf("ReadData: %v", err)
	}
}

// TestReaderFatal: header errors come out of Next as *Error.
func TestReaderFatal(t *testing.T) {
	p := Params{HeaderDigest: true}
	badDigest := buildPDU(&p, capsuleResp(1), nil)
	badDigest[25] ^= 1
	rp := receiver(p)
	_, _, err := NewReader(bytes.NewReader(badDigest), ToHost, &rp).Next()
	checkErr(t, err, ErrHeaderDigest, 24)

	wrongDir := buildPDU(&p, capsuleResp(1), nil)
	_, _, err = NewReader(bytes.NewReader(wrongDir), ToController, &rp).Next()
	checkErr(t, err, ErrInvalidHeader, 0)

	tooBig := buildPDU(&p, c2hData(0, 4096, 0), pattern(4096))
	rp.MaxData = 4095
	_, _, err = NewReader(bytes.NewReader(tooBig), ToHost, &rp).Next()
	checkErr(t, err, ErrLimitExceeded, 4)
}

// TestReaderReadError passes through the errors of the underlying reader.
func TestReaderReadError(t *testing.T) {
	p := Params{}
	pdu := buildPDU(&p, c2hData(0, 16, FlagLast), pattern(16))
	boom := errors.New("boom")
	r := NewReader(io.MultiReader(bytes.NewReader(pdu[:30]), iotest.ErrReader(boom)), ToHost, &p)
	p.MaxData = 16
	if _, _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	if err := r.ReadData(make([]byte, 16)); err != boom {
		t.Fatalf("ReadData: %v, want boom", err)
	}
}

// TestReaderParamsChange follows a connection: ICReq without digests, then
// digests as negotiated.
func TestReaderParamsChange(t *testing.T) {
	host := Params{}
	icreq := buildPDU(&host, func(b []byte) { ICReq(b).Encode(&ICReqFields{HeaderDigest: true, DataDigest: true}) }, nil)
	host = Params{HeaderDigest: true, DataDigest: true}
	cmd := buildPDU(&host, func(b []byte) { CapsuleCmd(b).Encode().Encode(&writeSQE) }, data8)

	var ctrl Params
	ctrl.MaxInCapsule = 8
	r := NewReader(bytes.NewReader(stream(icreq, cmd)), ToController, &ctrl)
	h, _, err := r.Next()
	if err != nil {
		t.Fatal(err)
	}
	ctrl.HeaderDigest = ICReq(h).Digest()&DigestHeader != 0
	ctrl.DataDigest = ICReq(h).Digest()&DigestData != 0
	_, l, err := r.Next()
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, l.DataLen)
	if err := r.ReadData(got); err != nil || !bytes.Equal(got, data8) {
		t.Fatalf("in-capsule data: %v", err)
	}
}

// TestReaderNoAllocs: reading a PDU allocates nothing.
func TestReaderNoAllocs(t *testing.T) {
	p := Params{HeaderDigest: true, DataDigest: true}
	pdu := buildPDU(&p, c2hData(0, 4096, FlagLast), pattern(4096))
	src := bytes.NewReader(pdu)
	rp := receiver(p)
	r := NewReader(src, ToHost, &rp)
	dst := make([]byte, 4096)
	allocs := testing.AllocsPerRun(100, func() {
		src.Reset(pdu)
		if _, _, err := r.Next(); err != nil {
			t.Fatal(err)
		}
		if err := r.ReadData(dst); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per PDU", allocs)
	}
}

// TestReaderAllocBounded runs hostile and valid streams through a Reader
// that discards payloads: whatever sizes the peer claims (PLEN up to 4 GiB),
// the Reader allocates no more than its own fixed state and error values.
func TestReaderAllocBounded(t *testing.T) {
	inputs := [][]byte{
		ch(TypeC2HData, 0, 24, 24, 0xffffffff),
		ch(TypeCapsuleResp, 0, 24, 0, 0xffffffff),
		stream(ch(TypeC2HTermReq, 0, 24, 0, 152), bytes.Repeat([]byte{0xff}, 200)),
	}
	for _, s := range fuzzSeeds() {
		if s.target == "FuzzReader" {
			inputs = append(inputs, s.data)
		}
	}
	for mode := range 0x80 {
		if mode&0x20 != 0 {
			continue // the read bit: this test only discards
		}
		for _, in := range inputs {
			p, dir, _ := fuzzParams(uint8(mode))
			p.MaxData, p.MaxInCapsule = 0xffffffff, 0xffffffff // no limit: only the stream bounds reads
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			r := NewReader(bytes.NewReader(in), dir, &p)
			for {
				if _, _, err := r.Next(); err != nil {
					break
				}
			}
			runtime.ReadMemStats(&after)
			if n := after.TotalAlloc - before.TotalAlloc; n > 8<<10 {
				t.Fatalf("mode %#x, %d-byte input: %d bytes allocated", mode, len(in), n)
			}
		}
	}
}
