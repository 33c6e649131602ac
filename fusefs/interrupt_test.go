package fusefs

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A signal to a thread blocked in read(2) on the mount must not make the read
// fail: the kernel interrupts the FUSE request, and the file system finishes
// it anyway, as a block device does.
func TestSignalDoesNotInterruptIO(t *testing.T) {
	be := newMemBackend(512, 1<<20)
	be.delay = 300 * time.Millisecond // each command; the read is one command
	for i := range be.data {
		be.data[i] = byte(i * 7)
	}
	srv, _ := mountFiles(t, Config{}, be)

	f, err := os.Open(filepath.Join(srv.Dir(), "nvme0n1"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	type result struct {
		n   int
		err error
	}
	tid := make(chan int, 1)
	done := make(chan result, 1)
	buf := make([]byte, 4096)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tid <- unix.Gettid()
		// unix.Pread, not f.ReadAt: os.File retries EINTR and would hide it.
		n, err := unix.Pread(int(f.Fd()), buf, 8192)
		done <- result{n, err}
	}()
	thread := <-tid
	time.Sleep(50 * time.Millisecond) // let the read reach the file system
	// SIGURG is harmless to a Go program (the runtime's preemption signal)
	// and, like any signal, makes the kernel interrupt the FUSE request.
	for range 3 {
		if err := unix.Tgkill(os.Getpid(), thread, unix.SIGURG); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var r result
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("read did not return")
	}
	if r.err != nil || r.n != len(buf) {
		t.Fatalf("pread = %d, %v; want %d bytes, no error", r.n, r.err, len(buf))
	}
	if got, want := buf, be.bytes(8192, len(buf)); string(got) != string(want) {
		t.Fatal("read returned wrong bytes")
	}
	if srv.root.st.restarted.Load() == 0 {
		t.Error("fuse_restarted is 0: the signal did not interrupt the request, so this test proved nothing")
	}
}

func TestFatalSignalPending(t *testing.T) {
	if fatalSignalPending(os.Getpid()) {
		t.Fatal("this process has no fatal signal pending")
	}
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if !fatalSignalPending(cmd.Process.Pid) {
		t.Fatalf("pid %d has exited: a request of a gone caller must be abandoned", cmd.Process.Pid)
	}
}
