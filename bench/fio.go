package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// fioResult is what the benchmark takes from fio's JSON output.
type fioResult struct {
	IOPS     float64
	BWBytes  float64 // bytes per second
	IOBytes  uint64  // read in the run
	Runtime  time.Duration
	P50, P99 time.Duration // total latency: submission to completion
	// ClatP50 and ClatP99 are the completion latency (from io_submit's
	// return to completion).
	ClatP50, ClatP99 time.Duration
	UsrCPU           float64 // fio's own CPU, percent of the run
	SysCPU           float64
	Version          string
}

// fioArgs are the arguments of one fio job reading path.
func fioArgs(path string, j Job, runtime time.Duration, out string) []string {
	return []string{
		"--name=" + j.Name,
		"--filename=" + path,
		"--rw=" + j.RW,
		"--bs=" + strconv.Itoa(j.BS),
		"--iodepth=" + strconv.Itoa(j.IODepth),
		"--ioengine=libaio",
		"--direct=1",
		"--time_based",
		"--runtime=" + strconv.Itoa(int(max(runtime.Round(time.Second), time.Second)/time.Second)) + "s",
		"--norandommap",
		"--randrepeat=0",
		"--invalidate=0",
		// Total latency (submission to completion) percentiles too: with
		// FUSE's asynchronous direct I/O, io_submit itself may do a
		// good part of a read (at QD1 on a fast file system, most of it),
		// which the completion latency (clat) leaves out.
		"--lat_percentiles=1",
		"--output-format=json",
		"--output=" + out,
	}
}

// runFio runs fio with args and parses the JSON report it writes to out
// (the last of args).
func runFio(ctx context.Context, fio string, args []string, out string) (fioResult, error) {
	cmd := exec.CommandContext(ctx, fio, args...)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return fioResult{}, ctx.Err()
		}
		return fioResult{}, fmt.Errorf("fio %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return fioResult{}, err
	}
	return parseFio(b)
}

// parseFio reads the one job of a fio JSON report (fio may print notes
// before the JSON document).
func parseFio(b []byte) (fioResult, error) {
	if i := bytes.IndexByte(b, '{'); i > 0 {
		b = b[i:]
	}
	var doc struct {
		Version string `json:"fio version"`
		Jobs    []struct {
			Error  int     `json:"error"`
			UsrCPU float64 `json:"usr_cpu"`
			SysCPU float64 `json:"sys_cpu"`
			Read   struct {
				IOBytes uint64  `json:"io_bytes"`
				BW      float64 `json:"bw_bytes"`
				IOPS    float64 `json:"iops"`
				Runtime int64   `json:"runtime"` // ms
				Clat    struct {
					Percentile map[string]float64 `json:"percentile"`
				} `json:"clat_ns"`
				Lat struct {
					Percentile map[string]float64 `json:"percentile"`
				} `json:"lat_ns"`
			} `json:"read"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return fioResult{}, fmt.Errorf("fio's JSON output: %w", err)
	}
	if len(doc.Jobs) != 1 {
		return fioResult{}, fmt.Errorf("fio's JSON output has %d jobs, want 1", len(doc.Jobs))
	}
	j := doc.Jobs[0]
	if j.Error != 0 {
		return fioResult{}, fmt.Errorf("fio job failed: %v", syscall.Errno(j.Error))
	}
	r := j.Read
	if r.IOBytes == 0 {
		return fioResult{}, errors.New("fio read nothing")
	}
	p50, ok50 := r.Lat.Percentile["50.000000"]
	p99, ok99 := r.Lat.Percentile["99.000000"]
	c50, okc50 := r.Clat.Percentile["50.000000"]
	c99, okc99 := r.Clat.Percentile["99.000000"]
	if !ok50 || !ok99 || !okc50 || !okc99 {
		return fioResult{}, errors.New("fio's JSON output lacks the lat and clat 50th and 99th percentiles")
	}
	return fioResult{
		IOPS:    r.IOPS,
		BWBytes: r.BW,
		IOBytes: r.IOBytes,
		Runtime: time.Duration(r.Runtime) * time.Millisecond,
		P50:     time.Duration(p50),
		P99:     time.Duration(p99),
		ClatP50: time.Duration(c50),
		ClatP99: time.Duration(c99),
		UsrCPU:  j.UsrCPU,
		SysCPU:  j.SysCPU,
		Version: doc.Version,
	}, nil
}

// runFioWrite runs a write job (the fill) and returns fio's version.
func runFioWrite(ctx context.Context, fio string, args []string, out string) (string, error) {
	cmd := exec.CommandContext(ctx, fio, args...)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return "", fmt.Errorf("fio %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return "", err
	}
	if i := bytes.IndexByte(b, '{'); i > 0 {
		b = b[i:]
	}
	var doc struct {
		Version string `json:"fio version"`
		Jobs    []struct {
			Error int `json:"error"`
			Write struct {
				IOBytes uint64 `json:"io_bytes"`
			} `json:"write"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return "", fmt.Errorf("fio's JSON output: %w", err)
	}
	if len(doc.Jobs) != 1 || doc.Jobs[0].Error != 0 || doc.Jobs[0].Write.IOBytes == 0 {
		return "", fmt.Errorf("fio write job failed: %s", strings.TrimSpace(stderr.String()))
	}
	return doc.Version, nil
}

// fioVersion is what fio --version says.
func fioVersion(fio string) string {
	out, err := exec.Command(fio, "--version").Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(out))
}
