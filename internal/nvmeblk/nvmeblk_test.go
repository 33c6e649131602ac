package nvmeblk

import (
	"errors"
	"fmt"
	"testing"

	"github.com/nvmefs/nvmefs/blk"
	"github.com/nvmefs/nvmefs/nvmetcp/host"
	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
)

func TestMapErr(t *testing.T) {
	wrapped := func(err error) error { return fmt.Errorf("host: read nsid 1: %w", err) }
	for _, c := range []struct {
		in   error
		want []error
	}{
		{wrapped(host.ErrNotSupported), []error{blk.ErrNotSupported, host.ErrNotSupported}},
		{wrapped(nvme.StatusInvalidNamespace | nvme.StatusDNR), []error{ErrNamespaceGone}},
		{wrapped(nvme.StatusLBAOutOfRange | nvme.StatusDNR), []error{blk.ErrInvalid}},
		{wrapped(host.ErrControllerLost), []error{host.ErrControllerLost}},
	} {
		got := mapErr(c.in)
		for _, w := range c.want {
			if !errors.Is(got, w) {
				t.Errorf("mapErr(%v) = %v, not %v", c.in, got, w)
			}
		}
		if errors.Is(got, blk.ErrInvalid) != errors.Is(c.in, nvme.StatusLBAOutOfRange|nvme.StatusDNR) {
			t.Errorf("mapErr(%v) = %v: wrong ErrInvalid", c.in, got)
		}
	}
	if mapErr(nil) != nil {
		t.Errorf("mapErr(nil) != nil")
	}
	var st nvme.Status
	if !errors.As(mapErr(wrapped(nvme.StatusInvalidNamespace)), &st) {
		t.Errorf("the NVMe status is lost")
	}
}

func TestCounters(t *testing.T) {
	s := host.Stats{
		Admin:      host.QueueStats{Commands: 7},
		IO:         []host.QueueStats{{QID: 1, Commands: 10, BytesRead: 4096}, {QID: 2, Commands: 5, DigestErrors: 1}},
		Total:      host.QueueStats{Commands: 22, BytesRead: 4096, DigestErrors: 1},
		Recoveries: 3,
		Lost:       true,
	}
	m := map[string]uint64{}
	for _, c := range Counters(s) {
		if _, dup := m[c.Name]; dup {
			t.Fatalf("counter %s twice", c.Name)
		}
		m[c.Name] = c.Value
	}
	for name, want := range map[string]uint64{
		"recoveries": 3, "lost": 1, "io_queues": 2, "admin_commands": 7, "commands": 22, "bytes_read": 4096,
		"digest_errors": 1, "q1_commands": 10, "q1_bytes_read": 4096, "q2_commands": 5, "q2_digest_errors": 1,
	} {
		if got, ok := m[name]; !ok || got != want {
			t.Errorf("%s = %d (present %v), want %d", name, got, ok, want)
		}
	}
}
