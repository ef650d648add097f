// Command uioproxy forwards TCP connections like ssh -L, with the socket
// I/O of all connections batched through Linux AIO or io_uring by the uio
// engine. Run "uioproxy -help" for the flags; package
// github.com/userland-io/uio/proxy describes the forwarding model.
//
// Exit status: 0 after a clean stop (SIGINT/SIGTERM) or -help, 2 for a
// command-line mistake, 1 when the proxy cannot start.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/userland-io/uio/proxy"
)

func main() {
	cfg, err := proxy.ParseArgs(os.Args[1:], os.Stderr)
	if err != nil {
		os.Exit(proxy.ExitCode(err))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := proxy.Run(ctx, cfg); err != nil {
		fmt.Fprintf(os.Stderr, "uioproxy: %v\n", err)
		os.Exit(1)
	}
}
