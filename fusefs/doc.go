// Package fusefs serves blk Devices as regular files of a FUSE file system
// (go-fuse's fs API): one file per namespace, of the namespace's size, at
// the root, the statistics at .nvmefs/stats, and writable controls of the
// running mount (Config.Controls) next to them.
//
// Contract:
//   - READ hands go-fuse's reply buffer to blk.Device.ReadAt, which reads
//     straight into it when it is page-aligned and the range block-aligned
//     (otherwise blk bounces and copies once, counted), and the reply is
//     written from that same buffer in one writev: splice is off, so the
//     data is never staged in a pipe.
//   - By default files are opened with direct I/O (FOPEN_DIRECT_IO): every
//     read reaches the target, so nothing stale is served when another host
//     writes the namespace. The mount negotiates CAP_ASYNC_DIO and raises
//     MaxBackground so that asynchronous direct I/O keeps many reads in
//     flight, and MaxWrite is 1 MiB so that large reads arrive whole. With
//     Cache the kernel page cache serves repeated reads instead.
//   - The files behave like block device files: their size never changes
//     (truncating to another size is EINVAL, O_TRUNC is ignored), writes
//     past the end fail with ENOSPC, reads there return 0 bytes, fsync is a
//     Flush, fallocate PUNCH_HOLE|KEEP_SIZE deallocates and ZERO_RANGE
//     writes zeroes (block-aligned ranges only, EINVAL otherwise;
//     EOPNOTSUPP when the controller lacks the command or for other modes).
//     Shared writable mmap fails (ENODEV) with direct I/O; with Cache it
//     works through the page cache.
//   - Signals: as on a block device, a signal to the caller does not end its
//     I/O (the kernel's FUSE INTERRUPT is answered by finishing the request);
//     only a dying caller (fatal signal pending) gets EINTR.
//   - Errors: an invalid range is EINVAL, and
//     every failure of the transport or the controller (a lost controller,
//     an NVMe status) EIO, logged.
package fusefs
