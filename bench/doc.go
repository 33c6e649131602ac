// Package bench measures nvmefs's read path end to end, the way a user
// sees it: fio against the namespace file of a real mount, next to the
// same fio jobs against a null FUSE file system (the FUSE ceiling of the
// machine), and reports throughput, latency and CPU time per GiB.
//
// Contract:
//   - Every measured party is its own process, so that CPU time is
//     measured apart: the target (`nvmefs serve`, one memory namespace,
//     filled with data before the jobs), one mount process per mode
//     (offload on and off, data digest on and off), the null file system,
//     and fio. CPU time is read from /proc/PID/stat (utime+stime, all
//     threads) before and after each fio run.
//   - The NIC's part of a mount's CPU time is the simulated NIC's receive
//     engines' thread CPU time (mlx5sim's sim_engine_cpu_ns in the mount's
//     stats file, the engines on locked OS threads): the work hardware
//     would do. The host's part is the mount process's CPU time minus it.
//     Such a mount is `nvmefs bench --child=mount`, the mount's own code
//     with mlx5sim.Config.AccountCPU; the other mounts are `nvmefs mount`
//     itself, offload-plain among them: the offload without the locked
//     threads, whose hand-offs cost latency.
//   - Per GiB figures divide by the bytes fio read in the same window.
//     Latencies are fio's total latency (lat: submission to completion)
//     percentiles, not only its completion latency (clat, also recorded):
//     with FUSE's asynchronous direct I/O, io_submit itself does part of
//     a read (at QD1 on the null file system, most of it).
//   - Jobs run one at a time, every mode of a job back to back, so that
//     the ratios (offload/software, mount/ceiling) compare runs made
//     seconds apart. Nothing else may run on the machine meanwhile for
//     the figures to mean much; the load average before and after is
//     recorded with them.
//   - Children are stopped with SIGTERM (and get it if the benchmark
//     dies: PR_SET_PDEATHSIG), mounts are unmounted, and the work
//     directory holds every child's log.
package bench
