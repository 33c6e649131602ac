package host

import (
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
	"github.com/nvmefs/nvmefs/nvmetcp/wire"
)

// BenchmarkHostReceive is the host's receive path alone, no network: the
// parser reads one read's answer (a C2HData PDU and a CapsuleResp) from a
// connection that replays it from memory, places the payload in the
// request's buffer, checks the digest and completes the request. ns/op is
// one read's cost on the receive side.
func BenchmarkHostReceive(b *testing.B) {
	for _, c := range []struct {
		name   string
		size   int
		digest bool
	}{{"4K", 4 << 10, false}, {"128K", 128 << 10, false}, {"128K-ddgst", 128 << 10, true}} {
		b.Run(c.name, func(b *testing.B) {
			p := wire.Params{HeaderDigest: c.digest, DataDigest: c.digest, MaxData: 1 << 20}
			var hb [wire.MaxHeaderBuf]byte
			const cid = 5
			wire.DataHeader(hb[:]).Encode(&wire.DataFields{Type: wire.TypeC2HData, Flags: wire.FlagLast, CCCID: cid, DataLen: uint32(c.size)})
			stream := append([]byte(nil), p.Seal(hb[:], c.size)...)
			data := make([]byte, c.size)
			for i := range data {
				data[i] = byte(i * 7)
			}
			stream = append(stream, data...)
			if c.digest {
				var d [wire.DigestLen]byte
				wire.PutDigest(d[:], wire.DataDigest(data))
				stream = append(stream, d[:]...)
			}
			wire.CapsuleResp(hb[:]).Encode(&nvme.CQEFields{CID: cid})
			stream = append(stream, p.Seal(hb[:], 0)...)

			st := &queueStats{}
			q := &queue{p: p, depth: 8, reqs: make([]request, 8), stats: st, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
			q.rx = newSocketStream(&replayConn{stream: stream}, st)
			r := &q.reqs[cid]
			r.tag, r.done = cid, make(chan struct{}, 1)
			r.data, r.dir = make([]byte, c.size), dirRead
			b.SetBytes(int64(c.size))
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				r.received, r.digestErr = 0, false
				r.cid, r.state = cid, reqInflight
				q.inflight.Add(1)
				for len(r.done) == 0 {
					if err := q.receivePDU(); err != nil {
						b.Fatal(err)
					}
				}
				<-r.done
			}
			b.StopTimer()
			if r.status != 0 || r.err != nil || string(r.data) != string(data) {
				b.Fatalf("status %v, err %v, data equal %v", r.status, r.err, string(r.data) == string(data))
			}
		})
	}
}

// replayConn is a net.Conn whose reads return stream again and again, in
// reads of at most 64 KiB (as a socket's), and whose writes vanish.
type replayConn struct {
	stream []byte
	off    int
}

func (c *replayConn) Read(p []byte) (int, error) {
	n := copy(p[:min(len(p), 64<<10)], c.stream[c.off:])
	c.off = (c.off + n) % len(c.stream)
	return n, nil
}
func (c *replayConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *replayConn) Close() error                     { return nil }
func (c *replayConn) LocalAddr() net.Addr              { return nil }
func (c *replayConn) RemoteAddr() net.Addr             { return nil }
func (c *replayConn) SetDeadline(time.Time) error      { return nil }
func (c *replayConn) SetReadDeadline(time.Time) error  { return nil }
func (c *replayConn) SetWriteDeadline(time.Time) error { return nil }
