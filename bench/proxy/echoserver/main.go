// Command echoserver is the upstream for the proxy benchmarks: it echoes
// (or with -mode discard, swallows) everything it reads. Plain net with one
// goroutine per connection and one read/write loop, so the upstream costs
// the same behind every proxy and is rarely the bottleneck.
//
//	echoserver -listen 127.0.0.1:9000 [-mode echo|discard] [-max-time 10m]
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:9000", "address to listen on")
	mode := flag.String("mode", "echo", "echo: write back what was read; discard: read and drop")
	bufSize := flag.Int("buf", 64<<10, "read buffer size in bytes")
	maxTime := flag.Duration("max-time", 0, "exit after this long even if nobody stops us (0 = never)")
	flag.Parse()
	if *mode != "echo" && *mode != "discard" {
		fmt.Fprintf(os.Stderr, "echoserver: -mode %q: want echo or discard\n", *mode)
		os.Exit(2)
	}
	if *bufSize < 1 {
		fmt.Fprintf(os.Stderr, "echoserver: -buf %d: want at least 1\n", *bufSize)
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("echoserver: listen on %s: %v", *listen, err)
	}
	if *maxTime > 0 {
		// A safety net for scripts that die before their cleanup runs.
		time.AfterFunc(*maxTime, func() { os.Exit(0) })
	}
	echo := *mode == "echo"
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatalf("echoserver: accept on %s: %v", *listen, err)
		}
		go serve(c, echo, *bufSize)
	}
}

func serve(c net.Conn, echo bool, bufSize int) {
	defer c.Close()
	buf := make([]byte, bufSize)
	for {
		n, err := c.Read(buf)
		if n > 0 && echo {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // EOF or reset: the client is done
		}
	}
}
