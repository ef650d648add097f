# giouring (pinned, unmaintained) pull-links syscall.munmap, which Go >= 1.23
# refuses unless the linkname check is off. Every build, test and benchmark
# goes through these variables so nobody has to remember the flag.
GO       ?= go
LDFLAGS  := -ldflags=-checklinkname=0
export GOFLAGS := $(LDFLAGS)

.PHONY: all build vet test deps
all: build

deps:
	./scripts/install-deps.sh

build:
	$(GO) build ./...

vet:
	$(GO) vet ./...

test: deps
	$(GO) test -count=1 ./...
