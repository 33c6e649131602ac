package blk

import (
	"context"
	"sync"
)

// rangeLocks are exclusive locks on block ranges: a holder of [lo, hi)
// excludes every other holder of an overlapping range.
type rangeLocks struct {
	mu   sync.Mutex
	held []*heldRange
}

type heldRange struct {
	lo, hi uint64
	done   chan struct{} // closed on unlock
}

// lock takes [lo, hi) and returns the function that releases it. It waits
// while an overlapping range is held, as long as ctx allows; it reports
// whether it had to wait.
func (l *rangeLocks) lock(ctx context.Context, lo, hi uint64) (unlock func(), waited bool, err error) {
	for {
		l.mu.Lock()
		var conflict *heldRange
		for _, h := range l.held {
			if h.lo < hi && lo < h.hi {
				conflict = h
				break
			}
		}
		if conflict == nil {
			h := &heldRange{lo: lo, hi: hi, done: make(chan struct{})}
			l.held = append(l.held, h)
			l.mu.Unlock()
			return func() { l.unlock(h) }, waited, nil
		}
		l.mu.Unlock()
		waited = true
		select {
		case <-conflict.done:
		case <-ctx.Done():
			return nil, waited, context.Cause(ctx)
		}
	}
}

func (l *rangeLocks) unlock(h *heldRange) {
	l.mu.Lock()
	for i, x := range l.held {
		if x == h {
			last := len(l.held) - 1
			l.held[i] = l.held[last]
			l.held[last] = nil
			l.held = l.held[:last]
			break
		}
	}
	l.mu.Unlock()
	close(h.done)
}
