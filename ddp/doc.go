// Package ddp is the TCP Direct Data Placement offload contract, after the
// Linux kernel's ulp_ddp: what an upper-layer protocol (ULP: NVMe/TCP here,
// iSCSI could be another) and a NIC say to each other to have the NIC place
// received payload straight into the ULP's buffers and verify its CRC, while
// TCP itself stays in software.
//
// The device side is Device (limits, capabilities, SkAdd) and Socket (one
// offloaded connection: Setup, Teardown, Resync, Recv, Close). The ULP side is
// ULP (ResyncRequest, TeardownDone). The received stream crosses from device
// to ULP as Segments: bytes in stream order with their sequence number and two
// bits, Placed (the bytes already are in the ULP's buffer) and CRCOK (the
// device verified every CRC field in the segment). The device never alters,
// drops or reorders a byte; the bits only say what it already did.
//
// Offload is a fast path, never a correctness path: a ULP that ignores both
// bits (copies everything, checks every CRC) gets the same bytes. CopySkip and
// CRCTracker are the ULP's helpers to skip the work the device did.
//
// Nothing here knows NVMe: protocol settings travel in a Config the ULP
// defines and the device recognises.
package ddp
