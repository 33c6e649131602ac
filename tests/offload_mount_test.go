package tests

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The offload through the product path: `nvmefs mount` (a process, with
// its simulated NIC) over real loopback TCP to `nvmefs serve` (a process)
// with a file namespace; the namespace file read with dd and compared with
// the backing file by cmp; the NIC's and the host's counters read from the
// mount's stats file.
func TestMountOffload(t *testing.T) {
	const size = 8 << 20
	for _, v := range []struct {
		name    string
		serve   []string
		mount   []string
		offload bool
		loss    bool
	}{
		{"offload-ddgst", nil, []string{"--data-digest"}, true, false},
		{"offload-hdgst-ddgst-multi-pdu", []string{"--max-c2h-data", "16384", "--c2h-success"}, []string{"--hdr-digest", "--data-digest", "--nic-mtu", "9000"}, true, false},
		{"offload-loss-0.2", []string{"--max-c2h-data", "65536"}, []string{"--data-digest", "--nic-loss", "0.2", "--nic-seed", "7"}, true, true},
		{"offload-faults", nil, []string{"--data-digest", "--nic-setup-fail", "0.3", "--nic-teardown-delay", "1ms"}, true, false},
		{"offload-off", nil, []string{"--data-digest", "--offload=false"}, false, false},
	} {
		t.Run(v.name, func(t *testing.T) {
			srv, backing, data := serveFile(t, size, 3, v.serve...)
			m := startMount(t, append([]string{"--addr", srv.Addr, "--nqn", mountNQN, "--nr-io-queues", "2"}, v.mount...)...)
			wantLine := "receive offload: mlx5sim0"
			if !v.offload {
				wantLine = "receive offload: off"
			}
			if !strings.Contains(m.Stdout(), wantLine) {
				t.Errorf("mount output lacks %q:\n%s", wantLine, m.Stdout())
			}
			file := filepath.Join(m.Dir, "nvme0n1")
			out := filepath.Join(t.TempDir(), "dd.out")
			for _, dd := range [][]string{{"bs=1M", "iflag=direct"}, {"bs=128k", "iflag=direct"}, {"bs=4k", "iflag=direct"}, {"bs=256k"}} {
				args := append([]string{"if=" + file, "of=" + out, "status=none"}, dd...)
				if msg, err := runTool(t, time.Minute, "dd", args...); err != nil {
					t.Fatalf("dd %v: %v\n%s", dd, err, msg)
				}
				if msg, err := runTool(t, time.Minute, "cmp", out, backing); err != nil {
					t.Fatalf("dd %v: cmp with the backing file: %v\n%s", dd, err, msg)
				}
			}
			got, err := os.ReadFile(file)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("os.ReadFile: %d bytes, %v; differs from the backing file", len(got), err)
			}

			s := mountStats(t, m.Dir)
			raw, err := os.ReadFile(filepath.Join(m.Dir, ".nvmefs", "stats"))
			if err != nil {
				t.Fatal(err)
			}
			if lines := strings.Count(string(raw), "\n"); lines != len(s) {
				t.Errorf("the stats file has %d lines for %d distinct names", lines, len(s))
			}
			if s["nvme0_commands_inflight_max"] == 0 || s["nvme0_q1_commands_inflight_max"] == 0 {
				t.Errorf("commands in flight at most: %d, on queue 1: %d", s["nvme0_commands_inflight_max"], s["nvme0_q1_commands_inflight_max"])
			}
			if s["nvme0_errors"] != 0 || s["nvme0_digest_errors"] != 0 || s["fuse_errors"] != 0 {
				t.Errorf("errors: host %d, digests %d, fuse %d", s["nvme0_errors"], s["nvme0_digest_errors"], s["fuse_errors"])
			}
			if !v.offload {
				for name := range s {
					if strings.HasPrefix(name, "rx_nvmeotcp_") {
						t.Errorf("stats show NIC counter %s with --offload=false", name)
					}
				}
				if s["nvme0_rx_bytes_placed"] != 0 || s["nvme0_rx_crc_offloaded"] != 0 || s["nvme0_rx_crc_software"] == 0 {
					t.Errorf("software path: %d bytes placed, %d digests offloaded, %d in software",
						s["nvme0_rx_bytes_placed"], s["nvme0_rx_crc_offloaded"], s["nvme0_rx_crc_software"])
				}
				return
			}
			if s["rx_nvmeotcp_sk_add"] != 2 || s["nvme0_offload_sk_add"] != 2 {
				t.Errorf("sk_add: NIC %d, host %d; want the 2 I/O queues", s["rx_nvmeotcp_sk_add"], s["nvme0_offload_sk_add"])
			}
			if s["rx_nvmeotcp_offload_bytes"] == 0 || s["nvme0_rx_bytes_placed"] != s["rx_nvmeotcp_offload_bytes"] {
				t.Errorf("the NIC placed %d bytes, the host skipped the copy of %d", s["rx_nvmeotcp_offload_bytes"], s["nvme0_rx_bytes_placed"])
			}
			if s["nvme0_rx_crc_offloaded"] == 0 {
				t.Errorf("no data digest offloaded (%d in software)", s["nvme0_rx_crc_software"])
			}
			if s["nvme0_ddp_setup"] == 0 || s["nvme0_ddp_setup"] != s["nvme0_ddp_teardown"] || s["rx_nvmeotcp_ddp_setup"] != s["rx_nvmeotcp_ddp_teardown"] {
				t.Errorf("idle: host %d setups, %d teardowns; NIC %d, %d", s["nvme0_ddp_setup"], s["nvme0_ddp_teardown"], s["rx_nvmeotcp_ddp_setup"], s["rx_nvmeotcp_ddp_teardown"])
			}
			if v.loss {
				if s["rx_nvmeotcp_resync"] == 0 || s["nvme0_resync_yes"] == 0 || s["nvme0_resync_requests"] != s["rx_nvmeotcp_resync"] {
					t.Errorf("resync: NIC asked %d times, host saw %d, answered yes %d", s["rx_nvmeotcp_resync"], s["nvme0_resync_requests"], s["nvme0_resync_yes"])
				}
			} else if s["rx_nvmeotcp_resync"] != 0 {
				t.Errorf("%d resyncs without loss", s["rx_nvmeotcp_resync"])
			}
			if strings.Contains(v.name, "faults") && s["rx_nvmeotcp_ddp_setup_fail"] == 0 {
				t.Error("no setup failed with --nic-setup-fail 0.3")
			}
			t.Logf("NIC placed %d bytes, host copied %d; digests: %d offloaded, %d in software; resyncs %d",
				s["rx_nvmeotcp_offload_bytes"], s["nvme0_rx_bytes_copied"], s["nvme0_rx_crc_offloaded"], s["nvme0_rx_crc_software"], s["rx_nvmeotcp_resync"])
		})
	}
}
