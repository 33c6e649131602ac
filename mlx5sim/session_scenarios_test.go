package mlx5sim

import (
	"fmt"
	"testing"

	"github.com/nvmefs/nvmefs/nvmetcp/wire"
)

// TestSessionPlacement: no digests, no faults. Every mapped read is placed
// whole by the device (the host copies nothing of it), every unmapped one
// is copied, and the stream arrives exactly as sent.
func TestSessionPlacement(t *testing.T) {
	s := runSession(t, sessionOpts{
		commands:  200,
		qd:        8,
		minSize:   512,
		maxSize:   256 << 10,
		maxC2H:    64 << 10,
		success:   0.3,
		r2t:       0.1,
		threshold: 32 << 10,
		keep:      true,
		seed:      1,
	})
	if t.Failed() {
		return
	}
	h := s.host
	if s.mappedBytes == 0 || s.unmappedBytes == 0 {
		t.Fatalf("mapped %d, unmapped %d bytes: the session does not cover both", s.mappedBytes, s.unmappedBytes)
	}
	if s.placed != s.mappedBytes {
		t.Errorf("placed %d of %d mapped bytes", s.placed, s.mappedBytes)
	}
	if s.copied != s.unmappedBytes {
		t.Errorf("copied %d bytes, %d unmapped", s.copied, s.unmappedBytes)
	}
	if got := stat(s.dev, "rx_nvmeotcp_offload_bytes"); got != uint64(s.placed) {
		t.Errorf("rx_nvmeotcp_offload_bytes %d, host saw %d placed", got, s.placed)
	}
	if got := stat(s.dev, "rx_nvmeotcp_bytes"); got != uint64(len(s.sent)) {
		t.Errorf("rx_nvmeotcp_bytes %d, sent %d", got, len(s.sent))
	}
	if r := stat(s.dev, "rx_nvmeotcp_resync"); r != 0 {
		t.Errorf("%d resync requests without faults", r)
	}
	// Without digests every in-sync segment is CRCOK (no CRC field to fail).
	if h.crcOKSegs != h.segments {
		t.Errorf("%d of %d segments CRCOK", h.crcOKSegs, h.segments)
	}
	t.Logf("%d segments (%d placed), %d PDUs, %d mapped bytes, %d unmapped; stats %v", h.segments, h.placedSegs, h.pdus, s.mappedBytes, s.unmappedBytes, s.dev.Stats())
}

// TestSessionDigests: header and data digests with PDU alignment and
// corrupted PDUs. The device verifies every good data digest (the host
// computes none of them) and never marks a corrupted PDU CRCOK.
func TestSessionDigests(t *testing.T) {
	for _, hpda := range []uint8{0, 3, 31} {
		t.Run(fmt.Sprintf("hpda=%d", hpda), func(t *testing.T) {
			s := runSession(t, sessionOpts{
				oc:        wire.OffloadConfig{HeaderDigest: true, DataDigest: true, HPDA: hpda},
				commands:  150,
				qd:        6,
				minSize:   1,
				maxSize:   160 << 10,
				maxC2H:    48 << 10,
				success:   0.5,
				r2t:       0.1,
				corrupt:   0.15,
				threshold: 4096,
				chunk:     3000,
				keep:      true,
				seed:      uint64(hpda) + 2,
			})
			if t.Failed() {
				return
			}
			h := s.host
			if s.corrupted == 0 {
				t.Fatal("no corrupted PDU in the session")
			}
			if h.software != s.corrupted {
				t.Errorf("host checked %d digests in software, want only the %d corrupted PDUs", h.software, s.corrupted)
			}
			if h.offloaded+h.software != h.dataPDUs {
				t.Errorf("%d offloaded + %d software digests, %d data PDUs", h.offloaded, h.software, h.dataPDUs)
			}
			if bad := stat(s.dev, "sim_crc_bad"); bad != uint64(s.corrupted) {
				t.Errorf("sim_crc_bad %d, corrupted %d", bad, s.corrupted)
			}
			t.Logf("hpda %d: %d data PDUs, %d offloaded, %d corrupted, %d failed reads", hpda, h.dataPDUs, h.offloaded, s.corrupted, s.failedCmds)
		})
	}
}
