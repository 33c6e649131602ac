package tests

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nvmefs/nvmefs/internal/aio"
)

// End-to-end tests of `nvmefs mount`: the real binary as a process, over
// real loopback TCP to `nvmefs serve` (a process) with file namespaces, and
// a real FUSE mount read and written by this test process and by dd.

const mountNQN = "nqn.2026-01.io.nvmefs:mount-test"

// serveFile starts serve with one random file namespace of size bytes and
// returns serve, the file's path and its content.
func serveFile(t *testing.T, size int, seed uint64, serveArgs ...string) (*serveProc, string, []byte) {
	t.Helper()
	needFUSE(t)
	path, data := randomFile(t, t.TempDir(), size, seed)
	srv := startServe(t, append([]string{"--nqn", mountNQN, "--ns", path}, serveArgs...)...)
	return srv, path, data
}

func TestMountReadFile(t *testing.T) {
	const size = 4 << 20 // dd bs=512 makes 8192 reads of it
	for _, v := range []struct {
		name       string
		serve      []string
		mount      []string
		digests    bool
		blockSize  int
		directDest bool // reads reach blk in place (no cache in between)
	}{
		{"digests", nil, []string{"--hdr-digest", "--data-digest"}, true, 512, true},
		{"no-digests-cache", nil, []string{"--cache"}, false, 512, false},
		{"4k-blocks-multi-pdu", []string{"--block-size", "4096", "--max-c2h-data", "8192", "--c2h-success"},
			[]string{"--data-digest", "--nr-io-queues", "1", "--queue-size", "16"}, true, 4096, true},
	} {
		t.Run(v.name, func(t *testing.T) {
			srv, backing, data := serveFile(t, size, 1, v.serve...)
			m := startMount(t, append([]string{"--addr", srv.Addr, "--nqn", mountNQN}, v.mount...)...)
			file := filepath.Join(m.Dir, "nvme0n1")

			ents, err := os.ReadDir(m.Dir)
			if err != nil || len(ents) != 2 || ents[0].Name() != ".nvmefs" || ents[1].Name() != "nvme0n1" {
				t.Fatalf("mount holds %v (%v), want .nvmefs and nvme0n1", ents, err)
			}
			var st syscall.Stat_t
			if err := syscall.Stat(file, &st); err != nil || st.Size != size || st.Mode&syscall.S_IFMT != syscall.S_IFREG {
				t.Fatalf("stat nvme0n1: size %d mode %o (%v), want a regular file of %d bytes", st.Size, st.Mode, err, size)
			}

			got, err := os.ReadFile(file)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("os.ReadFile: %d bytes, %v; differs from the backing file", len(got), err)
			}
			f, err := os.Open(file)
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			n, err := io.Copy(&buf, f)
			f.Close()
			if err != nil || n != size || !bytes.Equal(buf.Bytes(), data) {
				t.Fatalf("io.Copy: %d bytes, %v; differs from the backing file", n, err)
			}

			out := filepath.Join(t.TempDir(), "dd.out")
			for _, dd := range [][]string{
				{"bs=512"}, {"bs=4k"}, {"bs=64k"}, {"bs=1M"}, {"bs=3000"},
				{"bs=4k", "iflag=direct"}, {"bs=1M", "iflag=direct"}, {"bs=128k", "iflag=direct", "skip=3", "count=20"},
			} {
				args := append([]string{"if=" + file, "of=" + out, "status=none"}, dd...)
				if msg, err := runTool(t, time.Minute, "dd", args...); err != nil {
					t.Fatalf("dd %v: %v\n%s", dd, err, msg)
				}
				want := backing
				if strings.Contains(strings.Join(dd, " "), "skip=3") {
					got, _ := os.ReadFile(out)
					if !bytes.Equal(got, data[3*128<<10:23*128<<10]) {
						t.Fatalf("dd %v: wrong bytes", dd)
					}
					continue
				}
				if msg, err := runTool(t, time.Minute, "cmp", out, want); err != nil {
					t.Fatalf("dd %v: cmp with the backing file: %v\n%s", dd, err, msg)
				}
			}

			s := mountStats(t, m.Dir)
			if s["nvme0_bytes_read"] < size || s["nvme0n1_read_requests"] == 0 || s["nvme0n1_errors"] != 0 || s["fuse_errors"] != 0 {
				t.Errorf("stats after reading: %v", s)
			}
			if crc := s["nvme0_rx_crc_software"] + s["nvme0_rx_crc_offloaded"]; (crc > 0) != v.digests {
				t.Errorf("data digest checked for %d PDUs, digests on: %v", crc, v.digests)
			}
			if v.directDest && (s["nvme0n1_read_direct"] == 0 || s["fuse_read_dest_unaligned"] != 0) {
				t.Errorf("reads did not land in the FUSE reply buffer: read_direct %d, unaligned reply buffers %d",
					s["nvme0n1_read_direct"], s["fuse_read_dest_unaligned"])
			}
			info, err := os.ReadFile(filepath.Join(m.Dir, ".nvmefs", "info"))
			if err != nil || !strings.Contains(string(info), fmt.Sprintf("blocks of %d bytes", v.blockSize)) {
				t.Errorf(".nvmefs/info: %q, %v", info, err)
			}
		})
	}
}

// TestMountConcurrentReaders: many readers of random ranges, direct and
// buffered, never see a wrong byte.
func TestMountConcurrentReaders(t *testing.T) {
	const size = 16 << 20
	srv, _, data := serveFile(t, size, 2)
	m := startMount(t, "--addr", srv.Addr, "--nqn", mountNQN, "--data-digest")
	file := filepath.Join(m.Dir, "nvme0n1")
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			flags := os.O_RDONLY
			if g%2 == 0 {
				flags |= syscall.O_DIRECT
			}
			f, err := os.OpenFile(file, flags, 0)
			if err != nil {
				t.Error(err)
				return
			}
			defer f.Close()
			bufs, free, err := aio.Buffers(1, 1<<20) // page-aligned, for O_DIRECT
			if err != nil {
				t.Error(err)
				return
			}
			defer free()
			r := rand.New(rand.NewPCG(uint64(g), 7))
			for range 40 {
				var n, off int
				if g%2 == 0 { // O_DIRECT on a FUSE direct-I/O file: any size works, aligned is the fast path
					n, off = 4096*(1+r.IntN(256)), 4096*r.IntN(size/4096)
				} else {
					n, off = 1+r.IntN(1<<20), r.IntN(size)
				}
				p := bufs[0][:n]
				got, err := f.ReadAt(p, int64(off))
				want := min(n, size-off)
				if got != want || (err != nil && err != io.EOF) {
					t.Errorf("reader %d: ReadAt(%d, off %d) = %d, %v; want %d", g, n, off, got, err, want)
					return
				}
				if !bytes.Equal(p[:got], data[off:off+got]) {
					t.Errorf("reader %d: ReadAt(%d, off %d): wrong bytes", g, n, off)
					return
				}
			}
		}()
	}
	wg.Wait()
	s := mountStats(t, m.Dir)
	t.Logf("16 readers: %d commands, at most %d in flight", s["nvme0_commands"], s["nvme0_inflight_max"])
	if s["nvme0_inflight_max"] < 2 {
		t.Errorf("16 concurrent readers never had two commands in flight: inflight_max %d", s["nvme0_inflight_max"])
	}
}

// TestMountQueueDepth: one thread submits 32 O_DIRECT reads at once with
// io_submit (fio's libaio engine, iodepth 32): with CAP_ASYNC_DIO the mount
// keeps several in flight on the NVMe/TCP queues; without, one at a time.
func TestMountQueueDepth(t *testing.T) {
	const size = 16 << 20
	srv, _, data := serveFile(t, size, 3)
	m := startMount(t, "--addr", srv.Addr, "--nqn", mountNQN)
	f, err := os.OpenFile(filepath.Join(m.Dir, "nvme0n1"), os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const depth = 32
	ctx, err := aio.New(depth)
	if err != nil {
		t.Fatal(err)
	}
	defer ctx.Close()
	bufs, free, err := aio.Buffers(depth, 4096)
	if err != nil {
		t.Fatal(err)
	}
	defer free()
	rs := make([]aio.Read, depth)
	for round := range 20 {
		for i := range rs {
			rs[i] = aio.Read{Buf: bufs[i], Offset: int64((round*depth+i)*7919%(size/4096)) * 4096}
		}
		if err := ctx.ReadAll(int(f.Fd()), rs); err != nil {
			t.Fatal(err)
		}
		for i, r := range rs {
			if r.Err != nil || r.N != 4096 || !bytes.Equal(r.Buf, data[r.Offset:r.Offset+4096]) {
				t.Fatalf("round %d, aio read %d at %d: %d, %v", round, i, r.Offset, r.N, r.Err)
			}
		}
	}
	s := mountStats(t, m.Dir)
	t.Logf("20 x 32 async 4 KiB reads: at most %d commands in flight (of %d tags)", s["nvme0_inflight_max"], s["nvme0_tags"])
	if s["nvme0_inflight_max"] < 2 {
		t.Errorf("32 async direct reads reached the queues one at a time (inflight_max %d): CAP_ASYNC_DIO not in effect", s["nvme0_inflight_max"])
	}
}

// TestMountWrites: unaligned and aligned writes, then fsync: the bytes are
// in the target's backing file; dd conv=notrunc,fsync too.
func TestMountWrites(t *testing.T) {
	const size = 4 << 20
	srv, backing, data := serveFile(t, size, 4)
	m := startMount(t, "--addr", srv.Addr, "--nqn", mountNQN, "--hdr-digest", "--data-digest")
	file := filepath.Join(m.Dir, "nvme0n1")
	model := append([]byte(nil), data...)
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := rand.New(rand.NewPCG(4, 4))
	for i := range 200 {
		n := 1 + r.IntN(200<<10)
		off := r.IntN(size - n)
		if i%4 == 0 {
			n, off = 512*(1+r.IntN(400)), 512*r.IntN((size-n)/512)
		}
		p := make([]byte, n)
		for j := range p {
			p[j] = byte(r.Uint32())
		}
		if w, err := unix.Pwrite(int(f.Fd()), p, int64(off)); w != n || err != nil {
			t.Fatalf("pwrite(%d, off %d) = %d, %v", n, off, w, err)
		}
		copy(model[off:], p)
		if i%10 == 0 { // read back through the mount, unaligned
			q := make([]byte, n+3)
			got, err := f.ReadAt(q, int64(max(off-1, 0)))
			lo := max(off-1, 0)
			if err != nil && err != io.EOF || !bytes.Equal(q[:got], model[lo:lo+got]) {
				t.Fatalf("read back after write %d: %d, %v", i, got, err)
			}
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync: %v", err)
	}
	if got, err := os.ReadFile(backing); err != nil || !bytes.Equal(got, model) {
		t.Fatalf("after fsync the backing file differs from what was written (%v)", err)
	}

	src, srcData := randomFile(t, t.TempDir(), 1<<20, 44)
	if msg, err := runTool(t, time.Minute, "dd", "if="+src, "of="+file, "bs=64k", "seek=16", "conv=notrunc,fsync", "status=none"); err != nil {
		t.Fatalf("dd to the mount: %v\n%s", err, msg)
	}
	copy(model[16*64<<10:], srcData)
	if got, err := os.ReadFile(backing); err != nil || !bytes.Equal(got, model) {
		t.Fatalf("after dd conv=fsync the backing file differs (%v)", err)
	}
	s := mountStats(t, m.Dir)
	if s["nvme0n1_flushes"] < 2 || s["nvme0n1_write_rmw"] == 0 || s["nvme0_bytes_written"] == 0 {
		t.Errorf("stats after writes: flushes %d, read-modify-writes %d, bytes written %d",
			s["nvme0n1_flushes"], s["nvme0n1_write_rmw"], s["nvme0_bytes_written"])
	}
}

// TestMountStatsCommand: `nvmefs stats` prints every counter of the stats
// file as an aligned table.
func TestMountStatsCommand(t *testing.T) {
	srv, _, _ := serveFile(t, 1<<20, 5)
	m := startMount(t, "--addr", srv.Addr, "--nqn", mountNQN)
	if _, err := os.ReadFile(filepath.Join(m.Dir, "nvme0n1")); err != nil {
		t.Fatal(err)
	}
	out, err := runTool(t, 30*time.Second, nvmefsBinary(t), "stats", m.Dir)
	if err != nil {
		t.Fatalf("nvmefs stats: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	file := mountStats(t, m.Dir)
	if len(lines) != len(file) {
		t.Errorf("nvmefs stats printed %d lines, the stats file has %d counters", len(lines), len(file))
	}
	row := regexp.MustCompile(`^([a-z0-9_]+) +([0-9]+)$`)
	width := len(lines[0])
	for _, l := range lines {
		mm := row.FindStringSubmatch(l)
		if mm == nil || len(l) != width {
			t.Fatalf("not an aligned 'name value' row: %q (width %d, first row %d)", l, len(l), width)
		}
		if _, ok := file[mm[1]]; !ok {
			t.Errorf("nvmefs stats shows %s, not in the stats file", mm[1])
		}
	}
	for _, name := range []string{"fuse_reads", "nvme0n1_read_requests", "nvme0_inflight_max", "nvme0_q1_commands", "nvme0_bytes_read", "buffer_gets"} {
		if !strings.Contains(out, name+" ") {
			t.Errorf("nvmefs stats lacks %s", name)
		}
	}
	if out, err := runTool(t, 30*time.Second, nvmefsBinary(t), "stats", t.TempDir()); err == nil || !strings.Contains(out, "not an nvmefs mount") {
		t.Errorf("nvmefs stats of a plain directory: %v\n%s", err, out)
	}
}

// TestMountEmbeddedTarget: without --addr, nvmefs starts its own target
// with a memory namespace and says so.
func TestMountEmbeddedTarget(t *testing.T) {
	m := startMount(t, "--size", "64M")
	if !regexp.MustCompile(`started an embedded NVMe/TCP target at 127\.0\.0\.1:[0-9]+, subsystem \S+, namespace 1: 64 MiB of memory`).MatchString(m.Stdout()) {
		t.Errorf("stdout does not say what was started:\n%s", m.Output())
	}
	file := filepath.Join(m.Dir, "nvme0n1")
	if fi, err := os.Stat(file); err != nil || fi.Size() != 64<<20 {
		t.Fatalf("nvme0n1: %v, %v", fi, err)
	}
	p := bytes.Repeat([]byte("embedded"), 100000)
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(p, 12345); err != nil {
		t.Fatal(err)
	}
	q := make([]byte, len(p))
	if _, err := f.ReadAt(q, 12345); err != nil || !bytes.Equal(p, q) {
		t.Fatalf("read back from the embedded target: %v", err)
	}

	// The default size is 1 GiB.
	d := startMount(t)
	if fi, err := os.Stat(filepath.Join(d.Dir, "nvme0n1")); err != nil || fi.Size() != 1<<30 {
		t.Errorf("default embedded namespace: %v, %v; want 1 GiB", fi, err)
	}
}

// TestMountLifecycle: SIGTERM shuts the controller down (the target sees
// CC.SHN) and exits 0; so does an external umount; SIGTERM with a file open
// detaches the mount and exits once the file is closed.
func TestMountLifecycle(t *testing.T) {
	srv, _, _ := serveFile(t, 1<<20, 6)
	args := []string{"--addr", srv.Addr, "--nqn", mountNQN}

	t.Run("sigterm", func(t *testing.T) {
		m := startMount(t, args...)
		before := strings.Count(srv.Log(), "controller shut down")
		m.Stop(t)
		// The target may log the shutdown just after the host saw it done.
		deadline := time.Now().Add(5 * time.Second)
		for strings.Count(srv.Log(), "controller shut down") != before+1 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if strings.Count(srv.Log(), "controller shut down") != before+1 {
			t.Errorf("the target did not see the controller shut down (CC.SHN):\n%s", srv.Log())
		}
	})

	t.Run("umount", func(t *testing.T) {
		m := startMount(t, args...)
		if msg, err := runTool(t, 30*time.Second, "umount", m.Dir); err != nil {
			t.Fatalf("umount: %v\n%s", err, msg)
		}
		if err := m.Wait(t, mountStopTimeout); err != nil {
			t.Errorf("after umount nvmefs exited with %v:\n%s", err, m.Output())
		}
	})

	t.Run("sigterm-busy", func(t *testing.T) {
		m := startMount(t, args...)
		f, err := os.Open(filepath.Join(m.Dir, "nvme0n1"))
		if err != nil {
			t.Fatal(err)
		}
		m.cmd.Process.Signal(syscall.SIGTERM)
		deadline := time.Now().Add(mountStopTimeout)
		for !strings.Contains(m.Stderr(), "detaching it") && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if _, err := f.ReadAt(make([]byte, 512), 0); err != nil {
			t.Errorf("a file open across the stop cannot be read while detached: %v", err)
		}
		f.Close()
		if err := m.Wait(t, mountStopTimeout); err != nil {
			t.Errorf("nvmefs exited with %v:\n%s", err, m.Output())
		}
		if !strings.Contains(m.Stderr(), "detaching it") || isMountPoint(m.Dir) {
			t.Errorf("busy stop: not detached, or still mounted:\n%s", m.Output())
		}
	})
}

// TestMountErrors: what cannot work fails at once with one clear line.
func TestMountErrors(t *testing.T) {
	srv, _, _ := serveFile(t, 1<<20, 7)
	bin := nvmefsBinary(t)
	oneLine := func(t *testing.T, want string, args ...string) {
		t.Helper()
		out, err := runTool(t, time.Minute, bin, append([]string{"mount"}, args...)...)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Errorf("nvmefs mount %v: %v, want exit status 1\n%s", args, err, out)
		}
		if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 1 || !strings.Contains(lines[0], want) {
			t.Errorf("nvmefs mount %v: want one line containing %q, got:\n%s", args, want, out)
		}
	}
	t.Run("missing-mountpoint", func(t *testing.T) {
		oneLine(t, "does not exist", filepath.Join(t.TempDir(), "nope"), "--addr", srv.Addr, "--nqn", mountNQN)
	})
	t.Run("unreachable", func(t *testing.T) {
		oneLine(t, "cannot reach the target", newMountDir(t), "--addr", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--nqn", mountNQN)
	})
	t.Run("unknown-nqn", func(t *testing.T) {
		oneLine(t, "has no subsystem nqn.2026-01.io.nvmefs:nope; it offers: "+mountNQN, newMountDir(t), "--addr", srv.Addr, "--nqn", "nqn.2026-01.io.nvmefs:nope")
	})
	t.Run("busy", func(t *testing.T) {
		m := startMount(t, "--addr", srv.Addr, "--nqn", mountNQN)
		oneLine(t, "is busy", m.Dir, "--addr", srv.Addr, "--nqn", mountNQN)
	})
	t.Run("stale", func(t *testing.T) {
		dir := newMountDir(t)
		m := startMountAt(t, dir, "--addr", srv.Addr, "--nqn", mountNQN)
		m.cmd.Process.Kill()
		<-m.exited
		m.stopped.Do(func() { m.watchdog.Stop() }) // killed on purpose
		t.Cleanup(func() { unmountLeftover(t, dir) })
		oneLine(t, "umount -l "+dir, dir, "--addr", srv.Addr, "--nqn", mountNQN)
		f := startMountAt(t, dir, "--addr", srv.Addr, "--nqn", mountNQN, "--force")
		if _, err := os.ReadFile(filepath.Join(f.Dir, "nvme0n1")); err != nil {
			t.Errorf("read after --force cleared the stale mount: %v", err)
		}
		if !strings.Contains(f.Stderr(), "cleared a stale mount") {
			t.Errorf("--force did not say it cleared the stale mount:\n%s", f.Output())
		}
	})
}
