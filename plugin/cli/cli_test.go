package cli

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/m3gate/m3gate/plugin/config"
)

// run executes m3gate with args in a temporary working directory (so a
// stray ./config.yaml is not read) and returns exit code, stdout, stderr.
func run(t *testing.T, env []string, stdin string, args ...string) (int, string, string) {
	t.Helper()
	t.Chdir(t.TempDir())
	var out, errb bytes.Buffer
	code := Execute(context.Background(), args, strings.NewReader(stdin), &out, &errb, env)
	return code, out.String(), errb.String()
}

func TestHelpListsSubcommands(t *testing.T) {
	code, out, _ := run(t, nil, "", "--help")
	if code != ExitOK {
		t.Fatalf("code = %d, want 0", code)
	}
	for _, sub := range []string{"score", "serve", "worker", "run", "distill", "finetune", "train-predictor", "eval", "report", "model", "data", "config"} {
		if !strings.Contains(out, "\n  "+sub+" ") {
			t.Errorf("--help does not list %q:\n%s", sub, out)
		}
	}
}

func TestUnknownCommandIsUsageError(t *testing.T) {
	code, _, errOut := run(t, nil, "", "frobnicate")
	if code != ExitUsage {
		t.Errorf("code = %d, want %d", code, ExitUsage)
	}
	if !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Errorf("stderr = %q", errOut)
	}
}

// fakeSidecar writes an executable shell script named like the sidecar that
// records its arguments and stdin, writes to stdout/stderr and exits with
// the code in $FAKE_EXIT.
func fakeSidecar(t *testing.T, dir string) string {
	t.Helper()
	if runtime.GOOS == "windows" {
		t.Skip("shell script fake needs a unix shell")
	}
	p := filepath.Join(dir, SidecarName())
	script := `#!/bin/sh
printf '%s\n' "$@" > "$FAKE_LOG"
cat >> "$FAKE_LOG"
echo "sidecar stdout"
echo "sidecar stderr" >&2
exit ${FAKE_EXIT:-0}
`
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestModelTinyForwardsToSidecar(t *testing.T) {
	dir := t.TempDir()
	bin := fakeSidecar(t, dir)
	log := filepath.Join(dir, "log")
	tests := []struct {
		name     string
		exit     string
		wantCode int
	}{
		{"success", "0", 0},
		{"failure passes exit code", "7", 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := []string{"M3GATE_SIDECAR=" + bin, "FAKE_LOG=" + log, "FAKE_EXIT=" + tt.exit, "PATH=/usr/bin:/bin"}
			code, out, errOut := run(t, env, "from stdin\n", "model", "tiny", "--out", "/tmp/x", "--size", "256m", "--seed", "42")
			if code != tt.wantCode {
				t.Errorf("code = %d, want %d (stderr %q)", code, tt.wantCode, errOut)
			}
			if out != "sidecar stdout\n" {
				t.Errorf("stdout = %q", out)
			}
			if errOut != "sidecar stderr\n" {
				t.Errorf("stderr = %q, want only the sidecar's", errOut)
			}
			b, err := os.ReadFile(log)
			if err != nil {
				t.Fatal(err)
			}
			want := "model\ntiny\n--family\nidefics3\n--out\n/tmp/x\n--size\n256m\n--seed\n42\nfrom stdin\n"
			if string(b) != want {
				t.Errorf("sidecar saw %q, want %q", b, want)
			}
		})
	}
}

func TestModelTinyRejectsBadFlags(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"model", "tiny", "--out", "d", "--size", "huge"}, `unknown --size "huge"`},
		{[]string{"model", "tiny", "--out", "d", "--family", "llava"}, `unknown --family "llava"`},
		{[]string{"model", "tiny"}, "--out DIR is required"},
	}
	for _, tt := range tests {
		code, _, errOut := run(t, []string{"M3GATE_SIDECAR=/nonexistent"}, "", tt.args...)
		if code != ExitUsage || !strings.Contains(errOut, tt.want) {
			t.Errorf("%v: code %d stderr %q, want %d and %q", tt.args, code, errOut, ExitUsage, tt.want)
		}
	}
}

func TestModelTinyCancel(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("unix only")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, SidecarName())
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nexec sleep 30\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	var out, errb bytes.Buffer
	start := time.Now()
	code := Execute(ctx, []string{"model", "tiny", "--out", "x"}, strings.NewReader(""), &out, &errb, []string{"M3GATE_SIDECAR=" + bin})
	if code == 0 {
		t.Errorf("code = 0 after cancel")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancel took %v", d)
	}
	if !strings.Contains(errb.String(), "context deadline exceeded") {
		t.Errorf("stderr = %q", errb.String())
	}
}

func TestLocateSidecar(t *testing.T) {
	dir := t.TempDir()
	envBin := fakeSidecar(t, filepath.Join(dir))
	cfgDir := filepath.Join(dir, "cfg")
	pathDir := filepath.Join(dir, "path")
	for _, d := range []string{cfgDir, pathDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cfgBin := fakeSidecar(t, cfgDir)
	pathBin := fakeSidecar(t, pathDir)
	notExec := filepath.Join(dir, "plain")
	os.WriteFile(notExec, []byte("x"), 0o644)

	tests := []struct {
		name       string
		env        []string
		configured string
		want       string
		wantErr    string
	}{
		{"env wins", []string{"M3GATE_SIDECAR=" + envBin, "PATH=" + pathDir}, cfgBin, envBin, ""},
		{"config next", []string{"PATH=" + pathDir}, cfgBin, cfgBin, ""},
		{"path last", []string{"PATH=/nonexistent" + string(os.PathListSeparator) + pathDir}, "", pathBin, ""},
		{"missing env target", []string{"M3GATE_SIDECAR=" + filepath.Join(dir, "nope")}, cfgBin, "", "$M3GATE_SIDECAR"},
		{"config not executable", nil, notExec, "", "not executable"},
		{"nowhere", []string{"PATH=/nonexistent"}, "", "", "make build"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := LocateSidecar(tt.env, tt.configured)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("got %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

func TestConfigPrintDefaults(t *testing.T) {
	code, out, errOut := run(t, nil, "", "config", "print")
	if code != 0 {
		t.Fatalf("code %d, stderr %q", code, errOut)
	}
	for _, want := range []string{"listen: 127.0.0.1:8190", "family: idefics3", "built-in defaults"} {
		if !strings.Contains(out, want) {
			t.Errorf("config print lacks %q:\n%s", want, out)
		}
	}
}

func TestConfigFlag(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(good, []byte("daemon:\n  listen: 127.0.0.1:9100\n"), 0o644)
	os.WriteFile(bad, []byte("daemon:\n  queue_size: 0\n"), 0o644)
	tests := []struct {
		name     string
		args     []string
		env      []string
		cwdFile  string // written as ./config.yaml
		wantCode int
		wantOut  string
		wantErr  string
	}{
		{"flag", []string{"--config", good, "config", "print"}, nil, "", 0, "listen: 127.0.0.1:9100", ""},
		{"env overrides flag", []string{"--config", good, "config", "print"}, []string{"M3GATE_DAEMON_LISTEN=127.0.0.1:9200"}, "", 0, "listen: 127.0.0.1:9200", ""},
		{"cwd config.yaml", []string{"config", "print"}, nil, "log:\n  level: debug\n", 0, "level: debug", ""},
		{"bad value names file and line", []string{"--config", bad, "config", "print"}, nil, "", ExitError, "", bad + ":2: daemon.queue_size: 0 is out of range [1, 100000]"},
		{"bad config fails every command", []string{"--config", bad, "serve"}, nil, "", ExitError, "", "daemon.queue_size"},
		{"missing file", []string{"--config", filepath.Join(dir, "nope.yaml"), "config", "print"}, nil, "", ExitError, "", "no such file"},
		{"bad env", []string{"config", "print"}, []string{"M3GATE_MODEL_THREADS=x"}, "", ExitError, "", "$M3GATE_MODEL_THREADS"},
		{"M3GATE_CONFIG", []string{"config", "print"}, []string{"M3GATE_CONFIG=" + good}, "log:\n  level: debug\n", 0, "listen: 127.0.0.1:9100", ""},
		{"flag beats M3GATE_CONFIG", []string{"--config", good, "config", "print"}, []string{"M3GATE_CONFIG=" + bad}, "", 0, "listen: 127.0.0.1:9100", ""},
		{"M3GATE_CONFIG missing file", []string{"config", "print"}, []string{"M3GATE_CONFIG=" + filepath.Join(dir, "nope.yaml")}, "", ExitError, "", "(from $M3GATE_CONFIG): stat"},
		{"M3GATE_CONFIG empty", []string{"config", "print"}, []string{"M3GATE_CONFIG="}, "", ExitError, "", "$M3GATE_CONFIG is set but empty"},
		{"env list over file list", []string{"config", "print"}, []string{"M3GATE_SCORING_ASPECTS=quality,sharpness"}, "scoring:\n  aspects:\n    - quality\n    - correspondence\n", ExitError, "",
			`$M3GATE_SCORING_ASPECTS: scoring.aspects[1]: unknown aspect "sharpness"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Chdir(t.TempDir())
			if tt.cwdFile != "" {
				os.WriteFile(DefaultConfigFile, []byte(tt.cwdFile), 0o644)
			}
			var out, errb bytes.Buffer
			code := Execute(context.Background(), tt.args, strings.NewReader(""), &out, &errb, tt.env)
			if code != tt.wantCode {
				t.Errorf("code = %d, want %d (stderr %q)", code, tt.wantCode, errb.String())
			}
			if !strings.Contains(out.String(), tt.wantOut) {
				t.Errorf("stdout lacks %q:\n%s", tt.wantOut, out.String())
			}
			if !strings.Contains(errb.String(), tt.wantErr) {
				t.Errorf("stderr = %q, want it to contain %q", errb.String(), tt.wantErr)
			}
		})
	}
}

func TestNewLogger(t *testing.T) {
	// hclog's layout, as the supervisor and the model process log: one
	// format in one terminal.
	stamp := regexp.MustCompile(`(?m)^\S+ |"@timestamp":"[^"]*",?`)
	tests := []struct {
		level, format string
		want          string // what an Info and a Warn line produce, time removed
	}{
		{"info", "text", "[INFO]  m3gate: i: n=1\n[WARN]  m3gate: w: g.k=v\n"},
		{"warn", "text", "[WARN]  m3gate: w: g.k=v\n"},
		{"error", "json", ""},
		{"debug", "json", `{"@level":"info","@message":"i","@module":"m3gate","n":1}` + "\n" + `{"@level":"warn","@message":"w","@module":"m3gate","g.k":"v"}` + "\n"},
	}
	for _, tt := range tests {
		var buf bytes.Buffer
		l := NewLogger(config.Log{Level: tt.level, Format: tt.format}, &buf)
		l.Info("i", "n", 1)
		l.WithGroup("g").Warn("w", "k", "v")
		if got := stamp.ReplaceAllString(buf.String(), ""); got != tt.want {
			t.Errorf("%s/%s: got %q, want %q", tt.level, tt.format, got, tt.want)
		}
	}
}

func TestInterruptExitCode(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("unix only")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, SidecarName())
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nexec sleep 30\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	var out, errb bytes.Buffer
	code := Execute(ctx, []string{"model", "tiny", "--out", "x"}, strings.NewReader(""), &out, &errb, []string{"M3GATE_SIDECAR=" + bin})
	if code != ExitInterrupted {
		t.Errorf("code = %d, want %d (stderr %q)", code, ExitInterrupted, errb.String())
	}
}

// TestKnownListsOneWording: every "unknown X" error lists the valid values
// the same way, "(known: ...)", aspects in their usual order; the help of
// --prompt-style does not repeat the default as a list.
func TestKnownListsOneWording(t *testing.T) {
	const aspects = "(known: quality, correspondence, authenticity)"
	tests := []struct {
		args []string
		env  []string
		want string
	}{
		{[]string{"score", "a.png", "--aspects", "beauty"}, nil, `unknown aspect "beauty" ` + aspects},
		{[]string{"score", "a.png", "--aspects", ","}, nil, "no aspect " + aspects},
		{[]string{"score", "a.png", "--adapter", "beauty=x"}, nil, `unknown aspect "beauty" ` + aspects},
		{[]string{"score", "a.png", "--aspects", "quality", "--prompt-style", "nope"}, nil, `unknown prompt style "nope" (known: `},
		{[]string{"distill", "--manifest", "m", "--model", "x", "--out", "o", "--aspects", "beauty"}, nil, `unknown aspect "beauty" ` + aspects},
		{[]string{"config", "print"}, []string{"M3GATE_SCORING_ASPECTS=beauty"}, `unknown aspect "beauty" ` + aspects},
	}
	for _, tt := range tests {
		_, _, errOut := run(t, tt.env, "", tt.args...)
		if !strings.Contains(errOut, tt.want) {
			t.Errorf("%v: stderr lacks %q:\n%s", tt.args, tt.want, errOut)
		}
	}
	_, out, _ := run(t, nil, "", "score", "--help")
	if strings.Contains(out, "; have ") || !strings.Contains(out, "dataset style of the conversation prompts (") {
		t.Errorf("--prompt-style help:\n%s", out)
	}
}

// TestReadmeListsEveryCommand: the README's command table has a row for
// every command a user can run (subcommands of groups included).
func TestReadmeListsEveryCommand(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	var walk func(c *cobra.Command, path string)
	walk = func(c *cobra.Command, path string) {
		for _, sub := range c.Commands() {
			if sub.Hidden || sub.Name() == "help" || sub.Name() == "completion" {
				continue
			}
			p := path + " " + sub.Name()
			if sub.HasAvailableSubCommands() {
				walk(sub, p)
				continue
			}
			if !strings.Contains(readme, "| `"+p) {
				t.Errorf("README.md's command table has no row for %q", p)
			}
		}
	}
	walk(NewRootCmd(&App{Stdin: strings.NewReader(""), Stdout: io.Discard, Stderr: io.Discard}), "m3gate")
}
