package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/userland-io/uio"
)

// counter is written by one loop and read by any goroutine: a plain load
// and store, no read-modify-write across cores.
type counter struct{ v atomic.Uint64 }

func (c *counter) add(n uint64) { c.v.Store(c.v.Load() + n) }
func (c *counter) load() uint64 { return c.v.Load() }

// mapCounters are one loop's counters for one mapping.
type mapCounters struct {
	opened, closed counter
	bytes          [2]counter // dirUp, dirDown
	msgs           [2]counter // recvs that carried data
	connectErrors  counter
	resets         counter
	acceptErrors   counter
	idleClosed     counter
	badHeaders     counter
}

// MappingStats are the counters of one mapping, summed over the loops.
type MappingStats struct {
	Mapping       string
	Total         uint64 // connections accepted
	Active        uint64 // connections open now
	BytesUp       uint64 // client -> upstream
	BytesDown     uint64 // upstream -> client
	MsgsUp        uint64 // chunks forwarded client -> upstream (one recv + its send)
	MsgsDown      uint64
	ConnectErrors uint64 // upstream could not be reached
	Resets        uint64 // connections ended by an error (reset) on either side
	AcceptErrors  uint64
	IdleClosed    uint64
	BadHeaders    uint64 // PROXY protocol headers rejected or not sent in time
	Upstreams     []UpstreamStats
}

// UpstreamStats are the counters and state of one upstream of a mapping.
type UpstreamStats struct {
	Name            string
	Up              bool // takes new connections now
	Active          int64
	Connects        uint64
	ConnectFailures uint64
	ChecksOK        uint64
	ChecksFailed    uint64
	StateChanges    uint64
}

// Snapshot is a consistent-enough view of every counter.
type Snapshot struct {
	Mappings []MappingStats
	Engine   uio.Stats // summed over the loops
	Syscalls uint64    // syscalls the proxy made outside the engine
}

func (s Snapshot) sum(f func(MappingStats) uint64) uint64 {
	var n uint64
	for _, m := range s.Mappings {
		n += f(m)
	}
	return n
}

// Conns is the number of connections accepted.
func (s Snapshot) Conns() uint64 { return s.sum(func(m MappingStats) uint64 { return m.Total }) }

// Active is the number of open connections.
func (s Snapshot) Active() uint64 { return s.sum(func(m MappingStats) uint64 { return m.Active }) }

// Messages is the number of chunks forwarded, both ways.
func (s Snapshot) Messages() uint64 {
	return s.sum(func(m MappingStats) uint64 { return m.MsgsUp + m.MsgsDown })
}

// Bytes is the number of bytes forwarded, both ways.
func (s Snapshot) Bytes() uint64 {
	return s.sum(func(m MappingStats) uint64 { return m.BytesUp + m.BytesDown })
}

// TotalSyscalls is every syscall the engine and the proxy counted.
func (s Snapshot) TotalSyscalls() uint64 { return s.Engine.Syscalls() + s.Syscalls }

// Snapshot reads every counter. Safe from any goroutine.
func (s *Server) Snapshot() Snapshot {
	s.mapsMu.Lock()
	maps := s.maps
	s.mapsMu.Unlock()
	snap := Snapshot{Mappings: make([]MappingStats, len(maps)), Engine: s.group.Stats()}
	for i, ms := range maps {
		m := &snap.Mappings[i]
		m.Mapping = ms.label
		var opened, closed uint64
		for w := range ms.ctr {
			c := &ms.ctr[w]
			closed += c.closed.load() // before opened: Active never wraps
			opened += c.opened.load()
			m.BytesUp += c.bytes[dirUp].load()
			m.BytesDown += c.bytes[dirDown].load()
			m.MsgsUp += c.msgs[dirUp].load()
			m.MsgsDown += c.msgs[dirDown].load()
			m.ConnectErrors += c.connectErrors.load()
			m.Resets += c.resets.load()
			m.AcceptErrors += c.acceptErrors.load()
			m.IdleClosed += c.idleClosed.load()
			m.BadHeaders += c.badHeaders.load()
		}
		now := time.Now().UnixNano()
		for _, u := range ms.cur.Load().pool.ups {
			m.Upstreams = append(m.Upstreams, UpstreamStats{
				Name: u.label, Up: u.available(now), Active: u.active.Load(),
				Connects: u.connects.Load(), ConnectFailures: u.connectFails.Load(),
				ChecksOK: u.checksOK.Load(), ChecksFailed: u.checksFailed.Load(), StateChanges: u.stateChanges.Load(),
			})
		}
		m.Total = opened
		if opened > closed {
			m.Active = opened - closed
		}
	}
	for _, w := range s.ws {
		snap.Syscalls += w.syscalls.load()
	}
	return snap
}

// logStatsEvery logs one line of rates every interval until the returned
// function is called.
func (s *Server) logStatsEvery(interval time.Duration) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(interval)
		defer t.Stop()
		prev, prevT := s.Snapshot(), time.Now()
		for {
			select {
			case <-done:
				return
			case now := <-t.C:
				cur := s.Snapshot()
				s.log.Info("stats", statsFields(cur, prev, now.Sub(prevT))...)
				prev, prevT = cur, now
			}
		}
	}()
	return func() { close(done); <-finished }
}

func statsFields(cur, prev Snapshot, dt time.Duration) []zap.Field {
	secs := dt.Seconds()
	msgs := cur.Messages() - prev.Messages()
	sys := cur.TotalSyscalls() - prev.TotalSyscalls()
	perMsg := 0.0
	if msgs > 0 {
		perMsg = float64(sys) / float64(msgs)
	}
	return []zap.Field{
		zap.Uint64("active", cur.Active()),
		zap.Uint64("accepted", cur.Conns()-prev.Conns()),
		zap.String("msgs_per_s", fmt.Sprintf("%.0f", float64(msgs)/secs)),
		zap.String("bytes_per_s", fmt.Sprintf("%.0f", float64(cur.Bytes()-prev.Bytes())/secs)),
		zap.String("syscalls_per_msg", fmt.Sprintf("%.3f", perMsg)),
		zap.Uint64("syscalls", sys),
	}
}

// --- Prometheus ---------------------------------------------------------------

type metricsServer struct {
	srv *http.Server
	ln  net.Listener
}

func (s *Server) serveMetrics(addr string) (*metricsServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("-metrics %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", s.metricsHandler())
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintln(w, "uioproxy: metrics at /metrics")
	})
	m := &metricsServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}, ln: ln}
	go func() {
		if err := m.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("metrics server", zap.Error(err))
		}
	}()
	s.log.Info("serving metrics", zap.String("addr", "http://"+ln.Addr().String()+"/metrics"))
	return m, nil
}

// MetricsAddr is where the server started by serveMetrics listens.
func (m *metricsServer) addr() net.Addr { return m.ln.Addr() }

func (m *metricsServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	m.srv.Shutdown(ctx)
}

// metricsHandler serves the registry of s's metrics: the proxy's own
// (read from the per-loop counters at scrape time, so the data path pays
// nothing for them) and client_golang's process and Go runtime collectors.
func (s *Server) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector(),
		newCollector(s),
	)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: zap.NewStdLog(s.log), ErrorHandling: promhttp.ContinueOnError})
}

type collector struct {
	s *Server

	conns, active, bytes, msgs, errs                         *prometheus.Desc
	upUp, upActive, upConnects, upFails, upChecks, upChanges *prometheus.Desc
	syscalls, ops, rounds, perMsg                            *prometheus.Desc
}

func newCollector(s *Server) *collector {
	m := []string{"mapping"}
	u := []string{"mapping", "upstream"}
	d := prometheus.NewDesc
	return &collector{
		s:          s,
		conns:      d("uioproxy_connections_total", "Connections accepted.", m, nil),
		active:     d("uioproxy_connections_active", "Connections open now.", m, nil),
		bytes:      d("uioproxy_bytes_total", "Bytes forwarded.", append(m, "direction"), nil),
		msgs:       d("uioproxy_messages_total", "Chunks forwarded (one recv and its send).", append(m, "direction"), nil),
		errs:       d("uioproxy_errors_total", "Connections ended or refused by an error, by kind.", append(m, "kind"), nil),
		upUp:       d("uioproxy_upstream_up", "1 if the upstream takes new connections (health checks and passive health), else 0.", u, nil),
		upActive:   d("uioproxy_upstream_connections_active", "Connections open to the upstream.", u, nil),
		upConnects: d("uioproxy_upstream_connects_total", "Successful connects to the upstream.", u, nil),
		upFails:    d("uioproxy_upstream_connect_failures_total", "Connects to the upstream that failed (every address).", u, nil),
		upChecks:   d("uioproxy_upstream_health_checks_total", "Active health checks, by result.", append(u, "result"), nil),
		upChanges:  d("uioproxy_upstream_state_changes_total", "Times the upstream went down or came back up.", u, nil),
		syscalls:   d("uioproxy_syscalls_total", "Syscalls made, counted by the engine and the proxy.", []string{"backend", "kind"}, nil),
		ops:        d("uioproxy_engine_ops_total", "Ops submitted to the engine.", nil, nil),
		rounds:     d("uioproxy_engine_rounds_total", "Engine loop rounds.", nil, nil),
		perMsg:     d("uioproxy_syscalls_per_message", "Syscalls per forwarded chunk since start.", nil, nil),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.conns, c.active, c.bytes, c.msgs, c.errs, c.upUp, c.upActive, c.upConnects,
		c.upFails, c.upChecks, c.upChanges, c.syscalls, c.ops, c.rounds, c.perMsg} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	snap := c.s.Snapshot()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, m := range snap.Mappings {
		counter(c.conns, m.Total, m.Mapping)
		gauge(c.active, float64(m.Active), m.Mapping)
		counter(c.bytes, m.BytesUp, m.Mapping, "upstream")
		counter(c.bytes, m.BytesDown, m.Mapping, "downstream")
		counter(c.msgs, m.MsgsUp, m.Mapping, "upstream")
		counter(c.msgs, m.MsgsDown, m.Mapping, "downstream")
		for _, e := range []struct {
			kind string
			v    uint64
		}{{"connect", m.ConnectErrors}, {"reset", m.Resets}, {"accept", m.AcceptErrors}, {"idle_timeout", m.IdleClosed}, {"proxy_header", m.BadHeaders}} {
			counter(c.errs, e.v, m.Mapping, e.kind)
		}
		for _, u := range m.Upstreams {
			up := 0.0
			if u.Up {
				up = 1
			}
			gauge(c.upUp, up, m.Mapping, u.Name)
			gauge(c.upActive, float64(u.Active), m.Mapping, u.Name)
			counter(c.upConnects, u.Connects, m.Mapping, u.Name)
			counter(c.upFails, u.ConnectFailures, m.Mapping, u.Name)
			counter(c.upChecks, u.ChecksOK, m.Mapping, u.Name, "ok")
			counter(c.upChecks, u.ChecksFailed, m.Mapping, u.Name, "failed")
			counter(c.upChanges, u.StateChanges, m.Mapping, u.Name)
		}
	}
	e := snap.Engine
	for _, k := range []struct {
		kind string
		v    uint64
	}{{"io_submit", e.Submits}, {"io_getevents", e.GetEvents}, {"io_uring_enter", e.Enters}, {"engine_other", e.Other}, {"proxy", snap.Syscalls}} {
		counter(c.syscalls, k.v, e.Backend, k.kind)
	}
	counter(c.ops, e.OpsStarted)
	counter(c.rounds, e.Rounds)
	perMsg := 0.0
	if n := snap.Messages(); n > 0 {
		perMsg = float64(snap.TotalSyscalls()) / float64(n)
	}
	gauge(c.perMsg, perMsg)
}
