// Package wire is the NVMe/TCP PDU codec: the PDU layouts and constants of the
// NVMe/TCP transport specification, header and data digests (CRC32C), PDO
// padding, and validation of everything received. It does no I/O of its own
// beyond Reader, which frames PDUs from any io.Reader, and it carries no host
// or target state, so that a NIC model may import it the way a driver includes
// the protocol's header file.
//
// Each PDU header is a []byte view with getters and an Encode from a fields
// struct. Sending is two steps: X(buf).Encode(&fields) writes the type-specific
// header, then Params.Seal(buf, dataLen) fills in the flags, digest, PDO and
// PLEN and returns the bytes that precede the data. Receiving is Params.Layout
// on the 8-byte common header (which bounds everything that follows), then
// Params.VerifyHeader on the whole header. Errors that the NVMe/TCP
// specification makes fatal are *Error values carrying the Fatal Error Status
// and the offset of the offending field, ready for a TermReq.
package wire
