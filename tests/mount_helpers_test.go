package tests

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Bounds of a mount process: start (connect and mount), stop (unmount,
// drain, CC.SHN), and the whole life of one, after which the watchdog kills
// it so that no reader of the mount can hang the test.
const (
	mountReadyTimeout = 20 * time.Second
	mountStopTimeout  = 20 * time.Second
	mountWatchdog     = 4 * time.Minute
)

// needFUSE skips, saying why, unless the test runs as root with /dev/fuse:
// nvmefs mounts FUSE directly, without fusermount.
func needFUSE(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("nvmefs mount needs root (it mounts FUSE without fusermount)")
	}
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		t.Skipf("cannot open /dev/fuse: %v", err)
	}
	f.Close()
}

// mountProc is an `nvmefs mount` process started by a test.
type mountProc struct {
	Dir string // the mount point

	cmd      *exec.Cmd
	out, err string // stdout and stderr files
	exited   chan struct{}
	waitErr  error
	watchdog *time.Timer
	stopped  sync.Once
}

// newMountDir returns a fresh, empty mount point.
func newMountDir(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// startMount runs `nvmefs mount DIR args...` on a fresh mount point and
// returns once it says it mounted (a stat of the mount point would not do:
// over a stale mount the kernel answers from its caches). The process is stopped with
// SIGTERM, and must exit 0 and leave nothing mounted, in t.Cleanup (or
// earlier by Stop).
func startMount(t testing.TB, args ...string) *mountProc {
	t.Helper()
	return startMountAt(t, newMountDir(t), args...)
}

func startMountAt(t testing.TB, dir string, args ...string) *mountProc {
	t.Helper()
	needFUSE(t)
	p := runMount(t, dir, args...)
	t.Cleanup(func() { p.Stop(t) })
	deadline := time.Now().Add(mountReadyTimeout)
	for {
		if strings.Contains(p.Stdout(), "mounted at "+dir+":") {
			return p
		}
		select {
		case <-p.exited:
			t.Fatalf("nvmefs mount exited before mounting (%v):\n%s", p.waitErr, p.Output())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.kill(t)
			t.Fatalf("nvmefs mount not ready within %v:\n%s", mountReadyTimeout, p.Output())
		}
	}
}

// runMount starts `nvmefs mount DIR args...` and returns at once, with the
// watchdog armed. The caller stops it.
func runMount(t testing.TB, dir string, args ...string) *mountProc {
	t.Helper()
	bin := nvmefsBinary(t)
	logDir := t.TempDir()
	p := &mountProc{Dir: dir, out: filepath.Join(logDir, "stdout"), err: filepath.Join(logDir, "stderr"), exited: make(chan struct{})}
	stdout, err := os.Create(p.out)
	if err != nil {
		t.Fatal(err)
	}
	defer stdout.Close()
	stderr, err := os.Create(p.err)
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()
	argv := append([]string{"mount", dir}, args...)
	p.cmd = exec.Command(bin, argv...)
	p.cmd.Stdout, p.cmd.Stderr = stdout, stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("nvmefs mount: %v", err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.exited)
	}()
	t.Logf("started nvmefs %s (pid %d)", strings.Join(argv, " "), p.cmd.Process.Pid)
	p.watchdog = time.AfterFunc(mountWatchdog, func() {
		// Killing the server fails every request in flight (ENOTCONN), so
		// a reader stuck on the mount returns.
		p.cmd.Process.Kill()
		syscall.Unmount(dir, syscall.MNT_DETACH)
	})
	return p
}

// Stdout and Stderr are what the process wrote so far.
func (p *mountProc) Stdout() string { return readOr(p.out) }
func (p *mountProc) Stderr() string { return readOr(p.err) }

// Output is both, for failure messages.
func (p *mountProc) Output() string {
	return "--- stdout:\n" + p.Stdout() + "--- stderr:\n" + p.Stderr()
}

func readOr(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(unreadable: %v)", err)
	}
	return string(b)
}

// Wait waits up to d for the process to exit and returns its exit error.
func (p *mountProc) Wait(t testing.TB, d time.Duration) error {
	t.Helper()
	select {
	case <-p.exited:
		return p.waitErr
	case <-time.After(d):
		p.kill(t)
		t.Fatalf("nvmefs mount (pid %d) still running after %v:\n%s", p.cmd.Process.Pid, d, p.Output())
		return nil
	}
}

func (p *mountProc) kill(t testing.TB) {
	p.cmd.Process.Kill()
	<-p.exited
	unmountLeftover(t, p.Dir)
}

// Stop sends SIGTERM and checks the process exits 0 within
// mountStopTimeout and leaves nothing mounted. Only the first call acts.
func (p *mountProc) Stop(t testing.TB) {
	t.Helper()
	p.stopped.Do(func() {
		defer p.watchdog.Stop()
		select {
		case <-p.exited:
		default:
			p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.exited:
				if p.waitErr != nil {
					t.Errorf("nvmefs mount (pid %d) exited with %v after SIGTERM:\n%s", p.cmd.Process.Pid, p.waitErr, p.Output())
				}
			case <-time.After(mountStopTimeout):
				t.Errorf("nvmefs mount (pid %d) did not stop within %v of SIGTERM; killing it:\n%s", p.cmd.Process.Pid, mountStopTimeout, p.Output())
				p.cmd.Process.Kill()
				<-p.exited
			}
		}
		if unmountLeftover(t, p.Dir) {
			t.Errorf("nvmefs mount left %s mounted", p.Dir)
		}
	})
}

// unmountLeftover unmounts whatever is still mounted at dir (umount, then
// umount -l) and reports whether there was something.
func unmountLeftover(t testing.TB, dir string) bool {
	t.Helper()
	if !isMountPoint(dir) {
		return false
	}
	if err := syscall.Unmount(dir, 0); err != nil {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("umount -l %s: %v", dir, err)
		}
	}
	return true
}

// isMountPoint reports whether something is mounted at dir, from
// /proc/self/mountinfo.
func isMountPoint(dir string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

// mountStats reads and parses MOUNTPOINT/.nvmefs/stats.
func mountStats(t testing.TB, dir string) map[string]uint64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, ".nvmefs", "stats"))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]uint64{}
	for _, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		name, val, ok := strings.Cut(line, ": ")
		v, err := strconv.ParseUint(val, 10, 64)
		if !ok || err != nil {
			t.Fatalf("stats line %q is not 'name: value'", line)
		}
		m[name] = v
	}
	return m
}

// runTool runs a command (dd, cmp, umount) with a deadline and returns its
// combined output.
func runTool(t testing.TB, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if ctx.Err() != nil {
		err = errors.Join(err, ctx.Err())
	}
	return string(out), err
}

// randomFile writes size random bytes to a new file in dir and returns its
// path and content.
func randomFile(t testing.TB, dir string, size int, seed uint64) (string, []byte) {
	t.Helper()
	data := make([]byte, size)
	x := seed*0x9E3779B97F4A7C15 + 1
	for i := range data {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		data[i] = byte(x >> 24)
	}
	path := filepath.Join(dir, fmt.Sprintf("ns-%d.img", seed))
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path, data
}
