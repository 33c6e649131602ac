package host

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/nvmetcp/target"
)

// Benchmarks of the host through nvmetcp/target over loopback. "proc" runs
// the target in a child process, as `nvmefs serve --ns mem:64M` would, so
// that cpu-s/GiB and allocations are the host's alone; "inproc" runs it in
// this process (both sides counted).

func BenchmarkHostRead4K(b *testing.B) {
	for _, qd := range []int{1, 32} {
		benchModes(b, qdName(qd), func(b *testing.B, addr string) { benchIO(b, addr, 4096, qd, false, false) })
	}
}

func BenchmarkHostRead128K(b *testing.B) {
	benchModes(b, qdName(16), func(b *testing.B, addr string) { benchIO(b, addr, 128<<10, 16, false, false) })
}

// BenchmarkHostRead128KDigest is 128 KiB reads with header and data digests.
func BenchmarkHostRead128KDigest(b *testing.B) {
	benchModes(b, qdName(16), func(b *testing.B, addr string) { benchIO(b, addr, 128<<10, 16, true, false) })
}

func BenchmarkHostWrite128K(b *testing.B) {
	benchModes(b, qdName(16), func(b *testing.B, addr string) { benchIO(b, addr, 128<<10, 16, false, true) })
}

func benchModes(b *testing.B, name string, f func(b *testing.B, addr string)) {
	b.Run(name+"/proc", func(b *testing.B) { f(b, startTargetProcess(b, "mem:64M")) })
	b.Run(name+"/inproc", func(b *testing.B) { f(b, startTarget(b, target.Config{}, "mem:64M").addr) })
}

func qdName(qd int) string { return "QD" + itoa(qd) }

func itoa(n int) string {
	if n < 10 {
		return string(rune('0' + n))
	}
	return itoa(n/10) + string(rune('0'+n%10))
}

func benchIO(b *testing.B, addr string, size, qd int, digests, write bool) {
	const nsSize = 64 << 20
	o := testOpts()
	o.NrIOQueues = 2
	o.QueueSize = 128
	o.HeaderDigest, o.DataDigest = digests, digests
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c, err := Connect(ctx, addr, testNQN, o)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	slots := nsSize / size
	lat := make([][]time.Duration, qd)
	bufs := make([][]byte, qd)
	for g := range qd {
		lat[g] = make([]time.Duration, 0, b.N/qd+1)
		bufs[g] = make([]byte, size)
	}
	var next atomic.Int64
	var failed atomic.Value
	b.SetBytes(int64(size))
	b.ReportAllocs()
	cpu0 := cpuTime()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for g := range qd {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := bufs[g]
			for {
				i := int(next.Add(1) - 1)
				if i >= b.N {
					return
				}
				lba := uint64((i*7919)%slots) * uint64(size/512)
				t0 := time.Now()
				var err error
				if write {
					err = c.Write(ctx, 1, lba, buf)
				} else {
					err = c.Read(ctx, 1, lba, buf)
				}
				lat[g] = append(lat[g], time.Since(t0))
				if err != nil {
					failed.Store(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	cpu := cpuTime() - cpu0
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	if len(all) > 0 {
		b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-us")
		b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-us")
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "IOPS")
	gib := float64(b.N) * float64(size) / (1 << 30)
	b.ReportMetric(cpu.Seconds()/gib, "cpu-s/GiB")
}

// cpuTime is the process's user and system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
