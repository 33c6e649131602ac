package mlx5sim

import (
	"sync/atomic"

	"github.com/nvmefs/nvmefs/ddp"
)

// Counters, in the order Stats reports them. The first twelve are named
// after the mlx5 driver's; the sim_ ones are the model's own.
const (
	statSkAdd           = iota // rx_nvmeotcp_sk_add: offloaded sockets added
	statSkAddFail              // rx_nvmeotcp_sk_add_fail: SkAdd failures
	statSkDel                  // rx_nvmeotcp_sk_del: sockets closed
	statSetup                  // rx_nvmeotcp_ddp_setup: buffers mapped
	statSetupFail              // rx_nvmeotcp_ddp_setup_fail: Setups refused
	statTeardown               // rx_nvmeotcp_ddp_teardown: TeardownDone calls
	statDrop                   // rx_nvmeotcp_drop: packets received, never delivered (device down or socket closed)
	statResync                 // rx_nvmeotcp_resync: resync requests
	statOffloadPackets         // rx_nvmeotcp_offload_packets: packets with placed bytes
	statOffloadBytes           // rx_nvmeotcp_offload_bytes: bytes placed
	statPackets                // rx_nvmeotcp_packets: packets received on offloaded sockets
	statBytes                  // rx_nvmeotcp_bytes: bytes received on offloaded sockets
	statLostTrack              // sim_lost_track: times the tracker lost the PDU boundaries
	statLossInjected           // sim_loss_injected: packets the tracker was made to lose
	statResyncOK               // sim_resync_ok: requests the ULP confirmed (tracking resumes)
	statResyncFail             // sim_resync_fail: candidates refuted by the ULP or by the stream
	statCRCOK                  // sim_crc_ok: data digests the device verified as good
	statCRCBad                 // sim_crc_bad: data digests the device found wrong
	statEngineCPU              // sim_engine_cpu_ns: receive engines' thread CPU time (Config.AccountCPU)
	statEngineSteps            // sim_engine_cpu_steps: inline engine steps whose CPU time was read
	statEngineStepsLost        // sim_engine_cpu_steps_lost: inline engine steps not read (the goroutine changed threads)
	numStats
)

var statNames = [numStats]string{
	"rx_nvmeotcp_sk_add",
	"rx_nvmeotcp_sk_add_fail",
	"rx_nvmeotcp_sk_del",
	"rx_nvmeotcp_ddp_setup",
	"rx_nvmeotcp_ddp_setup_fail",
	"rx_nvmeotcp_ddp_teardown",
	"rx_nvmeotcp_drop",
	"rx_nvmeotcp_resync",
	"rx_nvmeotcp_offload_packets",
	"rx_nvmeotcp_offload_bytes",
	"rx_nvmeotcp_packets",
	"rx_nvmeotcp_bytes",
	"sim_lost_track",
	"sim_loss_injected",
	"sim_resync_ok",
	"sim_resync_fail",
	"sim_crc_ok",
	"sim_crc_bad",
	"sim_engine_cpu_ns",
	"sim_engine_cpu_steps",
	"sim_engine_cpu_steps_lost",
}

type counters struct {
	v [numStats]atomic.Uint64
}

func (c *counters) add(i int, n uint64) { c.v[i].Add(n) }

func (c *counters) snapshot() []ddp.Stat {
	out := make([]ddp.Stat, numStats)
	for i := range out {
		out[i] = ddp.Stat{Name: statNames[i], Value: c.v[i].Load()}
	}
	return out
}
