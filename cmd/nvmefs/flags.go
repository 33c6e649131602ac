package main

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/nvmefs/nvmefs/nvmetcp/target/store"
)

// byteSize is a flag holding a byte count that fits a uint32, written as a
// number with an optional binary suffix (128K, 1M); 0 is allowed.
type byteSize uint32

func (b *byteSize) String() string { return fmt.Sprint(uint32(*b)) }
func (b *byteSize) Type() string   { return "bytes" }
func (b *byteSize) Set(s string) error {
	if s == "0" {
		*b = 0
		return nil
	}
	n, err := store.ParseSize(s)
	if err != nil {
		return err
	}
	if n > 1<<32-1 {
		return fmt.Errorf("%s is more than 4 GiB - 1", s)
	}
	*b = byteSize(n)
	return nil
}

// logLevel is a flag holding a slog level by name.
type logLevel struct{ slog.Level }

func (l *logLevel) String() string { return strings.ToLower(l.Level.String()) }
func (l *logLevel) Type() string   { return "level" }
func (l *logLevel) Set(s string) error {
	switch strings.ToLower(s) {
	case "debug":
		l.Level = slog.LevelDebug
	case "info":
		l.Level = slog.LevelInfo
	case "warn", "warning":
		l.Level = slog.LevelWarn
	case "error":
		l.Level = slog.LevelError
	default:
		return fmt.Errorf("unknown log level %q (want debug, info, warn or error)", s)
	}
	return nil
}
