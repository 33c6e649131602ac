package host

import (
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/nvmetcp/target"
)

// goroutinesSettle waits until the number of goroutines is back to at most
// n and reports the stacks of the extra ones if it is not.
func goroutinesSettle(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > n && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := runtime.NumGoroutine(); got > n {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var ours []string
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "nvmetcp/host.") && !strings.Contains(g, "_test.go") {
				ours = append(ours, g)
			}
		}
		t.Errorf("%d goroutines, want at most %d; the host's:\n%s", got, n, strings.Join(ours, "\n\n"))
	}
}

func TestNoGoroutineLeft(t *testing.T) {
	tt := startTarget(t, target.Config{}, "mem:1M")
	base := runtime.NumGoroutine()
	ctx := testCtx(t, 20*time.Second)

	// Normal life: connect, I/O, close.
	c, err := Connect(ctx, tt.addr, testNQN, testOpts())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Read(ctx, 1, 0, make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	goroutinesSettle(t, base)

	// Closed while recovering: the target is gone, reconnects fail.
	p := newProxy(t, tt.addr)
	o := testOpts()
	o.ReconnectDelay = 50 * time.Millisecond
	c, err = Connect(ctx, p.Addr(), testNQN, o)
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	deadline := time.Now().Add(5 * time.Second)
	for c.Stats().Recoveries == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	done := make(chan error, 1)
	go func() { done <- c.Read(ctx, 1, 0, make([]byte, 4096)) }()
	time.Sleep(200 * time.Millisecond)
	c.Close()
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Errorf("read pending at Close: %v, want ErrClosed", err)
	}
	goroutinesSettle(t, base)

	// A failed connect leaves nothing behind either.
	if _, err := Connect(ctx, p.Addr(), testNQN, testOpts()); err == nil {
		t.Fatal("connect to a closed address succeeded")
	}
	goroutinesSettle(t, base)
}
