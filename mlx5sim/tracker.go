package mlx5sim

import (
	"bytes"

	"github.com/nvmefs/nvmefs/ddp"
	"github.com/nvmefs/nvmefs/nvmetcp/wire"
)

// mode is what the tracker knows about PDU boundaries.
type mode uint8

const (
	// modeTrack: in sync. Headers are parsed where the previous PDU
	// ends; C2HData payloads may be placed and their digests verified.
	modeTrack mode = iota
	// modeSearch: lost. Every byte is scanned for a plausible header.
	modeSearch
	// modeSpec: a candidate header was found and a resync request is out;
	// PDU boundaries are followed from it speculatively (no placement,
	// nothing marked) until the ULP answers or the stream refutes it.
	modeSpec
)

// run is a stretch of fed bytes with one CRCOK value. sealed runs take no
// more bytes: a PDU starts after them, and a taint must not reach back.
type run struct {
	n      int
	ok     bool
	sealed bool
}

// unbounded is a plan with no limit of its own.
const unbounded = 1 << 30

// tracker follows one socket's PDU stream with its own parser and its own
// state: a header buffer, the position in the current PDU, the running
// CRC. It never sees the ULP's state; it learns the ULP's view only
// through resync answers.
type tracker struct {
	s      *socket
	p      wire.Params // how the device parses C2H PDUs
	minHdr int         // bytes safe to read before a header's type is known
	mode   mode
	isn    ddp.Seq
	off    uint64 // stream offset of the next byte fed

	// Framing, in modeTrack and modeSpec.
	pduOff uint64 // stream offset of the current PDU
	pos    int    // bytes of it consumed
	laid   bool   // its common header has been parsed into l
	l      wire.Layout
	hdr    [wire.MaxHeaderBuf]byte

	// The current PDU in modeTrack.
	place *entry // mapping its payload goes to, nil: the bounce buffer
	gen   uint32
	datao uint32 // DATAO of a C2HData PDU
	crcOn bool   // its data digest is being computed
	crc   uint32
	dgst  [wire.DigestLen]byte

	// Resync.
	cand        ddp.Seq // the candidate a request is out for (modeSpec)
	confirmed   bool    // the ULP confirmed cand: track from the next boundary
	afterResync bool    // the next bytes pushed open the first segment after a resync

	caps ddp.Capability // snapshot for the current feed
	runs []run
}

func newTracker(s *socket) tracker {
	c := s.cfg
	t := tracker{
		s: s,
		p: wire.Params{
			HeaderDigest: c.HeaderDigest,
			DataDigest:   c.DataDigest,
			RxPDA:        c.HPDA,
			MaxData:      uint32(s.d.cfg.MaxPDUData),
		},
		minHdr: wire.DataHdrLen,
		isn:    s.d.cfg.InitialSeq,
		runs:   make([]run, 0, 16),
	}
	if c.HeaderDigest {
		t.minHdr += wire.DigestLen
	}
	return t
}

func (t *tracker) seq(off uint64) ddp.Seq { return t.isn + ddp.Seq(uint32(off)) }

func (t *tracker) dataStart() int { return t.l.DataOffset }
func (t *tracker) dataEnd() int   { return t.l.DataOffset + t.l.DataLen }

// plan tells where the next bytes go. With e == nil they go to the bounce
// buffer: at most n bytes (unbounded: as many as fit) are certain not to
// be payload the tracker would place. With e != nil they are the payload
// of the current PDU, to be read into e's mapping at offset moff (n bytes
// at most).
func (t *tracker) plan() (e *entry, gen uint32, moff int, n int) {
	t.poll()
	switch t.mode {
	case modeSearch:
		return nil, 0, 0, unbounded
	case modeSpec:
		if t.confirmed && t.atBoundary() {
			t.resume()
			return t.plan()
		}
		// As when in sync, never past the next boundary's header: an
		// answer may come while the read waits, and tracking must be
		// able to resume there with the payload still unread.
	}
	if !t.laid {
		return nil, 0, 0, t.minHdr - t.pos
	}
	if hb := t.l.HeaderBytes(); t.pos < hb {
		return nil, 0, 0, hb - t.pos
	}
	// After the header, a PDU with data: padding, data, digest.
	ds, de := t.dataStart(), t.dataEnd()
	rest := de - t.pos + t.l.DDGST + t.minHdr // to the end of the next PDU's minimal header
	switch {
	case t.pos < ds && t.place != nil:
		return nil, 0, 0, ds - t.pos
	case t.pos < de && t.place != nil:
		return t.place, t.gen, int(t.datao) + t.pos - ds, de - t.pos
	case t.pos < de:
		return nil, 0, 0, rest
	}
	return nil, 0, 0, t.l.PLen - t.pos + t.minHdr
}

// trailer is what follows the current PDU's payload and is never placed:
// its data digest and the next PDU's minimal header.
func (t *tracker) trailer() int { return t.l.PLen - t.dataEnd() + t.minHdr }

// dropPlace stops placing the current PDU (its mapping was torn down).
func (t *tracker) dropPlace() { t.place = nil }

func (t *tracker) atBoundary() bool { return t.pos == 0 && !t.laid }

// poll takes the ULP's answer to the outstanding request, if any.
func (t *tracker) poll() {
	if t.mode != modeSpec || t.confirmed {
		return
	}
	a := t.s.answer.Load()
	if a == 0 || ddp.Seq(a>>32) != t.cand || !t.s.answer.CompareAndSwap(a, 0) {
		return // none yet, for a superseded request, or a newer one came
	}
	if a&2 != 0 {
		t.confirmed = true
		t.s.d.stats.add(statResyncOK, 1)
		return
	}
	t.s.d.stats.add(statResyncFail, 1)
	t.mode = modeSearch
}

// resume starts tracking at a PDU boundary proven from a confirmed
// candidate.
func (t *tracker) resume() {
	t.mode = modeTrack
	t.confirmed = false
	t.afterResync = true
}

// lose is called when the tracker stops following the stream: a packet it
// did not see, or a header that makes no sense.
func (t *tracker) lose() {
	if t.mode == modeTrack {
		t.s.d.stats.add(statLostTrack, 1)
	}
	t.mode = modeSearch
	t.confirmed = false
	t.place = nil
}

// unseen accounts n bytes of a packet the tracker did not see. In sync,
// it loses track. Following a candidate, it keeps the chain across bytes
// it knows to be padding, data or digest (their PDU's length is known) and
// breaks it only where a header on the chain went unseen.
func (t *tracker) unseen(n int) {
	if t.mode == modeTrack {
		t.lose()
	}
	for n > 0 && t.mode == modeSpec {
		if !t.laid || t.pos < t.l.HeaderBytes() {
			t.lose()
			break
		}
		k := min(n, t.l.PLen-t.pos)
		t.pos += k
		t.off += uint64(k)
		t.push(k, false)
		n -= k
		if t.pos == t.l.PLen {
			t.endPDU()
		}
	}
	t.off += uint64(n)
	t.push(n, false)
}

// push accounts n fed bytes.
func (t *tracker) push(n int, ok bool) {
	if n == 0 {
		return
	}
	if t.afterResync {
		// The first PDU after a resync is never CRCOK, so neither is the
		// first segment (mlx5 ignores the CRC bit of the first CQE after
		// a resync the same way).
		ok = false
	}
	if k := len(t.runs) - 1; k >= 0 && !t.runs[k].sealed && t.runs[k].ok == ok {
		t.runs[k].n += n
		return
	}
	t.runs = append(t.runs, run{n: n, ok: ok})
}

// mark seals the open run: what follows belongs to another PDU.
func (t *tracker) mark() {
	if k := len(t.runs) - 1; k >= 0 {
		t.runs[k].sealed = true
	}
}

// taint clears CRCOK on the open run (the current PDU's bytes in this feed).
func (t *tracker) taint() {
	if k := len(t.runs) - 1; k >= 0 && !t.runs[k].sealed {
		t.runs[k].ok = false
	}
}

// synced is CRCOK for in-sync bytes without a CRC field ending in them.
func (t *tracker) synced() bool { return t.mode == modeTrack && t.caps&ddp.CapRxCRC != 0 }

// feed follows bytes read into the bounce buffer or into the mapping plan
// named, appending their runs.
func (t *tracker) feed(b []byte) {
	for len(b) > 0 {
		var n int
		if t.mode == modeSearch {
			n = t.search(b)
		} else {
			n = t.frame(b)
		}
		b = b[n:]
	}
}

// frame consumes bytes of the current PDU (modeTrack or modeSpec), one part
// (header, padding, data, digest) at a time.
func (t *tracker) frame(b []byte) int {
	if t.atBoundary() {
		t.mark()
		if t.mode == modeSpec {
			t.poll()
			if t.mode == modeSearch {
				return 0
			}
			if t.confirmed {
				t.resume()
			}
		}
	}
	if !t.laid || t.pos < t.l.HeaderBytes() {
		return t.header(b)
	}
	ok := t.synced()
	ds, de := t.dataStart(), t.dataEnd()
	switch {
	case t.pos < ds:
		n := min(len(b), ds-t.pos)
		t.advance(n, ok)
		return n
	case t.pos < de:
		n := min(len(b), de-t.pos)
		if t.crcOn {
			t.crc = wire.UpdateDigest(t.crc, b[:n])
		}
		t.advance(n, ok)
		return n
	}
	// The data digest.
	n := min(len(b), t.l.PLen-t.pos)
	copy(t.dgst[t.pos-de:], b[:n])
	t.pos += n
	t.off += uint64(n)
	t.push(n, ok)
	if t.pos == t.l.PLen {
		if t.crcOn {
			if wire.GetDigest(t.dgst[:]) == t.crc {
				t.s.d.stats.add(statCRCOK, 1)
			} else {
				t.s.d.stats.add(statCRCBad, 1)
				t.taint()
			}
		} else {
			// Nothing verified: the segment holding the digest's end
			// must not claim otherwise.
			t.taint()
		}
		t.endPDU()
	}
	return n
}

// advance consumes n bytes of padding or data.
func (t *tracker) advance(n int, ok bool) {
	t.pos += n
	t.off += uint64(n)
	t.push(n, ok)
	if t.pos == t.l.PLen {
		t.endPDU()
	}
}

// header collects the current PDU's header and parses it: the common
// header as soon as its 8 bytes are in, the rest at HeaderBytes.
func (t *tracker) header(b []byte) int {
	want := wire.CommonHeaderLen
	if t.laid {
		want = t.l.HeaderBytes()
	}
	n := min(len(b), want-t.pos)
	copy(t.hdr[t.pos:], b[:n])
	t.pos += n
	t.off += uint64(n)
	t.push(n, t.synced())
	if t.pos < want {
		return n
	}
	if !t.laid {
		l, err := t.p.Layout(t.hdr[:wire.CommonHeaderLen], wire.ToHost)
		if err != nil || l.HeaderBytes() > len(t.hdr) {
			t.malformed()
			return n
		}
		t.l, t.laid = l, true
		return n
	}
	if err := t.p.VerifyHeader(wire.Header(t.hdr[:t.pos]), t.l); err != nil {
		t.malformed()
		return n
	}
	t.onHeader()
	return n
}

// malformed: a header that does not parse where one must start. In sync,
// the tracker lost track; in modeSpec, the candidate was wrong.
func (t *tracker) malformed() {
	t.taint()
	if t.mode == modeSpec {
		t.s.d.stats.add(statResyncFail, 1)
	}
	t.lose()
}

// onHeader starts the PDU whose header is complete and valid.
func (t *tracker) onHeader() {
	t.place, t.crcOn, t.crc = nil, false, 0
	if t.mode == modeTrack && t.l.DataLen > 0 && t.l.Type == wire.TypeC2HData {
		d := wire.DataHeader(t.hdr[:])
		t.datao = d.DataOffset()
		// Looked up even with placement off: the mapping's high-water
		// mark must count this PDU.
		if e, gen := t.s.lookup(d.CCCID(), t.datao, d.DataLen()); e != nil && t.caps&ddp.CapPlacement != 0 {
			t.place, t.gen = e, gen
		}
		t.crcOn = t.l.DDGST != 0 && t.caps&ddp.CapRxCRC != 0
	}
	if t.pos == t.l.PLen {
		t.endPDU()
	}
}

func (t *tracker) endPDU() {
	t.pduOff += uint64(t.l.PLen)
	t.pos, t.laid, t.place = 0, false, nil
	if t.mode == modeTrack {
		t.afterResync = false
	}
}

// search scans b for a plausible header. Only headers wholly inside b are
// candidates: b has not reached the ULP yet, so the request always comes
// before the ULP's parser gets to the candidate.
func (t *tracker) search(b []byte) int {
	i, l := t.scan(b)
	if i < 0 {
		t.off += uint64(len(b))
		t.push(len(b), false)
		return len(b)
	}
	hb := l.HeaderBytes()
	t.push(i+hb, false)
	t.mark()
	t.pduOff = t.off + uint64(i)
	t.off += uint64(i + hb)
	copy(t.hdr[:], b[i:i+hb])
	t.pos, t.laid, t.l = hb, true, l
	t.place, t.crcOn = nil, false
	t.mode, t.confirmed = modeSpec, false
	t.cand = t.seq(t.pduOff)
	t.s.answer.Store(0)
	t.s.d.stats.add(statResync, 1)
	t.s.ulp.ResyncRequest(t.cand)
	if t.pos == l.PLen {
		t.endPDU()
	}
	return i + hb
}

// scan finds the first position in b where a whole plausible C2H PDU header
// lies: a CapsuleResp, C2HData, R2T or C2HTermReq (all 24-byte headers)
// that the device's own parser accepts, header digest included.
func (t *tracker) scan(b []byte) (int, wire.Layout) {
	from := 0
	for from+2 < len(b) {
		j := bytes.IndexByte(b[from+2:], wire.DataHdrLen)
		if j < 0 {
			break
		}
		i := from + j
		from = i + 1
		if i+wire.CommonHeaderLen > len(b) {
			break
		}
		if !t.plausible(b[i : i+wire.CommonHeaderLen]) {
			continue
		}
		l, err := t.p.Layout(b[i:i+wire.CommonHeaderLen], wire.ToHost)
		if err != nil {
			continue
		}
		hb := l.HeaderBytes()
		if i+hb > len(b) {
			break // nor can any later position hold a whole header
		}
		if t.p.VerifyHeader(wire.Header(b[i:i+hb]), l) != nil {
			continue
		}
		return i, l
	}
	return -1, wire.Layout{}
}

// plausible is a cheap test of a common header before Layout (whose
// errors allocate): a C2H type with a 24-byte HLEN, the digest flags the
// queue negotiated, and PDO/PLEN that fit.
func (t *tracker) plausible(c []byte) bool {
	h := wire.Header(c)
	if h.HLen() != wire.DataHdrLen {
		return false
	}
	hb := wire.DataHdrLen
	var hd wire.Flags
	if t.p.HeaderDigest {
		hb += wire.DigestLen
		hd = wire.FlagHDGST
	}
	f := h.Flags()
	switch h.Type() {
	case wire.TypeCapsuleResp, wire.TypeR2T:
		return f == hd && h.PDO() == 0 && h.PLen() == uint32(hb)
	case wire.TypeC2HTermReq:
		return f == 0 && h.PDO() == 0 && h.PLen() >= wire.TermReqHeaderLen && h.PLen() <= wire.TermReqHeaderLen+wire.TermReqMaxDataLen
	case wire.TypeC2HData:
		dd := wire.Flags(0)
		if t.p.DataDigest {
			dd = wire.FlagDDGST
		}
		return f&(wire.FlagHDGST|wire.FlagDDGST) == hd|dd && h.PDO() >= hb
	}
	return false
}
