package target

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nvmefs/nvmefs/nvmetcp/nvme"
	"github.com/nvmefs/nvmefs/nvmetcp/target/store"
)

// logBuffer collects the target's log for assertions.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type testTarget struct {
	*Target
	addr  string
	log   *logBuffer
	ns    []store.Store
	serve chan error
}

// startTarget serves cfg (namespaces default to one 16 MiB memory store) on
// 127.0.0.1 and stops it at the end of the test.
func startTarget(tb testing.TB, cfg Config) *testTarget {
	tb.Helper()
	if cfg.SubsystemNQN == "" {
		cfg.SubsystemNQN = testSubNQN
	}
	if cfg.Namespaces == nil {
		st, err := store.Open("mem:16M")
		if err != nil {
			tb.Fatal(err)
		}
		cfg.Namespaces = []store.Store{st}
	}
	lb := &logBuffer{}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	t, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	tt := &testTarget{Target: t, addr: ln.Addr().String(), log: lb, ns: cfg.Namespaces, serve: make(chan error, 1)}
	go func() { tt.serve <- t.Serve(ln) }()
	tb.Cleanup(func() {
		done := make(chan struct{})
		go func() { t.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			tb.Errorf("Target.Close did not return")
		}
		for _, st := range cfg.Namespaces {
			st.Close()
		}
		if tb.Failed() {
			tb.Logf("target log:\n%s", lb.String())
		}
	})
	return tt
}

// ioSession is an admin queue plus n I/O queues of one controller.
type ioSession struct {
	admin  *client
	io     []*client
	cntlid uint16
}

func openSession(tb testing.TB, addr string, opts clientOpts, hostNQN string, queues int, sqsize uint16) *ioSession {
	tb.Helper()
	s := &ioSession{admin: dialClient(tb, addr, opts)}
	s.cntlid = s.admin.adminSession(tb, testSubNQN, hostNQN, 0)
	r := must(tb, "set number of queues", s.admin.features(true, nvme.FeatNumQueues, nvme.NumQueuesValue(queues, queues)))
	if sq, cq := nvme.NumQueues(uint32(r.Result)); sq < queues || cq < queues {
		tb.Fatalf("granted %d/%d queues, asked %d", sq, cq, queues)
	}
	for q := 1; q <= queues; q++ {
		c := dialClient(tb, addr, opts)
		must(tb, "io connect", c.connect(uint16(q), sqsize, 0, s.cntlid, testSubNQN, hostNQN))
		s.io = append(s.io, c)
	}
	return s
}

func pattern(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := 0; i+8 <= n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b
}

func TestConnectIdentifyReadWrite(t *testing.T) {
	tt := startTarget(t, Config{})
	s := openSession(t, tt.addr, clientOpts{}, testHostNQN, 1, 128)
	a := s.admin

	// Properties.
	capv := must(t, "CAP", a.property(false, true, nvme.PropCAP, 0)).Result
	if mqes := capv & 0xffff; mqes != DefaultMaxQueueSize-1 {
		t.Errorf("CAP.MQES %d", mqes)
	}
	if capv>>37&1 != 1 || capv>>48&0xf != 0 || capv>>24&0xff == 0 {
		t.Errorf("CAP %#x: want CSS NVM, MPSMIN 0, TO > 0", capv)
	}
	if vs := must(t, "VS", a.property(false, false, nvme.PropVS, 0)).Result; vs != 0x10300 {
		t.Errorf("VS %#x", vs)
	}
	wantStatus(t, "CAP as 4 bytes", a.property(false, false, nvme.PropCAP, 0), nvme.StatusInvalidField)
	wantStatus(t, "set VS", a.property(true, false, nvme.PropVS, 0), nvme.StatusInvalidField)

	// Identify Controller.
	buf, r := a.identify(nvme.CNSController, 0)
	must(t, "identify controller", r)
	id := nvme.IdentifyController(buf)
	if id.CntlID() != s.cntlid {
		t.Errorf("cntlid %d, connect said %d", id.CntlID(), s.cntlid)
	}
	if id.SubNQN() != testSubNQN || id.NN() != 1 || id.CntrlType() != nvme.CtrlTypeIO {
		t.Errorf("subnqn %q nn %d cntrltype %d", id.SubNQN(), id.NN(), id.CntrlType())
	}
	if id.SGLS()&1 == 0 || id.ICDOFF() != 0 || id.InCapsuleDataSize() != DefaultInCapsuleSize || id.IORCSZ() != 1 {
		t.Errorf("sgls %#x icdoff %d in-capsule %d iorcsz %d", id.SGLS(), id.ICDOFF(), id.InCapsuleDataSize(), id.IORCSZ())
	}
	if 4096<<id.MDTS() != DefaultMaxTransfer || id.KAS() == 0 || id.MaxCmd() < 128 {
		t.Errorf("mdts %d kas %d maxcmd %d", id.MDTS(), id.KAS(), id.MaxCmd())
	}
	if id.ONCS()&(nvme.ONCSDSM|nvme.ONCSWriteZeroes) != nvme.ONCSDSM|nvme.ONCSWriteZeroes || id.VWC()&1 == 0 {
		t.Errorf("oncs %#x vwc %#x", id.ONCS(), id.VWC())
	}
	if id.OAES()&nvme.OAESNSAttrChanged == 0 || id.AERL() != 3 || id.SQES() != 0x66 || id.CQES() != 0x44 {
		t.Errorf("oaes %#x aerl %d sqes %#x cqes %#x", id.OAES(), id.AERL(), id.SQES(), id.CQES())
	}
	if id.Serial() == "" || id.Model() != DefaultModel {
		t.Errorf("serial %q model %q", id.Serial(), id.Model())
	}

	// Identify Namespace, lists, descriptors.
	buf, r = a.identify(nvme.CNSNamespace, 1)
	must(t, "identify namespace", r)
	idns := nvme.IdentifyNamespace(buf)
	if idns.NSZE() != 16<<20/512 || idns.BlockSize() != 512 || idns.NCAP() != idns.NSZE() {
		t.Errorf("nsze %d block size %d", idns.NSZE(), idns.BlockSize())
	}
	buf, r = a.identify(nvme.CNSActiveNSList, 0)
	must(t, "active ns list", r)
	if ids := nvme.NSList(buf).IDs(); len(ids) != 1 || ids[0] != 1 {
		t.Errorf("active namespaces %v", ids)
	}
	buf, r = a.identify(nvme.CNSActiveNSList, 1)
	must(t, "active ns list after 1", r)
	if ids := nvme.NSList(buf).IDs(); len(ids) != 0 {
		t.Errorf("active namespaces after 1: %v", ids)
	}
	buf, r = a.identify(nvme.CNSNSDescList, 1)
	must(t, "ns descriptors", r)
	descs, err := nvme.NSDescList(buf).Descriptors()
	if err != nil || len(descs) != 3 {
		t.Fatalf("descriptors %v %v", descs, err)
	}
	nguid, uuid := namespaceIDs(testSubNQN, 1)
	if !bytes.Equal(descs[0].ID, nguid[:]) || !bytes.Equal(descs[1].ID, uuid[:]) || idns.NGUID() != nguid {
		t.Errorf("descriptors %x, want nguid %x uuid %x", descs, nguid, uuid)
	}
	_, r = a.identify(nvme.CNSNamespace, 2)
	wantStatus(t, "identify namespace 2", r, nvme.StatusInvalidNamespace)
	_, r = a.identify(0x42, 0)
	wantStatus(t, "identify CNS 0x42", r, nvme.StatusInvalidField)

	// I/O: in-capsule write, R2T write, read back.
	q := s.io[0]
	small := pattern(4096, 1)
	must(t, "in-capsule write", q.write(1, 8, small, 512, true))
	big := pattern(512<<10, 2)
	r = must(t, "R2T write", q.write(1, 100, big, 512, false))
	if r.R2Ts == 0 {
		t.Errorf("no R2T for a 512 KiB write")
	}
	got := make([]byte, len(small))
	must(t, "read small", q.read(1, 8, got, 512))
	if !bytes.Equal(got, small) {
		t.Fatal("small read differs from what was written")
	}
	got = make([]byte, len(big))
	r = must(t, "read big", q.read(1, 100, got, 512))
	if !bytes.Equal(got, big) {
		t.Fatal("big read differs from what was written")
	}
	if r.C2HPDUs != 1 {
		t.Errorf("%d C2HData PDUs for one read, MaxC2HData unset", r.C2HPDUs)
	}
	// The store holds it too.
	direct := make([]byte, len(big))
	tt.ns[0].ReadAt(direct, 100*512)
	if !bytes.Equal(direct, big) {
		t.Fatal("store content differs")
	}
}

func TestConfigValidation(t *testing.T) {
	st := mustMem(t, "mem:1M")
	defer st.Close()
	ok := Config{SubsystemNQN: testSubNQN, Namespaces: []store.Store{st}}
	if _, err := New(ok); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for name, mod := range map[string]func(*Config){
		"no NQN":          func(c *Config) { c.SubsystemNQN = "" },
		"discovery NQN":   func(c *Config) { c.SubsystemNQN = nvme.DiscoveryNQN },
		"block size 520":  func(c *Config) { c.BlockSize = 520 },
		"block size 8192": func(c *Config) { c.BlockSize = 8192 },
		"bad host NQN":    func(c *Config) { c.AllowHosts = []string{"bad\x01"} },
		"nil namespace":   func(c *Config) { c.Namespaces = []store.Store{nil} },
		"MDTS not 2^n":    func(c *Config) { c.MaxTransfer = 3 << 12 },
		"MDTS too small":  func(c *Config) { c.MaxTransfer = 2048 },
		"in-capsule 100":  func(c *Config) { c.InCapsuleSize = 100 },
		"MaxH2CData 1000": func(c *Config) { c.MaxH2CData = 1000 },
		"MaxC2HData 100":  func(c *Config) { c.MaxC2HData = 100 },
		"queue size 1":    func(c *Config) { c.MaxQueueSize = 1 },
		"R2T size 100":    func(c *Config) { c.R2TSize = 100 },
		"serial too long": func(c *Config) { c.Serial = strings.Repeat("x", 21) },
		"namespace < 1 LBA": func(c *Config) {
			c.Namespaces = []store.Store{mustMem(t, "mem:4K")}
			c.BlockSize = 4096
			c.Namespaces[0] = tinyStore{c.Namespaces[0]}
		},
		"I/O queues 0x10000": func(c *Config) { c.MaxIOQueues = 0x10000 },
	} {
		cfg := ok
		mod(&cfg)
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// tinyStore reports a size below one 4 KiB block.
type tinyStore struct{ store.Store }

func (tinyStore) Size() int64 { return 1024 }

func TestNamespaceIDsStable(t *testing.T) {
	g1, u1 := namespaceIDs(testSubNQN, 1)
	g1b, u1b := namespaceIDs(testSubNQN, 1)
	g2, u2 := namespaceIDs(testSubNQN, 2)
	g3, u3 := namespaceIDs(testSubNQN+"x", 1)
	if g1 != g1b || u1 != u1b {
		t.Error("IDs change between calls")
	}
	if g1 == g2 || u1 == u2 || g1 == g3 || u1 == u3 {
		t.Error("IDs collide across namespaces or subsystems")
	}
	if u1[6]>>4 != 8 || u1[8]>>6 != 2 {
		t.Errorf("UUID %x: not an RFC 9562 version 8 UUID", u1)
	}
}
