package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"time"
)

// The echo exchange times one loopback TCP round trip between two
// processes with the sizes of a 4 KiB read's command and response
// (a 72-byte capsule out, a 24-byte response PDU back).
const (
	echoAsk    = 72
	echoAnswer = 24
)

// ServeEcho answers every echoAsk bytes read on a connection with
// echoAnswer bytes, until ln is closed.
func ServeEcho(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		go func() {
			defer c.Close()
			var ask [echoAsk]byte
			var answer [echoAnswer]byte
			for {
				if _, err := io.ReadFull(c, ask[:]); err != nil {
					return
				}
				if _, err := c.Write(answer[:]); err != nil {
					return
				}
			}
		}()
	}
}

// RTT is the loopback TCP round trip between two processes.
type RTT struct {
	Samples  int     `json:"samples"`
	P50Micro float64 `json:"p50_us"`
	P99Micro float64 `json:"p99_us"`
}

// measureRTT times n round trips to the echo server at addr, after a
// warm-up.
func measureRTT(ctx context.Context, addr string, n int) (RTT, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return RTT{}, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	var ask [echoAsk]byte
	var answer [echoAnswer]byte
	times := make([]time.Duration, 0, n)
	for i := range n + n/10 {
		t0 := time.Now()
		if _, err := c.Write(ask[:]); err != nil {
			return RTT{}, err
		}
		if _, err := io.ReadFull(c, answer[:]); err != nil {
			return RTT{}, fmt.Errorf("echo: %w", err)
		}
		if i >= n/10 { // the first tenth warms up
			times = append(times, time.Since(t0))
		}
	}
	slices.Sort(times)
	return RTT{
		Samples:  len(times),
		P50Micro: micros(times[len(times)/2]),
		P99Micro: micros(times[len(times)*99/100]),
	}, nil
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
