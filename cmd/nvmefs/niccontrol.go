package main

import (
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nvmefs/nvmefs/fusefs"
	"github.com/nvmefs/nvmefs/mlx5sim"
)

// nicControlName is the control file of the simulated NIC, in .nvmefs.
const nicControlName = "nic"

// nicControl is MOUNTPOINT/.nvmefs/nic: the simulated NIC's faults at run
// time, as a test or an operator would pull a cable or load a link. Reading
// it gives one "name value" line per setting; each line written is a
// command in the same form:
//
//	state down | state up   (or just: down, up)
//	loss RATE               fraction of packets the NIC loses track of
//	setup-fail RATE         fraction of buffer mappings refused
//	teardown-delay DURATION delay before a read's buffer is released
//
// Down, every offloaded connection fails into the host's error recovery and
// new ones run in software; up, the connections made from then on are
// offloaded again.
type nicControl struct {
	dev *mlx5sim.Device
	log *slog.Logger

	mu            sync.Mutex // serialises commands; guards the settings
	loss, setup   float64
	teardownDelay time.Duration
}

func newNICControl(dev *mlx5sim.Device, o *mountOptions, log *slog.Logger) *nicControl {
	return &nicControl{dev: dev, log: log, loss: o.nicLoss, setup: o.nicSetupFail, teardownDelay: o.nicTeardownDelay}
}

func (n *nicControl) control() fusefs.Control {
	return fusefs.Control{Name: nicControlName, Read: n.read, Write: n.command}
}

func (n *nicControl) read() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	state := "up"
	if n.dev.Down() {
		state = "down"
	}
	return fmt.Sprintf("state %s\nloss %v\nsetup-fail %v\nteardown-delay %v\n", state, n.loss, n.setup, n.teardownDelay)
}

// command runs one command line.
func (n *nicControl) command(cmd string) error {
	f := strings.Fields(cmd)
	if len(f) == 1 && (f[0] == "up" || f[0] == "down") {
		f = []string{"state", f[0]}
	}
	if len(f) != 2 {
		return fmt.Errorf("want NAME VALUE (state, loss, setup-fail, teardown-delay), got %q", cmd)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	switch name, v := f[0], f[1]; name {
	case "state":
		if v != "up" && v != "down" {
			return fmt.Errorf("state %q: want up or down", v)
		}
		n.dev.SetDown(v == "down")
	case "loss", "setup-fail":
		rate, err := strconv.ParseFloat(v, 64)
		if err != nil || !(rate >= 0 && rate <= 1) {
			return fmt.Errorf("%s %q: want a fraction, 0..1", name, v)
		}
		set, setting := n.dev.SetLossRate, &n.loss
		if name == "setup-fail" {
			set, setting = n.dev.SetSetupFailRate, &n.setup
		}
		if err := set(rate); err != nil {
			return err
		}
		*setting = rate
	case "teardown-delay":
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return fmt.Errorf("teardown-delay %q: want a duration of at least 0, e.g. 2ms", v)
		}
		n.dev.SetTeardownDelay(d)
		n.teardownDelay = d
	default:
		return fmt.Errorf("unknown setting %q (state, loss, setup-fail, teardown-delay)", name)
	}
	n.log.Info("NIC control", "nic", n.dev.Name(), "set", cmd)
	return nil
}
