// Command iocopy is the plain Go proxy the benchmarks compare uioproxy with:
// a goroutine per direction and io.Copy, the way most Go proxies are
// written. Note that io.Copy between two *net.TCPConn uses splice(2) on
// Linux, so this peer is "idiomatic Go", not "user-space copies only".
//
//	iocopy -listen 127.0.0.1:9001 -target 127.0.0.1:9000
package main

import (
	"flag"
	"io"
	"log"
	"net"
	"os"
	"sync"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:9001", "address to accept clients on")
	target := flag.String("target", "127.0.0.1:9000", "address to forward each client to")
	connectTimeout := flag.Duration("connect-timeout", 5*time.Second, "give up connecting to -target after this long")
	maxTime := flag.Duration("max-time", 0, "exit after this long even if nobody stops us (0 = never)")
	flag.Parse()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("iocopy: listen on %s: %v", *listen, err)
	}
	if *maxTime > 0 {
		time.AfterFunc(*maxTime, func() { os.Exit(0) })
	}
	for {
		client, err := ln.Accept()
		if err != nil {
			log.Fatalf("iocopy: accept on %s: %v", *listen, err)
		}
		go forward(client, *target, *connectTimeout)
	}
}

func forward(client net.Conn, target string, connectTimeout time.Duration) {
	defer client.Close()
	upstream, err := net.DialTimeout("tcp", target, connectTimeout)
	if err != nil {
		log.Printf("iocopy: connect to %s: %v", target, err)
		return
	}
	defer upstream.Close()
	var wg sync.WaitGroup
	wg.Add(2)
	go pipe(upstream, client, &wg)
	go pipe(client, upstream, &wg)
	wg.Wait()
}

// pipe copies until EOF, then half-closes dst so the other side sees the
// end of this direction while the other direction may still be running.
func pipe(dst, src net.Conn, wg *sync.WaitGroup) {
	defer wg.Done()
	io.Copy(dst, src)
	if tc, ok := dst.(*net.TCPConn); ok {
		tc.CloseWrite()
	} else {
		dst.Close()
	}
}
