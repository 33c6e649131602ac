package fusefs

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
)

// A control file runs each line written to it, refuses a bad one with
// EINVAL (stopping there), and reads back what its Read says.
func TestControlFile(t *testing.T) {
	var mu sync.Mutex
	var got []string
	state := "state up\n"
	ctl := Control{
		Name: "knob",
		Read: func() string { mu.Lock(); defer mu.Unlock(); return state },
		Write: func(cmd string) error {
			mu.Lock()
			defer mu.Unlock()
			if cmd == "bad" {
				return errors.New("bad command")
			}
			got = append(got, cmd)
			state = "state " + cmd + "\n"
			return nil
		},
	}
	srv, _ := mountFiles(t, Config{Controls: []Control{ctl}}, newMemBackend(512, 1<<20))
	path := filepath.Join(srv.Dir(), ".nvmefs", "knob")

	if b, err := os.ReadFile(path); err != nil || string(b) != "state up\n" {
		t.Fatalf("read: %q, %v", b, err)
	}
	// As the shell's `echo down > knob`: O_CREAT|O_TRUNC on the existing file.
	if err := os.WriteFile(path, []byte("down\n"), 0o644); err != nil {
		t.Fatalf("echo down > knob: %v", err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "state down\n" {
		t.Errorf("read after down: %q, %v", b, err)
	}
	err := os.WriteFile(path, []byte("one\n\n  two  \nbad\nthree\n"), 0o644)
	if !errors.Is(err, syscall.EINVAL) {
		t.Errorf("a bad command: %v, want EINVAL", err)
	}
	if want := []string{"down", "one", "two"}; !slices.Equal(got, want) {
		t.Errorf("commands run %q, want %q", got, want)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil || st.Mode != syscall.S_IFREG|0o644 || st.Size != 0 {
		t.Errorf("stat: mode %o size %d, %v", st.Mode, st.Size, err)
	}
	if _, err := Mount(t.TempDir(), Config{Files: []File{{Name: "x"}}, Controls: []Control{{Name: "stats", Write: ctl.Write}}}); err == nil {
		t.Error("a control named stats was accepted")
	}
}
