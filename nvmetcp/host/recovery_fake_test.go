package host

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/nvmetcp/wire"
)

// readersCheck runs n goroutines that read random-ish ranges until stop
// and check them against want; it returns their errors.
func readersCheck(ctx context.Context, c *Controller, nsid uint32, want []byte, n int, stop <-chan struct{}) <-chan error {
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for g := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			blocks := len(want) / 512
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				size := 4096 << (i % 6) // 4 KiB .. 128 KiB
				lba := uint64((g*7919 + i*104729) % (blocks - size/512))
				buf := make([]byte, size)
				if err := c.Read(ctx, nsid, lba, buf); err != nil {
					errs <- fmt.Errorf("reader %d: %w", g, err)
					return
				}
				if !bytes.Equal(buf, want[lba*512:lba*512+uint64(size)]) {
					errs <- fmt.Errorf("reader %d: read %d at lba %d: data differs", g, size, lba)
					return
				}
			}
		}()
	}
	go func() { wg.Wait(); close(errs) }()
	return errs
}

func TestFakeRecoveryTargetRestart(t *testing.T) {
	ft := newFakeTarget(t, fakeConfig{nsSizes: []int{8 << 20}, maxC2H: 16 << 10})
	o := testOpts()
	o.DataDigest = true
	c := connectT(t, ft.Addr(), ft.cfg.nqn, o)
	want := ft.fill(1)
	ctx := testCtx(t, 30*time.Second)
	stop := make(chan struct{})
	errs := readersCheck(ctx, c, 1, want, 8, stop)
	time.Sleep(100 * time.Millisecond)
	ft = ft.restart(t, 300*time.Millisecond)
	// Reads keep completing, with the right data, on the new association.
	deadline := time.Now().Add(10 * time.Second)
	for c.Stats().Total.Reconnects == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	before := c.Stats().Total.Commands
	time.Sleep(200 * time.Millisecond)
	close(stop)
	for err := range errs {
		t.Error(err)
	}
	s := c.Stats()
	if s.Recoveries != 1 || s.Total.Reconnects == 0 {
		t.Errorf("recoveries %d reconnects %d, want 1 and > 0", s.Recoveries, s.Total.Reconnects)
	}
	if s.Total.Commands <= before {
		t.Error("no command completed after the reconnect")
	}
	if ft.connects.Load() != 1 {
		t.Errorf("restarted target saw %d admin connects, want 1", ft.connects.Load())
	}
}

func TestFakeControllerLost(t *testing.T) {
	ft := newFakeTarget(t, fakeConfig{nsSizes: []int{1 << 20}})
	o := testOpts()
	o.CtrlLossTmo = 1500 * time.Millisecond
	o.ReconnectDelay = 200 * time.Millisecond
	o.IOTimeout = 30 * time.Second // the loss, not a timeout, ends the reads
	c := connectT(t, ft.Addr(), ft.cfg.nqn, o)
	ctx := testCtx(t, 20*time.Second)
	// Reads in flight when the target goes: it stops answering, then closes.
	ft.silent.Store(true)
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.Read(ctx, 1, uint64(i), make([]byte, 4096))
		}()
	}
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	ft.Close()
	wg.Wait()
	took := time.Since(start)
	for i, err := range errs {
		if !errors.Is(err, ErrControllerLost) {
			t.Errorf("pending read %d: %v, want ErrControllerLost", i, err)
		}
	}
	if took < o.CtrlLossTmo-100*time.Millisecond || took > o.CtrlLossTmo+3*time.Second {
		t.Errorf("pending reads failed after %v, want about CtrlLossTmo %v", took, o.CtrlLossTmo)
	}
	// New requests fail at once.
	t0 := time.Now()
	if err := c.Write(ctx, 1, 0, make([]byte, 512)); !errors.Is(err, ErrControllerLost) {
		t.Errorf("write after loss: %v, want ErrControllerLost", err)
	}
	if d := time.Since(t0); d > 100*time.Millisecond {
		t.Errorf("write after loss took %v", d)
	}
	if !c.Stats().Lost {
		t.Error("Stats().Lost is false")
	}
}

func TestFakeSilentTargetIOTimeout(t *testing.T) {
	ft := newFakeTarget(t, fakeConfig{nsSizes: []int{1 << 20}})
	o := testOpts()
	o.IOTimeout = 500 * time.Millisecond
	o.KeepAliveTmo = 30 * time.Second // only the I/O timeout can see it
	o.ReconnectDelay = 200 * time.Millisecond
	c := connectT(t, ft.Addr(), ft.cfg.nqn, o)
	want := ft.fill(1)
	ctx := testCtx(t, 20*time.Second)
	ft.silent.Store(true)
	done := make(chan error, 1)
	got := make([]byte, 64<<10)
	go func() { done <- c.Read(ctx, 1, 8, got) }()
	// The read times out, the association is torn down and reconnects
	// fail while the target stays silent.
	deadline := time.Now().Add(5 * time.Second)
	for c.Stats().Total.Timeouts == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if c.Stats().Total.Timeouts == 0 {
		t.Fatal("no I/O timeout seen")
	}
	select {
	case err := <-done:
		t.Fatalf("read ended while the target was silent: %v", err)
	case <-time.After(time.Second):
	}
	ft.silent.Store(false)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("read after the target came back: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("read did not complete after the target came back")
	}
	if !bytes.Equal(got, want[8*512:8*512+len(got)]) {
		t.Fatal("data differs")
	}
	if s := c.Stats(); s.Recoveries != 1 || s.Total.Retries == 0 {
		t.Errorf("recoveries %d retries %d", s.Recoveries, s.Total.Retries)
	}
}

func TestFakeKeepAliveDetectsSilence(t *testing.T) {
	ft := newFakeTarget(t, fakeConfig{nsSizes: []int{1 << 20}})
	o := testOpts()
	o.KeepAliveTmo = 400 * time.Millisecond
	o.IOTimeout = 30 * time.Second
	o.CtrlLossTmo = 1 * time.Second
	c := connectT(t, ft.Addr(), ft.cfg.nqn, o)
	ft.silent.Store(true)
	// No I/O at all: only keep-alive can notice; then recovery cannot
	// reconnect to a silent target and the controller is lost.
	deadline := time.Now().Add(5 * time.Second)
	for c.Stats().Recoveries == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if c.Stats().Recoveries == 0 {
		t.Fatal("keep-alive did not detect the silent target")
	}
	ctx := testCtx(t, 10*time.Second)
	if err := c.Read(ctx, 1, 0, make([]byte, 512)); !errors.Is(err, ErrControllerLost) {
		t.Errorf("read: %v, want ErrControllerLost", err)
	}
}

func TestFakeDigestErrorRetried(t *testing.T) {
	ft := newFakeTarget(t, fakeConfig{nsSizes: []int{1 << 20}, maxC2H: 8192})
	o := testOpts()
	o.DataDigest = true
	c := connectT(t, ft.Addr(), ft.cfg.nqn, o)
	want := ft.fill(1)
	ctx := testCtx(t, 10*time.Second)
	ft.corruptC2H.Store(1)
	got := make([]byte, 32<<10)
	if err := c.Read(ctx, 1, 16, got); err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, want[16*512:16*512+len(got)]) {
		t.Fatal("data differs after a retried digest error")
	}
	s := c.Stats()
	if s.Total.DigestErrors != 1 || s.Total.Retries != 1 || s.Recoveries != 0 {
		t.Errorf("digest errors %d retries %d recoveries %d, want 1 1 0", s.Total.DigestErrors, s.Total.Retries, s.Recoveries)
	}
	// Every copy bad: the read fails with the digest error, never with data.
	ft.corruptC2H.Store(1000)
	err := c.Read(ctx, 1, 16, got)
	if !errors.Is(err, wire.ErrDataDigest) {
		t.Fatalf("read with every PDU corrupted: %v, want a data digest error", err)
	}
}

func TestFakeProtocolErrorRecovers(t *testing.T) {
	ft := newFakeTarget(t, fakeConfig{nsSizes: []int{1 << 20}})
	o := testOpts()
	c := connectT(t, ft.Addr(), ft.cfg.nqn, o)
	want := ft.fill(1)
	ctx := testCtx(t, 10*time.Second)
	ft.bogusResponse.Store(true)
	got := make([]byte, 4096)
	if err := c.Read(ctx, 1, 3, got); err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, want[3*512:3*512+4096]) {
		t.Fatal("data differs")
	}
	if s := c.Stats(); s.Recoveries != 1 {
		t.Errorf("recoveries %d, want 1 (a response for an unknown command id)", s.Recoveries)
	}
}

func TestFakeStallProxy(t *testing.T) {
	ft := newFakeTarget(t, fakeConfig{nsSizes: []int{2 << 20}})
	p := newProxy(t, ft.Addr())
	o := testOpts()
	o.IOTimeout = 400 * time.Millisecond
	o.ReconnectDelay = 100 * time.Millisecond
	c := connectT(t, p.Addr(), ft.cfg.nqn, o)
	want := ft.fill(1)
	ctx := testCtx(t, 20*time.Second)
	p.stall.Store(true)
	stop := make(chan struct{})
	errs := readersCheck(ctx, c, 1, want, 4, stop)
	time.Sleep(1500 * time.Millisecond)
	if c.Stats().Total.Timeouts == 0 {
		t.Error("no I/O timeout while the proxy stalled")
	}
	p.stall.Store(false)
	deadline := time.Now().Add(5 * time.Second)
	for c.live.Load() == nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	close(stop)
	for err := range errs {
		t.Error(err)
	}
}

func TestFakeDigestProxy(t *testing.T) {
	ft := newFakeTarget(t, fakeConfig{nsSizes: []int{2 << 20}, maxC2H: 16 << 10})
	p := newProxy(t, ft.Addr())
	o := testOpts()
	o.DataDigest = true
	c := connectT(t, p.Addr(), ft.cfg.nqn, o)
	want := ft.fill(1)
	ctx := testCtx(t, 20*time.Second)
	p.flipC2H.Store(3)
	for i := range 10 {
		got := make([]byte, 64<<10)
		lba := uint64(i * 128)
		if err := c.Read(ctx, 1, lba, got); err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		if !bytes.Equal(got, want[lba*512:lba*512+uint64(len(got))]) {
			t.Fatalf("read %d: data differs", i)
		}
	}
	if s := c.Stats(); p.flipped.Load() != 3 || s.Total.DigestErrors != 3 || s.Recoveries != 0 {
		t.Errorf("flipped %d, digest errors %d, recoveries %d", p.flipped.Load(), s.Total.DigestErrors, s.Recoveries)
	}
}

func TestFakeCancelRead(t *testing.T) {
	ft := newFakeTarget(t, fakeConfig{nsSizes: []int{1 << 20}})
	o := testOpts()
	c := connectT(t, ft.Addr(), ft.cfg.nqn, o)
	want := ft.fill(1)
	ft.silent.Store(true)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	buf := make([]byte, 4096)
	t0 := time.Now()
	if err := c.Read(ctx, 1, 0, buf); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("read: %v, want deadline exceeded", err)
	}
	if d := time.Since(t0); d > time.Second {
		t.Errorf("canceled read returned after %v", d)
	}
	// The late answer lands nowhere: buf stays as it was.
	ft.silent.Store(false)
	got := make([]byte, 4096)
	if err := c.Read(testCtx(t, 5*time.Second), 1, 0, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want[:4096]) {
		t.Fatal("data differs")
	}
	if !bytes.Equal(buf, make([]byte, 4096)) {
		t.Fatal("a canceled read's buffer was written")
	}
}
