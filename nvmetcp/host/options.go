package host

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/nvmefs/nvmefs/ddp"
	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
)

// Options mirror the Linux kernel's nvme-fabrics connect options. A zero
// field takes the kernel's default.
type Options struct {
	// NrIOQueues is how many I/O queues to ask for (nr_io_queues); the
	// controller may grant fewer. Default runtime.NumCPU().
	NrIOQueues int
	// QueueSize is the depth of each I/O queue (queue_size), capped by
	// CAP.MQES+1 and MAXCMD. Default 128.
	QueueSize int
	// HeaderDigest and DataDigest ask for CRC32C digests (hdr_digest,
	// data_digest).
	HeaderDigest bool
	DataDigest   bool
	// KeepAliveTmo is the Keep Alive Timeout given at Connect
	// (keep_alive_tmo); a Keep Alive goes out every half of it. Default 5 s.
	// Negative: no keep-alive (KATO 0).
	KeepAliveTmo time.Duration
	// ReconnectDelay is the pause between reconnect attempts after an error
	// (reconnect_delay). Default 10 s.
	ReconnectDelay time.Duration
	// CtrlLossTmo is how long error recovery keeps trying before the
	// controller is lost and every request fails with ErrControllerLost
	// (ctrl_loss_tmo). Default 600 s; negative: try forever.
	CtrlLossTmo time.Duration
	// IOTimeout is how long a command may go unanswered before the
	// association is torn down and recovered (the kernel's io_timeout).
	// It also bounds each step of connecting. Default 30 s.
	IOTimeout time.Duration
	// HostNQN and HostID identify this host (hostnqn, hostid). Empty / zero:
	// the stable identity of DefaultHostIdentity.
	HostNQN string
	HostID  [16]byte
	// MaxTransfer caps the bytes of one command (the kernel's
	// max_hw_sectors for TCP, 1 MiB by default); MDTS may lower it.
	MaxTransfer int
	// ShutdownTimeout bounds the wait for CSTS.SHST on Close. Default 5 s.
	ShutdownTimeout time.Duration
	// Logger receives connection and recovery events. Default slog.Default().
	Logger *slog.Logger
	// Offload is a NIC that offloads the receive side of the I/O queues
	// (DDP: it places read data in the callers' buffers and checks data
	// digests). nil: every queue runs in software. The admin queue is never
	// offloaded; the device's limits cap MaxTransfer (ControllerInfo
	// reports MaxSegments). A queue whose offload fails runs in software
	// until its next reconnect.
	Offload ddp.Device
	// BenchmarkDiscardPayload is for benchmarks only, the upper bound of
	// what a receive offload can save: the I/O queues (in software; not
	// with Offload) have the kernel drop every C2HData payload (recv with
	// MSG_TRUNC: no copy to user space) and check no data digest, so a
	// read returns whatever its buffer held before. Never set it where the
	// data matters; no flag of nvmefs mount sets it.
	BenchmarkDiscardPayload bool
}

// Kernel defaults (drivers/nvme/host/fabrics.h, nvme.h).
const (
	DefaultQueueSize       = 128
	DefaultKeepAliveTmo    = 5 * time.Second
	DefaultReconnectDelay  = 10 * time.Second
	DefaultCtrlLossTmo     = 600 * time.Second
	DefaultIOTimeout       = 30 * time.Second
	DefaultMaxTransfer     = 1 << 20
	DefaultShutdownTimeout = 5 * time.Second

	adminQueueDepth = 32 // NVME_AQ_DEPTH
	// maxQueueDepth bounds a queue's tag set: a command id is a 12-bit tag
	// and a 4-bit generation, as the kernel's nvme_cid.
	maxQueueDepth = 1 << tagBits
)

// withDefaults fills zero fields and checks the others.
func (o Options) withDefaults() (Options, error) {
	if o.NrIOQueues < 0 || o.QueueSize < 0 || o.MaxTransfer < 0 {
		return o, errors.New("host: negative NrIOQueues, QueueSize or MaxTransfer")
	}
	if o.NrIOQueues == 0 {
		o.NrIOQueues = runtime.NumCPU()
	}
	if o.NrIOQueues > 0xfffe {
		o.NrIOQueues = 0xfffe
	}
	if o.QueueSize == 0 {
		o.QueueSize = DefaultQueueSize
	}
	if o.QueueSize < 2 {
		return o, fmt.Errorf("host: QueueSize %d, want at least 2", o.QueueSize)
	}
	o.QueueSize = min(o.QueueSize, maxQueueDepth)
	if o.KeepAliveTmo == 0 {
		o.KeepAliveTmo = DefaultKeepAliveTmo
	}
	if o.ReconnectDelay <= 0 {
		o.ReconnectDelay = DefaultReconnectDelay
	}
	if o.CtrlLossTmo == 0 {
		o.CtrlLossTmo = DefaultCtrlLossTmo
	}
	if o.IOTimeout <= 0 {
		o.IOTimeout = DefaultIOTimeout
	}
	if o.MaxTransfer == 0 {
		o.MaxTransfer = DefaultMaxTransfer
	}
	if o.MaxTransfer < 4096 {
		return o, fmt.Errorf("host: MaxTransfer %d, want at least 4096", o.MaxTransfer)
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = DefaultShutdownTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.BenchmarkDiscardPayload && o.Offload != nil {
		return o, errors.New("host: BenchmarkDiscardPayload is for the software path: not with Offload")
	}
	if o.HostNQN == "" || o.HostID == ([16]byte{}) {
		nqn, id, err := DefaultHostIdentity()
		if err != nil {
			return o, err
		}
		if o.HostNQN == "" {
			o.HostNQN = nqn
		}
		if o.HostID == ([16]byte{}) {
			o.HostID = id
		}
	}
	if !nvme.ValidNQN(o.HostNQN) {
		return o, fmt.Errorf("host: invalid host NQN %q", o.HostNQN)
	}
	return o, nil
}

// kato is the KATO field of the admin Connect, in milliseconds.
func (o *Options) kato() uint32 {
	if o.KeepAliveTmo < 0 {
		return 0
	}
	return uint32(min(o.KeepAliveTmo.Milliseconds(), 1<<32-1))
}

// hostNQNPrefix is the NQN form nvme-cli's gen-hostnqn uses.
const hostNQNPrefix = "nqn.2014-08.org.nvmexpress:uuid:"

// DefaultHostIdentity returns this user's stable host NQN and host ID,
// kept in os.UserConfigDir()/nvmefs/hostnqn and hostid. The first call
// creates them from a random UUID (NQN "nqn.2014-08.org.nvmexpress:uuid:<uuid>",
// host ID the UUID's bytes); later calls, and other processes, read them.
func DefaultHostIdentity() (nqn string, id [16]byte, err error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", id, fmt.Errorf("host: no config directory for the host NQN (set Options.HostNQN and HostID): %w", err)
	}
	return hostIdentityIn(filepath.Join(dir, "nvmefs"))
}

func hostIdentityIn(dir string) (nqn string, id [16]byte, err error) {
	nqnPath, idPath := filepath.Join(dir, "hostnqn"), filepath.Join(dir, "hostid")
	nqn, id, err = readHostIdentity(nqnPath, idPath)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		return nqn, id, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", id, fmt.Errorf("host: %w", err)
	}
	if _, err := rand.Read(id[:]); err != nil {
		return "", id, err
	}
	id[6] = id[6]&0x0f | 0x40 // UUID version 4
	id[8] = id[8]&0x3f | 0x80 // RFC 4122 variant
	u := formatUUID(id)
	// hostid first: a reader that finds hostnqn finds hostid too. Each file
	// is created with O_EXCL, so that concurrent first runs agree: a loser
	// reads what the winner wrote.
	if err := writeOnce(idPath, u+"\n"); err != nil {
		return "", id, err
	}
	if err := writeOnce(nqnPath, hostNQNPrefix+u+"\n"); err != nil {
		return "", id, err
	}
	return readHostIdentity(nqnPath, idPath)
}

func writeOnce(path, content string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, os.ErrExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("host: %w", err)
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		return fmt.Errorf("host: %w", err)
	}
	return f.Close()
}

func readHostIdentity(nqnPath, idPath string) (nqn string, id [16]byte, err error) {
	b, err := os.ReadFile(nqnPath)
	if err != nil {
		return "", id, err
	}
	nqn = strings.TrimSpace(string(b))
	if !nvme.ValidNQN(nqn) {
		return "", id, fmt.Errorf("host: %s: invalid NQN %q", nqnPath, nqn)
	}
	b, err = os.ReadFile(idPath)
	if err != nil {
		return "", id, err
	}
	id, err = parseUUID(strings.TrimSpace(string(b)))
	if err != nil {
		return "", id, fmt.Errorf("host: %s: %w", idPath, err)
	}
	return nqn, id, nil
}

func formatUUID(u [16]byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

func parseUUID(s string) (u [16]byte, err error) {
	h := strings.ReplaceAll(s, "-", "")
	if len(s) != 36 || len(h) != 32 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return u, fmt.Errorf("invalid UUID %q", s)
	}
	if _, err := hex.Decode(u[:], []byte(h)); err != nil {
		return u, fmt.Errorf("invalid UUID %q", s)
	}
	return u, nil
}

// ParseHostID parses a host ID written as a UUID
// (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx).
func ParseHostID(s string) ([16]byte, error) { return parseUUID(s) }
