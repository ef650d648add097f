package diofs

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble"
	"github.com/userland-io/uio"
	"golang.org/x/sys/unix"
)

const ext4Magic = 0xEF53

func TestPebble(t *testing.T) {
	n := 1_000_000
	if testing.Short() {
		n = 50_000
	}
	for _, backend := range []string{uio.BackendAIO, uio.BackendUring} {
		t.Run(backend, func(t *testing.T) {
			l, err := uio.NewLoop(uio.Config{Backend: backend})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			dir := t.TempDir()
			var sf unix.Statfs_t
			if unix.Statfs(dir, &sf) == nil && sf.Type != ext4Magic {
				t.Logf("note: %s is not ext4; dio may run buffered there", dir)
			}
			fsys := New(l, nil)
			opts := &pebble.Options{FS: fsys}

			db, err := pebble.Open(dir, opts)
			if err != nil {
				t.Fatal(err)
			}
			// Batches of 100 keys, each committed with a synced WAL write.
			st0 := l.Stats()
			b := db.NewBatch()
			for i := range n {
				if err := b.Set(key(i), value(i), nil); err != nil {
					t.Fatal(err)
				}
				if (i+1)%100 == 0 || i == n-1 {
					if err := b.Commit(pebble.Sync); err != nil {
						t.Fatal(err)
					}
					b.Close()
					b = db.NewBatch()
				}
			}
			b.Close()
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
			t.Logf("wrote %d keys in %d synced batches; engine: %v", n, (n+99)/100, l.Stats().Sub(st0))

			db, err = pebble.Open(dir, &pebble.Options{FS: fsys})
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			it, err := db.NewIter(nil)
			if err != nil {
				t.Fatal(err)
			}
			i := 0
			for it.First(); it.Valid(); it.Next() {
				if !bytes.Equal(it.Key(), key(i)) || !bytes.Equal(it.Value(), value(i)) {
					t.Fatalf("entry %d: %q = %q", i, it.Key(), it.Value())
				}
				i++
			}
			if err := it.Close(); err != nil {
				t.Fatal(err)
			}
			if i != n {
				t.Fatalf("read back %d keys, want %d", i, n)
			}
			for _, k := range []int{0, n / 3, n - 1} {
				v, c, err := db.Get(key(k))
				if err != nil || !bytes.Equal(v, value(k)) {
					t.Fatalf("Get(%d) = %q, %v", k, v, err)
				}
				c.Close()
			}
		})
	}
}

func key(i int) []byte   { return []byte(fmt.Sprintf("key%09d", i)) }
func value(i int) []byte { return bytes.Repeat([]byte(fmt.Sprintf("v%d|", i)), 4) }
