package uio

import (
	"container/heap"
	"time"
)

// Timer is a callback the loop runs at a deadline, made by
// Handle.AfterFunc. The loop sleeps in the kernel no longer than its
// nearest timer, so timers cost no syscall of their own.
type Timer struct {
	when time.Time
	// fn is the engine's own callback (deadlines, OpTimeout), user a
	// Handle.AfterFunc's; one of them is set.
	fn    func()
	user  func(Handle)
	index int // in the heap; -1 once fired or stopped
	l     *Loop
}

// addTimer arms a timer running fn (the engine's) or user (a caller's).
func (l *Loop) addTimer(d time.Duration, fn func(), user func(Handle)) *Timer {
	t := &Timer{when: time.Now().Add(d), fn: fn, user: user, l: l}
	heap.Push(&l.timers, t)
	return t
}

// Stop prevents the timer from firing and reports whether it had been
// pending. Like the Handle that made it, it belongs to the loop's
// goroutine: off it, it panics with ErrNotOnLoop.
func (t *Timer) Stop() bool {
	if t == nil || t.index < 0 {
		return false
	}
	if err := t.l.onLoop(); err != nil {
		panic(err)
	}
	heap.Remove(&t.l.timers, t.index)
	return true
}

type timerHeap []*Timer

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].when.Before(h[j].when) }
func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *timerHeap) Push(x any) {
	t := x.(*Timer)
	t.index = len(*h)
	*h = append(*h, t)
}
func (h *timerHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	t.index = -1
	return t
}

func (h *timerHeap) next() (time.Time, bool) {
	if len(*h) == 0 {
		return time.Time{}, false
	}
	return (*h)[0].when, true
}

// fire runs every timer due at now.
func (h *timerHeap) fire(now time.Time) {
	for len(*h) > 0 && !(*h)[0].when.After(now) {
		t := heap.Pop(h).(*Timer)
		if t.user != nil {
			t.user(Handle{t.l})
		} else {
			t.fn()
		}
	}
}

func (h *timerHeap) clear() {
	for len(*h) > 0 {
		heap.Pop(h)
	}
}
