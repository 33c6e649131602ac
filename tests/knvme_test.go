package tests

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// kernelPeer is the kernel-nvme harness (../shared/peers/kernel-nvme): the
// Linux kernel's NVMe/TCP host and target in QEMU.
type kernelPeer struct {
	Dir   string // the harness scripts, used in place
	Cache string // its downloads (fetch.sh)
	qemu  string // qemu-system-x86_64
}

// knvmeHostNQN is the host NQN host.sh connects with by default.
const knvmeHostNQN = "nqn.2014-08.org.nvmexpress:uuid:4b4e5650-0000-4000-8000-0000000000ff"

// needKernelPeer returns the harness or skips the test, saying why, when the
// harness directory, qemu-system-x86_64 or the harness's downloads are
// missing. It never skips for any other reason.
func needKernelPeer(t testing.TB) *kernelPeer {
	t.Helper()
	dir := os.Getenv("NVMEFS_KNVME_DIR")
	if dir == "" {
		dir = filepath.Join(repoRoot(t), "..", "shared", "peers", "kernel-nvme")
	}
	if _, err := os.Stat(filepath.Join(dir, "host.sh")); err != nil {
		t.Skipf("kernel-nvme harness not found (%v): set NVMEFS_KNVME_DIR or check out ../shared next to the repo", err)
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skipf("qemu-system-x86_64 not found (%v): run %s/fetch.sh", err, dir)
	}
	cache := os.Getenv("KNVME_CACHE")
	if cache == "" {
		base := os.Getenv("XDG_CACHE_HOME")
		if base == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				t.Skipf("kernel-nvme cache: no home directory (%v) and KNVME_CACHE unset", err)
			}
			base = filepath.Join(home, ".cache")
		}
		cache = filepath.Join(base, "kernel-nvme-peer")
	}
	if _, err := os.Stat(filepath.Join(cache, "env")); err != nil {
		t.Skipf("kernel-nvme downloads missing in %s (%v): run bash %s/fetch.sh", cache, err, dir)
	}
	return &kernelPeer{Dir: dir, Cache: cache, qemu: qemu}
}

// hostRun is one run of host.sh: the kernel host against a target on
// 127.0.0.1:Port.
type hostRun struct {
	Port    int
	NQN     string
	Env     []string      // more host.sh settings, KEY=VALUE (HDGST, WRITE_TEST, ...)
	Timeout time.Duration // HOST_TIMEOUT; the run is killed a little after it
}

// hostResult is what host.sh reported.
type hostResult struct {
	Pass     bool
	Result   string // the KNVME-HOST-RESULT line, "" if none
	Console  string // the guest console
	Output   string // everything host.sh printed
	Duration time.Duration
	Err      error // how host.sh exited
}

// Namespaces are the "NS ..." lines of the console, by device name.
func (r *hostResult) Namespaces() map[string]map[string]string {
	return consoleRecords(r.Console, "knvme: NS ")
}

// Writes are the "WRITE ..." lines of the console, by device name.
func (r *hostResult) Writes() map[string]map[string]string {
	return consoleRecords(r.Console, "knvme: WRITE ")
}

// Controller is the "controller nvmeN: ..." line's key=value fields.
func (r *hostResult) Controller() map[string]string {
	for _, rec := range consoleRecords(r.Console, "knvme: controller ") {
		return rec
	}
	return nil
}

// consoleRecords parses lines "PREFIX name k=v k=v ..." of the console.
func consoleRecords(console, prefix string) map[string]map[string]string {
	recs := map[string]map[string]string{}
	for _, line := range strings.Split(console, "\n") {
		i := strings.Index(line, prefix)
		if i < 0 {
			continue
		}
		f := strings.Fields(line[i+len(prefix):])
		if len(f) == 0 {
			continue
		}
		kv := map[string]string{}
		for _, w := range f[1:] {
			if k, v, ok := strings.Cut(w, "="); ok {
				kv[k] = v
			}
		}
		recs[strings.TrimSuffix(f[0], ":")] = kv
	}
	return recs
}

// nvmeExcerpt is the console lines a reader needs to see why a run failed:
// the harness's own lines and the kernel's nvme messages.
func (r *hostResult) nvmeExcerpt() string {
	re := regexp.MustCompile(`(?i)knvme:|nvme|blk_update_request|I/O error|Buffer I/O`)
	var keep []string
	for _, line := range strings.Split(r.Console, "\n") {
		if re.MatchString(line) {
			keep = append(keep, line)
		}
	}
	if len(keep) > 120 {
		keep = append([]string{fmt.Sprintf("... (%d lines cut)", len(keep)-120)}, keep[len(keep)-120:]...)
	}
	return strings.Join(keep, "\n")
}

// RunHost boots the kernel host against 127.0.0.1:run.Port and waits for its
// verdict. Everything it starts (host.sh, QEMU and QEMU's nc relays) is
// stopped by pid before it returns.
func (k *kernelPeer) RunHost(t testing.TB, run hostRun) *hostResult {
	t.Helper()
	state := t.TempDir()
	if run.Timeout == 0 {
		run.Timeout = 120 * time.Second
	}
	// A qemu-system-x86_64 shim that records its pid before exec'ing QEMU:
	// host.sh runs QEMU under timeout(1), which puts it in a process group of
	// its own, so this is how we can stop our QEMU and only ours.
	shimDir := filepath.Join(state, "bin")
	pidFile := filepath.Join(state, "qemu.pids")
	if err := os.Mkdir(shimDir, 0o755); err != nil {
		t.Fatal(err)
	}
	shim := "#!/bin/sh\necho $$ >> \"$NVMEFS_QEMU_PIDS\"\nexec \"$NVMEFS_QEMU\" \"$@\"\n"
	if err := os.WriteFile(filepath.Join(shimDir, "qemu-system-x86_64"), []byte(shim), 0o755); err != nil {
		t.Fatal(err)
	}
	outPath := filepath.Join(state, "host.out")
	out, err := os.Create(outPath)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()

	ctx, cancel := context.WithTimeout(context.Background(), run.Timeout+15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(k.Dir, "host.sh"))
	cmd.Env = append(os.Environ(),
		"PATH="+shimDir+string(os.PathListSeparator)+os.Getenv("PATH"),
		"NVMEFS_QEMU="+k.qemu,
		"NVMEFS_QEMU_PIDS="+pidFile,
		"KNVME_CACHE="+k.Cache,
		"KNVME_STATE="+state,
		"PORT="+strconv.Itoa(run.Port),
		"NQN="+run.NQN,
		"HOST_TIMEOUT="+strconv.Itoa(int(run.Timeout/time.Second)),
	)
	cmd.Env = append(cmd.Env, run.Env...)
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second

	t.Logf("host.sh: PORT=%d NQN=%s %s", run.Port, run.NQN, strings.Join(run.Env, " "))
	start := time.Now()
	res := &hostResult{}
	if err := cmd.Start(); err != nil {
		t.Fatalf("host.sh: %v", err)
	}
	res.Err = cmd.Wait()
	res.Duration = time.Since(start)
	if ctx.Err() != nil {
		res.Err = fmt.Errorf("killed after %v: %w (%v)", res.Duration.Round(time.Second), ctx.Err(), res.Err)
	}
	// host.sh's pipeline may be gone while QEMU is not (host.sh killed): stop
	// what we started, by pid.
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	killRecordedQEMU(t, pidFile, run.Port)

	b, _ := os.ReadFile(outPath)
	res.Output = string(b)
	c, _ := os.ReadFile(filepath.Join(state, "console.log"))
	res.Console = string(c)
	for _, line := range strings.Split(res.Console, "\n") {
		if strings.Contains(line, "KNVME-HOST-RESULT:") {
			res.Result = strings.TrimSpace(line)
		}
	}
	res.Pass = res.Err == nil && strings.Contains(res.Result, "KNVME-HOST-RESULT: PASS")
	return res
}

// killRecordedQEMU kills the QEMUs the shim recorded that still run as the
// host VM for port (their command line is checked, so a recycled pid is left
// alone).
func killRecordedQEMU(t testing.TB, pidFile string, port int) {
	t.Helper()
	f, err := os.Open(pidFile)
	if err != nil {
		return // QEMU never started
	}
	defer f.Close()
	name := "knvme-host-" + strconv.Itoa(port)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		pid, err := strconv.Atoi(strings.TrimSpace(sc.Text()))
		if err != nil || pid <= 1 {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || !strings.Contains(string(cmdline), name) {
			continue // gone
		}
		t.Logf("killing QEMU pid %d (%s), still running", pid, name)
		syscall.Kill(pid, syscall.SIGKILL)
		for i := 0; i < 50; i++ { // until it is gone or a zombie (empty cmdline)
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err != nil || len(b) == 0 {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}
