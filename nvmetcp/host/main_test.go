package host

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/nvmetcp/target"
	"github.com/nvmefs/nvmefs/nvmetcp/target/store"
)

// serveEnv makes the test binary a target process (what `nvmefs serve
// --ns mem:SIZE` runs) for benchmarks that measure the host's CPU alone:
// it prints its address, serves until its stdin closes, and exits.
const serveEnv = "NVMEFS_HOST_TEST_SERVE"

func TestMain(m *testing.M) {
	if spec := os.Getenv(serveEnv); spec != "" {
		os.Exit(serveProcess(spec))
	}
	os.Exit(m.Run())
}

func serveProcess(spec string) int {
	st, err := store.Open(spec)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	tgt, err := target.New(target.Config{SubsystemNQN: testNQN, Namespaces: []store.Store{st}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	go tgt.Serve(ln)
	fmt.Println(ln.Addr().String())
	io.Copy(io.Discard, os.Stdin)
	tgt.Close()
	return 0
}

// startTargetProcess runs a target in a child process (this test binary)
// and returns its address; it is stopped, by its pid, in Cleanup.
func startTargetProcess(tb testing.TB, spec string) string {
	tb.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), serveEnv+"="+spec)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	tb.Cleanup(func() {
		stdin.Close()
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- strings.TrimSpace(s)
		io.Copy(io.Discard, stdout)
	}()
	select {
	case addr := <-line:
		if addr == "" {
			tb.Fatal("target process printed no address")
		}
		return addr
	case <-time.After(10 * time.Second):
		tb.Fatal("target process did not start in 10s")
	}
	return ""
}
