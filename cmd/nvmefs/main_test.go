package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/nvmetcp/host"
	"github.com/nvmefs/nvmefs/nvmetcp/wire"
)

// nvmefsBin is the nvmefs binary built once for the tests.
var nvmefsBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "nvmefs-cli-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	nvmefsBin = filepath.Join(dir, "nvmefs")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	out, err := exec.CommandContext(ctx, "go", "build", "-o", nvmefsBin, ".").CombinedOutput()
	cancel()
	code := 1
	if err != nil {
		fmt.Fprintf(os.Stderr, "building nvmefs: %v\n%s", err, out)
	} else {
		code = m.Run()
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

const testNQN = "nqn.2024-01.io.nvmefs:cli-test"

// runNvmefs runs nvmefs to completion (bounded) and returns its exit status
// and output.
func runNvmefs(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, nvmefsBin, args...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		code = ee.ExitCode()
	default:
		t.Fatalf("nvmefs %s: %v (stderr: %s)", strings.Join(args, " "), err, se.String())
	}
	return code, so.String(), se.String()
}

func noCrash(t *testing.T, stderr string) {
	t.Helper()
	if strings.Contains(stderr, "panic:") || strings.Contains(stderr, "goroutine ") {
		t.Errorf("stderr shows a crash:\n%s", stderr)
	}
}

func TestHelp(t *testing.T) {
	for _, tc := range []struct {
		args   []string
		code   int
		stdout []string // substrings of stdout
		stderr []string
	}{
		{[]string{"help"}, 0, []string{"Usage: nvmefs <command>", "serve", "help"}, nil},
		{[]string{"--help"}, 0, []string{"Usage: nvmefs <command>"}, nil},
		{[]string{"-h"}, 0, []string{"Usage: nvmefs <command>"}, nil},
		{nil, 2, nil, []string{"Usage: nvmefs <command>"}},
		{[]string{"serve", "--help"}, 0, []string{"Usage: nvmefs serve", "--listen", "--nqn", "--ns", "--allow-host", "--block-size", "--max-c2h-data", "--log-level", "SIGTERM"}, nil},
		{[]string{"serve", "-h"}, 0, []string{"Usage: nvmefs serve"}, nil},
		{[]string{"help", "serve"}, 0, []string{"Usage: nvmefs serve", "--listen"}, nil},
		{[]string{"help", "nope"}, 2, nil, []string{`unknown command "nope"`}},
	} {
		code, stdout, stderr := runNvmefs(t, tc.args...)
		if code != tc.code {
			t.Errorf("nvmefs %q: exit %d, want %d (stderr: %s)", tc.args, code, tc.code, stderr)
		}
		for _, s := range tc.stdout {
			if !strings.Contains(stdout, s) {
				t.Errorf("nvmefs %q: stdout lacks %q:\n%s", tc.args, s, stdout)
			}
		}
		for _, s := range tc.stderr {
			if !strings.Contains(stderr, s) {
				t.Errorf("nvmefs %q: stderr lacks %q:\n%s", tc.args, s, stderr)
			}
		}
		noCrash(t, stderr)
	}
}

func TestServeRejectsBadInvocations(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.img")
	img := filepath.Join(dir, "ns.img")
	if err := os.WriteFile(img, make([]byte, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	// An address in use: held by the test for the duration.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()

	base := []string{"serve", "--listen", "127.0.0.1:0"}
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"bogus"}, 2, `unknown command "bogus"`},
		{[]string{"--nqn", testNQN}, 2, "a command comes before flags"},
		{append(base, "--bogus"), 2, "unknown flag: --bogus"},
		{append(base, "--ns", "mem:1M"), 2, "--nqn is required"},
		{append(base, "--nqn", testNQN), 2, "at least one --ns is required"},
		{append(base, "--nqn", "disk1", "--ns", "mem:1M"), 2, "is not an NQN"},
		{append(base, "--nqn", "nqn.2014-08.org.nvmexpress.discovery", "--ns", "mem:1M"), 2, "discovery subsystem"},
		{append(base, "--nqn", "nqn."+strings.Repeat("x", 220), "--ns", "mem:1M"), 2, "more than the 223"},
		{append(base, "--nqn", testNQN, "--ns", "mem:1M", "--allow-host", "bob"), 2, "--allow-host"},
		{append(base, "--nqn", testNQN, "--ns", "mem:1M", "stray"), 2, `unexpected argument "stray"`},
		{append(base, "--nqn", testNQN, "--ns", "mem:1M", "--block-size", "1000"), 2, "--block-size 1000"},
		{append(base, "--nqn", testNQN, "--ns", "mem:1M", "--block-size", "8192"), 2, "--block-size 8192"},
		{append(base, "--nqn", testNQN, "--ns", "mem:1M", "--block-size", "notanumber"), 2, "--block-size"},
		{append(base, "--nqn", testNQN, "--ns", "mem:1M", "--max-c2h-data", "5G"), 2, "more than 4 GiB"},
		{append(base, "--nqn", testNQN, "--ns", "mem:1M", "--log-level", "loud"), 2, "unknown log level"},
		{append(base, "--nqn", testNQN, "--ns", missing), 1, "does not exist"},
		{append(base, "--nqn", testNQN, "--ns", dir), 1, "is a directory"},
		{append(base, "--nqn", testNQN, "--ns", "mem:12X"), 1, "invalid size"},
		{append(base, "--nqn", testNQN, "--ns", img, "--ns", img), 1, "namespace 2 (--ns " + img + "): store: " + img + " is in use"},
		{append(base, "--nqn", testNQN, "--ns", "mem:1M", "--ns", "mem:6K", "--block-size", "4096"), 1, "namespace 2 (--ns mem:6K): size 6144 bytes is not a multiple"},
		{[]string{"serve", "--listen", busy.Addr().String(), "--nqn", testNQN, "--ns", "mem:1M"}, 1, "address already in use"},
		{[]string{"serve", "--listen", "127.0.0.1:99999", "--nqn", testNQN, "--ns", "mem:1M"}, 1, "cannot listen on 127.0.0.1:99999"},
	} {
		code, _, stderr := runNvmefs(t, tc.args...)
		if code != tc.code {
			t.Errorf("nvmefs %q: exit %d, want %d (stderr: %s)", tc.args, code, tc.code, stderr)
		}
		if !strings.Contains(stderr, tc.msg) {
			t.Errorf("nvmefs %q: stderr lacks %q:\n%s", tc.args, tc.msg, stderr)
		}
		noCrash(t, stderr)
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("serve created the missing namespace file: %v", err)
	}
}

// server is an `nvmefs serve` process.
type server struct {
	cmd  *exec.Cmd
	addr string // the address it listens on
	done chan struct{}
	err  error // from Wait, once done is closed

	mu     sync.Mutex
	stderr bytes.Buffer
}

var listenRE = regexp.MustCompile(`msg=serving .*listen=(\S+)`)

// startServe starts `nvmefs serve --listen 127.0.0.1:0 args...` and waits
// until it logs the address it bound. The process is killed, by its pid, when
// the test ends if it is still running.
func startServe(t *testing.T, args ...string) *server {
	t.Helper()
	s := &server{done: make(chan struct{})}
	s.cmd = exec.Command(nvmefsBin, append([]string{"serve", "--listen", "127.0.0.1:0"}, args...)...)
	pipe, err := s.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addrc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			line := sc.Text()
			s.mu.Lock()
			s.stderr.WriteString(line + "\n")
			s.mu.Unlock()
			if m := listenRE.FindStringSubmatch(line); m != nil {
				select {
				case addrc <- m[1]:
				default:
				}
			}
		}
		io.Copy(io.Discard, pipe)
		s.err = s.cmd.Wait() // after the pipe is drained, as Wait requires
		close(s.done)
	}()
	t.Cleanup(func() {
		select {
		case <-s.done:
			return
		default:
		}
		s.cmd.Process.Kill()
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			t.Errorf("nvmefs (pid %d) did not exit after SIGKILL", s.cmd.Process.Pid)
		}
	})
	select {
	case s.addr = <-addrc:
	case <-s.done:
		t.Fatalf("nvmefs serve exited before serving (%v):\n%s", s.err, s.output())
	case <-time.After(20 * time.Second):
		t.Fatalf("nvmefs serve did not report its address within 20s:\n%s", s.output())
	}
	return s
}

func (s *server) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stderr.String()
}

// stop sends sig and waits (bounded) for the process to exit; it returns the
// exit status.
func (s *server) stop(t *testing.T, sig syscall.Signal) int {
	t.Helper()
	if err := s.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Fatalf("signalling nvmefs: %v", err)
	}
	select {
	case <-s.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("nvmefs did not exit within 20s of %v:\n%s", sig, s.output())
	}
	// Wait reaped it: the pid is gone.
	if err := syscall.Kill(s.cmd.Process.Pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("pid %d still exists after exit: %v", s.cmd.Process.Pid, err)
	}
	return s.cmd.ProcessState.ExitCode()
}

// icHandshake sends an ICReq to addr and returns the ICResp.
func icHandshake(t *testing.T, addr string, req wire.ICReqFields) wire.ICResp {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatalf("connecting to nvmefs at %s: %v", addr, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, wire.ICReqLen)
	wire.ICReq(buf).Encode(&req)
	if _, err := conn.Write(buf); err != nil {
		t.Fatalf("sending ICReq: %v", err)
	}
	r := wire.NewReader(conn, wire.ToHost, &wire.Params{})
	h, _, err := r.Next()
	if err != nil {
		t.Fatalf("reading the answer to ICReq: %v", err)
	}
	if h.Type() != wire.TypeICResp {
		t.Fatalf("ICReq answered with %v, want ICResp", h.Type())
	}
	return bytes.Clone(wire.ICResp(h))
}

func TestServeAnswersAndStopsCleanly(t *testing.T) {
	img := filepath.Join(t.TempDir(), "ns1.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 1<<20); err != nil {
		t.Fatal(err)
	}
	s := startServe(t, "--nqn", testNQN, "--ns", img, "--ns", "mem:2M")
	if !strings.HasPrefix(s.addr, "127.0.0.1:") || strings.HasSuffix(s.addr, ":0") {
		t.Fatalf("serving on %q, want 127.0.0.1 and a real port", s.addr)
	}

	resp := icHandshake(t, s.addr, wire.ICReqFields{HeaderDigest: true, DataDigest: true})
	if resp.PFV() != 0 {
		t.Errorf("ICResp PFV = %d, want 0", resp.PFV())
	}
	if resp.MaxH2CData() < 4096 || resp.MaxH2CData()%4 != 0 {
		t.Errorf("ICResp MAXH2CDATA = %d, want a multiple of 4 of at least 4096", resp.MaxH2CData())
	}
	if resp.CPDA() > wire.MaxPDA {
		t.Errorf("ICResp CPDA = %d, more than %d", resp.CPDA(), wire.MaxPDA)
	}
	// A second host at the same time is served too.
	icHandshake(t, s.addr, wire.ICReqFields{})

	if code := s.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit status %d after SIGTERM, want 0:\n%s", code, s.output())
	}
	out := s.output()
	for _, want := range []string{
		"nqn=" + testNQN,
		`msg=namespace nsid=1 size=1048576 blocks=2048 backing="file ` + img,
		`msg=namespace nsid=2 size=2097152 blocks=4096 backing="memory (2M, sparse)"`,
		"ANY host",
		"msg=stopping signal=terminated",
		`msg="namespace flushed and closed" nsid=1`,
		`msg="namespace flushed and closed" nsid=2`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	noCrash(t, out)
	// The file namespace is intact: same size, nothing created beside it.
	if fi, err := os.Stat(img); err != nil || fi.Size() != 1<<20 {
		t.Errorf("namespace file after stop: %v, %v", fi, err)
	}
}

func TestServeWithAllowHostStopsOnSIGINT(t *testing.T) {
	s := startServe(t, "--nqn", testNQN, "--ns", "mem:1M", "--block-size", "4096",
		"--allow-host", "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001",
		"--max-c2h-data", "8K", "--c2h-success", "--log-level", "debug")
	icHandshake(t, s.addr, wire.ICReqFields{})
	if code := s.stop(t, syscall.SIGINT); code != 0 {
		t.Fatalf("exit status %d after SIGINT, want 0:\n%s", code, s.output())
	}
	out := s.output()
	if strings.Contains(out, "ANY host") {
		t.Errorf("warned of open access though --allow-host was given:\n%s", out)
	}
	for _, want := range []string{"access restricted", "blocks=256", "msg=stopping signal=interrupt", `msg="namespace flushed and closed" nsid=1`} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	noCrash(t, out)
}

// A stop signal delivered twice at once (as coreutils timeout does, to the
// process and to its group) is one clean stop, not a forced exit.
func TestServeTreatsADoubledSignalAsOne(t *testing.T) {
	img := filepath.Join(t.TempDir(), "ns1.img")
	if err := os.WriteFile(img, make([]byte, 64<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startServe(t, "--nqn", testNQN, "--ns", img)
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	s.cmd.Process.Signal(syscall.SIGTERM) // may find it gone already
	if code := s.stop(t, syscall.Signal(0)); code != 0 {
		t.Fatalf("exit status %d after a doubled SIGTERM, want 0:\n%s", code, s.output())
	}
	if out := s.output(); !strings.Contains(out, `msg="namespace flushed and closed" nsid=1`) {
		t.Errorf("namespace not flushed:\n%s", out)
	}
}

// End to end: a host writes to a file namespace of a running nvmefs serve;
// after SIGTERM with the host still connected, nvmefs exits 0 and the data
// is in the file. A host not on --allow-host is refused and logged.
func TestServeWritesReachTheFile(t *testing.T) {
	const (
		allowed = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555"
		refused = "nqn.2014-08.org.nvmexpress:uuid:99999999-2222-3333-4444-555555555555"
		size    = 1 << 20
		lba     = 24
	)
	img := filepath.Join(t.TempDir(), "ns1.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	s := startServe(t, "--nqn", testNQN, "--ns", "mem:1M", "--ns", img, "--allow-host", allowed)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	opts := host.Options{
		NrIOQueues:      1,
		QueueSize:       8,
		IOTimeout:       5 * time.Second,
		ReconnectDelay:  time.Second,
		CtrlLossTmo:     2 * time.Second,
		ShutdownTimeout: time.Second,
		HostID:          [16]byte{1},
		Logger:          slog.New(slog.NewTextHandler(io.Discard, nil)),
	}

	opts.HostNQN = refused
	if c, err := host.Connect(ctx, s.addr, testNQN, opts); err == nil {
		c.Close()
		t.Fatal("a host not on --allow-host connected")
	}

	opts.HostNQN = allowed
	c, err := host.Connect(ctx, s.addr, testNQN, opts)
	if err != nil {
		t.Fatalf("connecting as an allowed host: %v\n%s", err, s.output())
	}
	closed := make(chan struct{})
	t.Cleanup(func() {
		go func() { c.Close(); close(closed) }()
		select {
		case <-closed:
		case <-time.After(20 * time.Second):
			t.Error("host Close did not return within 20s")
		}
	})
	data := bytes.Repeat([]byte("nvmefs serve end to end "), 64<<10/24+1)[:64<<10]
	if err := c.Write(ctx, 2, lba, data); err != nil {
		t.Fatalf("write to nsid 2: %v", err)
	}
	got := make([]byte, len(data))
	if err := c.Read(ctx, 2, lba, got); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back over NVMe/TCP: err %v, equal %v", err, bytes.Equal(got, data))
	}

	if code := s.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit status %d after SIGTERM with a host connected, want 0:\n%s", code, s.output())
	}
	onDisk, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if len(onDisk) != size {
		t.Fatalf("namespace file is %d bytes after serving, want %d", len(onDisk), size)
	}
	if !bytes.Equal(onDisk[lba*512:lba*512+len(data)], data) {
		t.Error("the host's write is not in the namespace file")
	}
	if !isZeroBytes(onDisk[:lba*512]) || !isZeroBytes(onDisk[lba*512+len(data):]) {
		t.Error("bytes outside the host's write changed in the namespace file")
	}
	out := s.output()
	for _, want := range []string{refused, `msg="namespace flushed and closed" nsid=2`} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
	noCrash(t, out)
}

func isZeroBytes(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}
