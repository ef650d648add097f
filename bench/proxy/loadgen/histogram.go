package main

import (
	"math/bits"
	"time"
)

// latencyHistogram records durations in log-linear buckets (the HDR
// histogram idea): each power of two of nanoseconds is split into
// subBuckets equal slices, so a quantile is off by at most 1/subBuckets
// (about 3%) whatever the range, in a fixed few KiB instead of a slice of
// millions of samples. One histogram per goroutine, merged at the end, keeps
// recording free of locks.
type latencyHistogram struct {
	counts [64 * subBuckets]uint64
	total  uint64
}

const (
	subBucketBits = 5
	subBuckets    = 1 << subBucketBits
)

func (h *latencyHistogram) record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.counts[bucketOf(uint64(d))]++
	h.total++
}

func (h *latencyHistogram) merge(o *latencyHistogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.total += o.total
}

// quantile returns the upper bound of the bucket holding the q-th sample
// (0 < q <= 1), so reported latencies err on the slow side.
func (h *latencyHistogram) quantile(q float64) time.Duration {
	if h.total == 0 {
		return 0
	}
	rank := uint64(q*float64(h.total) + 0.5)
	if rank < 1 {
		rank = 1
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return time.Duration(bucketUpper(i))
		}
	}
	return time.Duration(bucketUpper(len(h.counts) - 1))
}

// bucketOf maps v to its bucket: values below subBuckets get one bucket
// each; above, the top subBucketBits+1 bits choose it.
func bucketOf(v uint64) int {
	if v < subBuckets {
		return int(v)
	}
	shift := bits.Len64(v) - subBucketBits - 1 // keep the top 6 bits: 1xxxxx
	return (shift+1)*subBuckets + int(v>>shift) - subBuckets
}

// bucketUpper is the largest value that falls in bucket i.
func bucketUpper(i int) uint64 {
	if i < subBuckets {
		return uint64(i)
	}
	shift := i/subBuckets - 1
	mantissa := uint64(i%subBuckets + subBuckets)
	return (mantissa+1)<<shift - 1
}
