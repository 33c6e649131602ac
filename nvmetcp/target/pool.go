package target

import (
	"math/bits"
	"sync"
)

// bufPool recycles data buffers in power-of-two classes from 4 KiB to the
// largest transfer the target allows, so that a command's buffer is never
// larger than that bound, whatever the peer asks.
type bufPool struct {
	max     int
	classes []sync.Pool
}

const minBufShift = 12

// dataBuf is a pooled buffer; b has the class's full capacity.
type dataBuf struct {
	b     []byte
	class int
}

func (p *bufPool) init(limit int) {
	p.max = limit
	n := bits.Len(uint(limit-1)) - minBufShift + 1
	p.classes = make([]sync.Pool, max(n, 1))
	for i := range p.classes {
		size := 1 << (minBufShift + i)
		class := i
		p.classes[i].New = func() any { return &dataBuf{b: make([]byte, size), class: class} }
	}
}

// get returns a buffer of at least n bytes (n <= p.max). The contents are
// whatever the last user left.
func (p *bufPool) get(n int) *dataBuf {
	if n > p.max {
		panic("target: buffer request above the bound")
	}
	class := 0
	if n > 1<<minBufShift {
		class = bits.Len(uint(n-1)) - minBufShift
	}
	return p.classes[class].Get().(*dataBuf)
}

func (p *bufPool) put(b *dataBuf) {
	if b != nil {
		p.classes[b.class].Put(b)
	}
}
