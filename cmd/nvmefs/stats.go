package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/pflag"

	"github.com/nvmefs/nvmefs/fusefs"
)

func init() { commands = append(commands, statsCommand) }

var statsCommand = &command{
	name:    "stats",
	args:    "MOUNTPOINT",
	summary: "print the statistics of an nvmefs mount as a table",
	details: `
Reads MOUNTPOINT/.nvmefs/stats (one "name: value" counter per line, like
ethtool -S) and prints it as an aligned table. Counters:

  fuse_*            the FUSE file system: READ and WRITE requests and bytes,
                    reply buffers that were not page-aligned, errors
  nvme0nN_*         the block layer of namespace N: requests, direct and
                    bounced reads, bytes copied, read-modify-writes, commands,
                    requests split at the limits, range-lock waits
  nvme0_tags, nvme0_inflight, nvme0_inflight_max
                    the controller's command slots (I/O queues x depth) and
                    the most commands that were in flight at once
  nvme0_*           the NVMe/TCP host: commands, bytes, errors, retries,
                    reconnects, received payload copied or read in place,
                    digests checked, latency; nvme0_qQ_* per I/O queue
  buffer_*          the pool of page-aligned bounce buffers
  rx_nvmeotcp_*, sim_*
                    the simulated NIC (with the offload)
  process_*         the mount process: goroutines, live heap (at the last GC)

Exit status: 0 when printed, 1 when MOUNTPOINT is not a live nvmefs mount.`,
	setup: func(fs *pflag.FlagSet) func(*env, []string) error {
		return func(e *env, args []string) error {
			if len(args) != 1 {
				return usagef("want exactly one MOUNTPOINT, got %d arguments", len(args))
			}
			return printStats(e, args[0])
		}
	},
}

func printStats(e *env, mountpoint string) error {
	path := filepath.Join(mountpoint, fusefs.StatsPath)
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, syscall.ENOTCONN):
		return fmt.Errorf("%s is a stale mount (its nvmefs is gone): clear it with 'umount -l %s'", mountpoint, mountpoint)
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%s is not an nvmefs mount (no %s)", mountpoint, fusefs.StatsPath)
	case err != nil:
		return err
	}
	type row struct{ name, value string }
	var rows []row
	width := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), ": ")
		if !ok {
			return fmt.Errorf("%s: malformed line %q", path, sc.Text())
		}
		rows = append(rows, row{name, value})
		width = max(width, len(name))
	}
	vwidth := 0
	for _, r := range rows {
		vwidth = max(vwidth, len(r.value))
	}
	w := bufio.NewWriter(e.stdout)
	for _, r := range rows {
		fmt.Fprintf(w, "%-*s  %*s\n", width, r.name, vwidth, r.value)
	}
	return w.Flush()
}
