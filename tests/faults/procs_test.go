package faults

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/nvmetcp/wire"
)

// The processes the tests start: `nvmefs serve` and `nvmefs mount`, each
// stopped by pid in t.Cleanup however the test ends.

const (
	testNQN = "nqn.2026-01.io.nvmefs:faults"

	serveReadyTimeout = 15 * time.Second
	serveStopTimeout  = 15 * time.Second
	mountReadyTimeout = 20 * time.Second
	mountStopTimeout  = 20 * time.Second
	// settle bounds the wait for counters and descriptors to come back to
	// idle after a scenario.
	settle = 15 * time.Second
)

// watchdog bounds the life of every process a test starts: after it the
// process is killed (and the mount detached), so that no reader of a hung
// mount can hang the test binary. The soak's processes live longer.
var watchdog = 5*time.Minute + soakLength()

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "nvmefs-faults-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		os.Exit(2)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var build struct {
	once sync.Once
	path string
	err  error
}

// nvmefsBinary builds cmd/nvmefs once per test process.
func nvmefsBinary(t testing.TB) string {
	t.Helper()
	build.once.Do(func() {
		root, err := filepath.Abs("../..")
		if err != nil {
			build.err = err
			return
		}
		if mod, err := os.ReadFile(filepath.Join(root, "go.mod")); err != nil || !bytes.Contains(mod, []byte("module github.com/nvmefs/nvmefs")) {
			build.err = fmt.Errorf("%s is not the nvmefs module root (go.mod: %v)", root, err)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		out := filepath.Join(binDir, "nvmefs")
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/nvmefs")
		cmd.Dir = root
		if msg, err := cmd.CombinedOutput(); err != nil {
			build.err = fmt.Errorf("go build ./cmd/nvmefs: %v\n%s", err, msg)
			return
		}
		build.path = out
	})
	if build.err != nil {
		t.Fatal(build.err)
	}
	return build.path
}

// needFUSE skips unless the test can mount: root and /dev/fuse.
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

// proc is a process started by a test, with its output in a file.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{} // closed once Wait returned; waitErr is set then
	waitErr error
	guard   *time.Timer
}

func startProc(t testing.TB, name string, logPath string, argv ...string) *proc {
	t.Helper()
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close() // the child has its own copy
	cmd := exec.Command(nvmefsBinary(t), argv...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	t.Logf("started nvmefs %s (pid %d)", strings.Join(argv, " "), cmd.Process.Pid)
	return p
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// Log is what the process wrote so far (all its runs, for serve).
func (p *proc) Log() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(log unreadable: %v)", err)
	}
	return string(b)
}

func (p *proc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	p.cmd.Process.Kill()
	<-p.exited
}

// stop sends sig and waits up to d for the exit; it kills the process
// after that and reports whether it exited by itself, and how.
func (p *proc) stop(sig syscall.Signal, d time.Duration) (exitedInTime bool, err error) {
	if !p.alive() {
		return true, p.waitErr
	}
	p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
		return true, p.waitErr
	case <-time.After(d):
		p.kill()
		return false, p.waitErr
	}
}

// fds counts the process's open file descriptors, and how many of them
// are sockets.
func (p *proc) fds() (all, sockets int, err error) {
	dir := filepath.Join("/proc", strconv.Itoa(p.pid()), "fd")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, 0, err
	}
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && strings.HasPrefix(l, "socket:") {
			sockets++
		}
	}
	return len(ents), sockets, nil
}

// rssKiB is the process's resident set.
func (p *proc) rssKiB() int64 {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(p.pid()), "status"))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n
			}
		}
	}
	return -1
}

// ---- nvmefs serve ----

// server is `nvmefs serve` of one file namespace on one address; it can be
// killed and started again there.
type server struct {
	t       testing.TB
	Addr    string
	nsPath  string
	extra   []string
	logPath string

	mu   sync.Mutex
	cur  *proc
	runs int
}

var servingLine = regexp.MustCompile(`msg=serving listen=(127\.0\.0\.1:[0-9]+)`)

// startServer serves the file at nsPath on a free loopback port.
func startServer(t testing.TB, nsPath string, extra ...string) *server {
	t.Helper()
	s := &server{t: t, nsPath: nsPath, extra: extra, logPath: filepath.Join(t.TempDir(), "serve.log")}
	s.start(t, "127.0.0.1:0")
	t.Cleanup(func() { s.Stop(t) })
	return s
}

func (s *server) start(t testing.TB, listen string) {
	t.Helper()
	before := len(s.proc0Log())
	argv := append([]string{"serve", "--listen", listen, "--nqn", testNQN, "--ns", s.nsPath}, s.extra...)
	p := startProc(t, "nvmefs serve", s.logPath, argv...)
	p.guard = time.AfterFunc(watchdog, p.kill)
	s.mu.Lock()
	s.cur, s.runs = p, s.runs+1
	s.mu.Unlock()
	deadline := time.Now().Add(serveReadyTimeout)
	var lastErr error
	for {
		if s.Addr == "" {
			if m := servingLine.FindStringSubmatch(s.proc0Log()[before:]); m != nil {
				s.Addr = m[1]
			}
		}
		if s.Addr != "" {
			if lastErr = icReqHandshake(s.Addr, time.Second); lastErr == nil {
				return
			}
		}
		select {
		case <-p.exited:
			t.Fatalf("nvmefs serve exited before serving (%v); log:\n%s", p.waitErr, s.proc0Log())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.kill()
			t.Fatalf("nvmefs serve not ready within %v (address %q, last ICReq: %v); log:\n%s", serveReadyTimeout, s.Addr, lastErr, s.proc0Log())
		}
	}
}

func (s *server) proc0Log() string {
	b, _ := os.ReadFile(s.logPath)
	return string(b)
}

// Log is every run's output.
func (s *server) Log() string { return s.proc0Log() }

// Proc is the running process.
func (s *server) Proc() *proc {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

// Kill kills the target with SIGKILL, as a crash would.
func (s *server) Kill() {
	p := s.Proc()
	p.kill()
	p.guard.Stop()
}

// Restart starts the target again on the same address and file.
func (s *server) Restart(t testing.TB) {
	t.Helper()
	if s.Proc().alive() {
		t.Fatal("Restart of a running target")
	}
	s.start(t, s.Addr)
}

// Stop stops the running target with SIGTERM; it must exit 0.
func (s *server) Stop(t testing.TB) {
	t.Helper()
	p := s.Proc()
	if p == nil || !p.alive() {
		return
	}
	defer p.guard.Stop()
	start := time.Now()
	inTime, err := p.stop(syscall.SIGTERM, serveStopTimeout)
	if d := time.Since(start); d > 2*time.Second {
		t.Logf("nvmefs serve took %v to stop", d.Round(time.Millisecond))
	}
	if !inTime {
		t.Errorf("nvmefs serve (pid %d) did not stop within %v of SIGTERM; killed; log:\n%s", p.pid(), serveStopTimeout, s.Log())
	} else if err != nil {
		t.Errorf("nvmefs serve (pid %d) exited with %v after SIGTERM; log:\n%s", p.pid(), err, s.Log())
	}
}

// icReqHandshake checks that an NVMe/TCP target answers an ICReq at addr.
func icReqHandshake(addr string, timeout time.Duration) error {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	req := make([]byte, wire.ICReqLen)
	wire.ICReq(req).Encode(&wire.ICReqFields{})
	if _, err := conn.Write(req); err != nil {
		return err
	}
	resp := make([]byte, wire.ICRespLen)
	if _, err := io.ReadFull(conn, resp); err != nil {
		return fmt.Errorf("reading ICResp: %w", err)
	}
	if wire.Type(resp[0]) != wire.TypeICResp {
		return fmt.Errorf("got PDU type %#x, want ICResp", resp[0])
	}
	return nil
}

// ---- nvmefs mount ----

// mount is an `nvmefs mount` process.
type mount struct {
	Dir string
	*proc
	stopOnce sync.Once
}

// startMount mounts addr's namespace on a fresh directory and returns once
// the process says it mounted. t.Cleanup stops it with SIGTERM (it must
// exit 0 and leave nothing mounted) or, if it hangs, kills it and detaches
// the mount.
func startMount(t testing.TB, addr string, flags ...string) *mount {
	t.Helper()
	needFUSE(t)
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	argv := append([]string{"mount", dir, "--addr", addr, "--nqn", testNQN}, flags...)
	m := &mount{Dir: dir, proc: startProc(t, "nvmefs mount", filepath.Join(t.TempDir(), "mount.log"), argv...)}
	m.guard = time.AfterFunc(watchdog, func() {
		m.cmd.Process.Kill()
		syscall.Unmount(dir, syscall.MNT_DETACH)
	})
	t.Cleanup(func() { m.Stop(t) })
	deadline := time.Now().Add(mountReadyTimeout)
	for !strings.Contains(m.Log(), "mounted at "+dir+":") {
		select {
		case <-m.exited:
			t.Fatalf("nvmefs mount exited before mounting (%v):\n%s", m.waitErr, m.Log())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			m.Kill(t)
			t.Fatalf("nvmefs mount not ready within %v:\n%s", mountReadyTimeout, m.Log())
		}
	}
	return m
}

// File is the path of namespace 1.
func (m *mount) File() string { return filepath.Join(m.Dir, "nvme0n1") }

// Kill kills the mount process and clears what it left mounted.
func (m *mount) Kill(t testing.TB) {
	m.stopOnce.Do(func() {
		m.guard.Stop()
		m.kill()
		unmountLeftover(t, m.Dir)
	})
}

// Stop sends SIGTERM; the process must exit 0 within mountStopTimeout and
// leave nothing mounted. Only the first Stop or Kill acts.
func (m *mount) Stop(t testing.TB) {
	t.Helper()
	m.stopOnce.Do(func() {
		defer m.guard.Stop()
		start := time.Now()
		inTime, err := m.stop(syscall.SIGTERM, mountStopTimeout)
		if d := time.Since(start); d > 2*time.Second {
			t.Logf("nvmefs mount took %v to stop", d.Round(time.Millisecond))
		}
		if !inTime {
			t.Errorf("nvmefs mount (pid %d) did not stop within %v of SIGTERM; killed:\n%s", m.pid(), mountStopTimeout, m.Log())
		} else if err != nil {
			t.Errorf("nvmefs mount (pid %d) exited with %v after SIGTERM:\n%s", m.pid(), err, m.Log())
		}
		if unmountLeftover(t, m.Dir) {
			t.Errorf("nvmefs mount left %s mounted", m.Dir)
		}
	})
}

// unmountLeftover unmounts whatever is still mounted at dir and reports
// whether there was something.
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

func isMountPoint(dir string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

// Stats reads MOUNTPOINT/.nvmefs/stats.
func (m *mount) Stats(t testing.TB) map[string]uint64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(m.Dir, ".nvmefs", "stats"))
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	s := map[string]uint64{}
	for _, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		name, val, ok := strings.Cut(line, ": ")
		v, err := strconv.ParseUint(val, 10, 64)
		if !ok || err != nil {
			t.Fatalf("stats line %q is not 'name: value'", line)
		}
		s[name] = v
	}
	return s
}

// NIC writes commands to MOUNTPOINT/.nvmefs/nic, one write(2) each.
func (m *mount) NIC(t testing.TB, cmds ...string) {
	t.Helper()
	for _, c := range cmds {
		if err := os.WriteFile(filepath.Join(m.Dir, ".nvmefs", "nic"), []byte(c+"\n"), 0o644); err != nil {
			t.Fatalf("echo %q > .nvmefs/nic: %v", c, err)
		}
	}
}
