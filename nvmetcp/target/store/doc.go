// Package store is the backing storage of a target namespace: a fixed-size
// byte range that can be read, written, flushed, deallocated (hole punched)
// and zeroed. Open makes one from a spec: "mem:SIZE" for a sparse in-memory
// store, anything else for a regular file or a block device.
//
// Every operation works on a range inside [0, Size()); a range that is not
// wholly inside it fails with an error wrapping ErrOutOfRange and touches
// nothing. All methods are safe for concurrent use. Writes that overlap a
// concurrent read or write are not atomic as a whole (as with NVMe without
// atomic write units): each byte ends up from one of the writers.
package store
