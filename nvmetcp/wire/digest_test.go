package wire

import (
	"bytes"
	"testing"
)

// TestDigestRFC3720 checks DataDigest and HeaderDigest against the CRC32C
// examples of RFC 3720 (iSCSI) appendix B.4, as the bytes travel (PutDigest).
func TestDigestRFC3720(t *testing.T) {
	asc := make([]byte, 32)
	desc := make([]byte, 32)
	for i := range asc {
		asc[i] = byte(i)
		desc[i] = byte(31 - i)
	}
	for _, tc := range []struct {
		name string
		in   []byte
		wire string // digest bytes in wire order
	}{
		{"32 zeros", make([]byte, 32), "aa 36 91 8a"},
		{"32 0xff", bytes.Repeat([]byte{0xff}, 32), "43 ab a8 62"},
		{"ascending", asc, "4e 79 dd 46"},
		{"descending", desc, "5c db 3f 11"},
	} {
		want := unhex(t, tc.wire)
		for _, f := range []func([]byte) uint32{DataDigest, HeaderDigest} {
			var got [DigestLen]byte
			PutDigest(got[:], f(tc.in))
			if !bytes.Equal(got[:], want) {
				t.Errorf("%s: digest on the wire % x, want % x", tc.name, got, want)
			}
			if GetDigest(want) != f(tc.in) {
				t.Errorf("%s: GetDigest(% x) = %#x, want %#x", tc.name, want, GetDigest(want), f(tc.in))
			}
		}
	}
	// The check value of CRC-32C (Castagnoli).
	if got := DataDigest([]byte("123456789")); got != 0xe3069283 {
		t.Errorf("CRC32C(123456789) = %#x, want 0xe3069283", got)
	}
}

func TestUpdateDigestInPieces(t *testing.T) {
	data := pattern(4096)
	if got := DataDigest(data); got != 0xed96b643 {
		t.Fatalf("DataDigest(pattern 4096) = %#x, want 0xed96b643", got)
	}
	for _, cut := range []int{0, 1, 7, 512, 4095, 4096} {
		crc := UpdateDigest(0, data[:cut])
		crc = UpdateDigest(crc, data[cut:])
		if crc != DataDigest(data) {
			t.Errorf("cut at %d: %#x, want %#x", cut, crc, DataDigest(data))
		}
	}
}
