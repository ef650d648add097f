package dio

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/userland-io/uio"
)

// A file synced since its last full chunk writes the next full chunk from
// Append, through a lone caller's Do (a plain pwrite, nothing for the
// loop); one appended in bulk between Syncs submits its chunk writes to
// the loop and keeps appending behind them. Both read back intact.
func TestChunkWrites(t *testing.T) {
	const chunk, rec, n = 16 << 10, 4 << 10, 40 // 10 chunks
	for _, b := range backends {
		for _, synced := range []bool{true, false} {
			name := b + "/bulk"
			if synced {
				name = b + "/synced"
			}
			t.Run(name, func(t *testing.T) {
				// A loop of its own, so that its counters are this test's.
				l, err := uio.NewLoop(uio.Config{Backend: b})
				if err != nil {
					t.Fatal(err)
				}
				defer l.Close()
				path := filepath.Join(ext4Dir(t), "c")
				f, err := Open(l, path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644, &Options{ChunkSize: chunk})
				if err != nil {
					t.Fatal(err)
				}
				if !f.Direct() {
					t.Skip("not direct")
				}
				var want []byte
				st0 := l.Stats()
				for i := range n {
					p := bytes.Repeat([]byte{byte(i + 1)}, rec)
					want = append(want, p...)
					if _, err := f.Append(p); err != nil {
						t.Fatal(err)
					}
					if synced {
						if err := f.Sync(); err != nil {
							t.Fatal(err)
						}
					}
				}
				if err := f.Sync(); err != nil {
					t.Fatal(err)
				}
				d := l.Stats().Sub(st0)
				t.Logf("%+v", d)
				chunks := uint64(n * rec / chunk)
				if synced && d.OpsStarted != 0 {
					t.Errorf("append+Sync: %d ops went to the loop, want 0 (every write and fdatasync direct)", d.OpsStarted)
				}
				if !synced && d.OpsStarted < chunks-1 {
					// The last chunk fills after the Sync-free run; the
					// ones before are all in flight behind the appends.
					t.Errorf("bulk appends: %d ops went to the loop, want the %d chunk writes", d.OpsStarted, chunks)
				}
				if err := f.Close(); err != nil {
					t.Fatal(err)
				}
				got, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("file reads back %d bytes, want the %d appended", len(got), len(want))
				}
			})
		}
	}
}
