// Package scripts_test checks the shell scripts behind the Makefile: the
// `make run` fallback to a demo model and the build flags of scripts/env.sh.
package scripts_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// fakeM3gate is a bin/m3gate that logs each call (arguments and
// M3GATE_MODEL_DIR) to $FAKE_LOG, prints a config whose model.dir is
// $FAKE_MODEL_DIR, and writes a model folder for `model tiny --out DIR`
// (naming DIR, as the real one does).
const fakeM3gate = `#!/usr/bin/env bash
echo "$* | model=${M3GATE_MODEL_DIR:-}" >>"$FAKE_LOG"
case "$1 $2" in
"config print") printf 'model:\n  dir: %s\n  family: idefics3\nscoring:\n  batch_size: 1\n' "$FAKE_MODEL_DIR" ;;
"model tiny")
  out="${@: -1}"
  mkdir -p "$out" && echo '{}' >"$out/config.json"
  echo "wrote a tiny idefics3 model with random weights to $out" ;;
esac
`

// runScript runs scripts/run.sh with the fake binary in a fresh working
// folder and returns its output and the fake's call log.
func runScript(t *testing.T, modelDir string, env []string, args ...string) (string, []string) {
	t.Helper()
	script, err := filepath.Abs("run.sh")
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	if err := os.WriteFile(filepath.Join(bin, "m3gate"), []byte(fakeM3gate), 0o755); err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	log := filepath.Join(t.TempDir(), "log")
	cmd := exec.Command("bash", append([]string{script, bin}, args...)...)
	cmd.Dir = work
	cmd.Env = append(os.Environ(), "FAKE_LOG="+log, "FAKE_MODEL_DIR="+modelDir, "M3GATE_MODEL_DIR=")
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("run.sh %v: %v\n%s", args, err, out)
	}
	b, _ := os.ReadFile(log)
	return string(out), strings.Split(strings.TrimSpace(string(b)), "\n")
}

// TestRunFallsBackToDemoModel: `make run` and `make run ARGS="score …"`
// use a generated demo model when model.dir does not exist, and the
// output names build/demo-model, never its temporary folder.
func TestRunFallsBackToDemoModel(t *testing.T) {
	existing := t.TempDir()
	tests := []struct {
		name     string
		modelDir string
		env      []string
		args     []string
		want     string // the last call of bin/m3gate
		demo     bool   // generated the demo model and showed the banner
	}{
		{"no ARGS", "models/none", nil, nil, "score --prompts-file examples/prompts.jsonl | model=build/demo-model", true},
		{"ARGS score", "models/none", nil, []string{"score", "my.png", "--prompt", "a red fox", "--json"},
			"score my.png --prompt a red fox --json | model=build/demo-model", true},
		{"ARGS serve", "models/none", nil, []string{"serve"}, "serve | model=build/demo-model", true},
		{"ARGS score --model", "models/none", nil, []string{"score", "a.png", "--model", "m"}, "score a.png --model m | model=", false},
		{"M3GATE_MODEL_DIR set", "models/none", []string{"M3GATE_MODEL_DIR=mine"}, []string{"score", "a.png"}, "score a.png | model=mine", false},
		{"ARGS eval needs no model", "models/none", nil, []string{"eval", "--predictions", "p.csv"}, "eval --predictions p.csv | model=", false},
		{"model.dir exists", existing, nil, nil, "score --prompts-file examples/prompts.jsonl | model=", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, calls := runScript(t, tt.modelDir, tt.env, tt.args...)
			if got := calls[len(calls)-1]; got != tt.want {
				t.Errorf("last call %q, want %q (calls %q)", got, tt.want, calls)
			}
			generated := false
			for _, c := range calls {
				generated = generated || strings.HasPrefix(c, "model tiny")
			}
			if banner := strings.Contains(out, "DEMO MODEL: build/demo-model has RANDOM weights"); generated != tt.demo || banner != tt.demo {
				t.Errorf("generated %v, banner %v, want %v:\n%s", generated, banner, tt.demo, out)
			}
			if strings.Contains(out, "demo-model.tmp") {
				t.Errorf("output names the temporary folder:\n%s", out)
			}
		})
	}
}

// cgoFlags sources scripts/env.sh of the checkout at root and returns the
// cgo flags it exports.
func cgoFlags(t *testing.T, root, toolchain string) string {
	t.Helper()
	cmd := exec.Command("bash", "-c", `source scripts/env.sh && printf '%s\n%s\n%s\n' "${CGO_CFLAGS:-}" "${CGO_CXXFLAGS:-}" "${CGO_LDFLAGS:-}"`)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "M3GATE_TOOLCHAIN_DIR="+toolchain, "LIBTORCH=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("source %s/scripts/env.sh: %v\n%s", root, err, out)
	}
	return string(out)
}

// TestCgoFlagsDoNotNameTheCheckout: Go keys its build cache on the cgo
// flags, so two clones at different paths must export identical flags
// (else each clone recompiles gotch's C++ layer, minutes).
func TestCgoFlagsDoNotNameTheCheckout(t *testing.T) {
	toolchain := t.TempDir()
	var flags []string
	for _, name := range []string{"clone-a", "elsewhere/clone-b"} {
		root := filepath.Join(t.TempDir(), name)
		for _, f := range []string{"env.sh", "toolchain/gotch_v091_torch113_compat.h"} {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(root, "scripts", f)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		got := cgoFlags(t, root, toolchain)
		if strings.Contains(got, root) {
			t.Errorf("cgo flags name the checkout %s:\n%s", root, got)
		}
		flags = append(flags, got)
	}
	if flags[0] != flags[1] {
		t.Errorf("cgo flags differ between clones:\n%s\n--\n%s", flags[0], flags[1])
	}
	if !strings.Contains(flags[0], "-include "+toolchain+"/gotch_v091_torch113_compat.h") {
		t.Errorf("cgo flags do not include the compat header from the toolchain folder:\n%s", flags[0])
	}
	if _, err := os.Stat(filepath.Join(toolchain, "gotch_v091_torch113_compat.h")); err != nil {
		t.Errorf("compat header not copied: %v", err)
	}
}
