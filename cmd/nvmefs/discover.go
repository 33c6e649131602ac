package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/nvmefs/nvmefs/nvmetcp/host"
)

// defaultPort is the port assumed when --addr has none: nvmefs serve's.
const defaultPort = "4420"

func init() { commands = append(commands, discoverCommand) }

var discoverCommand = &command{
	name:    "discover",
	args:    "--addr HOST:PORT [flags]",
	summary: "list the subsystems a target's discovery controller reports",
	details: `
Connects to the discovery controller (nqn.2014-08.org.nvmexpress.discovery) at
--addr over NVMe/TCP, reads its discovery log page and prints one line per
entry: transport, address family, subsystem type, transport address, service
id (the TCP port), port id and subsystem NQN, as 'nvme discover' reports them.
--format nvme prints the entries the way nvme-cli's normal output does.

The host identifies itself with --hostnqn and --hostid, by default the stable
identity kept in the user's configuration directory (nvmefs/hostnqn and
nvmefs/hostid, created on first use).

Exit status: 0 when the log was read, 1 when it could not be, 2 for bad flags.`,
	setup: func(fs *pflag.FlagSet) func(*env, []string) error {
		o := &discoverOptions{timeout: 10 * time.Second, format: "table"}
		fs.StringVar(&o.addr, "addr", "", "discovery controller `HOST:PORT` (port "+defaultPort+" if omitted; required)")
		fs.StringVar(&o.hostNQN, "hostnqn", "", "host `NQN` (default: the stable one in the user's config directory)")
		fs.StringVar(&o.hostID, "hostid", "", "host `UUID` (default: the stable one in the user's config directory)")
		fs.BoolVar(&o.hdrDigest, "hdr-digest", false, "ask for header digests")
		fs.BoolVar(&o.dataDigest, "data-digest", false, "ask for data digests")
		fs.DurationVar(&o.timeout, "timeout", o.timeout, "give up after `DURATION`")
		fs.StringVar(&o.format, "format", o.format, "output `FORMAT`: table or nvme (nvme-cli's layout)")
		return func(e *env, args []string) error { return discover(e, o, args) }
	},
}

type discoverOptions struct {
	addr, hostNQN, hostID string
	hdrDigest, dataDigest bool
	timeout               time.Duration
	format                string
}

func discover(e *env, o *discoverOptions, args []string) error {
	if len(args) > 0 {
		return usagef("unexpected arguments %q", args)
	}
	if o.addr == "" {
		return usagef("--addr is required")
	}
	addr := o.addr
	if _, _, err := net.SplitHostPort(addr); err != nil {
		addr = net.JoinHostPort(strings.Trim(addr, "[]"), defaultPort)
	}
	if o.format != "table" && o.format != "nvme" {
		return usagef("--format %q: want table or nvme", o.format)
	}
	if o.timeout <= 0 {
		return usagef("--timeout must be positive")
	}
	opts := host.Options{
		HostNQN:      o.hostNQN,
		HeaderDigest: o.hdrDigest,
		DataDigest:   o.dataDigest,
		IOTimeout:    o.timeout,
		Logger:       slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	if o.hostID != "" {
		id, err := host.ParseHostID(o.hostID)
		if err != nil {
			return usagef("--hostid: %v", err)
		}
		opts.HostID = id
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	entries, err := host.Discover(ctx, addr, opts)
	if err != nil {
		return err
	}
	if o.format == "nvme" {
		printDiscoveryNVMe(e.stdout, entries)
		return nil
	}
	printDiscoveryTable(e.stdout, entries)
	return nil
}

func printDiscoveryTable(w io.Writer, entries []host.DiscoveryEntry) {
	fmt.Fprintf(w, "Discovery log: %d records\n", len(entries))
	if len(entries) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tTRTYPE\tADRFAM\tSUBTYPE\tTRADDR\tTRSVCID\tPORTID\tSUBNQN")
	for i, en := range entries {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", i, en.TransportName(), en.FamilyName(), strings.ReplaceAll(en.SubtypeName(), " ", "-"), en.Address, en.ServiceID, en.PortID, en.SubNQN)
	}
	tw.Flush()
}

// printDiscoveryNVMe follows nvme-cli's "normal" discover output.
func printDiscoveryNVMe(w io.Writer, entries []host.DiscoveryEntry) {
	fmt.Fprintf(w, "\nDiscovery Log Number of Records %d\n", len(entries))
	for i, en := range entries {
		fmt.Fprintf(w, "=====Discovery Log Entry %d======\n", i)
		fmt.Fprintf(w, "trtype:  %s\n", en.TransportName())
		fmt.Fprintf(w, "adrfam:  %s\n", en.FamilyName())
		fmt.Fprintf(w, "subtype: %s\n", en.SubtypeName())
		fmt.Fprintf(w, "treq:    %s\n", en.TreqName())
		fmt.Fprintf(w, "portid:  %d\n", en.PortID)
		fmt.Fprintf(w, "trsvcid: %s\n", en.ServiceID)
		fmt.Fprintf(w, "subnqn:  %s\n", en.SubNQN)
		fmt.Fprintf(w, "traddr:  %s\n", en.Address)
		fmt.Fprintf(w, "eflags:  %#x\n", en.Flags)
		fmt.Fprintf(w, "sectype: %s\n", en.SecurityName())
	}
}
