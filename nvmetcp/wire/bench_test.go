package wire

import (
	"bytes"
	"testing"
)

var benchParams = []struct {
	name string
	p    Params
}{
	{"plain", Params{MaxData: 1 << 20}},
	{"hdgst", Params{HeaderDigest: true, MaxData: 1 << 20}},
}

// BenchmarkDataHeaderEncode: a C2HData header, Encode and Seal (24 bytes).
func BenchmarkDataHeaderEncode(b *testing.B) {
	for _, bp := range benchParams {
		b.Run(bp.name, func(b *testing.B) {
			buf := make([]byte, MaxHeaderBuf)
			f := DataFields{Type: TypeC2HData, Flags: FlagLast, CCCID: 7, DataLen: 4096}
			b.SetBytes(DataHdrLen)
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				f.DataOffset = uint32(i) << 12
				DataHeader(buf).Encode(&f)
				if h := bp.p.Seal(buf, 4096); len(h) < DataHdrLen {
					b.Fatal(len(h))
				}
			}
		})
	}
}

// BenchmarkDataHeaderDecode: Layout and VerifyHeader of a C2HData header.
func BenchmarkDataHeaderDecode(b *testing.B) {
	for _, bp := range benchParams {
		b.Run(bp.name, func(b *testing.B) {
			p := bp.p
			h := sealed(p, c2hData(0x1000, 4096, FlagLast), 4096)
			b.SetBytes(DataHdrLen)
			b.ReportAllocs()
			for b.Loop() {
				l, err := p.Layout(h, ToHost)
				if err != nil {
					b.Fatal(err)
				}
				if err := p.VerifyHeader(Header(h), l); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkDataDigest(b *testing.B) {
	for _, n := range []struct {
		name string
		size int
	}{{"4KiB", 4 << 10}, {"128KiB", 128 << 10}} {
		b.Run(n.name, func(b *testing.B) {
			data := pattern(n.size)
			b.SetBytes(int64(n.size))
			b.ReportAllocs()
			for b.Loop() {
				DataDigest(data)
			}
		})
	}
}

// BenchmarkReaderC2HData: Reader.Next and ReadData of one 128 KiB C2HData
// PDU from a bytes.Reader (the copy, and the CRC with digests on).
func BenchmarkReaderC2HData(b *testing.B) {
	const size = 128 << 10
	for _, bp := range []struct {
		name string
		p    Params
	}{
		{"plain", Params{}},
		{"digests", Params{HeaderDigest: true, DataDigest: true}},
	} {
		b.Run(bp.name, func(b *testing.B) {
			pdu := buildPDU(&bp.p, c2hData(0, size, FlagLast|FlagSuccess), pattern(size))
			src := bytes.NewReader(pdu)
			rp := receiver(bp.p)
			r := NewReader(src, ToHost, &rp)
			dst := make([]byte, size)
			b.SetBytes(size)
			b.ReportAllocs()
			for b.Loop() {
				src.Reset(pdu)
				_, l, err := r.Next()
				if err != nil {
					b.Fatal(err)
				}
				if err := r.ReadData(dst[:l.DataLen]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
