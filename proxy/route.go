package proxy

import (
	"context"
	"hash/fnv"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Choosing an upstream is this file's job; moving bytes is conn.go's. The
// byte mover sees only router: it asks for an upstream for a client,
// reports how connecting to it went, and says when the connection ends.
// Balancing policies, passive and active health all live behind it, so a
// routing feature never touches the data path.
type router interface {
	// pick returns the upstream for a new connection from client, skipping
	// those in tried (already failed for this connection); nil when no
	// upstream is left to try.
	pick(client netip.Addr, tried []*upstream) *upstream
	// connected, failed and released report one connection's use of u:
	// connected after a successful connect, failed when every address of
	// u failed (err says how), released when a connected one ends.
	connected(u *upstream)
	failed(u *upstream, err error)
	released(u *upstream)
	// maxTries bounds the upstreams one connection tries.
	maxTries() int
}

// Balance policies.
const (
	BalanceRoundRobin = "round-robin"
	BalanceLeastConn  = "least-conn"
	BalanceSourceHash = "source-hash"
)

// Balances are the accepted balance values.
var Balances = []string{BalanceRoundRobin, BalanceLeastConn, BalanceSourceHash}

// Passive health: an upstream whose connect failed is skipped for a
// back-off that doubles with every further failure.
const (
	minDownBackoff = time.Second
	maxDownBackoff = 30 * time.Second
	maxConnTries   = 3
)

// upstream is one target of a mapping, shared by all loops.
type upstream struct {
	pool  *pool
	idx   int
	host  string       // name or IP literal; "" for a Unix socket
	port  int          // TCP port
	path  string       // Unix socket path
	label string       // host:port or unix:path: its name in logs and metrics
	ips   []netip.Addr // the IP literal, needing no lookup

	active        atomic.Int64 // open connections through it
	connects      atomic.Uint64
	connectFails  atomic.Uint64
	checksOK      atomic.Uint64
	checksFailed  atomic.Uint64
	stateChanges  atomic.Uint64
	healthy       atomic.Bool  // what active checks say (true without checks)
	passiveDownNs atomic.Int64 // unix nanos until which passive health skips it

	mu      sync.Mutex // guards the fields below (off the data path)
	backoff time.Duration
	rise    int // consecutive check results in the current direction
}

func (u *upstream) isUnix() bool { return u.path != "" }

// cached and resolve look u's host name up through its pool's cache.
func (u *upstream) cached() ([]netip.Addr, bool) { return u.pool.dns.cached(u.host) }

func (u *upstream) resolve(ctx context.Context) ([]netip.Addr, error) {
	return u.pool.dns.resolve(ctx, u.host)
}

// available says whether new connections may go to u now.
func (u *upstream) available(now int64) bool {
	return u.healthy.Load() && now >= u.passiveDownNs.Load()
}

// pool is the router of one mapping: its upstreams and how to choose.
type pool struct {
	mapping string
	ups     []*upstream
	policy  string
	log     *zap.Logger
	dns     *dnsCache
	rr      atomic.Uint64
	ring    []ringPoint // source-hash: sorted by hash
}

type ringPoint struct {
	hash uint64
	up   *upstream
}

// ringPointsPer is each upstream's share of the hash ring: enough points
// that the loss of one of a handful moves close to only its own share.
const ringPointsPer = 160

func newPool(mapping string, targets []Target, policy string, dns *dnsCache, log *zap.Logger) *pool {
	p := &pool{mapping: mapping, policy: policy, dns: dns, log: log}
	for i, t := range targets {
		u := &upstream{pool: p, idx: i, host: t.Host, port: t.Port, path: t.Unix, label: t.String()}
		if ip, err := netip.ParseAddr(t.Host); err == nil && t.Unix == "" {
			u.ips = []netip.Addr{ip.Unmap()}
		}
		u.healthy.Store(true)
		p.ups = append(p.ups, u)
	}
	if policy == BalanceSourceHash {
		for _, u := range p.ups {
			for k := 0; k < ringPointsPer; k++ {
				h := fnv.New64a()
				h.Write([]byte(u.label))
				h.Write([]byte{'#', byte(k), byte(k >> 8)})
				p.ring = append(p.ring, ringPoint{mix64(h.Sum64()), u})
			}
		}
		slices.SortFunc(p.ring, func(a, b ringPoint) int {
			switch {
			case a.hash < b.hash:
				return -1
			case a.hash > b.hash:
				return 1
			}
			return 0
		})
	}
	return p
}

// mix64 is splitmix64's finalizer: FNV-1a alone leaves the high bits,
// which decide the place on the ring, nearly equal for addresses that
// differ only in their last bytes.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

func (p *pool) maxTries() int { return min(len(p.ups), maxConnTries) }

func (p *pool) pick(client netip.Addr, tried []*upstream) *upstream {
	now := time.Now().UnixNano()
	ok := func(u *upstream) bool { return u.available(now) && !slices.Contains(tried, u) }
	switch p.policy {
	case BalanceSourceHash:
		if len(p.ring) == 0 {
			return nil
		}
		b := client.Unmap().As16()
		h := fnv.New64a()
		h.Write(b[:])
		x := mix64(h.Sum64())
		i, _ := slices.BinarySearchFunc(p.ring, x, func(r ringPoint, x uint64) int {
			switch {
			case r.hash < x:
				return -1
			case r.hash > x:
				return 1
			}
			return 0
		})
		for k := 0; k < len(p.ring); k++ {
			if u := p.ring[(i+k)%len(p.ring)].up; ok(u) {
				return u
			}
		}
		return nil
	case BalanceLeastConn:
		start := int(p.rr.Add(1))
		var best *upstream
		for k := range p.ups {
			u := p.ups[(start+k)%len(p.ups)]
			if ok(u) && (best == nil || u.active.Load() < best.active.Load()) {
				best = u
			}
		}
		return best
	default:
		start := int(p.rr.Add(1) - 1)
		for k := range p.ups {
			if u := p.ups[(start+k)%len(p.ups)]; ok(u) {
				return u
			}
		}
		return nil
	}
}

func (p *pool) connected(u *upstream) {
	u.connects.Add(1)
	u.active.Add(1)
	if u.passiveDownNs.Load() == 0 {
		return
	}
	u.mu.Lock()
	was := u.backoff
	u.backoff = 0
	u.passiveDownNs.Store(0)
	u.mu.Unlock()
	if was > 0 {
		u.stateChanges.Add(1)
		p.log.Info("upstream up: connect succeeded", zap.String("mapping", p.mapping), zap.String("upstream", u.label))
	}
}

func (p *pool) failed(u *upstream, err error) {
	u.connectFails.Add(1)
	u.mu.Lock()
	first := u.backoff == 0
	u.backoff = min(max(2*u.backoff, minDownBackoff), maxDownBackoff)
	back := u.backoff
	u.passiveDownNs.Store(time.Now().Add(back).UnixNano())
	u.mu.Unlock()
	if first {
		u.stateChanges.Add(1)
	}
	p.log.Warn("upstream down: connect failed", zap.String("mapping", p.mapping), zap.String("upstream", u.label),
		zap.Duration("retry_after", back), zap.Error(err))
}

func (p *pool) released(u *upstream) { u.active.Add(-1) }

// --- active health checks -----------------------------------------------------

// HealthCheck configures active checks of a mapping's upstreams: a TCP (or
// Unix) connect every Interval, answered within Timeout; Rise successes
// in a row bring a down upstream up, Fall failures in a row take it down.
type HealthCheck struct {
	Interval time.Duration // 0: no active checks
	Timeout  time.Duration
	Rise     int
	Fall     int
}

// startChecks starts the active health checks of every upstream of p, to
// run until stop is closed.
func (p *pool) startChecks(hc HealthCheck, stop <-chan struct{}, wg *sync.WaitGroup) {
	if hc.Interval <= 0 {
		return
	}
	for _, u := range p.ups {
		wg.Add(1)
		go p.checkHealth(u, hc, stop, wg)
	}
}

// checkHealth runs u's active checks until stop is closed.
func (p *pool) checkHealth(u *upstream, hc HealthCheck, stop <-chan struct{}, wg *sync.WaitGroup) {
	defer wg.Done()
	t := time.NewTicker(hc.Interval)
	defer t.Stop()
	for {
		p.checkOnce(u, hc)
		select {
		case <-stop:
			return
		case <-t.C:
		}
	}
}

func (p *pool) checkOnce(u *upstream, hc HealthCheck) {
	network, addr := "tcp", net.JoinHostPort(u.host, strconv.Itoa(u.port))
	if u.isUnix() {
		network, addr = "unix", u.path
	}
	c, err := net.DialTimeout(network, addr, hc.Timeout)
	if err == nil {
		c.Close()
		u.checksOK.Add(1)
	} else {
		u.checksFailed.Add(1)
	}
	up := err == nil
	u.mu.Lock()
	defer u.mu.Unlock()
	if up == u.healthy.Load() {
		u.rise = 0
		return
	}
	u.rise++
	need := hc.Fall
	if up {
		need = hc.Rise
	}
	if u.rise < need {
		return
	}
	u.rise = 0
	u.healthy.Store(up)
	u.stateChanges.Add(1)
	if up {
		p.log.Info("upstream up: health check passed", zap.String("mapping", p.mapping), zap.String("upstream", u.label), zap.Int("rise", hc.Rise))
	} else {
		p.log.Warn("upstream down: health check failed", zap.String("mapping", p.mapping), zap.String("upstream", u.label), zap.Int("fall", hc.Fall), zap.Error(err))
	}
}
