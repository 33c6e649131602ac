package tests

import (
	"context"
	"errors"
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

// binDir holds binaries built for this test process; TestMain removes it.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "nvmefs-tests-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "tests:", err)
		os.Exit(2)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// repoRoot is the module root: the parent of this package's directory, where
// go test runs us.
func repoRoot(t testing.TB) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil || !strings.Contains(string(mod), "module github.com/nvmefs/nvmefs") {
		t.Fatalf("%s is not the nvmefs module root (go.mod: %v)", root, err)
	}
	return root
}

var nvmefsBuild struct {
	once sync.Once
	path string
	err  error
}

// nvmefsBinary builds cmd/nvmefs once per test process and returns its path.
func nvmefsBinary(t testing.TB) string {
	t.Helper()
	root := repoRoot(t)
	nvmefsBuild.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		out := filepath.Join(binDir, "nvmefs")
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/nvmefs")
		cmd.Dir = root
		if msg, err := cmd.CombinedOutput(); err != nil {
			nvmefsBuild.err = fmt.Errorf("go build ./cmd/nvmefs: %v\n%s", err, msg)
			return
		}
		nvmefsBuild.path = out
	})
	if nvmefsBuild.err != nil {
		t.Fatal(nvmefsBuild.err)
	}
	return nvmefsBuild.path
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// serveProc is an `nvmefs serve` process started by a test.
type serveProc struct {
	Addr string // 127.0.0.1:PORT it listens on
	Port int

	cmd     *exec.Cmd
	logPath string
	exited  chan struct{} // closed when Wait returned; waitErr is set then
	waitErr error
	stopped sync.Once
}

// How long serve may take to stop after SIGTERM (it flushes file-backed
// namespaces), and to start serving.
const (
	serveStopTimeout  = 15 * time.Second
	serveReadyTimeout = 15 * time.Second
)

// startServe runs `nvmefs serve --listen 127.0.0.1:0 args...`, reads the
// address it bound from its "serving" log line, and returns once the target
// answers an ICReq there. The process is stopped (and its exit status
// checked) in t.Cleanup, or earlier by Stop.
func startServe(t testing.TB, args ...string) *serveProc {
	t.Helper()
	bin := nvmefsBinary(t)
	logFile, err := os.CreateTemp(t.TempDir(), "serve-*.log")
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close() // the child has its own copy
	argv := append([]string{"serve", "--listen", "127.0.0.1:0"}, args...)
	cmd := exec.Command(bin, argv...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("nvmefs serve: %v", err)
	}
	p := &serveProc{cmd: cmd, logPath: logFile.Name(), exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() { p.Stop(t) })
	t.Logf("started nvmefs %s (pid %d)", strings.Join(argv, " "), cmd.Process.Pid)

	deadline := time.Now().Add(serveReadyTimeout)
	var lastErr error
	for {
		if p.Addr == "" {
			if m := servingLine.FindStringSubmatch(p.Log()); m != nil {
				p.Addr = m[1]
				_, port, _ := net.SplitHostPort(p.Addr)
				p.Port, _ = strconv.Atoi(port)
				if p.Port == 0 {
					p.kill()
					t.Fatalf("nvmefs serve logged a bad listen address %q", p.Addr)
				}
			}
		}
		if p.Addr != "" {
			if lastErr = icReqHandshake(p.Addr, time.Second); lastErr == nil {
				return p
			}
		}
		select {
		case <-p.exited:
			t.Fatalf("nvmefs serve exited before serving (%v); log:\n%s", p.waitErr, p.Log())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.kill()
			t.Fatalf("nvmefs serve not ready within %v (address %q, last ICReq: %v); log:\n%s",
				serveReadyTimeout, p.Addr, lastErr, p.Log())
		}
	}
}

// servingLine is serve's start log line, which gives the address bound.
var servingLine = regexp.MustCompile(`msg=serving listen=(127\.0\.0\.1:[0-9]+)`)

// icReqHandshake sends an ICReq without digests to addr and checks that an
// ICResp comes back: the target is up and speaks NVMe/TCP.
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

// Log is what the process has written to stdout and stderr so far.
func (p *serveProc) Log() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(log unreadable: %v)", err)
	}
	return string(b)
}

func (p *serveProc) kill() {
	p.cmd.Process.Kill()
	<-p.exited
}

// Stop sends SIGTERM and waits for a clean exit (status 0); after
// serveStopTimeout it kills the process and fails the test. Safe to call more
// than once; only the first call acts.
func (p *serveProc) Stop(t testing.TB) {
	t.Helper()
	p.stopped.Do(func() {
		select {
		case <-p.exited:
			t.Errorf("nvmefs serve (pid %d) exited on its own: %v; log:\n%s", p.cmd.Process.Pid, p.waitErr, p.Log())
			return
		default:
		}
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
			t.Errorf("SIGTERM nvmefs serve: %v", err)
		}
		select {
		case <-p.exited:
		case <-time.After(serveStopTimeout):
			p.kill()
			t.Errorf("nvmefs serve (pid %d) did not stop within %v of SIGTERM; killed; log:\n%s", p.cmd.Process.Pid, serveStopTimeout, p.Log())
			return
		}
		if p.waitErr != nil {
			t.Errorf("nvmefs serve (pid %d) did not exit cleanly after SIGTERM: %v; log:\n%s", p.cmd.Process.Pid, p.waitErr, p.Log())
		}
	})
}
