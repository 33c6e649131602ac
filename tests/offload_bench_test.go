package tests

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/mlx5sim"
	"github.com/nvmefs/nvmefs/nvmetcp/host"
)

// BenchmarkOffloadHostRead is the host's read path (nvmetcp/host Read at
// queue depth 16 over 2 I/O queues) against `nvmefs serve --ns mem:64M` in a
// child process, with and without the simulated NIC, in one run:
//
//   - software: no offload device (the plain software path).
//   - offload: mlx5sim with its defaults: reads of 32 KiB and more are
//     placed, every data digest is checked by the NIC.
//   - offload-all: the same NIC with a threshold of one byte (every read is
//     set up): measured below 32 KiB only, to see where placement pays.
//
// Metrics: MB/s and allocs/op (the whole process: host and NIC);
// host-cpu-s/GiB is the process's CPU time less the NIC's receive engines'
// thread CPU time (mlx5sim Config.AccountCPU), nic-cpu-s/GiB the latter:
// the NIC's work measured apart from the host's, as a hardware NIC's would
// be; placed-% is the share of the bytes read that the NIC placed.
func BenchmarkOffloadHostRead(b *testing.B) {
	srv := startServe(b, "--nqn", offloadNQN, "--ns", "mem:64M")
	for _, size := range []int{4 << 10, 16 << 10, 32 << 10, 128 << 10, 512 << 10} {
		for _, digest := range []bool{false, true} {
			modes := []string{"software", "offload"}
			if size < mlx5sim.DefaultIOThreshold {
				modes = append(modes, "offload-all")
			}
			for _, mode := range modes {
				name := fmt.Sprintf("%dK/%s/%s", size>>10, map[bool]string{false: "plain", true: "ddgst"}[digest], mode)
				b.Run(name, func(b *testing.B) { benchOffloadRead(b, srv.Addr, size, 16, digest, mode) })
			}
		}
	}
}

func benchOffloadRead(b *testing.B, addr string, size, qd int, digest bool, mode string) {
	const nsSize = 64 << 20
	o := host.Options{
		HostNQN: "nqn.2014-08.org.nvmexpress:uuid:0ff10ad0-0102-0304-0506-0708090a0b0c", HostID: offloadHostID,
		NrIOQueues: 2, QueueSize: 64, DataDigest: digest, KeepAliveTmo: -1,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	var dev *mlx5sim.Device
	if mode != "software" {
		cfg := mlx5sim.Config{AccountCPU: true}
		if mode == "offload-all" {
			cfg.IOThreshold = 1
		}
		var err error
		if dev, err = mlx5sim.New(cfg); err != nil {
			b.Fatal(err)
		}
		o.Offload = dev
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c, err := host.Connect(ctx, addr, offloadNQN, o)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if dev != nil && c.Info().OffloadedQueues != 2 {
		b.Fatalf("%d of 2 I/O queues offloaded", c.Info().OffloadedQueues)
	}
	bufs := make([][]byte, qd)
	for g := range bufs {
		bufs[g] = alignedBuf(size, 0)
	}
	slots := nsSize / size
	nicCPU := func() time.Duration {
		if dev == nil {
			return 0
		}
		return time.Duration(dev.Stat("sim_engine_cpu_ns"))
	}
	placed0 := c.Stats().Total.BytesPlaced
	var next atomic.Int64
	var failed atomic.Value
	var wg sync.WaitGroup
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	cpu0, nic0 := processCPU(), nicCPU()
	for g := range qd {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= b.N {
					return
				}
				lba := uint64((i*7919)%slots) * uint64(size/512)
				if err := c.Read(ctx, 1, lba, bufs[g]); err != nil {
					failed.Store(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	cpu, nic := processCPU()-cpu0, nicCPU()-nic0
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	gib := float64(b.N) * float64(size) / (1 << 30)
	b.ReportMetric((cpu-nic).Seconds()/gib, "host-cpu-s/GiB")
	b.ReportMetric(nic.Seconds()/gib, "nic-cpu-s/GiB")
	b.ReportMetric(100*float64(c.Stats().Total.BytesPlaced-placed0)/(float64(b.N)*float64(size)), "placed-%")
}

// processCPU is this process's user and system CPU time.
func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
