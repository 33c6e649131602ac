package mlx5sim

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nvmefs/nvmefs/ddp"
	"github.com/nvmefs/nvmefs/nvmetcp/wire"
)

// Defaults of Config's optional fields.
const (
	// DefaultMTU is the stream bytes one packet carries: a 1500-byte
	// Ethernet MTU less 20 bytes of IPv4, 20 of TCP and 12 of the TCP
	// timestamp option (the MSS Linux uses on such a link).
	DefaultMTU = 1448
	// DefaultMaxSGL is mlx5's MLX5E_NVMEOTCP_MAX_SEGMENTS: 128 pages, so
	// one Setup maps at most 512 KiB.
	DefaultMaxSGL = 128
	// DefaultIOThreshold is mlx5's MLX5E_NVMEOTCP_IO_THRESHOLD.
	DefaultIOThreshold = 32 << 10
	// DefaultMaxPDUData bounds the payload of a PDU the tracker follows:
	// the largest transfer (MDTS) an NVMe/TCP target of this project
	// serves in one C2HData PDU. Larger is taken for a malformed header.
	DefaultMaxPDUData = 32 << 20

	// MaxMTU is the largest packet: a 64 KiB LRO/GRO aggregate.
	MaxMTU = 64 << 10
)

// Config describes a simulated NIC. Zero optional fields take the defaults.
type Config struct {
	Name string
	// MTU is the stream bytes per packet: packets start at fixed sequence
	// numbers, InitialSeq + k*MTU. 1 .. MaxMTU; default DefaultMTU.
	MTU int
	// MaxSGL is the most pages one Setup maps (max_ddp_sgl_len).
	MaxSGL int
	// IOThreshold is the smallest I/O worth a Setup, reported in Limits.
	IOThreshold int
	// FullTagRange: any 16-bit tag may be mapped (a 65536-entry table per
	// socket). Otherwise tags are below the queue size given at SkAdd, as
	// on mlx5 (MLX5E_NVMEOTCP_FULL_CCID_RANGE is 0).
	FullTagRange bool
	// Capabilities the device supports; all start enabled. Zero means
	// placement and rx-crc.
	Capabilities ddp.Capability
	// MaxPDUData bounds the payload of a PDU the tracker accepts; default
	// DefaultMaxPDUData.
	MaxPDUData int
	// InitialSeq is the sequence number of the first byte each socket
	// receives after SkAdd (tests set it near 2^32 to cross the wrap).
	InitialSeq ddp.Seq
	// Seed makes every random choice (tracker loss, setup failure)
	// reproducible: a socket's choices depend only on the seed, the order
	// of SkAdd and its own traffic.
	Seed uint64
	// AccountCPU counts the receive engines' CPU time (sim_engine_cpu_ns):
	// the NIC's own work, apart from the host's. An engine goroutine is
	// locked to an OS thread whose CPU time is read; an inline engine's
	// thread CPU time is read around each of its steps (two system calls
	// a step, counted as the NIC's).
	AccountCPU bool
	// Inline runs each socket's receive engine in the goroutine that calls
	// Recv, when it needs segments (as NAPI busy polling runs a driver's
	// poll in the reader's context), instead of a goroutine of its own
	// that runs up to four batches ahead: no hand-off between goroutines
	// per batch. The engine then reads the socket only when the ULP asks.
	Inline bool

	// Faults at start; each can be changed at run time with its setter.
	LossRate      float64       // fraction of packets the tracker loses
	SetupFailRate float64       // fraction of Setups that fail with ErrNoResources
	TeardownDelay time.Duration // from invalidation to TeardownDone
}

// Device is a simulated mlx5 NIC offloading NVMe/TCP receive (ddp.Device).
type Device struct {
	cfg       Config
	supported ddp.Capability
	enabled   atomic.Uint32

	down          atomic.Bool
	lossRate      atomic.Uint64 // float64 bits
	setupFailRate atomic.Uint64 // float64 bits
	teardownDelay atomic.Int64  // time.Duration
	sockets       atomic.Uint64 // SkAdds so far: derives each socket's seeds

	mu    sync.Mutex
	socks map[*socket]struct{}

	stats counters
}

var _ ddp.Device = (*Device)(nil)

// New returns a device; it is up with every supported capability enabled.
func New(cfg Config) (*Device, error) {
	if cfg.MTU == 0 {
		cfg.MTU = DefaultMTU
	}
	if cfg.MaxSGL == 0 {
		cfg.MaxSGL = DefaultMaxSGL
	}
	if cfg.IOThreshold == 0 {
		cfg.IOThreshold = DefaultIOThreshold
	}
	if cfg.MaxPDUData == 0 {
		cfg.MaxPDUData = DefaultMaxPDUData
	}
	if cfg.Capabilities == 0 {
		cfg.Capabilities = ddp.CapPlacement | ddp.CapRxCRC
	}
	if cfg.Name == "" {
		cfg.Name = "mlx5sim"
	}
	switch {
	case cfg.MTU < 1 || cfg.MTU > MaxMTU:
		return nil, fmt.Errorf("mlx5sim: MTU %d out of [1, %d]", cfg.MTU, MaxMTU)
	case cfg.MaxSGL < 1 || cfg.MaxSGL > 1<<16:
		return nil, fmt.Errorf("mlx5sim: MaxSGL %d out of [1, 65536]", cfg.MaxSGL)
	case cfg.IOThreshold < 0:
		return nil, fmt.Errorf("mlx5sim: IOThreshold %d < 0", cfg.IOThreshold)
	case cfg.MaxPDUData < 1 || uint64(cfg.MaxPDUData) > math.MaxUint32:
		return nil, fmt.Errorf("mlx5sim: MaxPDUData %d out of [1, 2^32)", cfg.MaxPDUData)
	case cfg.Capabilities&^(ddp.CapPlacement|ddp.CapRxCRC) != 0:
		return nil, fmt.Errorf("mlx5sim: unknown capabilities %#x", uint32(cfg.Capabilities))
	}
	d := &Device{cfg: cfg, supported: cfg.Capabilities, socks: make(map[*socket]struct{})}
	d.enabled.Store(uint32(cfg.Capabilities))
	if err := d.SetLossRate(cfg.LossRate); err != nil {
		return nil, err
	}
	if err := d.SetSetupFailRate(cfg.SetupFailRate); err != nil {
		return nil, err
	}
	d.SetTeardownDelay(cfg.TeardownDelay)
	return d, nil
}

// Name is the device's name.
func (d *Device) Name() string { return d.cfg.Name }

// MTU is the stream bytes per packet.
func (d *Device) MTU() int { return d.cfg.MTU }

// Limits reports what one Setup can map.
func (d *Device) Limits() ddp.Limits {
	return ddp.Limits{MaxSGL: d.cfg.MaxSGL, IOThreshold: d.cfg.IOThreshold, FullTagRange: d.cfg.FullTagRange}
}

// Capabilities returns what the device supports and what is on now.
func (d *Device) Capabilities() (supported, enabled ddp.Capability) {
	return d.supported, ddp.Capability(d.enabled.Load())
}

// SetCapabilities switches offloads on or off. Existing sockets see the
// change from their next PDU; with none on, SkAdd fails.
func (d *Device) SetCapabilities(enabled ddp.Capability) error {
	if enabled&^d.supported != 0 {
		return fmt.Errorf("mlx5sim: %v: %w", enabled, ddp.ErrNotSupported)
	}
	d.enabled.Store(uint32(enabled))
	return nil
}

func (d *Device) caps() ddp.Capability { return ddp.Capability(d.enabled.Load()) }

// SetLossRate sets the fraction of packets the tracker loses (0 .. 1).
func (d *Device) SetLossRate(rate float64) error { return setRate(&d.lossRate, "loss", rate) }

// SetSetupFailRate sets the fraction of Setups that fail (0 .. 1).
func (d *Device) SetSetupFailRate(rate float64) error {
	return setRate(&d.setupFailRate, "setup failure", rate)
}

// SetTeardownDelay sets the time from a mapping's invalidation to its
// TeardownDone (negative counts as 0).
func (d *Device) SetTeardownDelay(delay time.Duration) { d.teardownDelay.Store(int64(max(delay, 0))) }

func setRate(v *atomic.Uint64, what string, rate float64) error {
	if !(rate >= 0 && rate <= 1) {
		return fmt.Errorf("mlx5sim: %s rate %v out of [0, 1]", what, rate)
	}
	v.Store(math.Float64bits(rate))
	return nil
}

func loadRate(v *atomic.Uint64) float64 { return math.Float64frombits(v.Load()) }

// SetDown takes the device down or brings it up. Down, every socket's
// Recv returns ddp.ErrDeviceDown and delivers nothing more, its receive
// engine stops, and SkAdd fails; Setup fails, while Teardown and Close
// still complete. Up, SkAdd works again; sockets that saw the device go
// down stay dead (the host reconnects and adds new ones).
func (d *Device) SetDown(down bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.down.Store(down)
	if !down {
		return
	}
	for s := range d.socks {
		s.down.Store(true)
		s.stop(ddp.ErrDeviceDown)
	}
}

// Down reports whether the device is down.
func (d *Device) Down() bool { return d.down.Load() }

// ErrBadConfig is a wire.OffloadConfig the device cannot follow.
var ErrBadConfig = errors.New("mlx5sim: bad offload config")

// SkAdd offloads conn, an NVMe/TCP I/O queue whose ICReq/ICResp exchange
// is over: cfg is a wire.OffloadConfig (or a pointer to one). The caller
// must not have read past the ICResp: the device starts in sync at the
// next byte. From then on the device owns conn's receive side, read
// deadlines included (the ULP may still set write deadlines).
func (d *Device) SkAdd(conn net.Conn, cfg ddp.Config, ulp ddp.ULP) (ddp.Socket, error) {
	s, err := d.skAdd(conn, cfg, ulp)
	if err != nil {
		d.stats.add(statSkAddFail, 1)
		return nil, err
	}
	d.stats.add(statSkAdd, 1)
	return s, nil
}

func (d *Device) skAdd(conn net.Conn, cfg ddp.Config, ulp ddp.ULP) (*socket, error) {
	var oc wire.OffloadConfig
	switch c := cfg.(type) {
	case wire.OffloadConfig:
		oc = c
	case *wire.OffloadConfig:
		if c == nil {
			return nil, fmt.Errorf("mlx5sim: nil config: %w", ddp.ErrNotSupported)
		}
		oc = *c
	default:
		proto := "nil"
		if cfg != nil {
			proto = cfg.Protocol()
		}
		return nil, fmt.Errorf("mlx5sim: protocol %q: %w", proto, ddp.ErrNotSupported)
	}
	if conn == nil || ulp == nil {
		return nil, fmt.Errorf("%w: nil connection or ULP", ErrBadConfig)
	}
	tags := 1 << 16
	switch {
	case oc.PFV != 0:
		return nil, fmt.Errorf("%w: PFV %d", ErrBadConfig, oc.PFV)
	case oc.HPDA > wire.MaxPDA || oc.CPDA > wire.MaxPDA:
		return nil, fmt.Errorf("%w: HPDA %d, CPDA %d", ErrBadConfig, oc.HPDA, oc.CPDA)
	case !d.cfg.FullTagRange && (oc.QueueSize < 1 || oc.QueueSize > 1<<16):
		return nil, fmt.Errorf("%w: queue size %d", ErrBadConfig, oc.QueueSize)
	}
	if !d.cfg.FullTagRange {
		tags = oc.QueueSize
	}
	if d.caps() == 0 {
		return nil, fmt.Errorf("mlx5sim: no offload enabled: %w", ddp.ErrNotSupported)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.down.Load() {
		return nil, ddp.ErrDeviceDown
	}
	n := d.sockets.Add(1)
	s := newSocket(d, conn, oc, ulp, tags, n)
	d.socks[s] = struct{}{}
	s.start()
	return s, nil
}

func (d *Device) unregister(s *socket) {
	d.mu.Lock()
	delete(d.socks, s)
	d.mu.Unlock()
}

// rng returns a generator for one socket's stream of choices.
func (d *Device) rng(socket uint64, stream uint64) *rand.Rand {
	return rand.New(rand.NewPCG(d.cfg.Seed^socket*0x9e3779b97f4a7c15, stream))
}

// Stats returns the device's counters (see the package documentation).
func (d *Device) Stats() []ddp.Stat { return d.stats.snapshot() }

// Stat returns one counter by name, 0 if there is none.
func (d *Device) Stat(name string) uint64 {
	for i, n := range statNames {
		if n == name {
			return d.stats.v[i].Load()
		}
	}
	return 0
}
