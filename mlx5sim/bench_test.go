package mlx5sim

import (
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/nvmefs/nvmefs/ddp"
	"github.com/nvmefs/nvmefs/nvmetcp/wire"
	"golang.org/x/sys/unix"
)

// BenchmarkRecv128K receives 128 KiB C2HData PDUs with data digests over
// loopback TCP, each a read the host asked for (qd in flight), through the
// device with rx-crc on:
//
//   - placed: each read is mapped (Setup before it is asked for, Teardown
//     after its PDU, a new Setup when TeardownDone comes): the device
//     reads the payload into the buffer and verifies the digest; the host
//     skips the copy and the CRC.
//   - unplaced: no mapping: the payload goes through the device's receive
//     buffer and the host copies it (CopySkip); the device still verifies
//     the digest.
//   - software: offloads off: the host copies and computes the CRC.
//
// ns/op and MB/s are per PDU. nic-cpu-ns/op is the receive engine's thread
// CPU time (Config.AccountCPU); host-rx-cpu-ns/op the receiving
// goroutine's (its own thread): Recv, the copy and the CRC the host still
// does; host-cpu-ns/op the whole process's less the NIC's and the sending
// target's (the Go runtime's share included).
func BenchmarkRecv128K(b *testing.B) {
	for _, mode := range []string{"placed", "unplaced", "software"} {
		b.Run(mode, func(b *testing.B) { benchRecv(b, mode, 128<<10, 4, DefaultMTU) })
	}
}

// BenchmarkRecvMTU is the placed and unplaced cases at a 9000-byte MTU.
func BenchmarkRecvMTU9000(b *testing.B) {
	for _, mode := range []string{"placed", "unplaced"} {
		b.Run(mode, func(b *testing.B) { benchRecv(b, mode, 128<<10, 4, 9000) })
	}
}

type benchHost struct {
	sock    ddp.Socket
	ios     []*ddp.IO
	bufs    [][]byte
	cmds    chan uint16
	place   bool
	err     chan error
	closing atomic.Bool
}

func (h *benchHost) ResyncRequest(seq ddp.Seq) { h.sock.Resync(seq, false) }

// TeardownDone maps the buffer again and asks for the next PDU into it
// (never blocking: at Close, Setup fails and nothing is asked).
func (h *benchHost) TeardownDone(io *ddp.IO) {
	if h.closing.Load() {
		return
	}
	if err := h.sock.Setup(io); err != nil {
		select {
		case h.err <- err:
		default:
		}
		return
	}
	h.cmds <- io.Tag // room for every tag
}

func benchRecv(b *testing.B, mode string, size, qd, mtu int) {
	oc := wire.OffloadConfig{DataDigest: true, QueueSize: qd}
	dev, err := newDev(Config{MTU: mtu, AccountCPU: true})
	if err != nil {
		b.Fatal(err)
	}
	if mode == "software" {
		dev.SetCapabilities(0)
	} else if mode == "unplaced" {
		dev.SetCapabilities(ddp.CapRxCRC)
	}
	hc, tc := tcpPair(b)
	h := &benchHost{cmds: make(chan uint16, qd), err: make(chan error, 1), place: mode == "placed"}
	var sock ddp.Socket
	if mode == "software" {
		// Offloads off: SkAdd fails, as for a host without the device;
		// enable rx-crc only to get the socket, then turn everything off.
		dev.SetCapabilities(ddp.CapRxCRC)
		sock, err = dev.SkAdd(hc, oc, h)
		dev.SetCapabilities(0)
	} else {
		sock, err = dev.SkAdd(hc, oc, h)
	}
	if err != nil {
		b.Fatal(err)
	}
	h.sock = sock
	defer sock.Close()

	// One PDU per tag, prebuilt: only its bytes travel.
	snd := newSender(oc)
	pdus := make([][]byte, qd)
	payload := data(size, 1)
	for tag := range qd {
		pdus[tag] = snd.c2h(uint16(tag), 0, payload, wire.FlagLast|wire.FlagSuccess, 0)
		buf := make([]byte, size)
		h.bufs = append(h.bufs, buf)
		io := &ddp.IO{Tag: uint16(tag), SG: ddp.SG(buf, nil), Len: size}
		h.ios = append(h.ios, io)
		if h.place {
			if err := sock.Setup(io); err != nil {
				b.Fatal(err)
			}
		}
		h.cmds <- uint16(tag)
	}
	pduLen := len(pdus[0])
	hdrLen := pduLen - size - wire.DigestLen

	var writerCPU int64
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		start := threadCPU()
		defer func() { writerCPU = threadCPU() - start }()
		for range b.N {
			tag, ok := <-h.cmds
			if !ok {
				return
			}
			if _, err := tc.Write(pdus[tag]); err != nil {
				return
			}
		}
	}()

	// The receiving goroutine keeps its thread, so that its CPU time is
	// the host's receive path alone.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	nic0 := dev.Stat("sim_engine_cpu_ns")
	cpu0 := processCPU()
	rx0 := threadCPU()
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	var tr ddp.CRCTracker
	var crc uint32
	var dg [wire.DigestLen]byte
	total := uint64(b.N) * uint64(pduLen)
	for got := uint64(0); got < total; {
		seg, err := sock.Recv()
		if err != nil {
			b.Fatal(err)
		}
		// A fixed stream: positions say what each byte is.
		for bs := seg.Bytes; len(bs) > 0; {
			pos := int(got % uint64(pduLen))
			tag := int(got / uint64(pduLen) % uint64(qd))
			if pos == 0 {
				tr.Reset()
				crc = 0
			}
			var n int
			switch {
			case pos < hdrLen:
				n = min(len(bs), hdrLen-pos)
			case pos < hdrLen+size:
				n = min(len(bs), hdrLen+size-pos)
				off := pos - hdrLen
				ddp.CopySkip(h.bufs[tag][off:off+n], bs[:n])
				tr.Add(seg)
				if mode == "software" {
					crc = wire.UpdateDigest(crc, bs[:n])
				}
			default:
				n = min(len(bs), pduLen-pos)
				copy(dg[pos-hdrLen-size:], bs[:n])
				tr.Add(seg)
				if pos+n == pduLen {
					if !tr.Offloaded() {
						if mode != "software" {
							crc = wire.DataDigest(h.bufs[tag])
						}
						if crc != wire.GetDigest(dg[:]) {
							b.Fatal("digest mismatch")
						}
					}
					if h.place {
						sock.Teardown(h.ios[tag]) // TeardownDone sets it up again and asks
					} else {
						h.cmds <- uint16(tag)
					}
				}
			}
			bs = bs[n:]
			got += uint64(n)
		}
		select {
		case err := <-h.err:
			b.Fatal(err)
		default:
		}
	}
	b.StopTimer()
	rx := threadCPU() - rx0
	<-writerDone
	h.closing.Store(true)
	sock.Close()
	nic := int64(dev.Stat("sim_engine_cpu_ns") - nic0)
	all := processCPU() - cpu0
	b.ReportMetric(float64(nic)/float64(b.N), "nic-cpu-ns/op")
	b.ReportMetric(float64(all-nic-writerCPU)/float64(b.N), "host-cpu-ns/op")
	b.ReportMetric(float64(rx)/float64(b.N), "host-rx-cpu-ns/op")
	if h.place {
		if placed := dev.Stat("rx_nvmeotcp_offload_bytes"); placed < uint64(b.N)*uint64(size) {
			b.Fatalf("placed %d of %d bytes", placed, b.N*size)
		}
	}
}

// processCPU is the process's user and system CPU time in nanoseconds.
func processCPU() int64 {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
