#!/usr/bin/env bash
# check-import.sh: prove that a program importing uio builds and links with
# no flags, the way a user's module (or `go install ...@latest`) builds it.
#
# It writes a scratch module in a temp dir whose main opens and closes a loop
# on each backend ("aio" and "uring"), points it at this checkout with a
# replace directive, builds it and every command under cmd/ with no GOFLAGS,
# no -ldflags and no tags, and runs the program. Any link error (such as
# giouring's "invalid reference to syscall.munmap") fails the check.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
GO=${GO:-go}

# No flag may come in from outside: the point is a build with none.
unset GOFLAGS
if "$GO" env GOFLAGS | grep -q checklinkname; then
	echo "check-import: 'go env GOFLAGS' sets -checklinkname ($("$GO" env GOFLAGS)); unset it (go env -u GOFLAGS)" >&2
	exit 1
fi

WORK=$(mktemp -d /tmp/uio-check-import.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

goversion=$(awk '$1 == "go" { print $2; exit }' "$ROOT/go.mod")
cat >"$WORK/go.mod" <<MOD
module example.com/uio-import-check

go $goversion

require github.com/userland-io/uio v0.0.0

replace github.com/userland-io/uio => $ROOT
MOD
cp "$ROOT/go.sum" "$WORK/go.sum"
cat >"$WORK/main.go" <<'SRC'
// The smallest importer of uio: a loop on each backend, opened and closed.
package main

import (
	"fmt"
	"os"

	"github.com/userland-io/uio"
)

func main() {
	for _, backend := range []string{"aio", "uring"} {
		l, err := uio.NewLoop(uio.Config{Backend: backend})
		if err != nil {
			fmt.Fprintf(os.Stderr, "uio.NewLoop(Backend: %q): %v\n", backend, err)
			os.Exit(1)
		}
		if err := l.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "Close (%s): %v\n", backend, err)
			os.Exit(1)
		}
		fmt.Printf("uio.NewLoop(Backend: %q): ok\n", backend)
	}
}
SRC

cd "$WORK"
"$GO" mod tidy
echo "check-import: building a scratch module that imports uio, with no flags"
if ! "$GO" build -o "$WORK/uio-import-check" . ; then
	echo "check-import: FAIL: a program importing github.com/userland-io/uio does not build without flags" >&2
	exit 1
fi
"$WORK/uio-import-check"
mkdir "$WORK/bin"
# tidy kept only the sums the scratch main needs; the commands need the
# rest of uio's own (as `go install .../cmd/uioproxy@latest` would use).
sort -u "$ROOT/go.sum" go.sum -o go.sum
if ! "$GO" build -o "$WORK/bin/" github.com/userland-io/uio/cmd/... ; then
	echo "check-import: FAIL: the commands under cmd/ do not build from a dependent module without flags" >&2
	exit 1
fi
echo "check-import: ok ($(cd "$WORK/bin" && echo *) built as a dependency, no flags)"
