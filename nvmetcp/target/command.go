package target

import (
	"sync"

	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
	"github.com/nvmefs/nvmefs/nvmetcp/wire"
)

// direction of a command's data.
type direction uint8

const (
	noData     direction = iota
	hostToCtrl           // Write, DSM, Connect: in-capsule or through R2T/H2CData
	ctrlToHost           // Read, Identify, Get Log Page: C2HData
)

// r2t is one outstanding Ready to Transfer of a command.
type r2t struct {
	active bool
	ttag   uint16
	off    uint32
	len    uint32
	got    uint32
}

// command is one capsule from its arrival to the moment its response has
// been written. Commands are pooled; a command is owned by the reader until
// it is dispatched, then by its executing goroutine, then by the writer.
type command struct {
	c   *conn
	sqe [nvme.SQELen]byte

	buf     *dataBuf // data of either direction
	dataLen int      // bytes of buf in use

	// Host-to-controller transfer through R2Ts (reader goroutine only).
	xferLen   uint32
	requested uint32
	received  uint32
	r2ts      [maxR2TPerCommand]r2t
	r2tHdr    [maxR2TPerCommand][wire.MaxHeaderBuf]byte
	r2tIov    [maxR2TPerCommand][1][]byte
	xferError nvme.Status // a data digest error: the command fails once all data is in

	// Output.
	resp [wire.MaxHeaderBuf]byte
	hdrs []byte // C2HData headers, wire.MaxHeaderBuf each
	dgst []byte // C2HData digests
	iov  [][]byte

	// inFlight is true while the command holds one of the connection's
	// in-flight slots (released with the command).
	inFlight bool
}

var commandPool = sync.Pool{New: func() any { return new(command) }}

func (cmd *command) SQE() nvme.SQE { return nvme.SQE(cmd.sqe[:]) }
func (cmd *command) cid() uint16   { return cmd.SQE().CID() }

// data returns the bytes of the command's data.
func (cmd *command) data() []byte {
	if cmd.buf == nil {
		return nil
	}
	return cmd.buf.b[:cmd.dataLen]
}

// setData gives the command a buffer of n bytes from the pool.
func (cmd *command) setData(n int) []byte {
	if cmd.buf != nil && cap(cmd.buf.b) >= n {
		cmd.dataLen = n
		return cmd.buf.b[:n]
	}
	cmd.c.t.bufs.put(cmd.buf)
	cmd.buf = cmd.c.t.bufs.get(n)
	cmd.dataLen = n
	return cmd.buf.b[:n]
}

// release returns the command's resources: called by the writer once its
// response is written (or dropped), or by the reader for a command that
// never got that far.
func (cmd *command) release() {
	c := cmd.c
	c.t.bufs.put(cmd.buf)
	if cmd.inFlight {
		c.releaseSlot()
	}
	clear(cmd.iov)
	*cmd = command{hdrs: cmd.hdrs[:0], dgst: cmd.dgst[:0], iov: cmd.iov[:0]}
	commandPool.Put(cmd)
}
