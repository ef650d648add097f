package proxy

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// NewLogger builds the zap logger for -log-level and -log-format. Logs go
// to stderr.
func NewLogger(level, format string) (*zap.Logger, error) {
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
	core := zapcore.NewCore(enc, zapcore.Lock(os.Stderr), lvl)
	return zap.New(core).Named("uioproxy"), nil
}

// watchHUP handles SIGHUP, the usual "reopen your log files" signal. The
// logs go to stderr, which whoever started us owns and rotates, so there
// is nothing to reopen: the signal is acknowledged in the log and otherwise
// ignored (rather than killing the process, SIGHUP's default).
func watchHUP(log *zap.Logger) (stop func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-ch:
				log.Info("SIGHUP: logging to stderr, nothing to reopen")
			case <-done:
				return
			}
		}
	}()
	return func() { signal.Stop(ch); close(done) }
}
