package proxy

import (
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// NewLogger builds the zap logger for -log-level and -log-format, writing
// to out (os.Stderr, or a LogFile).
func NewLogger(level, format string, out zapcore.WriteSyncer) (*zap.Logger, error) {
	var lvl zapcore.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil || !oneOf(level, LogLevels) {
		return nil, fmt.Errorf("-log-level %q: want one of debug, info, warn, error", level)
	}
	ec := zap.NewProductionEncoderConfig()
	ec.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	switch format {
	case "json":
		enc = zapcore.NewJSONEncoder(ec)
	case "console":
		ec.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(ec)
	default:
		return nil, fmt.Errorf("-log-format %q: want console or json", format)
	}
	core := zapcore.NewCore(enc, zapcore.Lock(out), lvl)
	return zap.New(core).Named("uioproxy"), nil
}

// LogFile is a log destination that can be reopened by path, so that
// logrotate can rename the file and send SIGHUP: the next line goes to a
// new file with the old name.
type LogFile struct {
	path string
	mu   sync.Mutex
	f    *os.File
}

// OpenLogFile opens path for appending, creating it (mode 0644) if needed.
func OpenLogFile(path string) (*LogFile, error) {
	l := &LogFile{path: path}
	if err := l.Reopen(); err != nil {
		return nil, err
	}
	return l, nil
}

// Reopen opens the path anew and closes the file it replaces. On failure
// the old file stays in use.
func (l *LogFile) Reopen() error {
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|syscall.O_CLOEXEC, 0o644)
	if err != nil {
		return fmt.Errorf("-log-file: %w", err)
	}
	l.mu.Lock()
	old := l.f
	l.f = f
	l.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

func (l *LogFile) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Write(p)
}

// Sync flushes the file to disk.
func (l *LogFile) Sync() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Sync()
}

// Close closes the file.
func (l *LogFile) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Close()
}

// watchHUP handles SIGHUP, the usual "reload and reopen your log files"
// signal: it reopens file (when the logs go to stderr, which whoever
// started us owns and rotates, there is nothing to reopen) and calls
// reload, which rereads -config. SIGHUP never kills the proxy.
func watchHUP(log *zap.Logger, file *LogFile, reload func()) (stop func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-ch:
				if file == nil {
					log.Info("SIGHUP: logging to stderr, nothing to reopen")
				} else if err := file.Reopen(); err != nil {
					log.Error("SIGHUP: reopening the log file failed; still writing to the old one", zap.Error(err))
				} else {
					log.Info("SIGHUP: log file reopened", zap.String("path", file.path))
				}
				reload()
			case <-done:
				return
			}
		}
	}()
	return func() { signal.Stop(ch); close(done) }
}

// logAccess writes the access log line of a connection that just ended
// (-access-log): who, through which mapping to which upstream, the bytes
// each way, how long, and how it ended.
func (s *Server) logAccess(c *conn) {
	if s.access == nil {
		return
	}
	upstream := ""
	if len(c.tried) > 0 {
		upstream = c.tried[len(c.tried)-1].label
	}
	s.access.Info("connection",
		zap.String("mapping", c.ms.label),
		zap.String("client", c.clientString()),
		zap.String("upstream", upstream),
		zap.String("upstream_addr", c.upAddr),
		zap.Uint64("bytes_up", c.bytes[dirUp]),
		zap.Uint64("bytes_down", c.bytes[dirDown]),
		zap.Duration("duration", monotime()-c.started),
		zap.String("end", c.end.String()),
		zap.Int("tries", len(c.tried)),
	)
}
