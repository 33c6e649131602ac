package store

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Store is a namespace's fixed-size backing storage.
type Store interface {
	// Size is the store's size in bytes; it never changes.
	Size() int64
	// ReadAt reads len(p) bytes at off. It returns len(p), nil or an error.
	ReadAt(p []byte, off int64) (int, error)
	// WriteAt writes len(p) bytes at off. It returns len(p), nil or an error.
	WriteAt(p []byte, off int64) (int, error)
	// Flush makes completed writes durable.
	Flush() error
	// Deallocate releases the range; afterwards it reads as zeros.
	Deallocate(off, length int64) error
	// WriteZeroes makes the range read as zeros, keeping it allocated where
	// the backing can tell the difference.
	WriteZeroes(off, length int64) error
	// Close releases the store; later calls fail with an error wrapping os.ErrClosed.
	Close() error
}

// Immediate is a Store whose operations never wait for a device (memory):
// the target runs its commands on the connection's reader, which saves two
// hand-offs between goroutines per command, instead of a goroutine each.
type Immediate interface {
	Store
	// Immediate reports whether no operation waits for a device.
	Immediate() bool
}

// ErrOutOfRange is wrapped by the errors of operations on a range that is not
// wholly inside [0, Size()).
var ErrOutOfRange = errors.New("range outside the store")

// memPrefix introduces an in-memory spec. A file whose name starts with it is
// opened with a path such as "./mem:1G".
const memPrefix = "mem:"

// Open opens the store a spec names: "mem:SIZE" (SIZE in bytes with an
// optional binary suffix K, M, G or T, e.g. "mem:64M") for a sparse store in
// memory, or the path of an existing regular file or block device, opened
// read-write, whose current size is the store's size.
func Open(spec string) (Store, error) {
	if spec == "" {
		return nil, errors.New("store: empty spec (want mem:SIZE or a file or block device path)")
	}
	if rest, ok := strings.CutPrefix(spec, memPrefix); ok {
		size, err := ParseSize(rest)
		if err != nil {
			return nil, fmt.Errorf("store: %q: %w", spec, err)
		}
		m, err := NewMem(size)
		if err != nil {
			return nil, err // not a typed nil in a non-nil Store
		}
		return m, nil
	}
	f, err := OpenFile(spec)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// ParseSize parses a size in bytes: a decimal number with an optional binary
// suffix K, M, G or T (case-insensitive, optionally followed by "iB" or "B"),
// e.g. "4096", "512K", "64M", "1G", "1GiB". The size must be positive.
func ParseSize(s string) (int64, error) {
	orig := s
	if s == "" {
		return 0, errors.New("empty size (want e.g. 64M or 1G)")
	}
	upper := strings.ToUpper(s)
	if t, ok := strings.CutSuffix(upper, "IB"); ok {
		upper = t
	} else if t, ok := strings.CutSuffix(upper, "B"); ok && t != "" && strings.ContainsAny(t[len(t)-1:], "KMGT") {
		upper = t
	}
	shift := 0
	if n := len(upper); n > 0 {
		switch upper[n-1] {
		case 'K':
			shift = 10
		case 'M':
			shift = 20
		case 'G':
			shift = 30
		case 'T':
			shift = 40
		}
		if shift != 0 {
			upper = upper[:n-1]
		}
	}
	if upper == "" || upper[0] == '+' || upper[0] == '-' {
		return 0, fmt.Errorf("invalid size %q (want a positive number with an optional K, M, G or T suffix)", orig)
	}
	n, err := strconv.ParseInt(upper, 10, 64)
	if err != nil {
		if errors.Is(err, strconv.ErrRange) {
			return 0, fmt.Errorf("size %q is too large", orig)
		}
		return 0, fmt.Errorf("invalid size %q (want a positive number with an optional K, M, G or T suffix)", orig)
	}
	if n <= 0 {
		return 0, fmt.Errorf("size %q must be positive", orig)
	}
	if n > (1<<63-1)>>shift {
		return 0, fmt.Errorf("size %q is too large", orig)
	}
	return n << shift, nil
}

// checkRange returns an error wrapping ErrOutOfRange unless [off, off+length)
// lies within [0, size).
func checkRange(op string, off, length, size int64) error {
	if off < 0 || length < 0 || off > size || length > size-off {
		return fmt.Errorf("store: %s [%d, +%d) of a %d-byte store: %w", op, off, length, size, ErrOutOfRange)
	}
	return nil
}

// closedError is what operations on a closed store return.
func closedError(op string) error {
	return fmt.Errorf("store: %s: %w", op, os.ErrClosed)
}

// formatSize renders a byte count for humans, in the largest binary unit that
// divides it exactly (so "mem:1G" reads back as 1G).
func formatSize(n int64) string {
	for _, u := range []struct {
		shift  uint
		suffix string
	}{{40, "T"}, {30, "G"}, {20, "M"}, {10, "K"}} {
		if n >= 1<<u.shift && n%(1<<u.shift) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}
