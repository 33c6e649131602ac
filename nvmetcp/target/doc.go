// Package target is an NVMe/TCP target (controller side): it serves the
// namespaces of one NVM subsystem, plus the discovery subsystem, to any number
// of hosts over TCP, as the Linux kernel's nvme-tcp host expects.
//
// Contract:
//   - New checks a Config; Serve runs an accept loop on a listener until Close,
//     which stops accepting, ends every connection and waits for every
//     goroutine the target started (none is left behind).
//   - Each connection is one NVMe/TCP queue: ICReq/ICResp, then a Fabrics
//     Connect that makes it an admin queue (a new controller, dynamic cntlid)
//     or an I/O queue of an existing controller of the same host. Commands run
//     concurrently, up to the queue size the host asked for at Connect; one
//     goroutine reads PDUs and one writes them, batching responses.
//   - A host costs at most its own connections: a fatal protocol error ends
//     the connection with a C2HTermReq; a data digest error fails only the
//     command; a controller whose keep-alive timer (KATO) runs out loses all
//     its queues. No buffer is sized by the peer beyond the limits advertised
//     (MDTS, in-capsule size, MAXH2CDATA), and no I/O reaches outside a
//     namespace.
//   - A peer cannot hold a connection by saying nothing or too little: ICReq
//     and Connect must arrive within HandshakeTimeout of the accept, a PDU
//     once started must be complete after at most StallTimeout of waiting
//     for its bytes, and each write must make progress within StallTimeout
//     (a host that stops reading). Running out of file descriptors makes
//     Serve back off and accept again, not return.
//   - Namespaces are store.Store values, NSID = index+1, shared by every
//     controller; their NGUID and UUID derive from the subsystem NQN and NSID,
//     so they are stable across restarts.
//   - Keep-alive: any command received or completed on any queue of a
//     controller restarts its timer, Keep Alive included (as Linux's nvmet
//     does). That is more lenient than the specification asks without
//     CTRATT.TBKAS, which is not advertised: hosts still send Keep Alive.
package target
