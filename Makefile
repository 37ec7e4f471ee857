# Every recipe runs in bash with scripts/env.sh sourced (BASH_ENV), so the cgo
# flags that build gotch against libtorch are set in one place. Set
# LIBTORCH=/path/to/libtorch-2.1 for an official (CUDA) libtorch instead of
# Debian's.
SHELL := /bin/bash
export BASH_ENV := $(CURDIR)/scripts/env.sh

GO ?= go
BIN := $(CURDIR)/bin
TESTFLAGS ?= -timeout 60m
BENCHFLAGS ?= -run '^$$' -bench . -benchtime 3x -count 5

.PHONY: all setup build test bench run clean generate check-generated

all: build

setup:
	@scripts/setup.sh

build: setup
	$(GO) build -o $(BIN)/ ./plugin/cmd/m3gate ./sidecar/cmd/m3gate-sidecar

# test runs every package's tests. The sidecar binary is built first because
# the end-to-end tests start it as a real subprocess.
test: build
	M3GATE_SIDECAR=$(BIN)/m3gate-sidecar $(GO) test $(TESTFLAGS) ./...

bench: build
	M3GATE_SIDECAR=$(BIN)/m3gate-sidecar $(GO) test $(BENCHFLAGS) ./... | tee $(CURDIR)/build/bench.txt

# run is the main job: score an image with the model named in config.yaml
# (or the embedded tiny default). Pass arguments with ARGS="...".
run: build
	$(BIN)/m3gate $(ARGS)

clean:
	rm -rf $(BIN) build
