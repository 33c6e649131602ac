package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/mlx5sim"
)

func TestMountNICUsageErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"mount", "/x", "--offload=false", "--nic-loss", "0.1"}, "--nic-* flags configure the offload"},
		{[]string{"mount", "/x", "--nic-mtu", "0"}, "--nic-mtu 0"},
		{[]string{"mount", "/x", "--nic-mtu", "70000"}, "--nic-mtu 70000"},
		{[]string{"mount", "/x", "--nic-loss", "1.5"}, "--nic-loss"},
		{[]string{"mount", "/x", "--nic-loss", "NaN"}, "--nic-loss"},
		{[]string{"mount", "/x", "--nic-setup-fail", "-0.1"}, "--nic-setup-fail"},
		{[]string{"mount", "/x", "--nic-teardown-delay", "-1ms"}, "--nic-teardown-delay"},
	} {
		var out, errb bytes.Buffer
		if code := run(c.args, &env{stdout: &out, stderr: &errb}); code != 2 || !strings.Contains(errb.String(), c.want) {
			t.Errorf("nvmefs %v: status %d, stderr %q; want 2 and %q", c.args, code, errb.String(), c.want)
		}
	}
}

// The NIC flags reach the device; --offload=false makes none.
func TestMountNICOptions(t *testing.T) {
	o := &mountOptions{offload: true, nicMTU: 9000, nicLoss: 0.25, nicSetupFail: 0.5, nicTeardownDelay: time.Millisecond, nicSeed: 3}
	if err := o.validateNIC(); err != nil {
		t.Fatal(err)
	}
	d, err := o.nic()
	if err != nil || d == nil {
		t.Fatalf("nic: %v, %v", d, err)
	}
	if d.MTU() != 9000 || d.Limits().MaxSGL != mlx5sim.DefaultMaxSGL {
		t.Errorf("device MTU %d, limits %+v", d.MTU(), d.Limits())
	}
	cs := nicCounters(d)
	if len(cs) == 0 || cs[0].Name != "rx_nvmeotcp_sk_add" {
		t.Errorf("NIC counters %v, want the driver's names first", cs)
	}
	o.offload = false
	if d, err := o.nic(); d != nil || err != nil {
		t.Errorf("--offload=false: device %v, %v", d, err)
	}
}
