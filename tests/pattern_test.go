package tests

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"io"
	"os"
	"testing"
)

// patternSectorSize is the unit of the kernel-nvme data pattern, whatever the
// namespace's LBA size.
const patternSectorSize = 512

// fillPatternSector writes sector s of namespace nsid into b (512 bytes), as
// the harness's genpattern.pl does: s as u64le, nsid as u32le, "KNVP", then
// byte i equal to i&0xFF.
func fillPatternSector(b []byte, s uint64, nsid uint32) {
	b = b[:patternSectorSize]
	binary.LittleEndian.PutUint64(b[0:], s)
	binary.LittleEndian.PutUint32(b[8:], nsid)
	copy(b[12:], "KNVP")
	for i := 16; i < patternSectorSize; i++ {
		b[i] = byte(i)
	}
}

// writePattern writes size bytes (a multiple of 512) of the pattern of
// namespace nsid to w.
func writePattern(w io.Writer, size int64, nsid uint32) error {
	var sector [patternSectorSize]byte
	bw := bufio.NewWriterSize(w, 1<<20)
	for s := uint64(0); s < uint64(size/patternSectorSize); s++ {
		fillPatternSector(sector[:], s, nsid)
		if _, err := bw.Write(sector[:]); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// patternSHA256 is the hex SHA-256 of a size-byte pattern image of nsid.
func patternSHA256(size int64, nsid uint32) string {
	h := sha256.New()
	if err := writePattern(h, size, nsid); err != nil {
		panic(err) // hash.Hash.Write never fails
	}
	return hex.EncodeToString(h.Sum(nil))
}

// writePatternFile creates (or truncates) path with the pattern of nsid and
// returns the image's hex SHA-256.
func writePatternFile(t testing.TB, path string, size int64, nsid uint32) string {
	t.Helper()
	if size <= 0 || size%patternSectorSize != 0 {
		t.Fatalf("pattern size %d is not a positive multiple of %d", size, patternSectorSize)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if err := writePattern(io.MultiWriter(f, h), size, nsid); err != nil {
		f.Close()
		t.Fatalf("write pattern %s: %v", path, err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("close %s: %v", path, err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// fileSHA256 is the hex SHA-256 of a file's content.
func fileSHA256(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TestPatternMatchesHarness checks our pattern generator against images made
// by the harness's genpattern.pl (target.sh with NS_SIZE_MB=8 NS2_SIZE_MB=4)
// and against the sector layout its README gives.
func TestPatternMatchesHarness(t *testing.T) {
	for _, c := range []struct {
		size int64
		nsid uint32
		sha  string
	}{
		{8 << 20, 1, "7f31d90131ae82682df45bbfd80b1bb1b38d9481e13049f4dcdae331bf297049"},
		{4 << 20, 2, "74ee7c97001675d3bd3112714857e521d704e1d8dbc62e8b06d39ecc3405e5f8"},
	} {
		if got := patternSHA256(c.size, c.nsid); got != c.sha {
			t.Errorf("pattern %d bytes nsid %d: sha256 %s, genpattern.pl gives %s", c.size, c.nsid, got, c.sha)
		}
	}
	var b [patternSectorSize]byte
	fillPatternSector(b[:], 0x0102030405060708, 2)
	want := "0807060504030201" + "02000000" + "4b4e5650" + "101112"
	if got := hex.EncodeToString(b[:19]); got != want {
		t.Errorf("sector head %s, want %s", got, want)
	}
	if b[255] != 0xff || b[256] != 0x00 || b[511] != 0xff {
		t.Errorf("sector tail bytes 255/256/511 = %#x %#x %#x, want 0xff 0x00 0xff", b[255], b[256], b[511])
	}
}
