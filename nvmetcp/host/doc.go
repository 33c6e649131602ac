// Package host is the NVMe/TCP host: it connects to a controller of an NVM
// subsystem (Connect), one TCP connection per queue, and runs NVM commands
// on it for the block layer (Read, Write, Flush, WriteZeroes, Deallocate)
// from any number of goroutines, or reads a discovery controller's log
// (Discover).
//
// Contract:
//   - Every method is safe for concurrent use and takes a context first. A
//     request waits for a free tag of an I/O queue (depth QueueSize), and
//     requests above the controller's transfer limit (MDTS, MaxTransfer) are
//     split and issued in parallel over the I/O queues.
//   - A read's buffer is written only by the host's receive loop for that
//     command, at the offsets the C2HData PDUs give, each checked against the
//     buffer. When Read returns, nothing writes into the buffer any more, also
//     when its context ended first. Data that fails its digest is never
//     reported as read: the command is issued again, up to 5 times.
//   - A PDU that names a command id not in flight, or data outside a command's
//     buffer, is a protocol error of its queue: the association is torn down
//     and error recovery starts, as after a lost connection, an I/O timeout
//     (IOTimeout) or a failed keep-alive (every KeepAliveTmo/2).
//   - Error recovery closes every queue, reconnects every ReconnectDelay and
//     issues again every command that had not completed. Once CtrlLossTmo has
//     passed, pending and later requests fail with ErrControllerLost; after
//     Close, with ErrClosed. NVMe status errors are nvme.Status values (use
//     errors.As).
//   - Options mirror the kernel's connect options; the default host NQN and
//     host ID are stable per user (DefaultHostIdentity).
//
// Receive path: each queue has one PDU parser at a time, which reads
// through an rxStream. Who runs it is a role (rxMu): a command's waiter
// takes it when nobody has it and receives until its own command has ended,
// so that at low queue depth the goroutine that sent a command reads the
// answer itself (no hand-off); with commands still in flight the queue's
// receive goroutine takes over until none is. While idle, that goroutine
// looks every watchdog tick for what came unasked (a TermReq, the
// connection's end, a stray PDU). The software stream reads C2HData payload
// straight into the request's buffer and the parser checks the data digest;
// an offloaded stream (DDP) hands over segments that may already be placed
// (the copy is skipped) and CRC-verified (the digest check is skipped).
//
// DDP offload (Options.Offload, a ddp.Device; the host knows no NIC model):
//   - Each I/O queue is offloaded (sk_add) right after ICResp, before
//     anything else is read; if that fails the queue runs in software until
//     its next reconnect. The admin queue never is; the device's limits cap
//     MaxTransfer at MaxSGL pages (ControllerInfo.MaxSegments), and a buffer
//     that is not page-aligned is split one page shorter.
//   - A read of at least the device's IOThreshold is mapped (Setup, tag =
//     command id) before its capsule is sent; a refused Setup sends it the
//     software way. Without the device's full tag range, command ids on the
//     queue carry no generation, so that they stay below the queue size.
//   - On the response (CapsuleResp or C2HData SUCCESS) the mapping is torn
//     down; the command completes only once TeardownDone came too. A waiter
//     leaving early unmaps and waits for TeardownDone before it returns.
//   - The parser answers resync requests at PDU starts (yes when a header
//     starts exactly at the requested offset, no once past it), skips the
//     copy where the NIC placed the bytes (source == destination), and
//     computes the data digest itself unless every segment of the PDU was
//     CRC-verified. A digest error is never delivered (the read is retried).
//   - A failed queue is un-offloaded (sk_del, which ends every mapping)
//     before its commands are failed and issued again; a device going down
//     fails its queues into the usual error recovery.
//
// Sending: a submitter queues its capsule and, if nobody is writing,
// writes what is queued itself (direct send), so that capsules submitted
// during a writev leave together in the next one; the queue's writer
// goroutine sends H2CData for R2Ts (the parser never waits on the send
// side). Neither allocates per command.
package host
