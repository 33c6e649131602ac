package fusefs

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strconv"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// The kernel interrupts a FUSE request whenever its caller gets a signal, any
// signal (SIGCHLD, SIGWINCH, Go's own SIGURG), and go-fuse cancels the
// request's context. A read or write of a block device is not ended by a
// signal, and programs with SA_RESTART handlers do not expect EINTR from
// read(2), write(2) or fsync(2). So a request that was cancelled is issued
// again, uncancellable (the host's I/O timeout and ctrl_loss_tmo still bound
// it), unless the caller is dying: a fatal signal is pending (the kernel
// marks it as SIGKILL pending in every thread), or the caller is gone.
// Then it ends with EINTR, as a killable wait does. The retry costs nothing
// on the fast path: only a cancelled request looks at /proc.
func (r *root) uninterrupted(ctx context.Context, op func(context.Context) error) error {
	err := op(ctx)
	if err == nil || !errors.Is(err, context.Canceled) || ctx.Err() == nil || callerDying(ctx) {
		return err
	}
	r.st.restarted.Add(1)
	return op(context.WithoutCancel(ctx))
}

// callerDying reports whether the process behind a FUSE request has a fatal
// signal pending or has exited. Without a caller it answers yes, so that
// cancellation is honoured.
func callerDying(ctx context.Context) bool {
	c, ok := fuse.FromContext(ctx)
	if !ok || c.Pid == 0 {
		return true
	}
	return fatalSignalPending(int(c.Pid))
}

// sigkillBit is SIGKILL (9) in /proc's pending-signal masks.
const sigkillBit = 1 << (9 - 1)

// fatalSignalPending reads /proc/PID/status (PID may be a thread id): true if
// SIGKILL is pending for the thread or its process, or PID is gone.
func fatalSignalPending(pid int) bool {
	status, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return true
	}
	for _, field := range [...]string{"SigPnd:", "ShdPnd:"} {
		i := bytes.Index(status, []byte(field))
		if i < 0 {
			continue
		}
		line := status[i+len(field):]
		if j := bytes.IndexByte(line, '\n'); j >= 0 {
			line = line[:j]
		}
		mask, err := strconv.ParseUint(string(bytes.TrimSpace(line)), 16, 64)
		if err == nil && mask&sigkillBit != 0 {
			return true
		}
	}
	return false
}
