package proxy

import (
	"fmt"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"
)

// TestWarnFdsOncePerEpisode: running out of descriptors is logged once
// however many accepts and connects fail, again only after a quiet
// fdEpisodeGap, and memory shortage under its own message.
func TestWarnFdsOncePerEpisode(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	s := &Server{log: zap.New(core)}
	ms := &mapState{label: "m"}
	emfile := fmt.Errorf("accept: %w", unix.EMFILE)
	for i := 0; i < 100; i++ {
		s.warnFds(ms, emfile, time.Second)
	}
	if n := logs.FilterMessage("out of file descriptors, backing off").Len(); n != 1 {
		t.Fatalf("%d warnings for 100 failures in one episode, want 1", n)
	}
	w := logs.All()[0].ContextMap()
	var lim unix.Rlimit
	unix.Getrlimit(unix.RLIMIT_NOFILE, &lim)
	if w["limit"] != "RLIMIT_NOFILE" || w["nofile"] != lim.Cur {
		t.Errorf("warning fields %v: want limit RLIMIT_NOFILE and nofile %d", w, lim.Cur)
	}
	// A failure after a quiet gap starts a new episode.
	s.lastFdHit.Store(time.Now().Add(-fdEpisodeGap - time.Second).UnixNano())
	s.warnFds(ms, fmt.Errorf("accept: %w", unix.ENFILE), time.Second)
	s.warnFds(ms, emfile, time.Second)
	if n := logs.FilterMessage("out of file descriptors, backing off").Len(); n != 2 {
		t.Fatalf("%d warnings after a second episode, want 2", n)
	}
	if w := logs.All()[1].ContextMap(); w["limit"] != "fs.file-max" {
		t.Errorf("ENFILE warning fields %v: want limit fs.file-max", w)
	}
	s.lastFdHit.Store(0)
	s.warnFds(ms, fmt.Errorf("accept: %w", unix.ENOBUFS), time.Second)
	if n := logs.FilterMessage("out of kernel memory for sockets, backing off").Len(); n != 1 {
		t.Errorf("%d socket-memory warnings, want 1", n)
	}
}

func TestConnsAllowed(t *testing.T) {
	for _, tt := range []struct {
		limit          uint64
		inUse, perConn int
		want           int
	}{
		{20000, 12, 2, (20000 - 12 - fdReserve) / 2},
		{20000, 12, 6, (20000 - 12 - fdReserve) / 6},
		{24, 12, 2, 0},
		{10, 12, 2, 0},
		{1 << 62, 12, 2, 1 << 39},
	} {
		if got := connsAllowed(tt.limit, tt.inUse, tt.perConn); got != tt.want {
			t.Errorf("connsAllowed(%d, %d, %d) = %d, want %d", tt.limit, tt.inUse, tt.perConn, got, tt.want)
		}
	}
}
