package wire

import (
	"errors"
	"fmt"
)

// FES is a Fatal Error Status, the reason a TermReq gives.
type FES uint16

// Fatal error statuses.
const (
	FESInvalidHeader FES = 0x01 // invalid PDU header field
	FESSequence      FES = 0x02 // PDU sequence error
	FESHeaderDigest  FES = 0x03 // header digest error
	FESOutOfRange    FES = 0x04 // data transfer out of range
	FESLimitExceeded FES = 0x05 // R2T limit exceeded (H2C) / data transfer limit exceeded (C2H)
	FESUnsupported   FES = 0x06 // unsupported parameter
)

var fesNames = map[FES]string{
	FESInvalidHeader: "invalid PDU header field",
	FESSequence:      "PDU sequence error",
	FESHeaderDigest:  "header digest error",
	FESOutOfRange:    "data transfer out of range",
	FESLimitExceeded: "data transfer limit exceeded",
	FESUnsupported:   "unsupported parameter",
}

func (f FES) String() string {
	if s, ok := fesNames[f]; ok {
		return s
	}
	return fmt.Sprintf("fatal error status %#x", uint16(f))
}

// Error is a fatal protocol error found in a received PDU: the connection
// ends, with a TermReq carrying FES and, as FEI, Offset.
type Error struct {
	FES    FES
	Offset int // byte offset in the PDU header of the offending field
	Reason string
}

func (e *Error) Error() string {
	if e.Reason == "" {
		return "nvme/tcp: " + e.FES.String()
	}
	return fmt.Sprintf("nvme/tcp: %v: %s", e.FES, e.Reason)
}

// Is matches the sentinel of the same FES (ErrInvalidHeader, ...).
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Reason == "" && t.FES == e.FES
}

func errorf(fes FES, offset int, format string, args ...any) error {
	return &Error{FES: fes, Offset: offset, Reason: fmt.Sprintf(format, args...)}
}

// Sentinels for errors.Is.
var (
	ErrInvalidHeader = &Error{FES: FESInvalidHeader}
	ErrSequence      = &Error{FES: FESSequence}
	ErrHeaderDigest  = &Error{FES: FESHeaderDigest}
	ErrOutOfRange    = &Error{FES: FESOutOfRange}
	ErrLimitExceeded = &Error{FES: FESLimitExceeded}
	ErrUnsupported   = &Error{FES: FESUnsupported}
)

// ErrDataDigest is a data digest mismatch. Unlike the errors above it is not
// fatal: the stream is still in step, and the command it belongs to fails.
var ErrDataDigest = errors.New("nvme/tcp: data digest error")

// SequenceError is a fatal error for a PDU that is well formed but not
// expected now (data for an unknown command, a second ICReq, ...).
func SequenceError(format string, args ...any) error {
	return errorf(FESSequence, 0, format, args...)
}

// FieldError is a fatal error of the given status for the field at offset.
func FieldError(fes FES, offset int, format string, args ...any) error {
	return errorf(fes, offset, format, args...)
}
