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
# make run ARGS="score my.png --prompt 'a red fox' --json".
run: build
ifneq ($(strip $(ARGS)),)
	$(BIN)/m3gate $(ARGS)
else
	@set -e; \
	banner() { \
		echo "=============================================================================="; \
		echo " DEMO MODEL: build/demo-model has RANDOM weights, so these scores and"; \
		echo " descriptions mean nothing; they only show that the whole path works."; \
		echo " For real scores fetch SmolVLM-256M-Instruct (about 1 GB) into model.dir:"; \
		echo "     bin/m3gate model fetch smolvlm-256m"; \
		echo " then run 'make run' again (or set model.dir / M3GATE_MODEL_DIR to a model)."; \
		echo "=============================================================================="; \
	}; \
	dir=$$($(BIN)/m3gate config print | awk '/^model:/ {m=1; next} /^[^ ]/ {m=0} \
		m && $$1 == "dir:" {sub(/^ *dir: */, ""); gsub(/^"|"$$/, ""); print; exit}'); \
	if [ -n "$$dir" ] && [ -d "$$dir" ]; then \
		echo "m3gate: scoring examples/ with the model in $$dir"; \
		exec $(BIN)/m3gate score --prompts-file examples/prompts.jsonl; \
	fi; \
	if [ ! -f build/demo-model/config.json ]; then \
		echo "m3gate: no model in '$$dir' (model.dir); generating a tiny random-weight demo model in build/demo-model (once)"; \
		rm -rf build/demo-model build/demo-model.tmp; \
		$(BIN)/m3gate model tiny --family idefics3 --size tiny --out build/demo-model.tmp; \
		mv build/demo-model.tmp build/demo-model; \
	fi; \
	banner; \
	rc=0; M3GATE_MODEL_DIR=build/demo-model $(BIN)/m3gate score --prompts-file examples/prompts.jsonl || rc=$$?; \
	banner; \
	exit $$rc
endif

clean:
	rm -rf $(BIN) build
