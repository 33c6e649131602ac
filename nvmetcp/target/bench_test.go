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
	next := 0
	slbas := make([]uint64, 0, depth)
	batch := make([][]byte, 0, depth)
	slotOf := make([]int, 0, depth)
	// issue starts reads in the given slots with one write.
	issue := func(slotIdx []int) {
		slbas, batch = slbas[:0], batch[:0]
		for _, i := range slotIdx {
			slbas = append(slbas, uint64((next%slots)*blocks))
			batch = append(batch, bufs[i])
			next++
		}
		ks, err := q.sendReads(1, slbas, batch, 512)
		if err != nil {
			b.Fatal(err)
		}
		for j, i := range slotIdx {
			calls[i] = ks[j]
		}
	}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < depth && i < b.N; i++ {
		slotOf = append(slotOf, i)
	}
	issue(slotOf)
	inFlight := len(slotOf)
	for done := 0; done < b.N; {
		// Wait for the oldest, then take every other one already done.
		slotOf = slotOf[:0]
		for i := range calls {
			k := calls[i]
			if k == nil {
				continue
			}
			if len(slotOf) > 0 {
				select {
				case <-k.done:
				default:
					continue
				}
			}
			r := k.wait(callTimeout)
			if r.Err != nil || !r.Status.Success() {
				b.Fatalf("read: %v %v", r.Err, r.Status)
			}
			calls[i] = nil
			done++
			inFlight--
			if next < b.N {
				slotOf = append(slotOf, i)
			}
		}
		if len(slotOf) > 0 {
			issue(slotOf)
			inFlight += len(slotOf)
		}
		if inFlight == 0 {
			break
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
