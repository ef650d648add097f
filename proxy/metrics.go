package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"sync/atomic"
	"time"

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
	mux.HandleFunc("/metrics", s.handleMetrics)
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

func (s *Server) handleMetrics(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	bw := bufio.NewWriter(w)
	WriteMetrics(bw, s.Snapshot())
	bw.Flush()
}

// WriteMetrics writes snap in the Prometheus text exposition format.
func WriteMetrics(w *bufio.Writer, snap Snapshot) {
	type series struct {
		name, help, typ string
		value           func(MappingStats) uint64
		labels          string
	}
	perMapping := []series{
		{"uioproxy_connections_total", "Connections accepted.", "counter", func(m MappingStats) uint64 { return m.Total }, ""},
		{"uioproxy_connections_active", "Connections open now.", "gauge", func(m MappingStats) uint64 { return m.Active }, ""},
		{"uioproxy_bytes_total", "Bytes forwarded.", "counter", func(m MappingStats) uint64 { return m.BytesUp }, `direction="upstream"`},
		{"uioproxy_bytes_total", "", "", func(m MappingStats) uint64 { return m.BytesDown }, `direction="downstream"`},
		{"uioproxy_messages_total", "Chunks forwarded (one recv and its send).", "counter", func(m MappingStats) uint64 { return m.MsgsUp }, `direction="upstream"`},
		{"uioproxy_messages_total", "", "", func(m MappingStats) uint64 { return m.MsgsDown }, `direction="downstream"`},
		{"uioproxy_errors_total", "Errors by kind.", "counter", func(m MappingStats) uint64 { return m.ConnectErrors }, `kind="connect"`},
		{"uioproxy_errors_total", "", "", func(m MappingStats) uint64 { return m.Resets }, `kind="reset"`},
		{"uioproxy_errors_total", "", "", func(m MappingStats) uint64 { return m.AcceptErrors }, `kind="accept"`},
		{"uioproxy_errors_total", "", "", func(m MappingStats) uint64 { return m.IdleClosed }, `kind="idle_timeout"`},
	}
	for _, se := range perMapping {
		if se.help != "" {
			fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", se.name, se.help, se.name, se.typ)
		}
		for _, m := range snap.Mappings {
			labels := fmt.Sprintf("mapping=%q", m.Mapping)
			if se.labels != "" {
				labels += "," + se.labels
			}
			fmt.Fprintf(w, "%s{%s} %d\n", se.name, labels, se.value(m))
		}
	}
	e := snap.Engine
	fmt.Fprintf(w, "# HELP uioproxy_syscalls_total Syscalls made, counted by the engine and the proxy.\n# TYPE uioproxy_syscalls_total counter\n")
	sys := map[string]uint64{
		"io_submit": e.Submits, "io_getevents": e.GetEvents, "io_uring_enter": e.Enters,
		"engine_other": e.Other, "proxy": snap.Syscalls,
	}
	keys := make([]string, 0, len(sys))
	for k := range sys {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "uioproxy_syscalls_total{backend=%q,kind=%q} %d\n", e.Backend, k, sys[k])
	}
	fmt.Fprintf(w, "# HELP uioproxy_engine_ops_total Ops submitted to the engine.\n# TYPE uioproxy_engine_ops_total counter\nuioproxy_engine_ops_total %d\n", e.OpsSubmitted)
	fmt.Fprintf(w, "# HELP uioproxy_engine_rounds_total Engine loop rounds.\n# TYPE uioproxy_engine_rounds_total counter\nuioproxy_engine_rounds_total %d\n", e.Rounds)
	perMsg := 0.0
	if n := snap.Messages(); n > 0 {
		perMsg = float64(snap.TotalSyscalls()) / float64(n)
	}
	fmt.Fprintf(w, "# HELP uioproxy_syscalls_per_message Syscalls per forwarded chunk since start.\n# TYPE uioproxy_syscalls_per_message gauge\nuioproxy_syscalls_per_message %g\n", perMsg)
}
