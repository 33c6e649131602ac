package blk

import (
	"context"
	"sync/atomic"
)

// TagSet bounds the commands in flight on one controller: one tag per
// command slot of its I/O queues (Queues*QueueDepth). The Devices of a
// controller's namespaces share one TagSet.
type TagSet struct {
	sem      chan struct{}
	inFlight atomic.Int64
	maxSeen  atomic.Int64
	waits    atomic.Uint64 // acquisitions that found no free tag
}

// NewTagSet returns a TagSet of n tags (at least 1).
func NewTagSet(n int) *TagSet {
	return &TagSet{sem: make(chan struct{}, max(n, 1))}
}

// Size is the number of tags.
func (t *TagSet) Size() int { return cap(t.sem) }

// acquire takes a tag, waiting for one while ctx allows.
func (t *TagSet) acquire(ctx context.Context) error {
	select {
	case t.sem <- struct{}{}:
	default:
		t.waits.Add(1)
		select {
		case t.sem <- struct{}{}:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	n := t.inFlight.Add(1)
	for {
		m := t.maxSeen.Load()
		if n <= m || t.maxSeen.CompareAndSwap(m, n) {
			break
		}
	}
	return nil
}

func (t *TagSet) release() {
	t.inFlight.Add(-1)
	<-t.sem
}

// InFlightMax is the most commands that were in flight at once.
func (t *TagSet) InFlightMax() int64 { return t.maxSeen.Load() }

// Counters returns the tag set's statistics.
func (t *TagSet) Counters() []Counter {
	return []Counter{
		{"tags", uint64(cap(t.sem))},
		{"inflight", uint64(max(t.inFlight.Load(), 0))},
		{"inflight_max", uint64(t.maxSeen.Load())},
		{"tag_waits", t.waits.Load()},
	}
}
