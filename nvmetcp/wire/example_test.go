package wire_test

import (
	"bytes"
	"fmt"

	"github.com/nvmefs/nvmefs/nvmetcp/wire"
)

// A controller sends 8 bytes of read data in a C2HData PDU, with header and
// data digests; the host frames it with a Reader.
func Example() {
	data := []byte("8 bytes!")
	ctrl := wire.Params{HeaderDigest: true, DataDigest: true}

	// Send: encode the header, seal it, then the data and its digest.
	var conn bytes.Buffer
	buf := make([]byte, wire.MaxHeaderBuf)
	wire.DataHeader(buf).Encode(&wire.DataFields{
		Type:    wire.TypeC2HData,
		Flags:   wire.FlagLast | wire.FlagSuccess,
		CCCID:   42,
		DataLen: uint32(len(data)),
	})
	conn.Write(ctrl.Seal(buf, len(data)))
	conn.Write(data)
	var ddgst [wire.DigestLen]byte
	wire.PutDigest(ddgst[:], wire.DataDigest(data))
	conn.Write(ddgst[:])

	// Receive: the host's Params bound what it accepts.
	host := wire.Params{HeaderDigest: true, DataDigest: true, MaxData: 128 << 10}
	r := wire.NewReader(&conn, wire.ToHost, &host)
	h, l, err := r.Next()
	if err != nil {
		fmt.Println(err) // a *wire.Error: send a TermReq with its FES and Offset
		return
	}
	got := make([]byte, l.DataLen)
	if err := r.ReadData(got); err != nil {
		fmt.Println(err) // wire.ErrDataDigest fails the command, not the connection
		return
	}
	fmt.Println(h)
	fmt.Printf("cid %d: %q\n", wire.DataHeader(h).CCCID(), got)
	// Output:
	// C2HData flags=0xf hlen=24 pdo=28 plen=40
	// cid 42: "8 bytes!"
}
