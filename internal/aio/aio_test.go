package aio

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestReadAll(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c, err := New(16)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	bufs, free, err := Buffers(16, 8192)
	if err != nil {
		t.Fatal(err)
	}
	defer free()
	rs := make([]Read, 16)
	for i := range rs {
		rs[i] = Read{Buf: bufs[i], Offset: int64(i) * 50000}
	}
	rs[15].Offset = int64(len(data)) - 100 // short read at the end
	if err := c.ReadAll(int(f.Fd()), rs); err != nil {
		t.Fatal(err)
	}
	for i, r := range rs {
		want := data[r.Offset:min(int(r.Offset)+8192, len(data))]
		if r.Err != nil || r.N != len(want) || !bytes.Equal(r.Buf[:r.N], want) {
			t.Errorf("read %d at %d: n %d err %v", i, r.Offset, r.N, r.Err)
		}
	}
	bad := []Read{{Buf: bufs[0], Offset: 0}}
	if err := c.ReadAll(-1, bad); err == nil && bad[0].Err == nil {
		t.Errorf("read of fd -1 succeeded")
	} else if err == nil && bad[0].Err != syscall.EBADF {
		t.Logf("fd -1: %v", bad[0].Err)
	}
}
