package target

import (
	"io"
	"log/slog"
	"testing"

	"github.com/nvmefs/nvmefs/nvmetcp/target/store"
)

// benchRead measures read throughput over loopback: one I/O queue, depth
// reads of size bytes in flight, through the test client.
func benchRead(b *testing.B, size, depth int, opts clientOpts, cfg Config) {
	const nsSize = 64 << 20
	st := mustMem(b, "mem:64M")
	// Fill the namespace so that reads copy real data.
	chunk := pattern(1<<20, 1)
	for off := int64(0); off < nsSize; off += int64(len(chunk)) {
		st.WriteAt(chunk, off)
	}
	cfg.Namespaces = []store.Store{st}
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	tt := startTarget(b, cfg)
	s := openSession(b, tt.addr, opts, testHostNQN, 1, uint16(depth))
	q := s.io[0]
	slots := nsSize / size
	bufs := make([][]byte, depth)
	calls := make([]*call, depth)
	for i := range bufs {
		bufs[i] = make([]byte, size)
	}
	blocks := size / 512
	issue := func(i, n int) {
		k, err := q.sendRead(1, uint64((n%slots)*blocks), bufs[i], 512)
		if err != nil {
			b.Fatal(err)
		}
		calls[i] = k
	}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	n := 0
	for i := 0; i < depth && n < b.N; i++ {
		issue(i, n)
		n++
	}
	for done := 0; done < b.N; done++ {
		i := done % depth
		r := calls[i].wait(callTimeout)
		if r.Err != nil || !r.Status.Success() {
			b.Fatalf("read: %v %v", r.Err, r.Status)
		}
		if n < b.N {
			issue(i, n)
			n++
		}
	}
	b.StopTimer()
}

func BenchmarkTargetRead4K(b *testing.B) {
	benchRead(b, 4096, 32, clientOpts{}, Config{})
}

func BenchmarkTargetRead128K(b *testing.B) {
	benchRead(b, 128<<10, 8, clientOpts{}, Config{})
}

func BenchmarkTargetRead128KDigests(b *testing.B) {
	benchRead(b, 128<<10, 8, clientOpts{HeaderDigest: true, DataDigest: true}, Config{})
}

func BenchmarkTargetRead128KSplit16K(b *testing.B) {
	benchRead(b, 128<<10, 8, clientOpts{}, Config{MaxC2HData: 16 << 10})
}
