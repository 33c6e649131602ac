package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDiscoverListsTheSubsystem(t *testing.T) {
	// The default host identity goes to a temporary config directory.
	cfg := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", cfg)
	s := startServe(t, "--nqn", testNQN, "--ns", "mem:1M")
	host, port, _ := net.SplitHostPort(s.addr)

	code, out, stderr := runNvmefs(t, "discover", "--addr", s.addr)
	noCrash(t, stderr)
	if code != 0 {
		t.Fatalf("discover: exit %d\n%s", code, stderr)
	}
	var line string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, testNQN) {
			line = l
		}
	}
	f := strings.Fields(line)
	if len(f) != 8 || f[1] != "tcp" || f[2] != "ipv4" || f[3] != "nvme-subsystem" || f[4] != host || f[5] != port || f[7] != testNQN {
		t.Errorf("no table line for %s with tcp %s %s:\n%s", testNQN, host, port, out)
	}
	if b, err := os.ReadFile(filepath.Join(cfg, "nvmefs", "hostnqn")); err != nil || !strings.HasPrefix(string(b), "nqn.2014-08.org.nvmexpress:uuid:") {
		t.Errorf("default host NQN not kept in the config dir: %q %v", b, err)
	}

	code, out, stderr = runNvmefs(t, "discover", "--addr", s.addr, "--format", "nvme", "--hdr-digest", "--data-digest",
		"--hostnqn", "nqn.2014-08.org.nvmexpress:uuid:4b4e5650-0000-4000-8000-0000000000aa", "--hostid", "4b4e5650-0000-4000-8000-0000000000aa")
	noCrash(t, stderr)
	if code != 0 || !strings.Contains(out, "subnqn:  "+testNQN) || !strings.Contains(out, "trsvcid: "+port) || !strings.Contains(out, "trtype:  tcp") {
		t.Errorf("discover --format nvme: exit %d\n%s\n%s", code, out, stderr)
	}
}

func TestDiscoverErrors(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	for _, tc := range []struct {
		args []string
		code int
	}{
		{[]string{"discover"}, 2},
		{[]string{"discover", "--addr", "127.0.0.1:1", "--format", "xml"}, 2},
		{[]string{"discover", "--addr", "127.0.0.1:1", "--hostid", "nope"}, 2},
		{[]string{"discover", "--addr", "127.0.0.1:1", "extra"}, 2},
	} {
		code, _, stderr := runNvmefs(t, tc.args...)
		noCrash(t, stderr)
		if code != tc.code {
			t.Errorf("nvmefs %s: exit %d, want %d\n%s", strings.Join(tc.args, " "), code, tc.code, stderr)
		}
	}
	// Nobody listening: a failure, reported.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	code, _, stderr := runNvmefs(t, "discover", "--addr", addr, "--timeout", "2s")
	noCrash(t, stderr)
	if code != 1 || !strings.Contains(stderr, "nvmefs discover:") {
		t.Errorf("discover with nobody listening: exit %d\n%s", code, stderr)
	}
}
