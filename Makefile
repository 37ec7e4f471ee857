# Every recipe runs in bash with scripts/env.sh sourced (BASH_ENV), so the cgo
# flags that build gotch against libtorch are set in one place. Set
# LIBTORCH=/path/to/libtorch-2.1 for an official (CUDA) libtorch instead of
# Debian's.
SHELL := /bin/bash
export BASH_ENV := $(CURDIR)/scripts/env.sh

GO ?= go
BIN := $(CURDIR)/bin
TESTFLAGS ?= -timeout 60m

.PHONY: all setup build test bench run clean

all: build

setup:
	@scripts/setup.sh

build: setup
	@if [ "$$($(GO) list -f '{{.Stale}}' github.com/sugarme/gotch/libtch 2>/dev/null)" = true ]; then \
		echo "m3gate: compiling gotch's C++ layer against libtorch (first build only, about 4 min on 2 cores; later builds take seconds) ..."; fi
	$(GO) build -o $(BIN)/ ./plugin/cmd/m3gate ./sidecar/cmd/m3gate-sidecar

# test runs every package's tests. The sidecar binary is built first because
# the end-to-end tests start it as a real subprocess.
test: build
	M3GATE_SIDECAR=$(BIN)/m3gate-sidecar $(GO) test $(TESTFLAGS) ./...

# bench measures speed and memory (medians; see scripts/bench.sh).
bench: build
	scripts/bench.sh

# run is the main job: score the example images in examples/ with the model
# of model.dir (config.yaml; default models/smolvlm-256m). When that folder
# does not exist, a tiny model with random weights is generated once into
# build/demo-model and used instead, with a banner saying its scores are
# meaningless. ARGS="..." runs bin/m3gate with those arguments instead, e.g.
# make run ARGS="score my.png --prompt 'a red fox' --json", with the same
# fallback for score, serve and run (see scripts/run.sh).
run: build
	@scripts/run.sh $(BIN) $(ARGS)

clean:
	rm -rf $(BIN) build
