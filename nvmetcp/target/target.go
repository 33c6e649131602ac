package target

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
	"github.com/nvmefs/nvmefs/nvmetcp/target/store"
)

// Defaults of Config's optional fields.
const (
	DefaultBlockSize     = 512
	DefaultMaxTransfer   = 1 << 20 // MDTS
	DefaultInCapsuleSize = 16 << 10
	DefaultMaxH2CData    = 128 << 10
	DefaultMaxQueueSize  = 1024
	DefaultMaxIOQueues   = 64
	DefaultMaxKATO       = time.Hour
	DefaultTermLinger    = time.Second
	// A host sends ICReq and Connect as soon as it has connected, and a
	// PDU's bytes back to back: seconds without progress is a peer that
	// holds a connection open, not a slow one.
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultStallTimeout     = 10 * time.Second
	DefaultModel            = "nvmefs"
	DefaultFirmware         = "1.0"

	// adminInCapsule is what the Linux host may put in an admin capsule
	// (NVME_TCP_ADMIN_CCSZ); the admin queue always accepts it.
	adminInCapsule = 8 << 10
	// maxR2TPerCommand caps the R2Ts outstanding for one command, whatever
	// the host's MAXR2T.
	maxR2TPerCommand = 4
	pageSize         = 4096
)

// Config is what a Target serves and its limits. Zero optional fields take
// the defaults above.
type Config struct {
	SubsystemNQN string        // required
	Namespaces   []store.Store // NSID = index+1
	BlockSize    int           // LBA size: 512 (default), 1024, 2048 or 4096
	AllowHosts   []string      // host NQNs; empty = any host may connect
	// MaxC2HData is the largest C2HData payload; 0 sends each read as one
	// C2HData PDU.
	MaxC2HData uint32
	// C2HSuccess ends a successful read with the SUCCESS flag on its last
	// C2HData PDU instead of a CapsuleResp (the Linux host accepts it).
	C2HSuccess bool
	Logger     *slog.Logger
	// ListenAddr is the address (host:port) reported in discovery log
	// entries; empty or unspecified IP: the address the host connected to.
	ListenAddr string

	Serial   string // Identify Controller SN; default derived from the NQN
	Model    string
	Firmware string
	// MaxTransfer is MDTS in bytes: a power of two, 4 KiB .. 32 MiB.
	MaxTransfer uint32
	// InCapsuleSize is the in-capsule data an I/O command may carry (IOCCSZ),
	// a multiple of 16 up to 1 MiB.
	InCapsuleSize uint32
	// MaxH2CData is the MAXH2CDATA advertised in ICResp (>= 4096, multiple of 4).
	MaxH2CData uint32
	// R2TSize splits large writes into R2Ts of at most this many bytes,
	// several outstanding when the host's MAXR2T allows; 0: one R2T for the
	// whole transfer.
	R2TSize uint32
	// MaxQueueSize is CAP.MQES+1, the largest queue a host may ask for.
	MaxQueueSize int
	// MaxIOQueues bounds what Set Features Number of Queues grants.
	MaxIOQueues int
	// MaxKATO is the largest keep-alive timeout accepted.
	MaxKATO time.Duration
	// TermLinger is how long a connection waits for the host to close after
	// a C2HTermReq, so that the TermReq is read rather than reset.
	TermLinger time.Duration
	// HandshakeTimeout bounds the time from accepting a connection to a
	// successful Connect on it (ICReq and Connect): a peer that does not
	// get that far in time is cut off.
	HandshakeTimeout time.Duration
	// StallTimeout bounds how long a connection waits on its peer in the
	// middle of a PDU (the rest of a header or payload it has started to
	// send), and for a write of ours to make progress (a peer that stopped
	// reading). The wait between PDUs is not bounded by it (KATO is).
	StallTimeout time.Duration
}

func (cfg *Config) setDefaults() error {
	if !nvme.ValidNQN(cfg.SubsystemNQN) {
		return fmt.Errorf("target: invalid subsystem NQN %q", cfg.SubsystemNQN)
	}
	if cfg.SubsystemNQN == nvme.DiscoveryNQN {
		return errors.New("target: the subsystem NQN cannot be the discovery NQN")
	}
	if cfg.BlockSize == 0 {
		cfg.BlockSize = DefaultBlockSize
	}
	switch cfg.BlockSize {
	case 512, 1024, 2048, 4096:
	default:
		return fmt.Errorf("target: block size %d: want 512, 1024, 2048 or 4096", cfg.BlockSize)
	}
	for _, h := range cfg.AllowHosts {
		if !nvme.ValidNQN(h) {
			return fmt.Errorf("target: invalid host NQN %q", h)
		}
	}
	for i, ns := range cfg.Namespaces {
		if ns == nil {
			return fmt.Errorf("target: namespace %d is nil", i+1)
		}
		if ns.Size() < int64(cfg.BlockSize) {
			return fmt.Errorf("target: namespace %d: %d bytes, less than one block", i+1, ns.Size())
		}
	}
	if len(cfg.Namespaces) > nvme.NSListMaxEntries {
		return fmt.Errorf("target: %d namespaces, at most %d", len(cfg.Namespaces), nvme.NSListMaxEntries)
	}
	if cfg.MaxC2HData != 0 && (cfg.MaxC2HData < 512 || cfg.MaxC2HData%4 != 0) {
		return fmt.Errorf("target: MaxC2HData %d: want 0 or a multiple of 4 of at least 512", cfg.MaxC2HData)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Model == "" {
		cfg.Model = DefaultModel
	}
	if cfg.Firmware == "" {
		cfg.Firmware = DefaultFirmware
	}
	if cfg.Serial == "" {
		sum := sha256.Sum256([]byte(cfg.SubsystemNQN))
		cfg.Serial = hex.EncodeToString(sum[:nvme.MaxSerialLen/2])
	}
	if len(cfg.Serial) > nvme.MaxSerialLen || len(cfg.Model) > nvme.MaxModelLen || len(cfg.Firmware) > nvme.MaxFirmwareRevLen {
		return errors.New("target: serial (20), model (40) or firmware (8) too long")
	}
	if cfg.MaxTransfer == 0 {
		cfg.MaxTransfer = DefaultMaxTransfer
	}
	if cfg.MaxTransfer < pageSize || cfg.MaxTransfer > 32<<20 || bits.OnesCount32(cfg.MaxTransfer) != 1 {
		return fmt.Errorf("target: MaxTransfer %d: want a power of two in [4096, 32 MiB]", cfg.MaxTransfer)
	}
	if cfg.InCapsuleSize == 0 {
		cfg.InCapsuleSize = DefaultInCapsuleSize
	}
	if cfg.InCapsuleSize%16 != 0 || cfg.InCapsuleSize > 1<<20 {
		return fmt.Errorf("target: InCapsuleSize %d: want a multiple of 16, at most 1 MiB", cfg.InCapsuleSize)
	}
	if cfg.MaxH2CData == 0 {
		cfg.MaxH2CData = DefaultMaxH2CData
	}
	if cfg.MaxH2CData < 4096 || cfg.MaxH2CData%4 != 0 {
		return fmt.Errorf("target: MaxH2CData %d: want at least 4096, a multiple of 4", cfg.MaxH2CData)
	}
	if cfg.R2TSize != 0 && cfg.R2TSize < 512 {
		return fmt.Errorf("target: R2TSize %d: want 0 or at least 512", cfg.R2TSize)
	}
	if cfg.MaxQueueSize == 0 {
		cfg.MaxQueueSize = DefaultMaxQueueSize
	}
	if cfg.MaxQueueSize < 2 || cfg.MaxQueueSize > 65536 {
		return fmt.Errorf("target: MaxQueueSize %d out of [2, 65536]", cfg.MaxQueueSize)
	}
	if cfg.MaxIOQueues == 0 {
		cfg.MaxIOQueues = DefaultMaxIOQueues
	}
	if cfg.MaxIOQueues < 1 || cfg.MaxIOQueues > 65535 {
		return fmt.Errorf("target: MaxIOQueues %d out of [1, 65535]", cfg.MaxIOQueues)
	}
	if cfg.MaxKATO == 0 {
		cfg.MaxKATO = DefaultMaxKATO
	}
	if cfg.TermLinger == 0 {
		cfg.TermLinger = DefaultTermLinger
	}
	if cfg.HandshakeTimeout == 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if cfg.StallTimeout == 0 {
		cfg.StallTimeout = DefaultStallTimeout
	}
	if cfg.HandshakeTimeout < 0 || cfg.StallTimeout < 0 {
		return errors.New("target: negative HandshakeTimeout or StallTimeout")
	}
	return nil
}

// namespace is one served namespace and its SMART counters.
type namespace struct {
	id     uint32
	st     store.Store
	blocks uint64
	// immediate: the store never waits for a device; its commands run on
	// the connection's reader.
	immediate bool
	nguid     [16]byte
	uuid      [16]byte

	bytesRead, bytesWritten atomic.Uint64
	reads, writes           atomic.Uint64
	mediaErrors             atomic.Uint64
}

// Target serves one NVM subsystem and the discovery subsystem.
type Target struct {
	cfg       Config
	log       *slog.Logger
	ns        []*namespace
	allow     map[string]bool
	lbaShift  uint
	mdtsField uint8
	started   time.Time
	bufs      bufPool

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	ctrls     map[uint16]*controller
	nextCntl  uint16
	wg        sync.WaitGroup
}

// New checks cfg and returns a Target ready to Serve.
func New(cfg Config) (*Target, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	t := &Target{
		cfg:       cfg,
		log:       cfg.Logger.With("subsystem", cfg.SubsystemNQN),
		lbaShift:  uint(bits.TrailingZeros(uint(cfg.BlockSize))),
		mdtsField: uint8(bits.TrailingZeros32(cfg.MaxTransfer / pageSize)),
		started:   time.Now(),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*conn]struct{}),
		ctrls:     make(map[uint16]*controller),
		nextCntl:  1,
	}
	t.bufs.init(max(int(cfg.MaxTransfer), int(max(cfg.InCapsuleSize, adminInCapsule)), nvme.IdentifyDataLen))
	if len(cfg.AllowHosts) > 0 {
		t.allow = make(map[string]bool, len(cfg.AllowHosts))
		for _, h := range cfg.AllowHosts {
			t.allow[h] = true
		}
	}
	for i, st := range cfg.Namespaces {
		ns := &namespace{id: uint32(i + 1), st: st, blocks: uint64(st.Size()) >> t.lbaShift}
		if im, ok := st.(store.Immediate); ok {
			ns.immediate = im.Immediate()
		}
		ns.nguid, ns.uuid = namespaceIDs(cfg.SubsystemNQN, ns.id)
		t.ns = append(t.ns, ns)
	}
	return t, nil
}

// namespaceIDs derives a namespace's NGUID and UUID from the subsystem NQN
// and NSID: stable across restarts, distinct across subsystems. The UUID is
// a version 8 (custom) RFC 9562 UUID.
func namespaceIDs(nqn string, nsid uint32) (nguid, uuid [16]byte) {
	h := sha256.New()
	h.Write([]byte("nvmefs namespace\x00"))
	h.Write([]byte(nqn))
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], nsid)
	h.Write(b[:])
	sum := h.Sum(nil)
	copy(nguid[:], sum[:16])
	copy(uuid[:], sum[16:32])
	uuid[6] = uuid[6]&0x0f | 0x80
	uuid[8] = uuid[8]&0x3f | 0x80
	return nguid, uuid
}

// namespace returns the namespace nsid, nil if there is none.
func (t *Target) namespace(nsid uint32) *namespace {
	if nsid == 0 || uint64(nsid) > uint64(len(t.ns)) {
		return nil
	}
	return t.ns[nsid-1]
}

// ErrClosed is returned by Serve when the target was closed before it started.
var ErrClosed = errors.New("target: closed")

// Serve accepts connections on ln until Close; it returns nil after Close,
// or the accept error that stopped it. ln is closed on return.
func (t *Target) Serve(ln net.Listener) error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		ln.Close()
		return ErrClosed
	}
	t.listeners[ln] = struct{}{}
	t.wg.Add(1)
	t.mu.Unlock()
	defer t.wg.Done()
	defer func() {
		t.mu.Lock()
		delete(t.listeners, ln)
		t.mu.Unlock()
		ln.Close()
	}()
	// The program that owns the target says what it serves and to whom
	// (nvmefs serve warns when any host may connect); here only a trace.
	t.log.Debug("accepting", "listen", ln.Addr().String(), "allowed_hosts", len(t.cfg.AllowHosts))
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if t.isClosed() {
				return nil
			}
			if transientAcceptError(err) {
				// Out of file descriptors or memory, or a connection
				// aborted before it was accepted: back off like
				// net/http and accept again once connections end.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				t.log.Warn("accept failed; retrying", "err", err, "after", delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		if tc, ok := nc.(*net.TCPConn); ok {
			tc.SetNoDelay(true)
		}
		c := newConn(t, nc)
		t.mu.Lock()
		if t.closed {
			t.mu.Unlock()
			nc.Close()
			return nil
		}
		t.conns[c] = struct{}{}
		t.wg.Add(1)
		t.mu.Unlock()
		go func() {
			defer t.wg.Done()
			c.serve()
			t.mu.Lock()
			delete(t.conns, c)
			t.mu.Unlock()
		}()
	}
}

// transientAcceptError reports whether Accept failed for a reason that
// passes (EMFILE is not a net.Error timeout: without this, running out of
// file descriptors under a flood of connections would stop the target).
func transientAcceptError(err error) bool {
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.ECONNRESET, syscall.EPROTO, syscall.EINTR} {
		if errors.Is(err, e) {
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func (t *Target) isClosed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.closed
}

// Close stops accepting, ends every connection, flushes the namespaces and
// waits for all the target's goroutines. The namespaces are not closed: they
// belong to the caller.
func (t *Target) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		t.wg.Wait()
		return nil
	}
	t.closed = true
	for ln := range t.listeners {
		ln.Close()
	}
	for c := range t.conns {
		c.close()
	}
	t.mu.Unlock()
	t.wg.Wait()
	var errs []error
	for _, ns := range t.ns {
		if err := ns.st.Flush(); err != nil {
			errs = append(errs, fmt.Errorf("namespace %d: flush: %w", ns.id, err))
		}
	}
	return errors.Join(errs...)
}

// hostAllowed reports whether hostNQN may connect to the NVM subsystem.
func (t *Target) hostAllowed(hostNQN string) bool {
	return t.allow == nil || t.allow[hostNQN]
}
