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
// Receive path: each queue has one receive loop, the only PDU parser, which
// reads through an rxStream. The software stream reads C2HData payload with
// io.ReadFull straight into the request's buffer and the parser checks the
// data digest; an offloaded stream (DDP) hands over segments that may already
// be placed (the copy is skipped) and CRC-verified (the digest check is
// skipped). Sending: a submitter writes its capsule itself when nothing is
// queued and nobody writes (direct send); otherwise the queue's writer
// batches capsules and H2CData into one writev. Neither allocates per
// command.
package host
