package host

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// LatencyBuckets is the size of a latency histogram: bucket i counts
// commands that took [2^(i-1), 2^i) nanoseconds (bucket 0: under 1 ns,
// the last: everything longer).
const LatencyBuckets = 40

// queueStats are one queue's counters. They live in the Controller, not in
// a connection, so that they add up across reconnects.
type queueStats struct {
	commands     atomic.Uint64
	bytesRead    atomic.Uint64
	bytesWritten atomic.Uint64
	errors       atomic.Uint64
	timeouts     atomic.Uint64
	digestErrors atomic.Uint64
	retries      atomic.Uint64
	reconnects   atomic.Uint64
	bytesCopied  atomic.Uint64 // C2HData payload copied from the receive buffer
	bytesDirect  atomic.Uint64 // C2HData payload read from the socket straight into the request's buffer
	bytesPlaced  atomic.Uint64 // C2HData payload already placed by an offload (copy skipped)
	// C2HData payload dropped unread (Options.BenchmarkDiscardPayload)
	bytesDiscarded atomic.Uint64
	crcSoftware    atomic.Uint64 // PDUs whose data digest the host computed
	crcOffloaded   atomic.Uint64 // PDUs whose data digest an offload verified
	// DDP offload (offload.go).
	skAdd          atomic.Uint64 // connections offloaded (sk_add)
	skAddFail      atomic.Uint64 // sk_add refused: the connection ran in software
	ddpSetup       atomic.Uint64 // read buffers mapped
	ddpSetupFail   atomic.Uint64 // setups refused: the read went the software way
	ddpTeardown    atomic.Uint64 // TeardownDone calls
	resyncRequests atomic.Uint64 // resync requests from the device
	resyncYes      atomic.Uint64 // answered yes: a PDU header starts there
	resyncNo       atomic.Uint64 // answered no
	inflightMax    atomic.Int64  // most commands in flight at once
	latency        [LatencyBuckets]atomic.Uint64
}

// noteInFlight records n commands in flight.
func (s *queueStats) noteInFlight(n int64) {
	for {
		m := s.inflightMax.Load()
		if n <= m || s.inflightMax.CompareAndSwap(m, n) {
			return
		}
	}
}

func (s *queueStats) observe(d time.Duration) {
	i := bits.Len64(uint64(max(d, 0)))
	s.latency[min(i, LatencyBuckets-1)].Add(1)
}

// QueueStats is a snapshot of one queue's counters.
type QueueStats struct {
	QID          int // 0: admin queue
	Commands     uint64
	BytesRead    uint64
	BytesWritten uint64
	Errors       uint64 // commands that failed (status, digest, transport), retries included
	Timeouts     uint64 // commands that ran into IOTimeout
	DigestErrors uint64 // data digest mismatches received
	Retries      uint64 // commands issued again (after recovery, a digest error or a retryable status)
	Reconnects   uint64 // times the queue was connected again by error recovery
	BytesCopied  uint64 // C2HData payload copied from a receive buffer (the host's or, offloaded, the NIC's)
	BytesDirect  uint64 // C2HData payload read from the socket straight into the request's buffer
	BytesPlaced  uint64 // C2HData payload the NIC had placed: the copy was skipped
	// BytesDiscarded is C2HData payload dropped unread and unchecked
	// (Options.BenchmarkDiscardPayload).
	BytesDiscarded uint64
	CRCSoftware    uint64 // PDUs whose data digest the host computed
	CRCOffloaded   uint64 // PDUs whose data digest the NIC verified (the host skipped it)
	// DDP receive offload.
	Offloads       uint64 // times the queue's connection was offloaded (sk_add)
	OffloadFails   uint64 // times sk_add failed and the connection ran in software
	DDPSetups      uint64 // read buffers mapped for placement
	DDPSetupFails  uint64 // setups refused (that read went the software way)
	DDPTeardowns   uint64 // mappings gone (TeardownDone)
	ResyncRequests uint64 // the device lost the PDU boundaries and asked
	ResyncYes      uint64 // answers: a PDU header starts at the offset asked
	ResyncNo       uint64 // answers: none does
	InFlightMax    uint64 // most commands in flight at once (Total: the largest of the queues')
	Latency        [LatencyBuckets]uint64
}

func (s *queueStats) snapshot(qid int) QueueStats {
	q := QueueStats{
		QID:            qid,
		Commands:       s.commands.Load(),
		BytesRead:      s.bytesRead.Load(),
		BytesWritten:   s.bytesWritten.Load(),
		Errors:         s.errors.Load(),
		Timeouts:       s.timeouts.Load(),
		DigestErrors:   s.digestErrors.Load(),
		Retries:        s.retries.Load(),
		Reconnects:     s.reconnects.Load(),
		BytesCopied:    s.bytesCopied.Load(),
		BytesDirect:    s.bytesDirect.Load(),
		BytesPlaced:    s.bytesPlaced.Load(),
		BytesDiscarded: s.bytesDiscarded.Load(),
		CRCSoftware:    s.crcSoftware.Load(),
		CRCOffloaded:   s.crcOffloaded.Load(),

		Offloads:       s.skAdd.Load(),
		OffloadFails:   s.skAddFail.Load(),
		DDPSetups:      s.ddpSetup.Load(),
		DDPSetupFails:  s.ddpSetupFail.Load(),
		DDPTeardowns:   s.ddpTeardown.Load(),
		ResyncRequests: s.resyncRequests.Load(),
		ResyncYes:      s.resyncYes.Load(),
		ResyncNo:       s.resyncNo.Load(),
		InFlightMax:    uint64(max(s.inflightMax.Load(), 0)),
	}
	for i := range q.Latency {
		q.Latency[i] = s.latency[i].Load()
	}
	return q
}

// add accumulates o into q (for totals).
func (q *QueueStats) add(o *QueueStats) {
	q.Commands += o.Commands
	q.BytesRead += o.BytesRead
	q.BytesWritten += o.BytesWritten
	q.Errors += o.Errors
	q.Timeouts += o.Timeouts
	q.DigestErrors += o.DigestErrors
	q.Retries += o.Retries
	q.Reconnects += o.Reconnects
	q.BytesCopied += o.BytesCopied
	q.BytesDirect += o.BytesDirect
	q.BytesPlaced += o.BytesPlaced
	q.BytesDiscarded += o.BytesDiscarded
	q.CRCSoftware += o.CRCSoftware
	q.CRCOffloaded += o.CRCOffloaded
	q.Offloads += o.Offloads
	q.OffloadFails += o.OffloadFails
	q.DDPSetups += o.DDPSetups
	q.DDPSetupFails += o.DDPSetupFails
	q.DDPTeardowns += o.DDPTeardowns
	q.ResyncRequests += o.ResyncRequests
	q.ResyncYes += o.ResyncYes
	q.ResyncNo += o.ResyncNo
	q.InFlightMax = max(q.InFlightMax, o.InFlightMax)
	for i := range q.Latency {
		q.Latency[i] += o.Latency[i]
	}
}

// LatencyQuantile estimates the q-quantile (0..1) of the latency histogram:
// the upper bound of the bucket that holds it (within a factor of 2).
func (q *QueueStats) LatencyQuantile(quantile float64) time.Duration {
	var total uint64
	for _, n := range q.Latency {
		total += n
	}
	if total == 0 {
		return 0
	}
	rank := uint64(quantile * float64(total))
	if rank >= total {
		rank = total - 1
	}
	var seen uint64
	for i, n := range q.Latency {
		seen += n
		if seen > rank {
			return time.Duration(uint64(1) << i)
		}
	}
	return time.Duration(uint64(1) << (LatencyBuckets - 1))
}

// Stats is a snapshot of a controller's statistics.
type Stats struct {
	Admin QueueStats
	IO    []QueueStats // one per I/O queue slot (QID 1..NrIOQueues)
	Total QueueStats   // admin and I/O queues added up
	// Recoveries counts error recoveries started; Lost is set once the
	// controller is lost.
	Recoveries uint64
	Lost       bool
}
