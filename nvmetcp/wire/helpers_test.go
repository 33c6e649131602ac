package wire

import (
	"encoding/hex"
	"strings"
	"testing"
)

// unhex decodes a hex string in which spaces and newlines only group the
// fields for the reader.
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.NewReplacer(" ", "", "\n", "", "\t", "").Replace(s))
	if err != nil {
		t.Fatalf("bad hex in test: %v", err)
	}
	return b
}

// buildPDU encodes a complete PDU as a sender under p would put it on the
// wire: the header that enc writes, sealed, then data and its digest.
func buildPDU(p *Params, enc func(b []byte), data []byte) []byte {
	buf := make([]byte, MaxHeaderBuf)
	enc(buf)
	out := append([]byte(nil), p.Seal(buf, len(data))...)
	out = append(out, data...)
	if p.DataDigest && len(data) > 0 && digestible(Type(buf[0])) {
		var d [DigestLen]byte
		PutDigest(d[:], DataDigest(data))
		out = append(out, d[:]...)
	}
	return out
}

// receiver is the Params of the peer that receives what a sender under p
// sends: same digests, its RxPDA is the sender's TxPDA, generous limits.
func receiver(p Params) Params {
	return Params{
		HeaderDigest: p.HeaderDigest,
		DataDigest:   p.DataDigest,
		RxPDA:        p.TxPDA,
		MaxData:      1 << 20,
		MaxInCapsule: 1 << 16,
	}
}

// pattern is n bytes of a fixed, non-trivial pattern.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + 3)
	}
	return b
}
