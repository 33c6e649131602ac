package tests

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/nvmetcp/host"
)

// Namespaces of TestKernelHost: small, because the kernel runs under TCG
// emulation where KVM does not work (about 6 MB/s of reads).
const (
	khNQN      = "nqn.2026-01.io.nvmefs:tests-kernel-host"
	khNS1Size  = 8 << 20 // nsid 1
	khNS2Size  = 4 << 20 // nsid 2
	khHostTime = 240 * time.Second
)

// TestKernelHost runs the Linux kernel's NVMe/TCP host (in QEMU, through the
// kernel-nvme harness) against `nvmefs serve`: it must read both namespaces
// whole with the right SHA-256 and pattern, and write, read back and restore
// 1 MiB at the end of each, with and without digests, on one and several I/O
// queues, with 512- and 4096-byte blocks, and with reads split into several
// C2HData PDUs and ended by the SUCCESS flag.
func TestKernelHost(t *testing.T) {
	peer := needKernelPeer(t)
	nvmefsBinary(t) // fail once here rather than in every variant
	dir := t.TempDir()
	ns1 := filepath.Join(dir, "ns1.img")
	ns2 := filepath.Join(dir, "ns2.img")
	sha1 := writePatternFile(t, ns1, khNS1Size, 1)
	sha2 := writePatternFile(t, ns2, khNS2Size, 2)

	for _, v := range []struct {
		name   string
		serve  []string // more serve flags
		host   []string // more host.sh settings
		queues int      // I/O queues the kernel is expected to set up
		lba    int      // the block size the kernel is expected to see
		// mem: memory namespaces (commands run on the connection's
		// reader), filled with the pattern through our host first.
		mem bool
	}{
		{"digests", []string{"--allow-host", knvmeHostNQN},
			[]string{"HDGST=1", "DDGST=1", "NR_IO_QUEUES=2"}, 2, 512, false},
		{"no-digests-c2h-success", []string{"--c2h-success"},
			[]string{"HDGST=0", "DDGST=0", "NR_IO_QUEUES=2"}, 2, 512, false},
		{"header-digest-one-queue-4k", []string{"--block-size", "4096"},
			[]string{"HDGST=1", "DDGST=0", "NR_IO_QUEUES=1", "QUEUE_SIZE=32"}, 1, 4096, false},
		{"multi-pdu-reads", []string{"--max-c2h-data", "8192", "--c2h-success"},
			[]string{"HDGST=1", "DDGST=1", "NR_IO_QUEUES=2"}, 2, 512, false},
		{"memory-namespaces", []string{"--max-c2h-data", "16384"},
			[]string{"HDGST=1", "DDGST=1", "NR_IO_QUEUES=2"}, 2, 512, true},
	} {
		t.Run(v.name, func(t *testing.T) {
			nss := []string{ns1, ns2}
			if v.mem {
				nss = []string{"mem:" + strconv.Itoa(khNS1Size), "mem:" + strconv.Itoa(khNS2Size)}
			}
			args := append([]string{"--nqn", khNQN, "--ns", nss[0], "--ns", nss[1]}, v.serve...)
			srv := startServe(t, args...)
			if v.mem {
				copyNamespaces(t, srv.Addr, khNQN, ns1, ns2)
			}
			res := peer.RunHost(t, hostRun{
				Port:    srv.Port,
				NQN:     khNQN,
				Timeout: hostTimeout(t, khHostTime),
				Env: append([]string{"WRITE_TEST=1", "PATTERN_CHECK=1",
					"EXPECT_SHA256_NS1=" + sha1, "EXPECT_SHA256_NS2=" + sha2}, v.host...),
			})
			t.Logf("host.sh took %v: %s", res.Duration.Round(100*time.Millisecond), res.Result)
			if v.mem {
				// The write test restored what it wrote.
				checkNamespaces(t, srv.Addr, khNQN, sha1, sha2)
			}
			srv.Stop(t)
			ok := checkKernelHostRun(t, res, v.queues, v.lba, sha1, sha2)
			if !ok || t.Failed() {
				t.Logf("guest console (nvme lines):\n%s", res.nvmeExcerpt())
				t.Logf("nvmefs serve log:\n%s", tail(srv.Log(), 60))
			}
			// The write test restores what it wrote: the files must hold the
			// pattern again, flushed by the stop. Restore them for the next
			// variant if not.
			for _, ns := range []struct {
				path string
				sha  string
				size int64
				nsid uint32
			}{{ns1, sha1, khNS1Size, 1}, {ns2, sha2, khNS2Size, 2}} {
				if got := fileSHA256(t, ns.path); got != ns.sha {
					t.Errorf("%s after the run: sha256 %s, want the original %s", filepath.Base(ns.path), got, ns.sha)
					writePatternFile(t, ns.path, ns.size, ns.nsid)
				}
				if fi, err := os.Stat(ns.path); err != nil || fi.Size() != ns.size {
					t.Errorf("%s after the run: %v, size want %d", filepath.Base(ns.path), err, ns.size)
				}
			}
		})
	}
}

// checkKernelHostRun checks host.sh's verdict and what the guest saw.
func checkKernelHostRun(t *testing.T, res *hostResult, queues, lba int, sha1, sha2 string) bool {
	t.Helper()
	before := t.Failed()
	if !res.Pass {
		t.Errorf("kernel host did not pass (host.sh: %v): %q", res.Err, res.Result)
		return false
	}
	if got, want := res.Controller()["queue_count"], strconv.Itoa(queues+1); got != want {
		t.Errorf("controller queue_count %q, want %s (admin + %d I/O queues)", got, want, queues)
	}
	byNSID := map[string]map[string]string{}
	for dev, ns := range res.Namespaces() {
		ns["dev"] = dev
		byNSID[ns["nsid"]] = ns
	}
	writes := res.Writes()
	for _, want := range []struct {
		nsid, size, sha string
	}{
		{"1", strconv.Itoa(khNS1Size), sha1},
		{"2", strconv.Itoa(khNS2Size), sha2},
	} {
		ns := byNSID[want.nsid]
		if ns == nil {
			t.Errorf("the kernel host saw no namespace %s (namespaces: %v)", want.nsid, res.Namespaces())
			continue
		}
		if ns["size"] != want.size || ns["sha256"] != want.sha || ns["pattern"] != "ok" || ns["lba"] != strconv.Itoa(lba) {
			t.Errorf("namespace %s as the kernel saw it: %v; want size=%s lba=%d sha256=%s pattern=ok", want.nsid, ns, want.size, lba, want.sha)
		}
		if w := writes[ns["dev"]]; w["readback"] != "ok" || w["restore"] != "ok" {
			t.Errorf("write test on %s: %v; want readback=ok restore=ok", ns["dev"], w)
		}
	}
	if len(byNSID) != 2 {
		t.Errorf("the kernel host saw %d namespaces, want 2: %v", len(byNSID), res.Namespaces())
	}
	return t.Failed() == before
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{"..."}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// hostTimeout is want, or less when the test binary's deadline (go test
// -timeout) is nearer, so that a hung VM fails the test with its console
// rather than the binary panicking on its timeout.
func hostTimeout(t *testing.T, want time.Duration) time.Duration {
	t.Helper()
	deadline, ok := t.Deadline()
	if !ok {
		return want
	}
	left := time.Until(deadline) - 30*time.Second // margin for stopping and checking
	if left < 30*time.Second {
		t.Fatalf("only %v left before the go test -timeout: not enough to boot the kernel host", time.Until(deadline).Round(time.Second))
	}
	return min(want, left)
}

// TestKernelHostRefused checks access control against the kernel host: a
// host NQN not on --allow-host is refused at Connect with the status the
// kernel reads as "not allowed" (Connect Invalid Host), and the target logs
// whom it refused.
func TestKernelHostRefused(t *testing.T) {
	peer := needKernelPeer(t)
	ns := filepath.Join(t.TempDir(), "ns1.img")
	writePatternFile(t, ns, 1<<20, 1)
	const other = "nqn.2014-08.org.nvmexpress:uuid:4b4e5650-0000-4000-8000-0000000000aa"
	srv := startServe(t, "--nqn", khNQN, "--ns", ns, "--allow-host", other)
	res := peer.RunHost(t, hostRun{Port: srv.Port, NQN: khNQN, Timeout: hostTimeout(t, 60*time.Second)})
	t.Logf("host.sh took %v: %s", res.Duration.Round(100*time.Millisecond), res.Result)
	srv.Stop(t)
	if res.Pass || !strings.Contains(res.Result, "KNVME-HOST-RESULT: FAIL") || !strings.Contains(res.Result, "connect") {
		t.Errorf("the kernel host was not refused at connect: %q", res.Result)
	}
	if want := "Connect for subsystem " + khNQN + " is not allowed, hostnqn: " + knvmeHostNQN; !strings.Contains(res.Console, want) {
		t.Errorf("the kernel did not report %q", want)
	}
	if log := srv.Log(); !strings.Contains(log, "refused") || !strings.Contains(log, knvmeHostNQN) {
		t.Errorf("the target did not log that it refused %s", knvmeHostNQN)
	}
	if t.Failed() {
		t.Logf("guest console (nvme lines):\n%s", res.nvmeExcerpt())
		t.Logf("nvmefs serve log:\n%s", tail(srv.Log(), 60))
	}
}

// copyNamespaces writes the files' bytes into namespaces 1 and 2 of the
// subsystem at addr, through our host.
func copyNamespaces(t *testing.T, addr, nqn string, files ...string) {
	t.Helper()
	ctx, c, done := connectGood(t, addr, nqn)
	defer done()
	for i, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Write(ctx, uint32(i+1), 0, b); err != nil {
			t.Fatalf("filling namespace %d: %v", i+1, err)
		}
	}
}

// checkNamespaces reads namespaces 1 and 2 whole through our host and
// compares their SHA-256 with shas.
func checkNamespaces(t *testing.T, addr, nqn string, shas ...string) {
	t.Helper()
	ctx, c, done := connectGood(t, addr, nqn)
	defer done()
	for i, want := range shas {
		ns, ok := c.Namespace(uint32(i + 1))
		if !ok {
			t.Fatalf("namespace %d not there", i+1)
		}
		b := make([]byte, ns.Blocks*uint64(ns.BlockSize))
		if err := c.Read(ctx, uint32(i+1), 0, b); err != nil {
			t.Fatalf("reading namespace %d: %v", i+1, err)
		}
		if got := fmt.Sprintf("%x", sha256.Sum256(b)); got != want {
			t.Errorf("memory namespace %d after the run: sha256 %s, want %s", i+1, got, want)
		}
	}
}

// connectGood connects our host to the subsystem; done closes the
// controller, ctx bounds what the caller does with it until then.
func connectGood(t *testing.T, addr, nqn string) (ctx context.Context, c *host.Controller, done func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	c, err := host.Connect(ctx, addr, nqn, goodHostOptions(goodHostNQN, goodHostID))
	if err != nil {
		cancel()
		t.Fatalf("connecting our host to %s: %v", addr, err)
	}
	return ctx, c, func() { c.Close(); cancel() }
}
