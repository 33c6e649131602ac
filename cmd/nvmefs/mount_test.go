package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{
		0: "0 bytes", 512: "512 bytes", 1024: "1 KiB", 1536: "1.5 KiB", 1 << 20: "1 MiB",
		64 << 20: "64 MiB", 1 << 30: "1 GiB", 3 << 39: "1.5 TiB",
	} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	for in, want := range map[string]string{
		`/mnt/plain`:         "/mnt/plain",
		`/mnt/with\040space`: "/mnt/with space",
		`/mnt/tab\011x\134y`: "/mnt/tab\tx\\y",
		`/mnt/trailing\04`:   `/mnt/trailing\04`,
		`/mnt/not\999octal`:  `/mnt/not\999octal`,
	} {
		if got := unescapeMountinfo(in); got != want {
			t.Errorf("unescapeMountinfo(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestMountedAt(t *testing.T) {
	if _, ok := mountedAt("/"); !ok {
		t.Errorf("/ is not reported as a mount point")
	}
	if _, ok := mountedAt(t.TempDir()); ok {
		t.Errorf("a fresh temporary directory is reported as a mount point")
	}
}

func TestMountUsageErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"mount"}, "exactly one MOUNTPOINT"},
		{[]string{"mount", "a", "b"}, "exactly one MOUNTPOINT"},
		{[]string{"mount", "/x", "--addr", "127.0.0.1:4420", "--size", "1G", "--nqn", "nqn.2026-01.io.x:y"}, "--size is for the embedded target"},
		{[]string{"mount", "/x", "--size", "12"}, "--size"},
		{[]string{"mount", "/x", "--nqn", "bad nqn"}, "--nqn"},
		{[]string{"mount", "/x", "--queue-size", "1"}, "--queue-size"},
		{[]string{"mount", "/x", "--addr", "127.0.0.1", "--nqn", "nqn.2014-08.org.nvmexpress.discovery"}, "discovery subsystem"},
	} {
		var out, errb bytes.Buffer
		if code := run(c.args, &env{stdout: &out, stderr: &errb}); code != 2 || !strings.Contains(errb.String(), c.want) {
			t.Errorf("nvmefs %v: status %d, stderr %q; want 2 and %q", c.args, code, errb.String(), c.want)
		}
	}
}

func TestStatsTable(t *testing.T) {
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, ".nvmefs"), 0o755)
	os.WriteFile(filepath.Join(dir, ".nvmefs", "stats"), []byte("fuse_reads: 12\nnvme0_q1_commands: 123456\nx: 0\n"), 0o644)
	var out, errb bytes.Buffer
	if code := run([]string{"stats", dir}, &env{stdout: &out, stderr: &errb}); code != 0 {
		t.Fatalf("nvmefs stats: %d, %s", code, errb.String())
	}
	want := "" +
		"fuse_reads             12\n" +
		"nvme0_q1_commands  123456\n" +
		"x                       0\n"
	if out.String() != want {
		t.Errorf("nvmefs stats printed\n%s\nwant\n%s", out.String(), want)
	}
	os.WriteFile(filepath.Join(dir, ".nvmefs", "stats"), []byte("garbage\n"), 0o644)
	if code := run([]string{"stats", dir}, &env{stdout: &out, stderr: &errb}); code != 1 || !strings.Contains(errb.String(), "malformed") {
		t.Errorf("malformed stats file: status %d, %s", code, errb.String())
	}
	errb.Reset()
	if code := run([]string{"stats", t.TempDir()}, &env{stdout: &out, stderr: &errb}); code != 1 || !strings.Contains(errb.String(), "not an nvmefs mount") {
		t.Errorf("plain directory: status %d, %s", code, errb.String())
	}
}
