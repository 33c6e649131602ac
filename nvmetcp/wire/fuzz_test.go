package wire

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

var updateCorpus = flag.Bool("update-corpus", false, "rewrite the seed corpus in testdata/fuzz")

// The bounds a fuzzed receiver enforces: no PDU may make it read more.
const (
	fuzzMaxData      = 64 << 10
	fuzzMaxInCapsule = 16 << 10
	fuzzSmallData    = 4096
	fuzzSmallCapsule = 1024
)

var fuzzPDAs = [4]uint8{0, 1, 7, 31}

// fuzzParams decodes the mode byte of a fuzz input: bit 0 the direction
// (set: to the host), bit 1 header digests, bit 2 data digests, bits 3-4 the
// RxPDA (0, 1, 7, 31), bit 5 read payloads (else discard them), bit 6 small
// limits.
func fuzzParams(mode uint8) (p Params, dir Direction, read bool) {
	p = Params{
		HeaderDigest: mode&0x02 != 0,
		DataDigest:   mode&0x04 != 0,
		RxPDA:        fuzzPDAs[mode>>3&3],
		MaxData:      fuzzMaxData,
		MaxInCapsule: fuzzMaxInCapsule,
	}
	if mode&0x40 != 0 {
		p.MaxData, p.MaxInCapsule = fuzzSmallData, fuzzSmallCapsule
	}
	dir = ToController
	if mode&0x01 != 0 {
		dir = ToHost
	}
	return p, dir, mode&0x20 != 0
}

// fuzzMode is the mode byte under which a receiver reads what a sender
// under p sends in direction dir.
func fuzzMode(p Params, dir Direction, read bool) uint8 {
	var m uint8
	if dir == ToHost {
		m |= 0x01
	}
	if p.HeaderDigest {
		m |= 0x02
	}
	if p.DataDigest {
		m |= 0x04
	}
	m |= uint8(slices.Index(fuzzPDAs[:], p.TxPDA)) << 3
	if read {
		m |= 0x20
	}
	return m
}

// checkLayout asserts what a Layout accepted by p must satisfy, whatever the
// bytes: it bounds every read that follows.
func checkLayout(t *testing.T, p *Params, dir Direction, l Layout) {
	t.Helper()
	if !dir.Accepts(l.Type) || l.HLen != HeaderLen(l.Type) {
		t.Fatalf("accepted %v HLEN %d in direction %v", l.Type, l.HLen, dir)
	}
	if l.HeaderBytes() > MaxHeaderBuf || l.HeaderBytes() < CommonHeaderLen {
		t.Fatalf("header of %d bytes", l.HeaderBytes())
	}
	var bound int
	switch l.Type {
	case TypeCapsuleCmd:
		bound = int(p.MaxInCapsule)
	case TypeH2CData, TypeC2HData:
		bound = int(p.MaxData)
	case TypeH2CTermReq, TypeC2HTermReq:
		bound = TermReqMaxDataLen
	}
	if l.DataLen < 0 || l.DataLen > bound {
		t.Fatalf("%v: %d bytes of data, bound %d", l.Type, l.DataLen, bound)
	}
	if l.PadLen() < 0 || l.PadLen() > MaxHeaderBuf {
		t.Fatalf("%v: padding %d", l.Type, l.PadLen())
	}
	if l.DataLen > 0 {
		if l.DataOffset < l.HeaderBytes() || l.DataOffset+l.DataLen+l.DDGST != l.PLen {
			t.Fatalf("%v: inconsistent %+v", l.Type, l)
		}
	} else if l.PLen != l.HeaderBytes() || l.DDGST != 0 {
		t.Fatalf("%v: no data but %+v", l.Type, l)
	}
}

// checkFatal asserts that err is a fatal *Error fit for a TermReq.
func checkFatal(t *testing.T, err error) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is no *Error", err, err)
	}
	if e.FES < FESInvalidHeader || e.FES > FESUnsupported || e.Offset < 0 || e.Offset >= ICReqLen+DigestLen {
		t.Fatalf("error %v: FES %v offset %d", err, e.FES, e.Offset)
	}
}

// FuzzReader feeds arbitrary bytes to a Reader, either direction, any
// negotiated parameters, reading or discarding payloads into a buffer of a
// fixed size. It must never panic or read past the bounds, and every error
// must be one the Reader documents.
func FuzzReader(f *testing.F) {
	// The seeds are in testdata/fuzz/FuzzReader (see TestFuzzCorpus).
	f.Fuzz(func(t *testing.T, mode uint8, data []byte) {
		p, dir, read := fuzzParams(mode)
		r := NewReader(bytes.NewReader(data), dir, &p)
		buf := make([]byte, max(fuzzMaxData, fuzzMaxInCapsule, TermReqMaxDataLen))
		consumed := 0
		for {
			h, l, err := r.Next()
			if err != nil {
				switch {
				case err == io.EOF:
					if consumed != len(data) {
						t.Fatalf("io.EOF after %d of %d bytes", consumed, len(data))
					}
				case err == io.ErrUnexpectedEOF:
				default:
					checkFatal(t, err)
				}
				return
			}
			checkLayout(t, &p, dir, l)
			if len(h) != l.HeaderBytes() || h.Type() != l.Type || int(h.PLen()) != l.PLen {
				t.Fatalf("header %v does not match %+v", h, l)
			}
			consumed += l.PLen
			if l.DataLen == 0 {
				continue
			}
			if !read {
				if err := r.Discard(); err != nil {
					if err != io.ErrUnexpectedEOF {
						t.Fatalf("Discard: %v", err)
					}
					return
				}
				continue
			}
			err = r.ReadData(buf[:l.DataLen])
			switch {
			case err == nil, errors.Is(err, ErrDataDigest):
			case err == io.ErrUnexpectedEOF:
				return
			default:
				t.Fatalf("ReadData: %v", err)
			}
		}
	})
}

// FuzzLayout checks Layout on arbitrary common headers, and VerifyHeader on
// whatever follows them.
func FuzzLayout(f *testing.F) {
	// The seeds are in testdata/fuzz/FuzzLayout (see TestFuzzCorpus).
	f.Fuzz(func(t *testing.T, mode uint8, hdr []byte) {
		p, dir, _ := fuzzParams(mode)
		l, err := p.Layout(hdr, dir)
		if err != nil {
			checkFatal(t, err)
			if e := err.(*Error); e.Offset >= CommonHeaderLen {
				t.Fatalf("Layout blames offset %d, past the common header", e.Offset)
			}
			return
		}
		checkLayout(t, &p, dir, l)
		full := make([]byte, l.HeaderBytes())
		copy(full, hdr)
		if err := p.VerifyHeader(Header(full), l); err != nil {
			checkFatal(t, err)
		}
		if err := p.VerifyHeader(Header(full[:len(full)-1]), l); err == nil {
			t.Fatal("VerifyHeader accepted a short header")
		}
		// What Seal makes of the same header and data length, Layout
		// takes back: the same data, at the smallest aligned PDO.
		if digestible(l.Type) {
			sender := Params{HeaderDigest: p.HeaderDigest, DataDigest: p.DataDigest, TxPDA: p.RxPDA}
			buf := make([]byte, MaxHeaderBuf)
			copy(buf, full[:l.HLen])
			resealed := sender.Seal(buf, l.DataLen)
			l2, err := p.Layout(resealed, dir)
			if err != nil {
				t.Fatalf("Layout of the resealed header: %v", err)
			}
			if l2.DataLen != l.DataLen || l2.PLen > l.PLen || l2.DataOffset > l.DataOffset || l2.Flags != l.Flags {
				t.Fatalf("resealed %+v, received %+v", l2, l)
			}
			if l2.DataLen > 0 && len(resealed) != l2.DataOffset {
				t.Fatalf("Seal returned %d bytes, PDO %d", len(resealed), l2.DataOffset)
			}
		}
	})
}

type fuzzSeed struct {
	target string
	name   string
	mode   uint8
	data   []byte
	valid  bool // a well-formed stream, read to its end without error
}

// fuzzSeeds are the seed corpus: every golden PDU (alone and twice in a
// stream), a whole connection's worth of PDUs, and malformed ones.
func fuzzSeeds() []fuzzSeed {
	var seeds []fuzzSeed
	add := func(target, name string, mode uint8, data []byte) {
		seeds = append(seeds, fuzzSeed{target, name, mode, data, true})
	}
	bad := func(target, name string, mode uint8, data []byte) {
		seeds = append(seeds, fuzzSeed{target, name, mode, data, false})
	}
	for _, g := range goldenPDUs() {
		pdu := buildPDU(&g.p, g.enc, g.data)
		name := fileName(g.name)
		add("FuzzReader", name, fuzzMode(g.p, g.dir, true), stream(pdu, pdu))
		add("FuzzReader", name+"-discard", fuzzMode(g.p, g.dir, false), pdu)
		add("FuzzLayout", name, fuzzMode(g.p, g.dir, true), pdu[:g.layout.HeaderBytes()])
	}

	// A host's side of a connection, and the controller's.
	host := Params{HeaderDigest: true, DataDigest: true, TxPDA: 7}
	ctrl := Params{HeaderDigest: true, DataDigest: true}
	toCtrl := stream(
		buildPDU(&host, func(b []byte) { CapsuleCmd(b).Encode().Encode(&readSQE) }, nil),
		buildPDU(&host, func(b []byte) { CapsuleCmd(b).Encode().Encode(&writeSQE) }, data8),
		buildPDU(&host, func(b []byte) {
			DataHeader(b).Encode(&DataFields{Type: TypeH2CData, CCCID: 5, TTag: 1, DataLen: 300})
		}, pattern(300)),
		buildPDU(&host, func(b []byte) {
			DataHeader(b).Encode(&DataFields{Type: TypeH2CData, Flags: FlagLast, CCCID: 5, TTag: 1, DataOffset: 300, DataLen: 1})
		}, pattern(1)),
		buildPDU(&host, func(b []byte) {
			TermReq(b).Encode(&TermReqFields{Type: TypeH2CTermReq, FES: FESHeaderDigest})
		}, pattern(28)),
	)
	add("FuzzReader", "host-stream", fuzzMode(host, ToController, true), toCtrl)
	toHost := stream(
		buildPDU(&ctrl, func(b []byte) { R2T(b).Encode(&R2TFields{CCCID: 5, TTag: 1, Len: 301}) }, nil),
		buildPDU(&ctrl, c2hData(0, 512, 0), pattern(512)),
		buildPDU(&ctrl, c2hData(512, 512, FlagLast), pattern(512)),
		buildPDU(&ctrl, capsuleResp(5), nil),
		buildPDU(&ctrl, c2hData(0, 4096, FlagLast|FlagSuccess), pattern(4096)),
		buildPDU(&ctrl, func(b []byte) {
			TermReq(b).Encode(&TermReqFields{Type: TypeC2HTermReq, FES: FESInvalidHeader, FEI: 3})
		}, pattern(128)),
	)
	add("FuzzReader", "controller-stream", fuzzMode(ctrl, ToHost, true), toHost)
	add("FuzzReader", "controller-stream-discard", fuzzMode(ctrl, ToHost, false), toHost)

	// Malformed.
	badDigest := buildPDU(&ctrl, c2hData(0, 64, FlagLast), pattern(64))
	badDigest[len(badDigest)-2] ^= 0xff
	bad("FuzzReader", "bad-data-digest", fuzzMode(ctrl, ToHost, true), stream(badDigest, buildPDU(&ctrl, capsuleResp(1), nil)))
	badHeader := buildPDU(&ctrl, capsuleResp(1), nil)
	badHeader[24] ^= 1
	bad("FuzzReader", "bad-header-digest", fuzzMode(ctrl, ToHost, true), badHeader)
	bad("FuzzReader", "truncated", fuzzMode(ctrl, ToHost, true), toHost[:len(toHost)/2])
	bad("FuzzReader", "huge-plen", 0x01|0x20, ch(TypeC2HData, 0, 24, 24, 0xffffffff))
	bad("FuzzReader", "term-too-long", 0x01, ch(TypeC2HTermReq, 0, 24, 0, 153))
	bad("FuzzReader", "empty", 0, nil)
	bad("FuzzLayout", "huge-plen", 0x01|0x40, ch(TypeC2HData, 0, 24, 24, 0xffffffff))
	bad("FuzzLayout", "pdo-misaligned", 0x18, ch(TypeH2CData, 0, 24, 36, 100))
	bad("FuzzLayout", "hlen-255", 0x03, ch(TypeCapsuleResp, FlagHDGST, 255, 0, 259))
	bad("FuzzLayout", "short", 0, []byte{4, 0, 72})
	return seeds
}

func fileName(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
			b[i] = '-'
		}
	}
	return string(b)
}

// corpusFile is a seed in the format of go test's fuzz corpus files.
func corpusFile(s fuzzSeed) []byte {
	return fmt.Appendf(nil, "go test fuzz v1\nbyte(%q)\n[]byte(%q)\n", s.mode, s.data)
}

// TestFuzzCorpus checks that testdata/fuzz holds the seeds that fuzzSeeds
// makes (go test runs them as tests); -update-corpus writes them.
func TestFuzzCorpus(t *testing.T) {
	for _, s := range fuzzSeeds() {
		path := filepath.Join("testdata", "fuzz", s.target, "seed-"+s.name)
		want := corpusFile(s)
		if *updateCorpus {
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, want, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if s.valid && s.target == "FuzzReader" {
			p, dir, _ := fuzzParams(s.mode)
			r := NewReader(bytes.NewReader(s.data), dir, &p)
			var err error
			for err == nil {
				_, _, err = r.Next()
			}
			if err != io.EOF {
				t.Errorf("seed %s: %v, want a clean stream", s.name, err)
			}
		}
		got, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s is missing or stale (go test -run TestFuzzCorpus -update-corpus): %v", path, err)
		}
	}
}
