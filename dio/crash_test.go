package dio

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/userland-io/uio"
)

// The crash test re-executes the test binary as a child that appends
// records and Syncs after each, printing every synced size on stdout. The
// parent kills it with SIGKILL in the middle, then checks that every byte
// reported synced is in the file.

const crashEnv = "DIO_CRASH_CHILD" // path:backend

// crashByte is the content of the byte at offset i.
func crashByte(i int64) byte { return byte(i*131+i>>9) | 1 }

func crashChild() {
	path, backend, _ := strings.Cut(os.Getenv(crashEnv), ":")
	l, err := uio.NewLoop(uio.Config{Backend: backend})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	f, err := Open(l, path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644, &Options{ChunkSize: 16384})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	w := bufio.NewWriter(os.Stdout)
	rec := make([]byte, 0, 10000)
	for i := 0; ; i++ {
		// Record lengths that are odd, small and large: unaligned tails,
		// chunk writes in flight at Sync time.
		n := []int{1, 37, 512, 4095, 9001, 333}[i%6]
		size := f.Size()
		rec = rec[:n]
		for k := range rec {
			rec[k] = crashByte(size + int64(k))
		}
		if _, err := f.Append(rec); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		if i%3 != 2 { // some appends stay unsynced
			if err := f.Sync(); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(2)
			}
			fmt.Fprintf(w, "synced %d\n", f.Size())
			w.Flush()
		}
	}
}

func TestCrash(t *testing.T) {
	for _, b := range backends {
		t.Run(b, func(t *testing.T) {
			path := filepath.Join(ext4Dir(t), "wal")
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), crashEnv+"="+path+":"+b)
			cmd.Stderr = os.Stderr
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			sc := bufio.NewScanner(out)
			var synced int64
			lines := 0
			deadline := time.Now().Add(20 * time.Second)
			for sc.Scan() {
				v, err := strconv.ParseInt(strings.TrimPrefix(sc.Text(), "synced "), 10, 64)
				if err != nil {
					t.Fatalf("child said %q", sc.Text())
				}
				synced = v
				if lines++; lines == 300 || time.Now().After(deadline) {
					cmd.Process.Signal(syscall.SIGKILL)
					break
				}
			}
			cmd.Wait()
			if lines < 10 {
				t.Fatalf("child synced only %d times", lines)
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if int64(len(b)) < synced {
				t.Fatalf("file has %d bytes, %d were synced", len(b), synced)
			}
			for i := range synced {
				if b[i] != crashByte(i) {
					t.Fatalf("synced byte %d of %d is %#x, want %#x", i, synced, b[i], crashByte(i))
				}
			}
			// Past the last synced byte: bytes appended later that landed,
			// or zero padding (left by the Syncs while the file was open).
			for i := synced; i < int64(len(b)); i++ {
				if b[i] != 0 && b[i] != crashByte(i) {
					t.Fatalf("byte %d (after %d synced) is %#x, want %#x or padding", i, synced, b[i], crashByte(i))
				}
			}
			t.Logf("killed after %d syncs: %d bytes synced, %d in the file", lines, synced, len(b))
		})
	}
}
