// Package tests holds the end-to-end tests of nvmefs. They build the nvmefs
// binary, run it as a real process on 127.0.0.1 and drive it with real peers:
// the Linux kernel's NVMe/TCP host and target booted in QEMU by the harness
// in ../shared/peers/kernel-nvme (override with NVMEFS_KNVME_DIR).
//
// A test that needs the harness skips, saying why, only when the harness
// directory, qemu-system-x86_64 or the harness's downloads (fetch.sh) are
// missing. Everything else that goes wrong is a failure.
package tests
