package uio

import (
	"container/heap"
	"time"
)

// Timer is a callback the loop runs at a deadline, made by AfterFunc. The
// loop sleeps in the kernel no longer than its nearest timer, so timers
// cost no syscall of their own.
type Timer struct {
	when  time.Time
	fn    func()
	index int // in the heap; -1 once fired or stopped
	h     *timerHeap
}

// AfterFunc runs fn on the loop's goroutine once d has passed. Loop
// goroutine only.
func (l *Loop) AfterFunc(d time.Duration, fn func()) *Timer {
	t := &Timer{when: time.Now().Add(d), fn: fn, h: &l.timers}
	heap.Push(&l.timers, t)
	return t
}

// Stop prevents the timer from firing and reports whether it had been
// pending. Loop goroutine only.
func (t *Timer) Stop() bool {
	if t == nil || t.index < 0 {
		return false
	}
	heap.Remove(t.h, t.index)
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
		heap.Pop(h).(*Timer).fn()
	}
}

func (h *timerHeap) clear() {
	for len(*h) > 0 {
		heap.Pop(h)
	}
}
