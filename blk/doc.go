// Package blk turns file I/O (any offset, any length) into block requests
// for a Backend: a namespace that reads and writes whole logical blocks.
//
// Contract:
//   - A Device serves one namespace. ReadAt and WriteAt take any offset and
//     length inside the namespace; a read at or past the end returns 0 bytes
//     (io.EOF is not used: a block device file reads short at its end), a
//     write that starts past it fails with ErrNoSpace, one that runs past it
//     is cut short.
//   - Requests are split at the Backend's limits (MaxTransfer bytes and
//     MaxSegments memory pages per command) and the pieces run in parallel,
//     each holding a tag of the controller's TagSet while it is in flight: at
//     most Queues*QueueDepth commands are outstanding, so requests wait here
//     rather than in the transport.
//   - A read whose buffer is page-aligned and whose range is block-aligned
//     is done straight into the caller's buffer (the buffer is the I/O
//     buffer: a NIC may place into it). Otherwise the blocks are read into a
//     page-aligned buffer from the Buffers pool (mmap'd, recycled, bounded)
//     and copied once into the caller's; the copy is counted.
//   - A write that is not block-aligned is a read-modify-write of its edge
//     blocks. Every write, aligned or not, and every zeroing holds a range
//     lock on the blocks it touches, so concurrent writers of the same block
//     never lose each other's bytes (each byte ends up from one of them).
//     Reads take no lock.
//   - Backend errors are returned wrapped; ErrNotSupported, ErrInvalid,
//     ErrNoSpace and ErrClosed are this package's own, for callers that map
//     errors to errno values. Close waits for the requests in flight.
//
// blk imports nothing of the transport: an adapter implements Backend over
// an NVMe/TCP controller's namespace (internal/nvmeblk).
package blk
