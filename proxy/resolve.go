package proxy

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"time"
)

// lookupFunc resolves a host name to its addresses; net.DefaultResolver's
// LookupNetIP in production, a fake in tests.
type lookupFunc func(ctx context.Context, host string) ([]netip.Addr, error)

func defaultLookup(ctx context.Context, host string) ([]netip.Addr, error) {
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
}

// dnsCache keeps the addresses of a host name for ttl, so that a busy
// mapping does one lookup per ttl rather than one per connection, and
// joins concurrent lookups of the same name into one. Failures are not
// kept: the next connection asks again. Go's resolver does not report
// record TTLs, so ttl is the operator's (-dns-ttl), as nginx's resolver
// valid= and HAProxy's hold valid.
type dnsCache struct {
	ttl    time.Duration
	lookup lookupFunc

	mu      sync.Mutex
	entries map[string]*dnsEntry
}

type dnsEntry struct {
	addrs   []netip.Addr
	expires time.Time
	pending chan struct{} // closed when the lookup in flight ends
	err     error         // of the lookup that just ended, for its joiners
}

func newDNSCache(ttl time.Duration, lookup lookupFunc) *dnsCache {
	if lookup == nil {
		lookup = defaultLookup
	}
	return &dnsCache{ttl: ttl, lookup: lookup, entries: map[string]*dnsEntry{}}
}

// cached returns host's addresses if a fresh answer is at hand, without
// blocking: the loop calls it before deciding to look up off the loop.
func (d *dnsCache) cached(host string) ([]netip.Addr, bool) {
	if d.ttl <= 0 {
		return nil, false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	e := d.entries[host]
	if e == nil || e.pending != nil || time.Now().After(e.expires) {
		return nil, false
	}
	return e.addrs, true
}

// resolve returns host's addresses (IPv4-mapped ones unmapped), from the
// cache or from one lookup shared by everyone asking meanwhile. The
// returned slice must not be modified.
func (d *dnsCache) resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	if d.ttl <= 0 {
		return d.lookupUnmapped(ctx, host)
	}
	d.mu.Lock()
	e := d.entries[host]
	if e != nil && e.pending == nil && time.Now().Before(e.expires) {
		d.mu.Unlock()
		return e.addrs, nil
	}
	if e != nil && e.pending != nil {
		ch := e.pending
		d.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		d.mu.Lock()
		addrs, err := e.addrs, e.err
		d.mu.Unlock()
		return addrs, err
	}
	if e == nil {
		e = &dnsEntry{}
		d.entries[host] = e
	}
	ch := make(chan struct{})
	e.pending = ch
	d.mu.Unlock()

	addrs, err := d.lookupUnmapped(ctx, host)

	d.mu.Lock()
	e.pending, e.err = nil, err
	if err == nil {
		e.addrs, e.expires = addrs, time.Now().Add(d.ttl)
	} else {
		e.addrs, e.expires = nil, time.Time{}
	}
	d.mu.Unlock()
	close(ch)
	return addrs, err
}

func (d *dnsCache) lookupUnmapped(ctx context.Context, host string) ([]netip.Addr, error) {
	ips, err := d.lookup(ctx, host)
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, len(ips))
	for i, ip := range ips {
		out[i] = ip.Unmap()
	}
	return out, nil
}

// happyEyeballsOrder orders addresses for connecting as RFC 8305 section 4
// says: the families interleaved, starting with the family of the first
// address the resolver returned if it is IPv6, else IPv6 anyway when
// there is one (the RFC prefers IPv6). Within a family the resolver's
// order (RFC 6724, from getaddrinfo or Go's sort) is kept.
func happyEyeballsOrder(addrs []netip.Addr) []netip.Addr {
	var v6, v4 []netip.Addr
	for _, a := range addrs {
		if a.Is6() && !a.Is4In6() {
			v6 = append(v6, a)
		} else {
			v4 = append(v4, a)
		}
	}
	if len(v6) == 0 || len(v4) == 0 {
		return addrs
	}
	out := make([]netip.Addr, 0, len(addrs))
	for i := 0; i < len(v6) || i < len(v4); i++ {
		if i < len(v6) {
			out = append(out, v6[i])
		}
		if i < len(v4) {
			out = append(out, v4[i])
		}
	}
	return out
}
