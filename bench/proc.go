package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// clockTick is USER_HZ, the unit of /proc/PID/stat's CPU times (100 on
// every Linux architecture Go supports).
const clockTick = time.Second / 100

// stopTimeout bounds a child's clean stop before it is killed.
const stopTimeout = 20 * time.Second

// child is a process the benchmark started: the target, a mount, the null
// file system or the echo peer. Its stdout and stderr go, line by line, to
// its log file; until it is ready they are also matched against what
// waitFor looks for.
type child struct {
	name string
	cmd  *exec.Cmd
	log  *os.File

	mu      sync.Mutex
	lines   []string // seen so far, while watching
	watch   bool
	changed chan struct{} // closed and replaced at each line or exit

	exited  chan struct{}
	waitErr error
	stopped sync.Once
}

// startChild starts exe with args; its output goes to logPath.
func startChild(name, logPath, exe string, args ...string) (*child, error) {
	log, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(log, "# %s %s\n", exe, strings.Join(args, " "))
	pr, pw, err := os.Pipe()
	if err != nil {
		log.Close()
		return nil, err
	}
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = pw, pw
	// A child outlives nothing: if the benchmark dies, it gets SIGTERM
	// and unmounts.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		log.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	pw.Close()
	c := &child{name: name, cmd: cmd, log: log, watch: true, changed: make(chan struct{}), exited: make(chan struct{})}
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(pr)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			fmt.Fprintln(log, sc.Text())
			c.mu.Lock()
			if c.watch {
				c.lines = append(c.lines, sc.Text())
				close(c.changed)
				c.changed = make(chan struct{})
			}
			c.mu.Unlock()
		}
		io.Copy(io.Discard, pr)
		pr.Close()
	}()
	go func() {
		err := cmd.Wait()
		<-copied
		c.mu.Lock()
		c.waitErr = err
		close(c.changed)
		c.changed = make(chan struct{})
		c.mu.Unlock()
		close(c.exited)
		log.Close()
	}()
	return c, nil
}

// waitFor waits for a line of output matching re and returns its
// submatches; it fails if the child exits first or timeout passes.
func (c *child) waitFor(ctx context.Context, re *regexp.Regexp, timeout time.Duration) ([]string, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	seen := 0
	for {
		c.mu.Lock()
		lines, changed := c.lines, c.changed
		c.mu.Unlock()
		for ; seen < len(lines); seen++ {
			if m := re.FindStringSubmatch(lines[seen]); m != nil {
				c.mu.Lock()
				c.watch, c.lines = false, nil
				c.mu.Unlock()
				return m, nil
			}
		}
		select {
		case <-c.exited:
			return nil, fmt.Errorf("%s exited (%v) before it was ready: %s", c.name, c.waitErr, c.lastLines(lines))
		case <-changed:
		case <-deadline.C:
			return nil, fmt.Errorf("%s not ready after %v: %s", c.name, timeout, c.lastLines(lines))
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (c *child) lastLines(lines []string) string {
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	if len(lines) == 0 {
		return "no output"
	}
	return strings.Join(lines, " | ")
}

// pid is the child's process id.
func (c *child) pid() int { return c.cmd.Process.Pid }

// alive reports whether the child is still running.
func (c *child) alive() bool {
	select {
	case <-c.exited:
		return false
	default:
		return true
	}
}

// cpu is the child's CPU time so far, all threads, user and system.
func (c *child) cpu() (time.Duration, error) {
	if !c.alive() {
		return 0, fmt.Errorf("%s exited (%v)", c.name, c.waitErr)
	}
	return procCPU(c.pid())
}

// stop sends SIGTERM and waits for the child to exit, killing it after
// stopTimeout. It reports how the child ended unless that was a clean
// exit after the signal.
func (c *child) stop() error {
	var err error
	c.stopped.Do(func() {
		if c.alive() {
			c.cmd.Process.Signal(syscall.SIGTERM)
		}
		select {
		case <-c.exited:
		case <-time.After(stopTimeout):
			c.cmd.Process.Kill()
			<-c.exited
			err = fmt.Errorf("%s did not stop within %v of SIGTERM: killed", c.name, stopTimeout)
			return
		}
		if c.waitErr != nil {
			err = fmt.Errorf("%s: %v (log: %s)", c.name, c.waitErr, c.log.Name())
		}
	})
	return err
}

// procCPU reads a process's utime+stime from /proc/PID/stat.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// PID (COMM) STATE PPID ...: COMM may hold spaces and parentheses, so
	// count fields from the last ')'. utime and stime are fields 14 and
	// 15, the 12th and 13th after it.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, errors.New("/proc/" + strconv.Itoa(pid) + "/stat: no ')'")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("/proc/" + strconv.Itoa(pid) + "/stat: too few fields")
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad utime %q or stime %q", pid, f[11], f[12])
	}
	return time.Duration(utime+stime) * clockTick, nil
}
