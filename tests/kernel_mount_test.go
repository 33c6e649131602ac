package tests

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// kmSubtestDeadline bounds each subtest of TestKernelTargetMount, against a
// hang: its work takes 10-25 s under TCG on this 2-core machine, and
// several times that when other VMs and benchmarks share it.
const kmSubtestDeadline = 150 * time.Second

// TestKernelTargetMount is the product path over the Linux kernel's NVMe/TCP
// target (nvmet-tcp in QEMU): the real `nvmefs mount` binary connects to it,
// and through the mounted files both namespaces (512- and 4096-byte LBAs)
// are read whole with os.ReadFile and dd, checked sector by sector against
// the harness's data pattern and against the SHA-256 target.sh printed; then
// block ranges (and an unaligned range, a read-modify-write) are written with
// random data, fsync'd, read back, restored, and the whole namespace checked
// again. With and without header and data digests, on two I/O queues.
func TestKernelTargetMount(t *testing.T) {
	peer := needKernelPeer(t)
	needFUSE(t)
	nvmefsBinary(t) // build before the VM boots: a build failure costs no boot
	kt := peer.StartTarget(t)
	sums := kt.harnessSHA256(t)
	sizes := map[uint32]int64{1: ktNS1Size, 2: ktNS2Size}
	for nsid, size := range sizes {
		// The harness's images are the pattern of README "Data pattern".
		if want := patternSHA256(size, nsid); sums[nsid] != want {
			t.Fatalf("target.sh printed sha256 %s for ns%d, the pattern of %d bytes is %s", sums[nsid], nsid, size, want)
		}
	}

	for _, v := range []struct {
		name    string
		flags   []string
		digests bool
		oddDD   []string // a small odd block size: reads not aligned to blocks or pages
	}{
		{"digests", []string{"--hdr-digest", "--data-digest"}, true, []string{"bs=3000", "iflag=direct"}},
		{"no-digests", nil, false, []string{"bs=7777"}},
	} {
		t.Run(v.name, func(t *testing.T) {
			start := time.Now()
			args := append([]string{"--addr", kt.Addr(), "--nqn", ktNQN, "--nr-io-queues", "2", "--reconnect-delay", "1s"}, v.flags...)
			m := startMount(t, args...)
			kmDeadline(t, m, kmSubtestDeadline)
			t.Logf("mounted in %v:\n%s", time.Since(start).Round(10*time.Millisecond), strings.TrimSpace(m.Stdout()))

			kmCheckLayout(t, m.Dir, sizes)

			// Read both namespaces whole, three ways.
			images := map[uint32][]byte{}
			for _, nsid := range []uint32{1, 2} {
				file := kmFile(m.Dir, nsid)
				t0 := time.Now()
				got, err := os.ReadFile(file)
				if err != nil {
					t.Fatalf("os.ReadFile %s: %v", file, err)
				}
				kmCheckImage(t, "os.ReadFile", got, nsid, sizes[nsid], sums[nsid])
				images[nsid] = got
				took := []string{fmt.Sprintf("os.ReadFile %v", time.Since(t0).Round(10*time.Millisecond))}
				for _, dd := range [][]string{{"bs=1M", "iflag=direct"}, v.oddDD} {
					t0 := time.Now()
					out := filepath.Join(t.TempDir(), "dd.out")
					ddArgs := append([]string{"if=" + file, "of=" + out, "status=none"}, dd...)
					if msg, err := runTool(t, kmSubtestDeadline, "dd", ddArgs...); err != nil {
						t.Fatalf("dd %v: %v\n%s", ddArgs, err, msg)
					}
					got, err := os.ReadFile(out)
					if err != nil {
						t.Fatal(err)
					}
					kmCheckImage(t, "dd "+strings.Join(dd, " "), got, nsid, sizes[nsid], sums[nsid])
					took = append(took, fmt.Sprintf("dd %s %v", strings.Join(dd, " "), time.Since(t0).Round(10*time.Millisecond)))
				}
				t.Logf("nvme0n%d read whole: %s", nsid, strings.Join(took, ", "))
			}

			s := kmStats(t, m.Dir)
			if s["nvme0_io_queues"] != 2 {
				t.Errorf("nvme0_io_queues %d, want 2 (--nr-io-queues 2)", s["nvme0_io_queues"])
			}
			for _, q := range []string{"nvme0_q1_commands", "nvme0_q2_commands"} {
				if s[q] == 0 {
					t.Errorf("%s = 0: the reads did not use both I/O queues", q)
				}
			}
			if want := uint64(3 * (ktNS1Size + ktNS2Size)); s["nvme0_bytes_read"] < want {
				t.Errorf("nvme0_bytes_read %d, want at least %d (every read reaches the target)", s["nvme0_bytes_read"], want)
			}
			if crc := s["nvme0_rx_crc_software"] + s["nvme0_rx_crc_offloaded"]; (crc > 0) != v.digests {
				t.Errorf("data digests checked on %d PDUs (software %d, offloaded %d), digests on: %v",
					crc, s["nvme0_rx_crc_software"], s["nvme0_rx_crc_offloaded"], v.digests)
			}

			// Write random data, read it back, restore the pattern.
			t0 := time.Now()
			r := rand.New(rand.NewPCG(uint64(len(v.name)), 5))
			for _, w := range []struct {
				nsid     uint32
				off, len int64
			}{
				{1, 3<<20 + 5*512, 96<<10 + 3*512}, // 512-byte blocks, above the 16 KiB in-capsule size: R2T
				{1, ktNS1Size - 4096, 4096},        // the last page, in-capsule
				{2, 1<<20 + 3*4096, 5*4096 + 64<<10},
				{2, 200*4096 + 1000, 5000}, // not block-aligned: read-modify-write of two 4 KiB blocks
			} {
				kmWriteReadRestore(t, m.Dir, w.nsid, w.off, w.len, images[w.nsid], r)
			}
			t.Logf("wrote, read back and restored 4 ranges in %v", time.Since(t0).Round(10*time.Millisecond))
			for _, nsid := range []uint32{1, 2} {
				got, err := os.ReadFile(kmFile(m.Dir, nsid))
				if err != nil {
					t.Fatalf("os.ReadFile after restoring: %v", err)
				}
				kmCheckImage(t, "os.ReadFile after restoring", got, nsid, sizes[nsid], sums[nsid])
			}

			s = kmStats(t, m.Dir)
			for _, name := range []string{"nvme0_errors", "nvme0_timeouts", "nvme0_digest_errors", "nvme0_retries", "nvme0_recoveries",
				"nvme0n1_errors", "nvme0n2_errors", "fuse_errors"} {
				if s[name] != 0 {
					t.Errorf("%s = %d, want 0", name, s[name])
				}
			}
			if s["nvme0n1_flushes"] < 4 || s["nvme0n2_flushes"] < 4 {
				t.Errorf("flushes: nvme0n1 %d, nvme0n2 %d; want at least 4 each (2 fsyncs per range)", s["nvme0n1_flushes"], s["nvme0n2_flushes"])
			}
			if s["nvme0n2_write_rmw"] == 0 {
				t.Error("the unaligned write to nvme0n2 was no read-modify-write (nvme0n2_write_rmw = 0)")
			}
			if s["nvme0_bytes_written"] < 2*(96<<10+3*512+4096+5*4096+64<<10+5000) {
				t.Errorf("nvme0_bytes_written %d: less than was written", s["nvme0_bytes_written"])
			}
			t.Logf("%d commands, latency p50 %d us p99 %d us, %d FUSE requests interrupted; subtest %v", s["nvme0_commands"], s["nvme0_latency_p50_us"],
				s["nvme0_latency_p99_us"], s["fuse_interrupted"], time.Since(start).Round(10*time.Millisecond))
		})
	}
}

// harnessSHA256 is the SHA-256 of each namespace's image, from the "nsN :
// ... sha256 HEX" lines target.sh start printed.
func (kt *kernelTarget) harnessSHA256(t *testing.T) map[uint32]string {
	t.Helper()
	sums := map[uint32]string{}
	for _, m := range regexp.MustCompile(`(?m)^\s*ns([12])\s*:.*\bsha256 ([0-9a-f]{64})\b`).FindAllStringSubmatch(kt.out.String(), -1) {
		n, _ := strconv.Atoi(m[1])
		sums[uint32(n)] = m[2]
	}
	if len(sums) != 2 {
		t.Fatalf("target.sh start printed no sha256 for both namespaces:\n%s", kt.out.String())
	}
	return sums
}

// kmDeadline bounds a subtest working through mount m: when d has passed,
// the mount process is killed and the mount detached, so that every file
// operation blocked on it returns (ENOTCONN) and the subtest fails, rather
// than hanging. Registered after startMount, its cleanup runs before m.Stop.
func kmDeadline(t *testing.T, m *mountProc, d time.Duration) {
	var fired atomic.Bool
	timer := time.AfterFunc(d, func() {
		fired.Store(true)
		m.cmd.Process.Kill()
		syscall.Unmount(m.Dir, syscall.MNT_DETACH)
	})
	t.Cleanup(func() {
		if !timer.Stop() && fired.Load() {
			t.Errorf("subtest ran past its deadline of %v: the mount was killed\n%s", d, m.Output())
		}
	})
}

func kmFile(dir string, nsid uint32) string {
	return filepath.Join(dir, fmt.Sprintf("nvme0n%d", nsid))
}

// kmCheckLayout checks what the mount shows: the statistics directory and
// one regular file per namespace, of the namespace's size.
func kmCheckLayout(t *testing.T, dir string, sizes map[uint32]int64) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if err != nil || strings.Join(names, " ") != ".nvmefs nvme0n1 nvme0n2" {
		t.Fatalf("mount holds %v (%v), want .nvmefs nvme0n1 nvme0n2", names, err)
	}
	for nsid, size := range sizes {
		var st syscall.Stat_t
		if err := syscall.Stat(kmFile(dir, nsid), &st); err != nil || st.Size != size || st.Mode&syscall.S_IFMT != syscall.S_IFREG {
			t.Errorf("stat nvme0n%d: size %d mode %o (%v), want a regular file of %d bytes", nsid, st.Size, st.Mode, err, size)
		}
	}
	info, err := os.ReadFile(filepath.Join(dir, ".nvmefs", "info"))
	if err != nil || !strings.Contains(string(info), "blocks of 512 bytes") || !strings.Contains(string(info), "blocks of 4096 bytes") {
		t.Errorf(".nvmefs/info does not show 512- and 4096-byte blocks: %q, %v", info, err)
	}
}

// kmCheckImage checks a whole namespace image read through the mount: its
// size, the pattern of every 512-byte sector, and the harness's SHA-256.
func kmCheckImage(t *testing.T, how string, got []byte, nsid uint32, size int64, sum string) {
	t.Helper()
	if int64(len(got)) != size {
		t.Fatalf("nvme0n%d by %s: %d bytes, want %d", nsid, how, len(got), size)
	}
	if err := checkPattern(got, 0, nsid); err != nil {
		t.Fatalf("nvme0n%d by %s: %v", nsid, how, err)
	}
	if h := sha256.Sum256(got); hex.EncodeToString(h[:]) != sum {
		t.Fatalf("nvme0n%d by %s: sha256 %x, target.sh printed %s", nsid, how, h, sum)
	}
}

// kmWriteReadRestore writes n random bytes at off of namespace nsid through
// the mount (pwrite, fsync), reads them back with a sector of the pattern on
// either side (nothing else changed), then writes back the original bytes
// from image (the namespace as read before) and checks them.
func kmWriteReadRestore(t *testing.T, dir string, nsid uint32, off, n int64, image []byte, r *rand.Rand) {
	t.Helper()
	f, err := os.OpenFile(kmFile(dir, nsid), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	lo, hi := max(off-patternSectorSize, 0), min(off+n+patternSectorSize, int64(len(image)))
	model := append([]byte(nil), image[lo:hi]...)
	copy(model[off-lo:], data)
	for _, step := range []struct {
		what string
		p    []byte
		want []byte
	}{
		{"random data", data, model},
		{"the original bytes", image[off : off+n], image[lo:hi]},
	} {
		// os.File's WriteAt is pwrite(2), retried on EINTR like every
		// os.File call: a signal to this thread while it waits on the mount
		// (Go's preemption signal) makes FUSE send an INTERRUPT, and nvmefs
		// answers an interrupted request EINTR (counted as fuse_interrupted).
		if w, err := f.WriteAt(step.p, off); err != nil || int64(w) != n {
			t.Fatalf("nvme0n%d: pwrite of %s, %d bytes at %d: %d, %v", nsid, step.what, n, off, w, err)
		}
		if err := f.Sync(); err != nil {
			t.Fatalf("nvme0n%d: fsync after writing %s at %d: %v", nsid, step.what, off, err)
		}
		got := make([]byte, hi-lo)
		if k, err := f.ReadAt(got, lo); err != nil || k != len(got) {
			t.Fatalf("nvme0n%d: read back %d bytes at %d: %d, %v", nsid, len(got), lo, k, err)
		}
		if !bytes.Equal(got, step.want) {
			i := 0
			for got[i] == step.want[i] {
				i++
			}
			t.Fatalf("nvme0n%d: after writing %s (%d bytes at %d, fsync), the read back differs first at byte %d",
				nsid, step.what, n, off, lo+int64(i))
		}
	}
}

// kmStats reads the mount's statistics and checks the counters this test
// relies on exist (a missing counter must not read as 0).
func kmStats(t *testing.T, dir string) map[string]uint64 {
	t.Helper()
	s := mountStats(t, dir)
	for _, name := range []string{"nvme0_io_queues", "nvme0_q1_commands", "nvme0_q2_commands", "nvme0_bytes_read", "nvme0_bytes_written",
		"nvme0_rx_crc_software", "nvme0_rx_crc_offloaded", "nvme0_errors", "nvme0_timeouts", "nvme0_digest_errors", "nvme0_retries",
		"nvme0_recoveries", "nvme0n1_errors", "nvme0n2_errors", "fuse_errors", "nvme0n1_flushes", "nvme0n2_flushes", "nvme0n2_write_rmw", "fuse_interrupted"} {
		if _, ok := s[name]; !ok {
			t.Fatalf("the statistics have no %s", name)
		}
	}
	return s
}
