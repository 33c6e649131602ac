package tests

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/nvmetcp/host"
)

// The kernel target of TestKernelTarget: small namespaces, because the
// kernel runs under TCG emulation where KVM does not work.
const (
	ktNQN     = "nqn.2026-01.io.nvmefs:tests-kernel-target"
	ktNS1Size = 8 << 20 // nsid 1: brd, 512-byte LBAs
	ktNS2Size = 4 << 20 // nsid 2: tmpfs file, 4096-byte LBAs
)

// kernelTarget is a running target.sh VM.
type kernelTarget struct {
	peer  *kernelPeer
	port  int
	state string
	out   bytes.Buffer
}

func (k *kernelPeer) targetCmd(ctx context.Context, kt *kernelTarget, verb string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(k.Dir, "target.sh"), verb)
	cmd.Env = append(os.Environ(),
		"KNVME_CACHE="+k.Cache,
		"KNVME_STATE="+kt.state,
		"PORT="+strconv.Itoa(kt.port),
		"NQN="+ktNQN,
		"NS_SIZE_MB="+strconv.Itoa(ktNS1Size>>20),
		"NS2_SIZE_MB="+strconv.Itoa(ktNS2Size>>20),
		"READY_TIMEOUT=120",
	)
	return cmd
}

// StartTarget boots the kernel target on a free port; t.Cleanup stops it
// (target.sh stop kills only the QEMU in its pid file, after checking its
// command line).
func (k *kernelPeer) StartTarget(t *testing.T) *kernelTarget {
	t.Helper()
	kt := &kernelTarget{peer: k, port: freePort(t), state: t.TempDir()}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if out, err := k.targetCmd(ctx, kt, "stop").CombinedOutput(); err != nil {
			t.Errorf("target.sh stop: %v\n%s", err, out)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	cmd := k.targetCmd(ctx, kt, "start")
	cmd.Stdout, cmd.Stderr = &kt.out, &kt.out
	start := time.Now()
	if err := cmd.Run(); err != nil {
		console, _ := os.ReadFile(filepath.Join(kt.state, "console.log"))
		t.Fatalf("target.sh start: %v\n%s\nconsole:\n%s", err, kt.out.String(), tail(string(console), 40))
	}
	t.Logf("kernel target up on 127.0.0.1:%d in %v", kt.port, time.Since(start).Round(100*time.Millisecond))
	return kt
}

func (kt *kernelTarget) Addr() string { return "127.0.0.1:" + strconv.Itoa(kt.port) }

// TestKernelTarget drives the Linux kernel's NVMe/TCP target (nvmet-tcp in
// QEMU) with our host: discovery, then both namespaces read whole and checked
// against the data pattern, with and without digests, on several I/O queues;
// then writes read back, Write Zeroes and the pattern restored.
func TestKernelTarget(t *testing.T) {
	peer := needKernelPeer(t)
	kt := peer.StartTarget(t)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	baseOpts := host.Options{
		HostNQN:        "nqn.2014-08.org.nvmexpress:uuid:4b4e5650-0000-4000-8000-0000000000ee",
		HostID:         [16]byte{0x4b, 0x4e, 0x56, 0x50, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, 0xee},
		IOTimeout:      60 * time.Second, // TCG is slow
		ReconnectDelay: time.Second,
		CtrlLossTmo:    30 * time.Second,
		Logger:         logger,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	t.Run("discover", func(t *testing.T) {
		entries, err := host.Discover(ctx, kt.Addr(), baseOpts)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, e := range entries {
			t.Logf("discovery entry: %s %s %s:%s %s", e.TransportName(), e.SubtypeName(), e.Address, e.ServiceID, e.SubNQN)
			if e.SubNQN == ktNQN && e.TransportName() == "tcp" {
				found = true
			}
		}
		if !found {
			t.Errorf("subsystem %s not in the kernel's discovery log", ktNQN)
		}
	})

	for _, v := range []struct {
		name    string
		hd, dd  bool
		queues  int
		qsize   int
		readers int
	}{
		{"no-digests", false, false, 2, 32, 4},
		{"digests", true, true, 3, 64, 6},
		{"header-digest-one-queue", true, false, 1, 16, 2},
	} {
		t.Run(v.name, func(t *testing.T) {
			o := baseOpts
			o.HeaderDigest, o.DataDigest = v.hd, v.dd
			o.NrIOQueues, o.QueueSize = v.queues, v.qsize
			c, err := host.Connect(ctx, kt.Addr(), ktNQN, o)
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := c.Close(); err != nil {
					t.Errorf("Close (controller shutdown): %v", err)
				}
			}()
			info := c.Info()
			t.Logf("controller %d: %s %s, %d I/O queues of %d, max transfer %d, in-capsule %d, MAXH2CDATA %d",
				info.CntlID, info.Model, info.Firmware, info.IOQueues, info.QueueSize, info.MaxTransfer, info.InCapsule, info.MaxH2CData)
			if info.IOQueues != v.queues {
				t.Errorf("%d I/O queues, want %d", info.IOQueues, v.queues)
			}
			checkKernelNamespaces(t, c)
			start := time.Now()
			for _, nsid := range []uint32{1, 2} {
				readPatternAll(ctx, t, c, nsid, v.readers)
			}
			s := c.Stats()
			t.Logf("read %d MiB in %v; %d commands, %d errors, %d digest errors, %d CRCs checked",
				s.Total.BytesRead>>20, time.Since(start).Round(10*time.Millisecond), s.Total.Commands, s.Total.Errors, s.Total.DigestErrors, s.Total.CRCSoftware)
			if s.Total.Errors != 0 || s.Recoveries != 0 {
				t.Errorf("errors %d recoveries %d", s.Total.Errors, s.Recoveries)
			}
			if v.dd && s.Total.CRCSoftware == 0 {
				t.Error("data digests on, but no digest was checked")
			}
			n := 0
			for _, q := range s.IO {
				if q.Commands > 0 {
					n++
				}
			}
			if n != v.queues {
				t.Errorf("%d of %d I/O queues carried commands", n, v.queues)
			}
		})
	}

	t.Run("write-read-back", func(t *testing.T) {
		o := baseOpts
		o.HeaderDigest, o.DataDigest = true, true
		o.NrIOQueues = 2
		c, err := host.Connect(ctx, kt.Addr(), ktNQN, o)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for _, nsid := range []uint32{1, 2} {
			ns, _ := c.Namespace(nsid)
			// 1 MiB at the end (R2T: above the 16 KiB in-capsule size),
			// and 4 KiB at the start (in-capsule).
			for _, w := range []struct{ off, size int64 }{{ns.Size() - 1<<20, 1 << 20}, {0, 4096}} {
				data := make([]byte, w.size)
				for i := range data {
					data[i] = byte(i*7 + int(nsid) + int(w.off>>12))
				}
				lba := uint64(w.off / int64(ns.BlockSize))
				if err := c.Write(ctx, nsid, lba, data); err != nil {
					t.Fatalf("nsid %d write %d at %d: %v", nsid, w.size, w.off, err)
				}
				got := make([]byte, w.size)
				if err := c.Read(ctx, nsid, lba, got); err != nil {
					t.Fatalf("nsid %d read back: %v", nsid, err)
				}
				if !bytes.Equal(got, data) {
					t.Fatalf("nsid %d: read back %d bytes at %d: data differs", nsid, w.size, w.off)
				}
				// Restore the pattern and check it.
				for s := int64(0); s < w.size/patternSectorSize; s++ {
					fillPatternSector(data[s*patternSectorSize:], uint64(w.off/patternSectorSize+s), nsid)
				}
				if err := c.Write(ctx, nsid, lba, data); err != nil {
					t.Fatalf("nsid %d restore: %v", nsid, err)
				}
			}
			if err := c.Flush(ctx, nsid); err != nil {
				t.Errorf("nsid %d flush: %v", nsid, err)
			}
			readPatternAll(ctx, t, c, nsid, 4)
		}
		// Write Zeroes, where the kernel offers it, then the pattern back.
		if c.Info().ONCS&(1<<3) != 0 {
			ns, _ := c.Namespace(1)
			if err := c.WriteZeroes(ctx, 1, 64, 16); err != nil {
				t.Fatalf("write zeroes: %v", err)
			}
			got := make([]byte, 16*ns.BlockSize)
			if err := c.Read(ctx, 1, 64, got); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, make([]byte, len(got))) {
				t.Error("Write Zeroes left data")
			}
			for s := range len(got) / patternSectorSize {
				fillPatternSector(got[s*patternSectorSize:], uint64(64*ns.BlockSize/patternSectorSize+s), 1)
			}
			if err := c.Write(ctx, 1, 64, got); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// checkKernelNamespaces checks what Identify says of the harness's namespaces.
func checkKernelNamespaces(t *testing.T, c *host.Controller) {
	t.Helper()
	want := map[uint32][2]int64{1: {ktNS1Size, 512}, 2: {ktNS2Size, 4096}}
	nss := c.Namespaces()
	if len(nss) != 2 {
		t.Fatalf("namespaces %+v, want 2", nss)
	}
	for _, ns := range nss {
		w := want[ns.ID]
		if ns.Size() != w[0] || int64(ns.BlockSize) != w[1] {
			t.Errorf("namespace %d: %d bytes of %d-byte blocks, want %d of %d", ns.ID, ns.Size(), ns.BlockSize, w[0], w[1])
		}
	}
}

// readPatternAll reads a whole namespace in 1 MiB (and smaller, odd) pieces
// from several goroutines and checks every sector's pattern.
func readPatternAll(ctx context.Context, t *testing.T, c *host.Controller, nsid uint32, readers int) {
	t.Helper()
	ns, ok := c.Namespace(nsid)
	if !ok {
		t.Fatalf("no namespace %d", nsid)
	}
	// Pieces of varied sizes (a multiple of the block size) cover the whole.
	sizes := []int64{1 << 20, 4096, 128 << 10, 64 << 10, 512 << 10, 8192, 36 << 10}
	type piece struct{ off, size int64 }
	var pieces []piece
	for off, i := int64(0), 0; off < ns.Size(); i++ {
		size := max(sizes[i%len(sizes)], int64(ns.BlockSize))
		size = min(size/int64(ns.BlockSize)*int64(ns.BlockSize), ns.Size()-off)
		pieces = append(pieces, piece{off, size})
		off += size
	}
	work := make(chan piece)
	errs := make(chan error, readers)
	var wg sync.WaitGroup
	for range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range work {
				buf := make([]byte, p.size)
				if err := c.Read(ctx, nsid, uint64(p.off/int64(ns.BlockSize)), buf); err != nil {
					errs <- fmt.Errorf("nsid %d read %d at %d: %w", nsid, p.size, p.off, err)
					return
				}
				if err := checkPattern(buf, p.off, nsid); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	go func() {
		defer close(work)
		for _, p := range pieces {
			select {
			case work <- p:
			case <-ctx.Done():
				return
			}
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// checkPattern checks buf, read at byte offset off of namespace nsid,
// against the harness's pattern, sector by sector.
func checkPattern(buf []byte, off int64, nsid uint32) error {
	var want [patternSectorSize]byte
	for i := 0; i < len(buf); i += patternSectorSize {
		s := uint64(off/patternSectorSize) + uint64(i/patternSectorSize)
		fillPatternSector(want[:], s, nsid)
		if !bytes.Equal(buf[i:i+patternSectorSize], want[:]) {
			got := buf[i : i+16]
			return fmt.Errorf("nsid %d sector %d: pattern differs (starts %x: sector %d nsid %d)", nsid, s, got, binary.LittleEndian.Uint64(got), binary.LittleEndian.Uint32(got[8:]))
		}
	}
	return nil
}
