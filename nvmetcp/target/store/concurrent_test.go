package store

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
)

// concurrent hammers s from several goroutines at once. Each owns the 4 KiB
// blocks whose index is congruent to its id, interleaved with everyone
// else's so that they share chunks and stripes: what it reads back of its own
// blocks must be exactly what it wrote. The second half of the store is
// shared: writers fill runs with their own byte value, others zero runs, and
// readers must only ever see zeros or some writer's value.
func concurrent(t *testing.T, s Store) {
	t.Helper()
	const (
		workers = 6
		block   = 4096
		iters   = 150
	)
	half := s.Size() / 2 / block * block
	ownedBlocks := half / block
	if ownedBlocks < workers*2 {
		t.Fatalf("store of %d bytes too small for the test", s.Size())
	}

	var wg sync.WaitGroup
	errs := make(chan error, 2*workers)
	for id := range workers {
		wg.Add(2)
		// An owner of interleaved blocks.
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(id), 1))
			last := map[int64][]byte{}
			got := make([]byte, 2*block)
			for i := range iters {
				b := int64(rng.IntN(int(ownedBlocks/workers)))*workers + int64(id)
				off := b * block
				switch rng.IntN(4) {
				case 0:
					if err := s.Deallocate(off, block); err != nil {
						errs <- err
						return
					}
					last[b] = make([]byte, block)
				default:
					p := pattern(block, byte(id*31+i))
					if _, err := s.WriteAt(p, off); err != nil {
						errs <- err
						return
					}
					last[b] = p
				}
				if _, err := s.ReadAt(got[:block], off); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got[:block], last[b]) {
					errs <- fmt.Errorf("worker %d: block %d does not read back what was written", id, b)
					return
				}
			}
			for b, want := range last {
				if _, err := s.ReadAt(got[:block], b*block); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got[:block], want) {
					errs <- fmt.Errorf("worker %d: block %d changed after its last write", id, b)
					return
				}
			}
		}()
		// A user of the shared half: writes, zeroes and reads
		// overlapping unaligned runs.
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(id), 2))
			shared := s.Size() - half
			buf := make([]byte, 3*block)
			for range iters {
				n := int64(1 + rng.IntN(len(buf)))
				off := half + rng.Int64N(shared-n+1)
				switch rng.IntN(5) {
				case 0:
					if err := s.WriteZeroes(off, n); err != nil {
						errs <- err
						return
					}
				case 1, 2:
					p := bytes.Repeat([]byte{byte(id + 1)}, int(n))
					if _, err := s.WriteAt(p, off); err != nil {
						errs <- err
						return
					}
				default:
					if _, err := s.ReadAt(buf[:n], off); err != nil {
						errs <- err
						return
					}
					for i, c := range buf[:n] {
						if c > workers {
							errs <- fmt.Errorf("shared byte at %d reads %#x, which nobody wrote", off+int64(i), c)
							return
						}
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
