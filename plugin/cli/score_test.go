package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"

	"github.com/m3gate/m3gate/internal/testenv"
	"github.com/m3gate/m3gate/plugin/dataset"
	"github.com/m3gate/m3gate/schemas"
	"github.com/m3gate/m3gate/schemas/iqa"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// The test binary doubles as a model process: started by the supervisor
// with scoreTestPluginEnv=1 it serves fakeScorer through go-plugin, so the
// tests below drive the real supervisor, go-plugin and gRPC path of
// `m3gate score`. The end-to-end test at the bottom runs the real
// m3gate-sidecar instead.
const (
	scoreTestPluginEnv = "M3GATE_SCORE_TEST_PLUGIN"
	scoreTestModeEnv   = "M3GATE_SCORE_TEST_MODE"    // fake behaviour: "", "block-load", "fail-load", "crash-load", "slow-score"
	scoreTestPidEnv    = "M3GATE_SCORE_TEST_PIDFILE" // the fake writes its pid here
	// With scoreTestCLIEnv=1 the test binary is the m3gate command (the
	// arguments are the JSON array in scoreTestArgsEnv), with the signal
	// handling of plugin/cmd/m3gate, so tests can interrupt it for real.
	scoreTestLoadEnv = "M3GATE_SCORE_TEST_LOADFILE" // the fake writes the LoadRequest here
	scoreTestCLIEnv  = "M3GATE_SCORE_TEST_CLI"
	scoreTestArgsEnv = "M3GATE_SCORE_TEST_ARGS"
)

func TestMain(m *testing.M) {
	if os.Getenv(scoreTestCLIEnv) == "1" {
		var args []string
		if err := json.Unmarshal([]byte(os.Getenv(scoreTestArgsEnv)), &args); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		os.Unsetenv(scoreTestCLIEnv) // the model process it starts is the fake
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := Execute(ctx, args, os.Stdin, os.Stdout, os.Stderr, os.Environ())
		stop()
		os.Exit(code)
	}
	if os.Getenv(scoreTestPluginEnv) == "1" {
		if p := os.Getenv(scoreTestPidEnv); p != "" {
			os.WriteFile(p, []byte(strconv.Itoa(os.Getpid())), 0o644)
		}
		plugin.Serve(&plugin.ServeConfig{
			HandshakeConfig: schemas.Handshake,
			Plugins:         schemas.PluginMap(fakeScorer{mode: os.Getenv(scoreTestModeEnv)}),
			GRPCServer:      schemas.NewGRPCServer,
			Logger:          hclog.New(&hclog.LoggerOptions{JSONFormat: true, Output: os.Stderr, Level: hclog.Warn}),
		})
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// fakeScorer answers from what it receives: the description of an aspect
// is its round-1 question filled with the image's prompt, the MOS is the
// image's byte count mod 500 / 100, and a file starting with "corrupt"
// fails as an undecodable image.
type fakeScorer struct{ mode string }

func (f fakeScorer) Load(ctx context.Context, req schemas.LoadRequest, progress func(schemas.LoadProgress)) error {
	if p := os.Getenv(scoreTestLoadEnv); p != "" {
		b, _ := json.Marshal(req)
		os.WriteFile(p, b, 0o644)
	}
	switch f.mode {
	case "block-load":
		progress(schemas.LoadProgress{Stage: "weights", DoneBytes: 1, TotalBytes: 10})
		<-ctx.Done()
		return ctx.Err()
	case "fail-load":
		return fmt.Errorf("open %s/model.safetensors: %w", req.ModelDir, os.ErrNotExist)
	case "crash-load":
		os.Exit(3)
	}
	if _, err := os.Stat(filepath.Join(req.ModelDir, "config.json")); err != nil {
		return err
	}
	progress(schemas.LoadProgress{Stage: "weights", DoneBytes: 5, TotalBytes: 10})
	progress(schemas.LoadProgress{Stage: schemas.StageDone})
	return nil
}

func (fakeScorer) Status(ctx context.Context) (schemas.Status, error) {
	return schemas.Status{State: schemas.StateReady}, nil
}

func (f fakeScorer) Score(ctx context.Context, req schemas.ScoreRequest) ([]schemas.ItemResult, error) {
	out := make([]schemas.ItemResult, len(req.Items))
	for i, it := range req.Items {
		if f.mode == "slow-score" {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(150 * time.Millisecond):
			}
		}
		out[i].Index = i
		b := it.Data
		if it.Path != "" {
			var err error
			if b, err = os.ReadFile(it.Path); err != nil {
				out[i].Error = err.Error()
				continue
			}
		}
		if bytes.HasPrefix(b, []byte("corrupt")) {
			out[i].Error = "decode image: unknown format"
			continue
		}
		prompt := it.Prompt
		if prompt == "" {
			prompt = req.Prompt
		}
		out[i].Aspects = map[string]schemas.AspectResult{}
		for _, a := range req.Options.Aspects {
			mos := float64(len(b)%500) / 100
			out[i].Aspects[a] = schemas.AspectResult{
				MOS:         mos,
				Rating:      iqa.RatingWord(mos),
				Description: dataset.FillRound1(req.Options.Prompts[a].Round1, prompt),
				Source:      schemas.SourceWordProbs,
				WordProbs:   map[string]float64{"bad": 0.2, "poor": 0.2, "fair": 0.2, "good": 0.2, "excellent": 0.2},
				Timings:     map[string]time.Duration{"generate": 1500 * time.Microsecond},
			}
		}
	}
	return out, nil
}

func (fakeScorer) Unload(ctx context.Context) error { return nil }

// fakeModelDir makes a directory that passes the model-directory check.
func fakeModelDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "model")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// writeFile writes content to dir/name and returns the path.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// buildJob runs `m3gate score args...` in dir up to the point where the
// job is built, with the configuration loaded from env like the root
// command does, and returns the job.
func buildJob(t *testing.T, dir string, env []string, stdin string, args ...string) (*scoreJob, error) {
	t.Helper()
	t.Chdir(dir)
	var out, errb bytes.Buffer
	app := &App{Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errb, Env: env}
	if err := app.loadConfig(); err != nil {
		t.Fatal(err)
	}
	var got *scoreJob
	cmd := scoreCommand(app, func(ctx context.Context, app *App, f *scoreFlags, job *scoreJob) error {
		got = job
		return nil
	})
	cmd.SetArgs(args)
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	cmd.SilenceErrors, cmd.SilenceUsage = true, true
	err := cmd.ExecuteContext(context.Background())
	return got, err
}

func TestScoreBuildsRequest(t *testing.T) {
	dir := t.TempDir()
	model := fakeModelDir(t)
	a := writeFile(t, dir, "a.png", "png-a")
	b := writeFile(t, dir, "imgs/b.jpg", "jpg-b")
	writeFile(t, dir, "imgs/notes.txt", "not an image")
	c := writeFile(t, dir, "imgs/c.png", "png-c")
	adapter := filepath.Join(dir, "adapters", "q")
	os.MkdirAll(adapter, 0o755)
	pred := writeFile(t, dir, "pred/q.safetensors", "x")
	writeFile(t, dir, "prompts.jsonl", `{"image":"a.png","prompt":"a cat"}`+"\n\n"+
		`{"image":"imgs/b.jpg","prompt":"a dog","mos":{"quality":3.1}}`+"\n")

	q, _ := dataset.LookupPrompts("quality", "")
	c2, _ := dataset.LookupPrompts("correspondence", "")
	au, _ := dataset.LookupPrompts("authenticity", "")
	qp := schemas.AspectPrompt{Round1: q.Round1, Round2: q.Round2}
	cp := schemas.AspectPrompt{Round1: c2.Round1, Round2: c2.Round2}
	ap := schemas.AspectPrompt{Round1: au.Round1, Round2: au.Round2}

	baseEnv := []string{"M3GATE_MODEL_DIR=" + model}
	tests := []struct {
		name      string
		env       []string
		args      []string
		stdin     string
		wantNames []string // images as shown
		wantErrs  []string // per image: "" or a substring of its local error
		wantItems []schemas.ScoreItem
		wantReq   func(r *schemas.ScoreRequest) // fills the expected Prompt/Options
		wantLoad  func(l *schemas.LoadRequest)
	}{
		{
			name:      "defaults from config",
			env:       baseEnv,
			args:      []string{"a.png", "--prompt", "a cat"},
			wantNames: []string{"a.png"},
			wantErrs:  []string{""},
			wantItems: []schemas.ScoreItem{{Path: a}},
			wantReq: func(r *schemas.ScoreRequest) {
				r.Prompt = "a cat"
				r.Options = schemas.ScoreOptions{Aspects: []string{"quality", "correspondence"},
					Prompts: map[string]schemas.AspectPrompt{"quality": qp, "correspondence": cp}, MaxNewTokens: 128}
			},
			wantLoad: func(l *schemas.LoadRequest) {},
		},
		{
			name:      "flags override config",
			env:       append(baseEnv, "M3GATE_MODEL_ADAPTERS_CORRESPONDENCE=/nonexistent", "M3GATE_MODEL_THREADS=3"),
			args:      []string{"a.png", "--aspects", "quality,authenticity", "--max-new-tokens", "16", "--device", "cuda:1", "--adapter", "quality=adapters/q", "--predictor", "quality=pred/q.safetensors", "--threads", "2"},
			wantNames: []string{"a.png"},
			wantErrs:  []string{""},
			wantItems: []schemas.ScoreItem{{Path: a}},
			wantReq: func(r *schemas.ScoreRequest) {
				r.Options = schemas.ScoreOptions{Aspects: []string{"quality", "authenticity"},
					Prompts: map[string]schemas.AspectPrompt{"quality": qp, "authenticity": ap}, MaxNewTokens: 16}
			},
			wantLoad: func(l *schemas.LoadRequest) {
				l.Device, l.Threads = "cuda:1", 2
				l.Adapters = map[string]string{"quality": adapter}
				l.Predictors = map[string]string{"quality": pred}
			},
		},
		{
			name:      "prompts file without images scores every entry",
			env:       baseEnv,
			args:      []string{"--prompts-file", "prompts.jsonl", "--aspects", "correspondence"},
			wantNames: []string{"a.png", filepath.Join("imgs", "b.jpg")},
			wantErrs:  []string{"", ""},
			wantItems: []schemas.ScoreItem{{Path: a, Prompt: "a cat"}, {Path: b, Prompt: "a dog"}},
			wantReq: func(r *schemas.ScoreRequest) {
				r.Options = schemas.ScoreOptions{Aspects: []string{"correspondence"},
					Prompts: map[string]schemas.AspectPrompt{"correspondence": cp}, MaxNewTokens: 128}
			},
			wantLoad: func(l *schemas.LoadRequest) {},
		},
		{
			name:      "directory, prompts by name, --prompt as fallback, missing file",
			env:       baseEnv,
			args:      []string{"imgs", "missing.png", "--prompts-file", "prompts.jsonl", "--prompt", "fallback", "--aspects", "correspondence"},
			wantNames: []string{filepath.Join("imgs", "b.jpg"), filepath.Join("imgs", "c.png"), "missing.png"},
			wantErrs:  []string{"", "", "no such file"},
			wantItems: []schemas.ScoreItem{{Path: b, Prompt: "a dog"}, {Path: c}},
			wantReq: func(r *schemas.ScoreRequest) {
				r.Prompt = "fallback"
				r.Options = schemas.ScoreOptions{Aspects: []string{"correspondence"},
					Prompts: map[string]schemas.AspectPrompt{"correspondence": cp}, MaxNewTokens: 128}
			},
			wantLoad: func(l *schemas.LoadRequest) {},
		},
		{
			name:      "correspondence without a prompt fails that image only",
			env:       baseEnv,
			args:      []string{"a.png", "imgs/c.png", "--prompts-file", "prompts.jsonl"},
			wantNames: []string{"a.png", "imgs/c.png"},
			wantErrs:  []string{"", "no generation prompt"},
			wantItems: []schemas.ScoreItem{{Path: a, Prompt: "a cat"}},
			wantReq: func(r *schemas.ScoreRequest) {
				r.Options = schemas.ScoreOptions{Aspects: []string{"quality", "correspondence"},
					Prompts: map[string]schemas.AspectPrompt{"quality": qp, "correspondence": cp}, MaxNewTokens: 128}
			},
			wantLoad: func(l *schemas.LoadRequest) {},
		},
		{
			name:      "stdin is sent as bytes",
			env:       baseEnv,
			args:      []string{"-", "--aspects", "quality"},
			stdin:     "image-bytes",
			wantNames: []string{"-"},
			wantErrs:  []string{""},
			wantItems: []schemas.ScoreItem{{Data: []byte("image-bytes")}},
			wantReq: func(r *schemas.ScoreRequest) {
				r.Options = schemas.ScoreOptions{Aspects: []string{"quality"},
					Prompts: map[string]schemas.AspectPrompt{"quality": qp}, MaxNewTokens: 128}
			},
			wantLoad: func(l *schemas.LoadRequest) {},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			job, err := buildJob(t, dir, tt.env, tt.stdin, tt.args...)
			if err != nil {
				t.Fatalf("err = %v", err)
			}
			var names []string
			for i, im := range job.Images {
				names = append(names, im.Name)
				switch {
				case tt.wantErrs[i] == "" && im.Err != nil:
					t.Errorf("image %s: unexpected error %v", im.Name, im.Err)
				case tt.wantErrs[i] != "" && (im.Err == nil || !strings.Contains(im.Err.Error(), tt.wantErrs[i])):
					t.Errorf("image %s: err = %v, want one containing %q", im.Name, im.Err, tt.wantErrs[i])
				}
			}
			if !reflect.DeepEqual(names, tt.wantNames) {
				t.Errorf("images = %q, want %q", names, tt.wantNames)
			}
			want := schemas.ScoreRequest{Items: tt.wantItems}
			tt.wantReq(&want)
			if got := job.Request; !reflect.DeepEqual(got, want) {
				t.Errorf("request\n got %+v\nwant %+v", got, want)
			}
			if err := job.Request.Validate(); err != nil {
				t.Errorf("request does not validate: %v", err)
			}
			wantLoad := schemas.LoadRequest{ModelDir: model, Family: "idefics3", Device: "cpu", DType: "f32",
				Options: map[string]string{"image_splitting": "false"}} // model.image_splitting overrides the model's do_image_splitting
			if strings.Contains(strings.Join(tt.env, " "), "THREADS=3") {
				wantLoad.Threads = 3
			}
			tt.wantLoad(&wantLoad)
			if !reflect.DeepEqual(job.Load, wantLoad) {
				t.Errorf("load\n got %+v\nwant %+v", job.Load, wantLoad)
			}
		})
	}
}

func TestScoreUsageErrors(t *testing.T) {
	dir := t.TempDir()
	model := fakeModelDir(t)
	writeFile(t, dir, "a.png", "x")
	writeFile(t, dir, "bad.jsonl", `{"prompt":"no image"}`+"\n")
	tests := []struct {
		args []string
		want string
	}{
		{[]string{}, "no images"},
		{[]string{"a.png", "--aspects", "beauty"}, `unknown aspect "beauty"`},
		{[]string{"a.png", "--aspects", "quality,quality"}, `aspect "quality" given twice`},
		{[]string{"a.png", "--aspects", ""}, "no aspect"},
		{[]string{"a.png", "--adapter", "quality"}, "want aspect=PATH"},
		{[]string{"a.png", "--predictor", "style=x"}, `unknown aspect "style"`},
		{[]string{"a.png", "--max-new-tokens", "0"}, "--max-new-tokens 0"},
		{[]string{"a.png", "--threads", "-1"}, "--threads -1"},
		{[]string{"a.png", "--prompt-style", "nope"}, `unknown prompt style "nope"`},
		{[]string{"--prompts-file", "bad.jsonl"}, `bad.jsonl:1: no "image"`},
		{[]string{"--prompts-file", "nope.jsonl"}, "no such file"},
		{[]string{"-", "-"}, "named twice"},
		{[]string{"a.png", "--aspects", "quality,correspondence"}, "correspondence needs the generation prompt"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			_, err := buildJob(t, dir, []string{"M3GATE_MODEL_DIR=" + model}, "", tt.args...)
			var ue *UsageError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v (%T), want a UsageError containing %q", err, err, tt.want)
			}
		})
	}
}

func TestScoreMissingAdapterOrPredictor(t *testing.T) {
	dir := t.TempDir()
	model := fakeModelDir(t)
	writeFile(t, dir, "a.png", "x")
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--adapter", "quality=nope"}, "LoRA adapter of quality: " + filepath.Join(dir, "nope") + " is not a directory"},
		{[]string{"--predictor", "quality=nope.safetensors"}, "predictor of quality: " + filepath.Join(dir, "nope.safetensors") + " is not a file"},
	} {
		_, err := buildJob(t, dir, []string{"M3GATE_MODEL_DIR=" + model}, "", append([]string{"a.png", "--aspects", "quality"}, tt.args...)...)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: err = %v, want %q", tt.args, err, tt.want)
		}
	}
	// An adapter of an aspect that is not scored is not needed.
	if _, err := buildJob(t, dir, []string{"M3GATE_MODEL_DIR=" + model}, "", "a.png", "--aspects", "quality", "--adapter", "authenticity=nope"); err != nil {
		t.Errorf("adapter of an unscored aspect: %v", err)
	}
}

func TestScoreMissingModelDir(t *testing.T) {
	dir := t.TempDir()
	img := writeFile(t, dir, "a.png", "x")
	empty := filepath.Join(dir, "empty")
	os.Mkdir(empty, 0o755)
	tests := []struct {
		name string
		env  []string
		args []string
		want []string
	}{
		{"built-in default", nil, nil, []string{"models/smolvlm-256m (from model.dir of the built-in defaults) does not exist"}},
		{"flag", nil, []string{"--model", filepath.Join(dir, "nope")}, []string{filepath.Join(dir, "nope") + " (from --model) does not exist"}},
		{"env", []string{"M3GATE_MODEL_DIR=" + filepath.Join(dir, "nope")}, nil, []string{"(from $M3GATE_MODEL_DIR) does not exist"}},
		{"no config.json", nil, []string{"--model", empty}, []string{"has no config.json"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// No sidecar may be started: point at one that does not exist.
			env := append([]string{"M3GATE_SIDECAR=/nonexistent/m3gate-sidecar"}, tt.env...)
			code, out, errOut := run(t, env, "", append([]string{"score", img, "--aspects", "quality"}, tt.args...)...)
			if code != ExitError {
				t.Errorf("code = %d, want %d", code, ExitError)
			}
			if out != "" {
				t.Errorf("stdout = %q", out)
			}
			for _, w := range append(tt.want, "m3gate model fetch smolvlm-256m", "m3gate model tiny --out build/demo-model", "--model build/demo-model") {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errOut)
				}
			}
		})
	}
}

// goldenRows are fixed results for the output-format golden files: a
// predictor score, a word-probability score with a long multi-line
// description, an empty description, and a failed image.
func goldenRows() []scoreRow {
	long := "The image shows a marble statue of a man\nstanding on a plinth, with soft light from the left and a blurred garden behind it."
	return []scoreRow{
		{Image: "examples/images/midjourney_normal_000.jpg", Path: "/repo/examples/images/midjourney_normal_000.jpg", Prompt: "statue of a man",
			Aspects: map[string]schemas.AspectResult{
				"quality": {MOS: 4.3249, Rating: "excellent", Source: schemas.SourcePredictor, Description: long,
					WordProbs: map[string]float64{"bad": 0.01, "poor": 0.02, "fair": 0.07, "good": 0.3, "excellent": 0.6},
					Timings:   map[string]time.Duration{"encode": 120 * time.Millisecond, "generate": 2500 * time.Millisecond}},
				"correspondence": {MOS: 2.5, Rating: "fair", Source: schemas.SourceWordProbs, Description: "A statue."},
			}},
		{Image: "b.png", Path: "/tmp/b.png", Err: "decode image: unknown format\n(first bytes 00 01)"},
		{Image: "-", Aspects: map[string]schemas.AspectResult{
			"quality":        {MOS: 0.125, Rating: "bad", Source: schemas.SourceWordProbs},
			"correspondence": {MOS: 5, Rating: "excellent", Source: schemas.SourceWordProbs, Description: "x"},
		}},
	}
}

func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run go test -run %s -update to create it)", err, t.Name())
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs:\n got:\n%s\nwant:\n%s", p, got, want)
	}
}

func TestScoreTableGolden(t *testing.T) {
	var buf bytes.Buffer
	if err := writeScoreTable(&buf, goldenRows(), []string{"quality", "correspondence"}); err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "score_table.golden", buf.Bytes())
}

func TestScoreJSONGolden(t *testing.T) {
	var buf bytes.Buffer
	if err := writeScoreJSON(&buf, goldenRows(), []string{"quality", "correspondence"}); err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "score_json.golden", buf.Bytes())
	// Every line is one JSON object naming its image.
	for i, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var v jsonRow
		if err := json.Unmarshal([]byte(line), &v); err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
		if v.Image != goldenRows()[i].Image {
			t.Errorf("line %d: image %q", i+1, v.Image)
		}
	}
}

func TestShortDescription(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "-"},
		{"  \n ", "-"},
		{"one\ttwo\nthree", "one two three"},
		{"1 2 3 4 5 6 7 8 9 10", "1 2 3 4 5 6 7 8 9 10"},
		{"1 2 3 4 5 6 7 8 9 10 11", "1 2 3 4 5 6 7 8 9 10 …"},
		{"bad\xffutf8 esc\x1b[31mred\u200b", "bad\ufffdutf8 esc\ufffd[31mred\ufffd"},
		{"ünïcode wörds ✓", "ünïcode wörds ✓"},
		{strings.Repeat("x", 80) + " y", strings.Repeat("x", 72) + " …"},
		{strings.Repeat("ab ", 30), strings.TrimSpace(strings.Repeat("ab ", 10)) + " …"},
	}
	for _, tt := range tests {
		if got := shortDescription(tt.in); got != tt.want {
			t.Errorf("shortDescription(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// fakeSidecarEnv points m3gate at this test binary as its model process.
func fakeSidecarEnv(t *testing.T, mode string) (env []string, pidFile string) {
	t.Helper()
	if runtime.GOOS == "windows" {
		t.Skip("unix only")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	pidFile = filepath.Join(t.TempDir(), "pid")
	// The supervisor's child inherits this process's environment.
	t.Setenv(scoreTestPluginEnv, "1")
	t.Setenv(scoreTestModeEnv, mode)
	t.Setenv(scoreTestPidEnv, pidFile)
	return []string{"M3GATE_SIDECAR=" + exe}, pidFile
}

// waitGone waits until the process in pidFile has exited.
func waitGone(t *testing.T, pidFile string) {
	t.Helper()
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatalf("the model process never started: %v", err)
	}
	pid, _ := strconv.Atoi(string(b))
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			checkNoChildren(t)
			return
		}
		// A zombie counts as gone: its parent (the go-plugin client of this
		// process) reaps it.
		if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && strings.Contains(string(st), ") Z ") {
			checkNoChildren(t)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("model process %d still runs after m3gate score returned", pid)
}

func TestScoreThroughModelProcess(t *testing.T) {
	env, pidFile := fakeSidecarEnv(t, "")
	dir := t.TempDir()
	model := fakeModelDir(t)
	good := writeFile(t, dir, "good.png", strings.Repeat("p", 1234))
	corrupt := writeFile(t, dir, "corrupt.png", "corrupt bytes")
	missing := filepath.Join(dir, "missing.png")
	env = append(env, "M3GATE_MODEL_DIR="+model)

	code, out, errOut := run(t, env, "", "score", good, corrupt, missing, "--prompt", "a red fox", "--json")
	if code != ExitError {
		t.Errorf("code = %d, want %d (one image failed); stderr:\n%s", code, ExitError, errOut)
	}
	waitGone(t, pidFile)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 {
		t.Fatalf("stdout has %d lines, want 3:\n%s", len(lines), out)
	}
	var rows []jsonRow
	for _, l := range lines {
		var r jsonRow
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("%v: %s", err, l)
		}
		rows = append(rows, r)
	}
	q, _ := dataset.LookupPrompts("quality", "")
	c, _ := dataset.LookupPrompts("correspondence", "")
	r := rows[0]
	if r.Image != good || r.Error != "" || len(r.Aspects) != 2 {
		t.Fatalf("row 0 = %+v", r)
	}
	// The fake describes with the round-1 question it received: the
	// prompts of plugin/dataset with the image's prompt filled in.
	if got, want := r.Aspects["quality"].Description, dataset.FillRound1(q.Round1, "a red fox"); got != want {
		t.Errorf("quality description = %q, want %q", got, want)
	}
	if got, want := r.Aspects["correspondence"].Description, dataset.FillRound1(c.Round1, "a red fox"); got != want {
		t.Errorf("correspondence description = %q, want %q", got, want)
	}
	if got := r.Aspects["quality"]; got.MOS != 2.34 || got.Rating != "fair" || got.Source != "word_probs" || got.TimingsMs["generate"] != 1.5 {
		t.Errorf("quality = %+v, want MOS 2.34 (1234 bytes) fair word_probs, generate 1.5 ms", got)
	}
	if rows[1].Image != corrupt || rows[1].Error != "decode image: unknown format" {
		t.Errorf("row 1 = %+v, want the model process's decode error", rows[1])
	}
	if rows[2].Image != missing || rows[2].Error != "no such file" {
		t.Errorf("row 2 = %+v, want a local no such file", rows[2])
	}
	for _, w := range []string{
		"loading model " + model,
		"model ready in",
		"scoring 2 image(s) on quality, correspondence ...",
		"scored in ",
		"m3gate: score " + corrupt + ": decode image: unknown format",
		"m3gate: score " + missing + ": no such file",
		"m3gate: score: 2 of 3 images failed",
	} {
		if !strings.Contains(errOut, w) {
			t.Errorf("stderr lacks %q:\n%s", w, errOut)
		}
	}

	// The table for the good image alone, exit 0.
	code, out, errOut = run(t, env, "", "score", good, "--prompt", "a red fox", "--aspects", "quality")
	if code != ExitOK {
		t.Fatalf("code = %d; stderr:\n%s", code, errOut)
	}
	want := "IMAGE" + strings.Repeat(" ", len(good)-3) + "ASPECT   MOS   RATING     SOURCE      DESCRIPTION\n" +
		good + "  quality  2.34  fair       word_probs  " + shortDescription(dataset.FillRound1(q.Round1, "a red fox")) + "\n"
	if out != want {
		t.Errorf("table\n got %q\nwant %q", out, want)
	}
	waitGone(t, pidFile)
}

func TestScoreLoadFailure(t *testing.T) {
	tests := []struct {
		mode string
		want string
	}{
		{"fail-load", "model.safetensors: file does not exist"},
		{"crash-load", "died or could not start"},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			env, pidFile := fakeSidecarEnv(t, tt.mode)
			dir := t.TempDir()
			img := writeFile(t, dir, "a.png", "png")
			env = append(env, "M3GATE_MODEL_DIR="+fakeModelDir(t))
			start := time.Now()
			code, out, errOut := run(t, env, "", "score", img, "--aspects", "quality")
			if code != ExitError || out != "" {
				t.Errorf("code = %d, stdout %q; want %d and nothing", code, out, ExitError)
			}
			if !strings.Contains(errOut, "m3gate: score: load model ") || !strings.Contains(errOut, tt.want) {
				t.Errorf("stderr lacks the load error %q:\n%s", tt.want, errOut)
			}
			if d := time.Since(start); d > 20*time.Second {
				t.Errorf("took %v: a load failure must end the command, not wait through restarts", d)
			}
			waitGone(t, pidFile)
		})
	}
}

func TestScoreInterruptStopsModelProcess(t *testing.T) {
	env, pidFile := fakeSidecarEnv(t, "block-load")
	dir := t.TempDir()
	img := writeFile(t, dir, "a.png", "png")
	env = append(env, "M3GATE_MODEL_DIR="+fakeModelDir(t))
	t.Chdir(dir)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Cancel (as Ctrl-C does) once the model process is loading.
	go func() {
		for ctx.Err() == nil {
			if _, err := os.Stat(pidFile); err == nil {
				time.Sleep(300 * time.Millisecond)
				cancel()
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	var out, errb bytes.Buffer
	code := Execute(ctx, []string{"score", img, "--aspects", "quality"}, strings.NewReader(""), &out, &errb, env)
	if code != ExitInterrupted {
		t.Errorf("code = %d, want %d; stderr:\n%s", code, ExitInterrupted, errb.String())
	}
	if !strings.Contains(errb.String(), "weights  10% (0.0 of 0.0 MB)") {
		t.Errorf("stderr does not show the load progress:\n%s", errb.String())
	}
	waitGone(t, pidFile)
}

// liveChildren lists this process's child processes that have not exited.
func liveChildren(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Skip("no /proc")
	}
	me := strconv.Itoa(os.Getpid())
	var out []string
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) >= 2 && f[1] == me && f[0] != "Z" {
			out = append(out, e.Name()+" "+s[:i+1])
		}
	}
	return out
}

// checkNoChildren fails when a child process outlives `m3gate score`.
func checkNoChildren(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		kids := liveChildren(t)
		if len(kids) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("child processes left running: %v", kids)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// realSidecar returns $M3GATE_SIDECAR or skips the test.
func realSidecar(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("drives the real sidecar; skipped with -short")
	}
	return testenv.RequireSidecar(t)
}

// TestScoreRealSidecarLoadError runs `m3gate score` against the real
// m3gate-sidecar with a model directory that cannot load: the command must
// report the sidecar's load error promptly, exit 1 and leave no process.
func TestScoreRealSidecarLoadError(t *testing.T) {
	bin := realSidecar(t)
	dir := t.TempDir()
	img := writeFile(t, dir, "a.png", "png")
	model := fakeModelDir(t) // config.json "{}" and no weights
	env := append(os.Environ(), "M3GATE_SIDECAR="+bin, "M3GATE_MODEL_DIR="+model)
	start := time.Now()
	code, out, errOut := run(t, env, "", "score", img, "--aspects", "quality")
	if code != ExitError || out != "" {
		t.Errorf("code = %d, stdout %q; want %d and nothing", code, out, ExitError)
	}
	if !strings.Contains(errOut, "m3gate: score: load model "+model+": model not ready: ") {
		t.Errorf("stderr lacks the load error:\n%s", errOut)
	}
	if d := time.Since(start); d > 60*time.Second {
		t.Errorf("took %v", d)
	}
	checkNoChildren(t)
}

// TestScoreEndToEnd runs `m3gate score` on the bundled examples against the
// real m3gate-sidecar ($M3GATE_SIDECAR, built by `make test`) with a tiny
// random model the sidecar generates.
func TestScoreEndToEnd(t *testing.T) {
	bin := realSidecar(t)
	examples, err := filepath.Abs(filepath.Join("..", "..", "examples"))
	if err != nil {
		t.Fatal(err)
	}
	model := testenv.TinyModel(t, bin)
	env := append(os.Environ(), "M3GATE_SIDECAR="+bin, "M3GATE_MODEL_DIR="+model)
	code, out, errOut := run(t, env, "", "score", "--prompts-file", filepath.Join(examples, "prompts.jsonl"),
		"--aspects", "quality,correspondence", "--max-new-tokens", "4", "--json")
	if code != ExitOK {
		t.Fatalf("code = %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	checkNoChildren(t)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 {
		t.Fatalf("want one line per example image, got:\n%s", out)
	}
	for _, l := range lines {
		var r jsonRow
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("%v: %s", err, l)
		}
		if r.Error != "" || r.Prompt != "statue of a man" || !strings.HasPrefix(r.Path, examples) {
			t.Errorf("row %+v", r)
		}
		for _, a := range []string{"quality", "correspondence"} {
			ar, ok := r.Aspects[a]
			if !ok {
				t.Fatalf("%s: no %s in %s", r.Image, a, l)
			}
			if math.IsNaN(ar.MOS) || ar.MOS < 0 || ar.MOS > 5 {
				t.Errorf("%s %s: MOS %v outside 0..5", r.Image, a, ar.MOS)
			}
			if !contains(iqa.RatingWords[:], ar.Rating) {
				t.Errorf("%s %s: rating %q", r.Image, a, ar.Rating)
			}
			if ar.Source != schemas.SourceWordProbs {
				t.Errorf("%s %s: source %q, want %s (no predictor configured)", r.Image, a, ar.Source, schemas.SourceWordProbs)
			}
			// Probabilities of the five words among the whole vocabulary.
			sum := 0.0
			for _, p := range ar.WordProbs {
				if p < 0 || p > 1 {
					sum = math.NaN()
				}
				sum += p
			}
			if len(ar.WordProbs) != 5 || !(sum > 0 && sum <= 1+1e-6) {
				t.Errorf("%s %s: word_probs %v: want the 5 rating words' probabilities", r.Image, a, ar.WordProbs)
			}
		}
	}
}

// readJSONRows reads the JSON lines of a --json --output file.
func readJSONRows(t *testing.T, path string) []jsonRow {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rows []jsonRow
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if l == "" {
			continue
		}
		var r jsonRow
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("%s: %v: %q", path, err, l)
		}
		rows = append(rows, r)
	}
	return rows
}

// TestScoreInterruptKeepsResults runs `m3gate score` on 20 images as its
// own process, sends it SIGINT once the first results are in the output
// file, and checks that they stay there, that the command says how many
// are left, and that --resume scores only the rest.
func TestScoreInterruptKeepsResults(t *testing.T) {
	env, pidFile := fakeSidecarEnv(t, "slow-score") // 150 ms per image
	dir := t.TempDir()
	var imgs []string
	for i := range 20 {
		imgs = append(imgs, writeFile(t, dir, fmt.Sprintf("img%02d.png", i), strings.Repeat("p", 100+i)))
	}
	out := filepath.Join(dir, "scores.jsonl")
	args := append([]string{"score", "--aspects", "quality", "--json", "--output", out}, imgs...)
	argsJSON, _ := json.Marshal(args)
	exe, _ := os.Executable()
	cmd := exec.Command(exe)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), scoreTestCLIEnv+"=1", scoreTestArgsEnv+"="+string(argsJSON),
		env[0], "M3GATE_MODEL_DIR="+fakeModelDir(t))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(out)
		if bytes.Count(b, []byte("\n")) >= 2 {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("no results in %s after 30 s; stderr:\n%s", out, stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != ExitInterrupted {
		t.Fatalf("exit = %v, want %d; stderr:\n%s", err, ExitInterrupted, stderr.String())
	}
	waitGone(t, pidFile)
	rows := readJSONRows(t, out)
	if len(rows) < 2 || len(rows) >= 20 {
		t.Fatalf("%d rows in %s after the interrupt, want the first ones (2..19)", len(rows), out)
	}
	for i, r := range rows {
		if r.Path != imgs[i] || r.Error != "" || r.Aspects["quality"].MOS != float64(100+i)/100 {
			t.Errorf("row %d = %+v, want %s scored %.2f", i, r, imgs[i], float64(100+i)/100)
		}
	}
	want := fmt.Sprintf("m3gate: score: interrupted: %d of 20 images done (in %s), %d left; rerun with --resume to score only those", len(rows), out, 20-len(rows))
	if !strings.Contains(stderr.String(), want) {
		t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
	}

	// --resume scores only the images not in the file yet.
	env, pidFile = fakeSidecarEnv(t, "")
	env = append(env, "M3GATE_MODEL_DIR="+fakeModelDir(t))
	code, stdout, errOut := run(t, env, "", append(args, "--resume")...)
	if code != ExitOK || stdout != "" {
		t.Fatalf("resume: code %d, stdout %q; stderr:\n%s", code, stdout, errOut)
	}
	waitGone(t, pidFile)
	if w := fmt.Sprintf("resuming: %d of 20 images already scored in %s, %d left", len(rows), out, 20-len(rows)); !strings.Contains(errOut, w) {
		t.Errorf("stderr lacks %q:\n%s", w, errOut)
	}
	if w := fmt.Sprintf("scoring %d image(s) on quality", 20-len(rows)); !strings.Contains(errOut, w) {
		t.Errorf("stderr lacks %q:\n%s", w, errOut)
	}
	all := readJSONRows(t, out)
	if len(all) != 20 {
		t.Fatalf("%d rows after --resume, want 20", len(all))
	}
	for i, r := range all {
		if r.Path != imgs[i] || r.Error != "" {
			t.Errorf("row %d = %+v, want %s", i, r, imgs[i])
		}
	}
}

// TestReadScoredImagesCutLine: a line cut by a killed run is dropped so
// the resumed run appends whole lines; failed images are scored again.
func TestReadScoredImagesCutLine(t *testing.T) {
	p := writeFile(t, t.TempDir(), "s.jsonl", `{"image":"a.png","path":"/x/a.png","aspects":{}}`+"\n"+
		`{"image":"b.png","path":"/x/b.png","error":"decode image"}`+"\n"+`{"image":"c.png","pa`)
	got, err := readScoredImages(p)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]bool{"/x/a.png": true}; !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	b, _ := os.ReadFile(p)
	if !bytes.HasSuffix(b, []byte("decode image\"}\n")) {
		t.Errorf("cut line not removed: %q", b)
	}
	bad := writeFile(t, t.TempDir(), "t.txt", "IMAGE ASPECT\n")
	if _, err := readScoredImages(bad); err == nil || !strings.Contains(err.Error(), "t.txt:1: not a line of `m3gate score --json`") {
		t.Errorf("table file: err = %v", err)
	}
}

// TestStatusLineKeepsLogsOffTheBar: on a terminal, text written while the
// progress bar shows goes on its own line above the bar; elsewhere no bar.
func TestStatusLineKeepsLogsOffTheBar(t *testing.T) {
	defer func(f func(io.Writer) bool) { isTerminal = f }(isTerminal)
	isTerminal = func(io.Writer) bool { return true }
	var buf bytes.Buffer
	s := newStatusLine(&buf)
	s.Set("scored 1/4")
	fmt.Fprintf(s, "warn: slow\n")
	s.Set("scored 2/4")
	s.Clear()
	want := eraseSeq + "scored 1/4" + eraseSeq + "warn: slow\n" + "scored 1/4" + eraseSeq + "scored 2/4" + eraseSeq
	if buf.String() != want {
		t.Errorf("terminal output\n got %q\nwant %q", buf.String(), want)
	}

	// Rows on stdout, another terminal stream, also go above the bar.
	buf.Reset()
	var stdout bytes.Buffer
	s = newStatusLine(&buf)
	s.Set("scored 1/4")
	fmt.Fprintf(s.Above(&stdout), "row 1\n")
	if got, want := buf.String(), eraseSeq+"scored 1/4"+eraseSeq+"scored 1/4"; got != want || stdout.String() != "row 1\n" {
		t.Errorf("stdout row: stderr %q (want %q), stdout %q", got, want, stdout.String())
	}

	isTerminal = func(io.Writer) bool { return false }
	buf.Reset()
	s = newStatusLine(&buf)
	(&scoreBar{line: s, total: 4, start: time.Now(), now: time.Now}).update(1)
	fmt.Fprintf(s, "warn: slow\n")
	s.Clear()
	if buf.String() != "warn: slow\n" {
		t.Errorf("non-terminal output %q, want the log line only", buf.String())
	}
}

func TestScoreBarRateAndETA(t *testing.T) {
	start := time.Unix(1000, 0)
	now := start
	b := &scoreBar{total: 20, start: start, now: func() time.Time { return now }}
	now = start.Add(10 * time.Second)
	if got, want := b.render(5), "scored 5/20 [======                  ] 2.0 s/img ETA 30s"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	now = start.Add(2 * time.Second)
	if got, want := b.render(10), "scored 10/20 [============            ] 5.0 img/s ETA 2s"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// TestLoadProgressEndsAtFull: the progress is polled, so the last update
// seen may be short of 100%; a model that is ready shows its bytes at 100%.
func TestLoadProgressEndsAtFull(t *testing.T) {
	tests := []struct {
		name    string
		updates []schemas.LoadProgress
		ok      bool
		want    string
		notWant string
	}{
		{"poll missed the end", []schemas.LoadProgress{{Stage: "model", TotalBytes: 900_000, Message: "loading …"}}, true,
			"  model 100% (0.9 of 0.9 MB)\nmodel ready in", ""},
		{"already full", []schemas.LoadProgress{{Stage: "model", DoneBytes: 900_000, TotalBytes: 900_000}}, true,
			"  model 100% (0.9 of 0.9 MB)\nmodel ready in", "100% (0.9 of 0.9 MB)\n  model 100%"},
		{"failed load stays where it was", []schemas.LoadProgress{{Stage: "model", DoneBytes: 450_000, TotalBytes: 900_000}}, false,
			"  model  50% (0.5 of 0.9 MB)\n", "100%"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			p := newLoadProgress(&buf, "m")
			for _, u := range tt.updates {
				p.update(u)
			}
			p.finish(tt.ok)
			if !strings.Contains(buf.String(), tt.want) || tt.notWant != "" && strings.Contains(buf.String(), tt.notWant) {
				t.Errorf("output:\n%s\nwant %q, not %q", buf.String(), tt.want, tt.notWant)
			}
		})
	}
}
