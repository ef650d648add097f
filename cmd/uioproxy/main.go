// Command uioproxy forwards TCP connections like ssh -L, with the socket
// I/O of all connections batched through Linux AIO or io_uring by the uio
// engine. Run "uioproxy -help" for the flags; package
// github.com/userland-io/uio/proxy describes the forwarding model.
//
// Exit status: 0 after a clean stop (SIGINT/SIGTERM; a second one during
// the drain resets what is open and exits at once), after -help, or when
// -check finds the configuration valid; 2 for a mistake on the command
// line or in the config file (printed as file:line: what is wrong); 1
// when the proxy cannot start.
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
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	cfg, err := proxy.ParseArgs(args, os.Stderr)
	if err != nil {
		return proxy.ExitCode(err)
	}
	if cfg.Check {
		fmt.Fprintf(os.Stderr, "uioproxy: %s: configuration is valid (%d mappings)\n", cfg.ConfigFile, len(cfg.Mappings))
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := proxy.Run(ctx, cfg); err != nil {
		fmt.Fprintf(os.Stderr, "uioproxy: %v\n", err)
		return 1
	}
	return 0
}
