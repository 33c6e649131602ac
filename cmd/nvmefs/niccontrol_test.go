package main

import (
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/mlx5sim"
)

// The NIC control's commands reach the device, bad ones change nothing, and
// what it reads back can be written again.
func TestNICControl(t *testing.T) {
	dev, err := mlx5sim.New(mlx5sim.Config{})
	if err != nil {
		t.Fatal(err)
	}
	o := &mountOptions{nicLoss: 0.01, nicTeardownDelay: time.Millisecond}
	n := newNICControl(dev, o, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if got, want := n.read(), "state up\nloss 0.01\nsetup-fail 0\nteardown-delay 1ms\n"; got != want {
		t.Errorf("read %q, want %q", got, want)
	}
	for _, cmd := range []string{"down", "loss 0.2", "setup-fail 0.5", "teardown-delay 3ms"} {
		if err := n.command(cmd); err != nil {
			t.Fatalf("%q: %v", cmd, err)
		}
	}
	if !dev.Down() {
		t.Error("down did not take the device down")
	}
	want := "state down\nloss 0.2\nsetup-fail 0.5\nteardown-delay 3ms\n"
	if got := n.read(); got != want {
		t.Errorf("read %q, want %q", got, want)
	}
	for _, bad := range []string{"sideways", "state left", "loss 1.5", "loss x", "setup-fail -1", "teardown-delay -1s", "mtu 9000", "loss 0.1 0.2", ""} {
		if err := n.command(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if got := n.read(); got != want {
		t.Errorf("after refused commands: %q, want %q", got, want)
	}
	for _, line := range strings.Split(strings.TrimSpace(strings.Replace(want, "down", "up", 1)), "\n") {
		if err := n.command(line); err != nil {
			t.Errorf("writing back %q: %v", line, err)
		}
	}
	if dev.Down() {
		t.Error("state up left the device down")
	}
}
