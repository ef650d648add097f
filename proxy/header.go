package proxy

import (
	"errors"
	"fmt"

	"go.uber.org/zap"

	"github.com/userland-io/uio"
)

// headerReader reads the PROXY protocol header a front load balancer sends
// before the client's stream (Mapping.AcceptProxy). It receives into the
// client->upstream buffer; whatever follows the header stays there and is
// the first thing sent upstream.
type headerReader struct {
	c     *conn
	n     int // bytes in the buffer
	id    uio.OpID
	busy  bool
	timer *uio.Timer
	done  func(uio.Handle, uio.Result)
}

func (c *conn) readHeader() {
	h := &headerReader{c: c}
	h.done = h.onRecv
	c.hdr = h
	c.d[dirUp].buf = c.w.getBuf()
	if t := c.w.s.cfg.ProxyHeaderTimeout; t > 0 {
		h.timer = c.w.h.AfterFunc(t, h.onTimeout)
	}
	h.recv()
}

func (h *headerReader) recv() {
	c := h.c
	id, err := c.w.h.Start(uio.Op{Kind: uio.OpRecv, Fd: c.cfd, Buf: c.d[dirUp].buf[h.n:], Done: h.done})
	if err != nil {
		c.abort(endError, rstBoth)
		return
	}
	h.id, h.busy = id, true
	c.ops++
}

func (h *headerReader) onRecv(_ uio.Handle, r uio.Result) {
	c := h.c
	h.busy = false
	if !c.opEnded(stHeader) {
		return
	}
	switch {
	case r.Res < 0:
		c.ctr.resets.add(1)
		c.abort(endClientReset, rstBoth)
		return
	case r.Res == 0:
		h.reject(errors.New("client closed before a complete PROXY header"))
		return
	}
	h.n += int(r.Res)
	buf := c.d[dirUp].buf
	n, src, dst, err := parseProxyHeader(buf[:h.n])
	switch {
	case errors.Is(err, errHeaderIncomplete):
		if h.n == len(buf) {
			h.reject(fmt.Errorf("PROXY header longer than the %d-byte buffer", len(buf)))
			return
		}
		h.recv()
		return
	case err != nil:
		h.reject(err)
		return
	}
	if h.timer != nil {
		h.timer.Stop()
		h.timer = nil
	}
	if src.IsValid() {
		c.client, c.local, c.clientKnown = src, dst, true
	}
	c.d[dirUp].n = copy(buf, buf[n:h.n])
	c.hdr = nil
	c.state = stConnecting
	c.route()
}

func (h *headerReader) onTimeout(uio.Handle) {
	h.timer = nil
	c := h.c
	if c.state != stHeader {
		return
	}
	c.ctr.badHeaders.add(1)
	c.w.s.log.Warn("no PROXY header in time, resetting client", zap.String("mapping", c.ms.label),
		zap.String("client", c.clientString()), zap.Duration("timeout", c.w.s.cfg.ProxyHeaderTimeout))
	c.abort(endHeaderTimeout, rstClient)
}

func (h *headerReader) reject(err error) {
	c := h.c
	c.ctr.badHeaders.add(1)
	c.w.s.log.Warn("bad PROXY header, resetting client", zap.String("mapping", c.ms.label),
		zap.String("client", c.clientString()), zap.Error(err))
	c.abort(endBadHeader, rstClient)
}
