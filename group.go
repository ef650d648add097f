package uio

import (
	"fmt"
	"runtime"
	"sync/atomic"
)

// Group runs one Loop per core and spreads work across them.
type Group struct {
	loops []*Loop
	next  atomic.Uint32
}

// NewGroup starts n loops (n <= 0: one per CPU) with the same config, but
// for Config.CPUs: loop i is pinned to CPUs[i%len(CPUs)] alone.
func NewGroup(n int, cfg Config) (*Group, error) {
	if n <= 0 {
		n = runtime.NumCPU()
	}
	g := &Group{}
	for i := 0; i < n; i++ {
		c := cfg
		if len(cfg.CPUs) > 0 {
			c.CPUs = []int{cfg.CPUs[i%len(cfg.CPUs)]}
		}
		l, err := NewLoop(c)
		if err != nil {
			g.Close()
			return nil, fmt.Errorf("uio: group loop %d of %d: %w", i+1, n, err)
		}
		g.loops = append(g.loops, l)
	}
	return g, nil
}

// Loops returns the group's loops.
func (g *Group) Loops() []*Loop { return g.loops }

// Next returns the loops in turn, to spread new work (connections, files)
// evenly. Safe from any goroutine.
func (g *Group) Next() *Loop {
	return g.loops[int(g.next.Add(1)-1)%len(g.loops)]
}

// Stats sums the loops' counters.
func (g *Group) Stats() Stats {
	var s Stats
	for _, l := range g.loops {
		s.add(l.Stats())
	}
	return s
}

// Close closes every loop.
func (g *Group) Close() error {
	var first error
	for _, l := range g.loops {
		if err := l.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}
