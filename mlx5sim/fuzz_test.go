package mlx5sim

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/ddp"
	"github.com/nvmefs/nvmefs/nvmetcp/wire"
)

var updateCorpus = flag.Bool("update-corpus", false, "rewrite the seed corpus in testdata/fuzz")

var (
	fuzzPDAs = [4]uint8{0, 1, 7, 31}
	fuzzMTUs = [4]int{DefaultMTU, 100, 7, 9000}
)

const (
	fuzzTags    = 4
	fuzzBufSize = 16 << 10
)

// fuzzMode decodes the mode byte of a fuzz input: bit 0 header digests,
// bit 1 data digests, bits 2-3 the HPDA (0, 1, 7, 31), bits 4-5 the MTU
// (1448, 100, 7, 9000), bit 6 a 5% tracker loss, bit 7 rx-crc off.
func fuzzMode(mode uint8) (Config, wire.OffloadConfig) {
	cfg := Config{MTU: fuzzMTUs[mode>>4&3], Seed: 1, MaxPDUData: 1 << 20}
	if mode&0x40 != 0 {
		cfg.LossRate = 0.05
	}
	if mode&0x80 != 0 {
		cfg.Capabilities = ddp.CapPlacement
	}
	oc := wire.OffloadConfig{
		HeaderDigest: mode&1 != 0,
		DataDigest:   mode&2 != 0,
		HPDA:         fuzzPDAs[mode>>2&3],
		QueueSize:    fuzzTags,
	}
	return cfg, oc
}

// FuzzEngine feeds an arbitrary stream through an offloaded socket whose
// host has mapped a buffer for every tag of the queue. Whatever the bytes:
// no panic, the host receives exactly what was sent, every placed segment
// is where the host's own parse says it belongs (fakeHost checks), every
// byte of a mapped buffer not covered by a placed segment is untouched,
// and no segment of a PDU with a bad digest is all CRCOK.
func FuzzEngine(f *testing.F) {
	// The seeds are in testdata/fuzz/FuzzEngine (see TestFuzzCorpus).
	f.Fuzz(func(t *testing.T, mode uint8, stream []byte) {
		cfg, oc := fuzzMode(mode)
		dev, err := newDev(cfg)
		if err != nil {
			t.Fatal(err)
		}
		hc, tc := unixPair(t)
		host := newFakeHost(t, oc, 0)
		host.keepData = true
		host.mtu = dev.MTU()
		host.rxCRC = cfg.Capabilities != ddp.CapPlacement
		var cmds [fuzzTags]*hcmd
		host.lookup = func(tag uint16) *hcmd {
			if int(tag) < len(cmds) {
				return cmds[tag]
			}
			return nil
		}
		ulp := &fuzzULP{host: host}
		sock, err := dev.SkAdd(hc, oc, ulp)
		if err != nil {
			t.Fatal(err)
		}
		host.sock = sock
		for tag := range cmds {
			buf := bytes.Repeat([]byte{sentinel}, fuzzBufSize)
			io := &ddp.IO{Tag: uint16(tag), SG: ddp.SG(buf, nil), Len: len(buf)}
			if err := sock.Setup(io); err != nil {
				t.Fatal(err)
			}
			// Abandoned: the host copies nothing in, so whatever is not
			// sentinel was placed.
			cmds[tag] = &hcmd{tag: uint16(tag), buf: buf, io: io, abandoned: true, cover: make([]bool, len(buf))}
		}
		go func() {
			tc.Write(stream)
			tc.(*net.UnixConn).CloseWrite()
		}()
		done := make(chan error, 1)
		go func() {
			for {
				seg, err := sock.Recv()
				if err != nil {
					done <- err
					return
				}
				host.segment(seg)
			}
		}()
		select {
		case err = <-done:
		case <-time.After(10 * time.Second):
			sock.Close()
			<-done
			t.Fatalf("stream of %d bytes not received in 10s (%d received)", len(stream), host.n)
		}
		sock.Close()
		if err != io.EOF {
			t.Fatalf("stream ended with %v", err)
		}
		if !bytes.Equal(host.got, stream) {
			t.Fatalf("received %d bytes, sent %d, or they differ", len(host.got), len(stream))
		}
		if err := host.requestError(); err != nil {
			t.Fatal(err)
		}
		for tag, c := range cmds {
			for i, b := range c.buf {
				if !c.cover[i] && b != sentinel {
					t.Fatalf("tag %d: byte %d written but never delivered as placed", tag, i)
				}
			}
		}
		if got := dev.Stat("rx_nvmeotcp_bytes"); got != uint64(len(stream)) {
			t.Fatalf("rx_nvmeotcp_bytes %d, stream %d", got, len(stream))
		}
		if ulp.dones != fuzzTags {
			t.Fatalf("%d TeardownDone calls at Close, want %d", ulp.dones, fuzzTags)
		}
	})
}

type fuzzULP struct {
	host  *fakeHost
	dones int // only at Close, which waits for them
}

func (u *fuzzULP) ResyncRequest(seq ddp.Seq) { u.host.ResyncRequest(seq) }
func (u *fuzzULP) TeardownDone(*ddp.IO)      { u.dones++ }

type fuzzSeed struct {
	name string
	mode uint8
	data []byte
}

// fuzzSeeds are valid streams under various modes, and hostile ones.
func fuzzSeeds() []fuzzSeed {
	var seeds []fuzzSeed
	valid := func(name string, mode uint8, seed uint64) {
		_, oc := fuzzMode(mode)
		s := newSender(oc)
		rng := rand.New(rand.NewPCG(seed, 3))
		var b []byte
		for i := range 6 {
			tag := uint16(rng.IntN(fuzzTags + 1)) // fuzzTags: a tag the queue cannot map
			size := 1 + rng.IntN(1500)
			datao := rng.IntN(fuzzBufSize - size + 1)
			if i == 2 {
				datao = fuzzBufSize - size/2 // reaches past the buffer
			}
			flags := wire.FlagLast
			if i%2 == 0 {
				flags |= wire.FlagSuccess
			}
			corrupt := 0
			if i == 4 {
				corrupt = 1
			}
			b = append(b, s.c2h(tag, datao, data(size, uint32(i)), flags, corrupt)...)
			switch i % 3 {
			case 0:
				b = append(b, s.resp(tag)...)
			case 1:
				b = append(b, s.r2t(tag, 0, 512)...)
			}
		}
		seeds = append(seeds, fuzzSeed{name, mode, b})
	}
	valid("plain", 0x00, 1)
	valid("hdgst-ddgst", 0x03, 2)
	valid("hdgst-ddgst-hpda31-mtu100", 0x03|3<<2|1<<4, 3)
	valid("ddgst-hpda1-mtu7", 0x02|1<<2|2<<4, 4)
	valid("hdgst-ddgst-loss", 0x03|0x40, 5)
	valid("ddgst-rxcrc-off-mtu9000", 0x02|3<<4|0x80, 6)
	valid("hdgst-hpda7-loss-mtu100", 0x01|2<<2|1<<4|0x40, 7)

	rng := rand.New(rand.NewPCG(9, 9))
	seeds = append(seeds, fuzzSeed{"random", 0x03, randBytes(rng, 3000)})
	_, oc := fuzzMode(0x02)
	h := newSender(oc).c2h(1, 0, data(64, 1), wire.FlagLast, 0)
	h[4], h[5], h[6], h[7] = 0xff, 0xff, 0xff, 0x7f
	seeds = append(seeds, fuzzSeed{"huge-plen", 0x02, append(h, randBytes(rng, 500)...)})
	seeds = append(seeds, fuzzSeed{"empty", 0x00, nil})
	return seeds
}

func corpusFile(s fuzzSeed) []byte {
	return fmt.Appendf(nil, "go test fuzz v1\nbyte(%q)\n[]byte(%q)\n", s.mode, s.data)
}

// TestFuzzCorpus checks the seed corpus against its generator (or rewrites
// it with -update-corpus).
func TestFuzzCorpus(t *testing.T) {
	for _, s := range fuzzSeeds() {
		path := filepath.Join("testdata", "fuzz", "FuzzEngine", "seed-"+s.name)
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
		got, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s is missing or stale (go test -run TestFuzzCorpus -update-corpus): %v", path, err)
		}
	}
}
