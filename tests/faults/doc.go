// Package faults holds the end-to-end fault tests of nvmefs (issue 7, parts
// 1, 2 and their resource checks): real `nvmefs serve` and `nvmefs mount`
// processes over loopback TCP, a PDU-aware proxy between them that corrupts
// or freezes the stream, the mount's simulated NIC driven through
// MOUNTPOINT/.nvmefs/nic, and the target killed and restarted, while
// concurrent readers and writers check every byte against a model.
//
// The tests need root and /dev/fuse (they skip, saying why, otherwise).
// NVMEFS_FAULT_SOAK=10m runs TestFaultSoak, the fault cycle repeated for
// that long with flat memory checked; it is skipped otherwise. Give go test
// a -timeout above the soak's length.
package faults
