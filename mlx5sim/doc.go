// Package mlx5sim is a simulated NIC that offloads NVMe/TCP receive (a
// ddp.Device), modelled on the Linux mlx5 driver's nvme-tcp offload: a
// per-queue context, a bounded table of command id -> mapped pages (the KLM
// mkeys), asynchronous invalidation ending in TeardownDone, and a receive
// engine that follows the PDU stream on its own, places C2HData payloads
// into the mapped pages, verifies data digests and asks the host to
// resynchronise when it loses the PDU boundaries.
//
// # Contract
//
// The device never alters, drops or reorders a byte: the segments Recv
// returns, concatenated, are exactly the bytes the connection received,
// from the first byte after SkAdd. It only says what it did:
//
//   - A segment is a run of bytes that never crosses a packet boundary.
//     Packets start at fixed stream positions, Config.InitialSeq + k*MTU.
//   - Placed: the bytes are C2HData payload that the engine read from the
//     socket straight into the mapped buffer, and Bytes is a view of that
//     buffer (source == destination). Only payload of a PDU whose command
//     id is mapped and whose DATAO+DATAL lies inside the mapping is placed,
//     only while the engine is in sync, and only if the PDU starts at or
//     after the end of every PDU the engine followed in sync inside that
//     mapping: each byte of a mapping is written at most once, so a
//     placed segment's bytes never change while the ULP holds them.
//     Unplaced bytes live in a NIC-private receive buffer, valid until
//     the next Recv.
//   - CRCOK: rx-crc is on, the engine was in sync for every byte of the
//     segment, and every CRC field ending in the segment verified. A
//     segment in sync with no CRC field ending in it is CRCOK; the segment
//     holding the last byte of a data digest is CRCOK only if the digest
//     matched the payload. So a ULP must account every segment carrying
//     any byte of a PDU, its data digest included (ddp.CRCTracker.Add),
//     before it skips its own check. Bytes out of sync, and every byte of
//     the first PDU after a resync, are never CRCOK. With rx-crc off
//     nothing is.
//
// The ULP must call SkAdd at a PDU boundary (after the ICResp, having read
// nothing more): the engine starts in sync there. From then on the device
// owns the connection's receive side and its read deadlines.
//
// Resynchronisation follows design.md. When the engine loses track (a
// packet its tracker did not see, or a header its parser rejects while in
// sync) it places and marks nothing, scans the following bytes for a
// plausible C2H header (CapsuleResp, C2HData, R2T or C2HTermReq with the
// right HLEN, digest flags, PDO and PLEN, and header digest when
// negotiated) and calls ResyncRequest(seq) for it, always before the ULP
// can have received the byte at seq. It then follows PDU boundaries from
// the candidate speculatively. Resync(seq, true) makes it resume tracking
// at the next boundary it reaches on that chain; Resync(seq, false), or a
// header on the chain that does not parse, sends it back to searching.
// Only the latest request counts: answers to earlier ones are ignored.
//
// Setup fails (ErrNoResources) when the tag is not below the queue size
// (unless FullTagRange) or is still mapped, or by injection; with
// ErrSGLTooLong when the list is longer than MaxSGL; ErrNotSupported when
// placement is off or the list is malformed; ErrDeviceDown when down. A
// failed Setup leaves the I/O to software. Teardown returns at once and
// the mapping is invalid from then on: the engine reads into a mapping
// only in a non-blocking system call made after checking it, so a
// Teardown never waits for the peer (on a connection without a file
// descriptor, such as net.Pipe, it waits for the read in progress).
// TeardownDone follows after TeardownDelay: with no delay, no read into
// the mapping under way and no earlier teardown pending, from within
// Teardown itself; otherwise from the socket's completion goroutine. From
// then on the device never writes into that buffer and the tag may be set
// up anew. Teardown of an I/O that is not mapped
// is ignored. Close (sk_del) stops the engine, tears down every mapping
// still set up and returns once every TeardownDone has been called; ULP
// callbacks must therefore not call Close.
//
// Recv is for one caller at a time; Interrupt wakes the one that waits.
// The engine runs ahead of it by at most four batches of segments, whose
// unplaced bytes share 64 KiB buffers.
//
// # Faults
//
// LossRate makes the tracker lose a fraction of packets (as after a TCP
// retransmission or reordering): their bytes reach the host unchanged,
// unplaced and not CRCOK, and the engine resynchronises. SetupFailRate
// fails Setups, TeardownDelay delays TeardownDone, SetDown takes the
// device down (every socket's Recv returns ddp.ErrDeviceDown, delivering
// nothing more) and up. Config.Seed makes the random choices reproducible.
// None of it changes a byte a reader gets.
//
// # Counters
//
// Stats reports rx_nvmeotcp_sk_add, _sk_add_fail, _sk_del, _ddp_setup,
// _ddp_setup_fail, _ddp_teardown (counted at TeardownDone), _drop (packets
// received but never delivered because the device went down or the socket
// closed), _resync (requests), _offload_packets and _offload_bytes
// (packets with placed bytes, bytes placed), _packets and _bytes (all
// received on offloaded sockets), then the model's own: sim_lost_track,
// sim_loss_injected, sim_resync_ok, sim_resync_fail, sim_crc_ok,
// sim_crc_bad and sim_engine_cpu_ns (with Config.AccountCPU: the engines'
// thread CPU time, the NIC's work apart from the host's; inline, the steps
// read, sim_engine_cpu_steps, and those that could not be because the
// goroutine changed threads meanwhile, sim_engine_cpu_steps_lost).
//
// # Simulated versus real hardware
//
// The model keeps what the host can observe of mlx5: per-packet segments
// with placed and crc bits, the limits (128 pages, a 32 KiB threshold,
// command ids below the queue size), asynchronous teardown, resync through
// the host. It differs where software must: the "packets" are fixed slices
// of the stream, not what TCP received; the engine is a goroutine reading
// the socket (with readv, several pages at a time, in stream order) rather
// than a DMA engine fed by the wire, so it works after TCP, never sees a
// real loss or reordering, and needs injected faults to lose track; the
// tag table is a Go slice, not mkeys in NIC memory; it verifies the
// header digests it parses, which hardware may leave to the host; and it
// writes each mapped byte at most once, where mlx5 trusts the target to
// send a command's data in order.
package mlx5sim
