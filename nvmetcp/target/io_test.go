package target

import (
	"bytes"
	"fmt"
	"sync"
	"testing"

	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
	"github.com/nvmefs/nvmefs/nvmetcp/target/store"
)

// TestDataPathMatrix writes and reads back through every combination of
// digests, host PDU alignment, C2HData splitting and the SUCCESS flag.
func TestDataPathMatrix(t *testing.T) {
	for _, digests := range []struct{ h, d bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
		for _, hpda := range []uint8{0, 3, 31} {
			for _, maxC2H := range []uint32{0, 4096, 12288} {
				for _, success := range []bool{false, true} {
					name := fmt.Sprintf("hd=%v/dd=%v/hpda=%d/maxc2h=%d/success=%v", digests.h, digests.d, hpda, maxC2H, success)
					t.Run(name, func(t *testing.T) {
						tt := startTarget(t, Config{MaxC2HData: maxC2H, C2HSuccess: success})
						opts := clientOpts{HeaderDigest: digests.h, DataDigest: digests.d, HPDA: hpda}
						s := openSession(t, tt.addr, opts, testHostNQN, 1, 32)
						q := s.io[0]
						for i, size := range []int{512, 4096, 16384, 40960, 131072} {
							data := pattern(size, uint64(i))
							inCapsule := size <= DefaultInCapsuleSize
							r := must(t, "write", q.write(1, uint64(i)*1024, data, 512, inCapsule))
							if !inCapsule && r.R2Ts == 0 {
								t.Errorf("write of %d bytes: no R2T", size)
							}
							got := make([]byte, size)
							r = must(t, "read", q.read(1, uint64(i)*1024, got, 512))
							if !bytes.Equal(got, data) {
								t.Fatalf("read of %d bytes differs", size)
							}
							want := 1
							if maxC2H > 0 {
								want = (size + int(maxC2H) - 1) / int(maxC2H)
							}
							if r.C2HPDUs != want {
								t.Errorf("read of %d bytes: %d C2HData PDUs, want %d", size, r.C2HPDUs, want)
							}
							if r.Success != success {
								t.Errorf("read ended by SUCCESS flag: %v, want %v", r.Success, success)
							}
						}
					})
				}
			}
		}
	}
}

// TestR2TFlow checks R2T splitting, MAXR2T (several R2Ts outstanding when
// the host accepts them, never more) and H2CData split at MAXH2CDATA.
func TestR2TFlow(t *testing.T) {
	cases := []struct {
		r2tSize, maxH2C uint32
		maxR2T          uint32
		batch           int
		size            int
		wantR2Ts        int
	}{
		{0, 0, 0, 1, 256 << 10, 1},             // one R2T, H2CData split at 128 KiB
		{16384, 0, 0, 1, 64 << 10, 4},          // sequential R2Ts
		{16384, 0, 3, 4, 256 << 10, 16},        // 4 outstanding at once
		{8192, 4096, 1, 2, 64 << 10, 8},        // 2 outstanding, H2CData of 4 KiB
		{4096, 0, 15, 4, 32 << 10, 8},          // host allows 16: the target caps at 4
		{0, 4096, 0, 1, DefaultMaxTransfer, 1}, // MDTS-sized write, 256 H2CData PDUs
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("r2t=%d/h2c=%d/maxr2t=%d/size=%d", tc.r2tSize, tc.maxH2C, tc.maxR2T, tc.size), func(t *testing.T) {
			tt := startTarget(t, Config{R2TSize: tc.r2tSize, MaxH2CData: tc.maxH2C})
			opts := clientOpts{MaxR2T: tc.maxR2T, R2TBatch: tc.batch, DataDigest: true}
			s := openSession(t, tt.addr, opts, testHostNQN, 1, 32)
			q := s.io[0]
			data := pattern(tc.size, 7)
			f := rwFields(nvme.IOWrite, 1, 0, uint32(tc.size/512), tc.size, false)
			k, err := q.send(&f, nil, nil, data)
			if err != nil {
				t.Fatal(err)
			}
			r := must(t, "write", k.wait(callTimeout))
			if r.R2Ts != tc.wantR2Ts {
				t.Errorf("%d R2Ts, want %d", r.R2Ts, tc.wantR2Ts)
			}
			if want := min(tc.batch, int(tc.maxR2T)+1, maxR2TPerCommand); k.maxHeld != want {
				t.Errorf("at most %d R2Ts outstanding, want %d", k.maxHeld, want)
			}
			got := make([]byte, tc.size)
			must(t, "read", q.read(1, 0, got, 512))
			if !bytes.Equal(got, data) {
				t.Fatal("read differs from write")
			}
		})
	}
}

func TestFlushWriteZeroesDSM(t *testing.T) {
	fs := &flushCounter{}
	st, err := store.Open("mem:4M")
	if err != nil {
		t.Fatal(err)
	}
	fs.Store = st
	tt := startTarget(t, Config{Namespaces: []store.Store{fs}, BlockSize: 4096})
	s := openSession(t, tt.addr, clientOpts{}, testHostNQN, 1, 32)
	q := s.io[0]
	const bs = 4096
	data := pattern(64*bs, 3)
	must(t, "write", q.write(1, 0, data, bs, false))

	// Flush one namespace, then all.
	before := fs.count()
	must(t, "flush", q.do(&nvme.SQEFields{Opcode: nvme.IOFlush, Flags: nvme.FlagsPSDTSGL, NSID: 1, DPTR: nvme.SGLFields{ID: nvme.SGLTransportData}}, nil, nil, nil))
	must(t, "flush all", q.do(&nvme.SQEFields{Opcode: nvme.IOFlush, Flags: nvme.FlagsPSDTSGL, NSID: nvme.NSIDAll, DPTR: nvme.SGLFields{ID: nvme.SGLTransportData}}, nil, nil, nil))
	if fs.count() != before+2 {
		t.Errorf("store flushed %d times, want 2", fs.count()-before)
	}
	wantStatus(t, "flush ns 2", q.do(&nvme.SQEFields{Opcode: nvme.IOFlush, Flags: nvme.FlagsPSDTSGL, NSID: 2}, nil, nil, nil), nvme.StatusInvalidNamespace)

	// Write Zeroes over blocks 4..7, with and without deallocate.
	wz := func(slba uint64, nlb uint32, deac bool) response {
		f := nvme.SQEFields{Opcode: nvme.IOWriteZeroes, Flags: nvme.FlagsPSDTSGL, NSID: 1, CDW10: uint32(slba), CDW11: uint32(slba >> 32), CDW12: nlb - 1}
		if deac {
			f.CDW12 |= 1 << 25
		}
		return q.do(&f, nil, nil, nil)
	}
	must(t, "write zeroes", wz(4, 4, false))
	must(t, "write zeroes deallocate", wz(20, 2, true))
	wantStatus(t, "write zeroes past the end", wz(1023, 2, false), nvme.StatusLBAOutOfRange)

	// DSM deallocate of two ranges.
	ranges := make([]byte, 2*16)
	putRange := func(i int, slba uint64, nlb uint32) {
		b := ranges[i*16:]
		b[4], b[5], b[6], b[7] = byte(nlb), byte(nlb>>8), byte(nlb>>16), byte(nlb>>24)
		for j := 0; j < 8; j++ {
			b[8+j] = byte(slba >> (8 * j))
		}
	}
	putRange(0, 40, 3)
	putRange(1, 50, 1)
	dsm := nvme.SQEFields{Opcode: nvme.IODatasetMgmt, Flags: nvme.FlagsPSDTSGL, NSID: 1,
		DPTR: nvme.SGLFields{Length: uint32(len(ranges)), ID: nvme.SGLInCapsule}, CDW10: 1, CDW11: 1 << 2}
	must(t, "dsm deallocate", q.do(&dsm, ranges, nil, nil))
	// Through R2T as well.
	putRange(0, 60, 1)
	putRange(1, 62, 1)
	dsm.DPTR.ID = nvme.SGLTransportData
	must(t, "dsm deallocate via R2T", q.do(&dsm, nil, nil, ranges))
	// A range past the end fails the whole command and deallocates nothing.
	putRange(0, 30, 1)
	putRange(1, 1020, 10)
	dsm.DPTR.ID = nvme.SGLInCapsule
	wantStatus(t, "dsm out of range", q.do(&dsm, ranges, nil, nil), nvme.StatusLBAOutOfRange)

	got := make([]byte, 64*bs)
	must(t, "read", q.read(1, 0, got, bs))
	want := bytes.Clone(data)
	for _, z := range [][2]int{{4, 4}, {20, 2}, {40, 3}, {50, 1}, {60, 1}, {62, 1}} {
		clear(want[z[0]*bs : (z[0]+z[1])*bs])
	}
	for blk := 0; blk < 64; blk++ {
		if !bytes.Equal(got[blk*bs:(blk+1)*bs], want[blk*bs:(blk+1)*bs]) {
			t.Errorf("block %d: content wrong (zeroed: %v)", blk, bytes.Count(got[blk*bs:(blk+1)*bs], []byte{0}) == bs)
		}
	}
}

// flushCounter counts Flush calls on a store.
type flushCounter struct {
	store.Store
	mu      sync.Mutex
	flushes int
}

func (f *flushCounter) Flush() error {
	f.mu.Lock()
	f.flushes++
	f.mu.Unlock()
	return f.Store.Flush()
}

func (f *flushCounter) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.flushes
}

// TestQueueDepth keeps 128 commands in flight on each of several queues of
// two hosts at once, and checks every byte.
func TestQueueDepth(t *testing.T) {
	st, _ := store.Open("mem:32M")
	tt := startTarget(t, Config{Namespaces: []store.Store{st}, MaxC2HData: 8192})
	const depth = 128
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for h, host := range []string{testHostNQN, testHostNQN2} {
		s := openSession(t, tt.addr, clientOpts{DataDigest: h == 1}, host, 2, depth)
		for qi, q := range s.io {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// Region of this queue: 128 slots of 8 KiB.
				base := uint64((h*2 + qi) * depth * 16) // in 512-byte blocks
				calls := make([]*call, depth)
				datas := make([][]byte, depth)
				for i := range depth {
					datas[i] = pattern(8192, uint64(h*1000+qi*300+i))
					f := rwFields(nvme.IOWrite, 1, base+uint64(i*16), 16, 8192, i%2 == 0)
					var err error
					if i%2 == 0 {
						calls[i], err = q.send(&f, datas[i], nil, nil)
					} else {
						calls[i], err = q.send(&f, nil, nil, datas[i])
					}
					if err != nil {
						errs <- err
						return
					}
				}
				for i, k := range calls {
					if r := k.wait(callTimeout); r.Err != nil || !r.Status.Success() {
						errs <- fmt.Errorf("write %d: %v %v", i, r.Err, r.Status)
						return
					}
				}
				bufs := make([][]byte, depth)
				for i := range depth {
					bufs[i] = make([]byte, 8192)
					var err error
					if calls[i], err = q.sendRead(1, base+uint64(i*16), bufs[i], 512); err != nil {
						errs <- err
						return
					}
				}
				for i, k := range calls {
					if r := k.wait(callTimeout); r.Err != nil || !r.Status.Success() {
						errs <- fmt.Errorf("read %d: %v %v", i, r.Err, r.Status)
						return
					}
					if !bytes.Equal(bufs[i], datas[i]) {
						errs <- fmt.Errorf("host %d queue %d slot %d: data differs", h, qi, i)
						return
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
