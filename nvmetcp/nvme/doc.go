// Package nvme holds the NVMe structures that NVMe/TCP carries, independent of
// the transport: the 64-byte submission queue entry (SQE) with its SGL data
// pointer, the 16-byte completion queue entry (CQE) and its status, Fabrics
// commands (Connect, Property Get/Set) and the Connect data, and the admin data
// structures (Identify, log pages).
//
// Every structure is a []byte view with getters and an Encode from a fields
// struct, after gVisor's pkg/tcpip/header. Views never allocate; a view shorter
// than its structure is a programming error of the caller (the wire codec hands
// out only views of the right length).
package nvme
