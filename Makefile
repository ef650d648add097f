# Every package builds with no extra flag. Only the alternative giouring ring
# setup (-tags giouring, see uring/doc.go) needs -ldflags=-checklinkname=0,
# because giouring pull-links syscall.munmap; that flag is passed on that one
# test line below and nowhere else.
GIOURING_FLAGS := -tags giouring -ldflags=-checklinkname=0
export GOTOOLCHAIN := auto
# Debian's golang-1.23 (what install-deps installs where no go is present).
GO ?= $(shell command -v go || echo /usr/lib/go-1.23/bin/go)

.PHONY: all deps build vet test test-kmod check-import demo bench syscalls bench-proxy bench-fio bench-storage bench-blockdev bin/uioproxy
all: build

deps:
	@./scripts/install-deps.sh

build: deps
	$(GO) build ./...

vet:
	$(GO) vet ./...

# Every test: the Go packages (engine, bindings and proxy also under the
# race detector), with the strace comparisons required rather than skipped; then
# the kernel module: checkpatch, a compile against sid's headers, and the
# checks inside qemu VMs booting Debian's 6.1 and 6.12 kernels. In between:
# the engine and uring/ again on the giouring ring setup, and a scratch
# module importing uio built with no flags (check-import). The Pebble
# example is a module of its own, so ./... does not reach it.
test: deps
	UIO_REQUIRE_STRACE=1 UIO_REQUIRE_NBDKIT=1 $(GO) test -count=1 -timeout 20m ./...
	$(GO) test -race -count=1 -timeout 15m . ./aio ./uring ./proxy
	$(GO) test $(GIOURING_FLAGS) -count=1 -timeout 10m . ./uring
	GO=$(GO) ./scripts/check-import.sh
	cd examples/pebble && $(GO) test -count=1 -timeout 10m ./...
	./kmod/test.sh

# A program importing uio (and cmd/...) builds and links with no flags.
check-import: deps
	GO=$(GO) ./scripts/check-import.sh

# Only the kernel module's checks (see kmod/test.sh for its switches).
test-kmod:
	./kmod/test.sh

# uioproxy's soak test for SOAK (default 10m) per backend: checksummed
# streams both ways through faulty upstreams and a reload every 3s; make
# test runs it for 25s per backend.
SOAK ?= 10m
.PHONY: soak
soak: deps
	UIOPROXY_SOAK=$(SOAK) $(GO) test -count=1 -v -run '^TestSoak$$' -timeout 0 ./proxy

# The main job: uioproxy in front of a local echo server on each backend,
# printing round trips/s and syscalls per forwarded message.
demo: deps
	$(GO) run ./examples/proxy-demo

bin/uioproxy: deps
	$(GO) build -o bin/uioproxy ./cmd/uioproxy

# strace-verified syscall counts: the engine's socket workload and uioproxy
# carrying 102,400 round trips, each on both backends; prints the tables.
syscalls: deps
	UIO_REQUIRE_STRACE=1 $(GO) test -count=1 -v -run '^TestSyscallsMatchStrace$$' .
	$(GO) test -count=1 -v -run '^TestSyscalls$$' -timeout 10m ./proxy

# uioproxy next to HAProxy, nginx, socat and an io.Copy proxy (bench/proxy).
bench-proxy: bin/uioproxy
	./bench/proxy/run.sh

# Our engine next to fio's libaio and io_uring engines (bench/fio).
bench-fio: deps
	./bench/fio/run.sh

# dio files and Pebble on them vs os.File and Pebble's default vfs.
bench-storage: deps
	./bench/storage.sh

# ABUSE vs nbd.ko vs the loop device, inside a 6.12 VM (bench/blockdev).
bench-blockdev: deps
	./bench/blockdev/run.sh 6.12

# Engine benchmarks: per-message cost through the loop vs plain syscalls.
bench: deps
	$(GO) test -run '^$$' -bench 'LoopSocket|PlainSyscalls|DoRead|PlainPread|DoParallel' -benchtime=20000x -count=5 .
	$(GO) test -run '^$$' -bench . -count=5 ./aio
