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
	crcSoftware  atomic.Uint64 // PDUs whose data digest the host computed
	crcOffloaded atomic.Uint64 // PDUs whose data digest an offload verified
	latency      [LatencyBuckets]atomic.Uint64
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
	BytesCopied  uint64
	BytesDirect  uint64
	BytesPlaced  uint64
	CRCSoftware  uint64
	CRCOffloaded uint64
	Latency      [LatencyBuckets]uint64
}

func (s *queueStats) snapshot(qid int) QueueStats {
	q := QueueStats{
		QID:          qid,
		Commands:     s.commands.Load(),
		BytesRead:    s.bytesRead.Load(),
		BytesWritten: s.bytesWritten.Load(),
		Errors:       s.errors.Load(),
		Timeouts:     s.timeouts.Load(),
		DigestErrors: s.digestErrors.Load(),
		Retries:      s.retries.Load(),
		Reconnects:   s.reconnects.Load(),
		BytesCopied:  s.bytesCopied.Load(),
		BytesDirect:  s.bytesDirect.Load(),
		BytesPlaced:  s.bytesPlaced.Load(),
		CRCSoftware:  s.crcSoftware.Load(),
		CRCOffloaded: s.crcOffloaded.Load(),
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
	q.CRCSoftware += o.CRCSoftware
	q.CRCOffloaded += o.CRCOffloaded
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
