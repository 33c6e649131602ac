package blk

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestBuffersAlignedAndRecycled(t *testing.T) {
	ctx := testCtx(t)
	b := NewBuffers(4, 2)
	defer b.Close()
	for _, n := range []int{1, 512, PageSize, PageSize + 1, 100 << 10, 1 << 20, 1<<20 + 8192, MaxBuffer} {
		buf, err := b.Get(ctx, n)
		if err != nil {
			t.Fatalf("Get(%d): %v", n, err)
		}
		if len(buf) != n || !pageAligned(buf) || cap(buf) < n || cap(buf)%PageSize != 0 {
			t.Fatalf("Get(%d): len %d cap %d aligned %v", n, len(buf), cap(buf), pageAligned(buf))
		}
		buf[0], buf[n-1] = 1, 2 // mapped and writable
		b.Put(buf)
		again, err := b.Get(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		if addrOf(again) != addrOf(buf) {
			t.Errorf("Get(%d) after Put did not reuse the idle buffer", n)
		}
		b.Put(again[:1])
	}
	cs := b.Counters()
	if counter(cs, "buffers_out") != 0 || counter(cs, "buffer_mmaps") != 5 { // 5 size classes among the 8 sizes
		t.Errorf("counters after balanced Get/Put: %v", cs)
	}
	for _, n := range []int{0, -1, MaxBuffer + 1} {
		if _, err := b.Get(ctx, n); err == nil {
			t.Errorf("Get(%d) succeeded", n)
		}
	}
}

func TestBuffersBounded(t *testing.T) {
	ctx := testCtx(t)
	b := NewBuffers(2, 0)
	defer b.Close()
	x, _ := b.Get(ctx, 4096)
	y, _ := b.Get(ctx, 4096)
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := b.Get(short, 4096); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("third Get of a pool of 2: %v, want to wait until the deadline", err)
	}
	got := make(chan []byte)
	go func() {
		z, err := b.Get(ctx, 8192)
		if err != nil {
			t.Error(err)
		}
		got <- z
	}()
	b.Put(x)
	z := <-got
	b.Put(y)
	b.Put(z)
	cs := b.Counters()
	if counter(cs, "buffer_waits") < 1 || counter(cs, "buffer_bytes_mapped") != 0 || counter(cs, "buffer_munmaps") != 3 {
		t.Errorf("a pool keeping nothing idle: %v", cs)
	}
}

func TestBuffersPutForeign(t *testing.T) {
	b := NewBuffers(1, 1)
	defer func() {
		if recover() == nil {
			t.Errorf("Put of a heap buffer did not panic")
		}
	}()
	b.Put(make([]byte, 3000))
}

func TestRangeLocks(t *testing.T) {
	ctx := testCtx(t)
	var l rangeLocks
	u1, _, _ := l.lock(ctx, 0, 10)
	u2, waited, _ := l.lock(ctx, 10, 20) // disjoint
	if waited {
		t.Errorf("disjoint range waited")
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, _, err := l.lock(short, 9, 11); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("overlapping lock: %v, want to wait", err)
	}
	got := make(chan bool)
	go func() {
		u, w, err := l.lock(ctx, 5, 15)
		if err != nil {
			t.Error(err)
		}
		u()
		got <- w
	}()
	u1()
	select {
	case <-got:
		t.Fatal("lock of [5,15) taken while [10,20) is held")
	case <-time.After(10 * time.Millisecond):
	}
	u2()
	if !<-got {
		t.Errorf("lock of [5,15) did not report waiting")
	}
	if len(l.held) != 0 {
		t.Errorf("%d ranges still held", len(l.held))
	}
}
