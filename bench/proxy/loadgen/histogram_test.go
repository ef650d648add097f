package main

import (
	"testing"
	"time"
)

func TestBucketBoundsAreContiguous(t *testing.T) {
	// Every value must land in a bucket whose upper bound is at least the
	// value and within 1/subBuckets of it.
	for _, v := range []uint64{0, 1, 31, 32, 33, 63, 64, 65, 127, 128, 1000, 123456, 1 << 40, 1<<63 + 12345} {
		b := bucketOf(v)
		up := bucketUpper(b)
		if up < v {
			t.Errorf("bucketOf(%d) = %d with upper bound %d below the value", v, b, up)
		}
		if v >= subBuckets && float64(up-v) > float64(v)/subBuckets {
			t.Errorf("bucketOf(%d): upper bound %d is more than 1/%d off", v, up, subBuckets)
		}
		if b > 0 && bucketUpper(b-1) >= v {
			t.Errorf("bucketOf(%d) = %d but bucket %d already covers up to %d", v, b, b-1, bucketUpper(b-1))
		}
	}
}

func TestQuantile(t *testing.T) {
	var h latencyHistogram
	for i := 1; i <= 1000; i++ {
		h.record(time.Duration(i) * time.Microsecond)
	}
	for q, want := range map[float64]time.Duration{0.5: 500 * time.Microsecond, 0.99: 990 * time.Microsecond} {
		got := h.quantile(q)
		if got < want || float64(got-want) > float64(want)/subBuckets {
			t.Errorf("quantile(%v) = %v, want %v within %d%%", q, got, want, 100/subBuckets)
		}
	}
	var empty latencyHistogram
	if empty.quantile(0.5) != 0 {
		t.Errorf("empty histogram quantile = %v, want 0", empty.quantile(0.5))
	}
}
