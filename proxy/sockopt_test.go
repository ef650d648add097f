package proxy

import (
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The proxy sets TCP_NODELAY and keepalive on its listening sockets only:
// an accepted socket must inherit them, or connections would lose both.
func TestAcceptedSocketOptions(t *testing.T) {
	for _, ip := range []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")} {
		lfd, err := listenSocket(ip, 0, false, 40*time.Second)
		if err != nil {
			t.Fatalf("listenSocket(%v): %v", ip, err)
		}
		defer unix.Close(lfd)
		sa, err := unix.Getsockname(lfd)
		if err != nil {
			t.Fatal(err)
		}
		family := unix.AF_INET
		if ip.Is6() {
			family = unix.AF_INET6
		}
		cfd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(cfd)
		if err := unix.Connect(cfd, sa); err != nil {
			t.Fatal(err)
		}
		var afd int
		for i := 0; i < 100; i++ { // the listener is nonblocking
			if afd, _, err = unix.Accept4(lfd, unix.SOCK_CLOEXEC); err != unix.EAGAIN {
				break
			}
			time.Sleep(time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(afd)
		for _, o := range []struct {
			name       string
			level, opt int
			want       int
		}{
			{"TCP_NODELAY", unix.IPPROTO_TCP, unix.TCP_NODELAY, 1},
			{"SO_KEEPALIVE", unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
			{"TCP_KEEPIDLE", unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 40},
			{"TCP_KEEPINTVL", unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 10},
			{"TCP_KEEPCNT", unix.IPPROTO_TCP, unix.TCP_KEEPCNT, keepaliveProbes},
		} {
			if got, err := unix.GetsockoptInt(afd, o.level, o.opt); err != nil || got != o.want {
				t.Errorf("%v: accepted socket's %s = %d (%v), want %d", ip, o.name, got, err, o.want)
			}
		}
	}
}
