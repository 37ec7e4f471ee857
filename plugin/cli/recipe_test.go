//go:build unix

package cli

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"image/png"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/m3gate/m3gate/internal/testenv"
	"github.com/m3gate/m3gate/plugin/dataset"
	"github.com/m3gate/m3gate/plugin/distill/distillfake"
	"github.com/m3gate/m3gate/schemas/iqa"
	"github.com/m3gate/m3gate/schemas/labels"
)

// TestRecipeAGIQA3K runs the training recipe of the README ("Reproducing the
// paper's AGIQA-3K setup") through the real m3gate and m3gate-sidecar
// binaries on a tiny model and a 32-image subset of the shared AGIQA-3K
// data: data convert → distill (against the fake Gemini teacher) → finetune
// → train-predictor → score --json → eval. Each long step is SIGKILLed once
// it has done part of its work (the sidecar running a training job must die
// with m3gate), then rerun to continue: distill must not pay for a cached
// answer again, finetune and train-predictor must continue from their last
// saved step or epoch rather than from zero. Training losses must fall, and
// the scores of the test split must come from the trained predictor.
func TestRecipeAGIQA3K(t *testing.T) {
	if testing.Short() {
		t.Skip("recipe test runs real training jobs; skipped with -short")
	}
	sidecar := testenv.RequireSidecar(t)
	shared := filepath.Join(testenv.SharedData(t, "agiqa-3k/data.csv"), "agiqa-3k")
	images := filepath.Join(shared, "images")
	dir := t.TempDir()
	// One libtorch thread (--threads 1) and one OpenBLAS thread: on a busy
	// machine OpenBLAS's spinning pool otherwise slows the jobs tenfold.
	env := append(os.Environ(), SidecarEnv+"="+sidecar, "OPENBLAS_NUM_THREADS=1")
	r := &recipe{t: t, dir: dir, env: env, m3gate: testenv.M3gate(t)}

	// A tiny Idefics3 model with random weights.
	model := filepath.Join(dir, "model")
	r.ok("model", "tiny", "--family", "idefics3", "--size", "tiny", "--out", model)

	// 0. A 32-row data.csv (24 train, 8 test) pointing at the shared images.
	labels := filepath.Join(dir, "data.csv")
	subset := writeRecipeSubset(t, filepath.Join(shared, "data.csv"), images, labels, 24, 8)

	// 1. data convert → manifest.
	manifest := filepath.Join(dir, "agiqa3k.jsonl")
	r.ok("data", "convert", "--format", "agiqa-3k", "--in", labels, "--images", images, "--out", manifest)
	m, rep, err := dataset.ReadManifest(manifest)
	if err != nil || len(rep.Problems) > 0 {
		t.Fatalf("read manifest: %v %v", err, rep.Problems)
	}
	splits := map[string]int{}
	for _, rec := range m.Records {
		splits[rec.Split]++
		if _, err := os.Stat(m.ImagePath(rec)); err != nil {
			t.Errorf("manifest image %s: %v", rec.Image, err)
		}
	}
	if len(m.Records) != 32 || splits["train"] != 24 || splits["test"] != 8 {
		t.Fatalf("manifest has %d records, splits %v; want 32 (24 train, 8 test)", len(m.Records), splits)
	}

	conv := r.distill(manifest, m, subset)
	adapter := r.finetune(model, conv, images)
	predictor := r.trainPredictor(model, adapter, conv, images, labels)
	r.scoreAndEval(model, adapter, predictor, manifest, m)
}

// recipe runs the m3gate binary for the steps of TestRecipeAGIQA3K.
type recipe struct {
	t      *testing.T
	dir    string
	env    []string
	m3gate string
}

// command returns an m3gate command in its own process group, run in the
// test's folder.
func (r *recipe) command(ctx context.Context, extraEnv []string, args ...string) (*exec.Cmd, *bytes.Buffer, *bytes.Buffer) {
	cmd := exec.CommandContext(ctx, r.m3gate, args...)
	cmd.Dir = r.dir
	cmd.Env = append(append([]string(nil), r.env...), extraEnv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	return cmd, &stdout, &stderr
}

// ok runs m3gate to completion and returns its stdout and stderr; a
// failure ends the test.
func (r *recipe) ok(args ...string) (string, string) {
	return r.okEnv(nil, args...)
}

func (r *recipe) okEnv(extraEnv []string, args ...string) (string, string) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd, stdout, stderr := r.command(ctx, extraEnv, args...)
	t0 := time.Now()
	if err := cmd.Run(); err != nil {
		r.t.Fatalf("m3gate %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, stdout, stderr)
	}
	r.t.Logf("m3gate %s: %.1fs", args[0], time.Since(t0).Seconds())
	return stdout.String(), stderr.String()
}

// killHalfway starts m3gate, waits until partial reports that part of the
// work is done, then SIGKILLs m3gate, as a crash, an OOM kill or kill -9
// would, and waits until no process of its group (the sidecar it started)
// is left. The command must not finish on its own first.
func (r *recipe) killHalfway(extraEnv []string, partial func() bool, args ...string) {
	r.t.Helper()
	cmd, stdout, stderr := r.command(context.Background(), extraEnv, args...)
	if err := cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.After(2 * time.Minute)
	for !partial() {
		select {
		case err := <-done:
			r.t.Fatalf("m3gate %s finished (%v) before it could be killed halfway; make the job longer\nstderr:\n%s\nstdout:\n%s", args[0], err, stderr, stdout)
		case <-deadline:
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
			r.t.Fatalf("m3gate %s: no partial progress in 2 minutes\nstderr:\n%s", args[0], stderr)
		case <-time.After(10 * time.Millisecond):
		}
	}
	// Only m3gate itself is killed, as `kill -9 PID` would: the sidecar
	// running the job must not outlive it (it would race the rerun).
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		r.t.Fatalf("kill m3gate %s: %v", args[0], err)
	}
	if err := <-done; err == nil {
		r.t.Fatalf("m3gate %s exited cleanly although it was killed", args[0])
	}
	for t0 := time.Now(); syscall.Kill(-cmd.Process.Pid, 0) == nil; time.Sleep(10 * time.Millisecond) {
		if time.Since(t0) > 10*time.Second {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			r.t.Fatalf("a child of m3gate %s (the sidecar) still runs 10 s after m3gate was killed", args[0])
		}
	}
	r.t.Logf("killed m3gate %s halfway", args[0])
}

// distill runs `m3gate distill` against the fake Gemini teacher, kills it
// once a quarter of the answers are cached, reruns it, and checks that the
// rerun asked only for the missing images and that the conversations hold
// teacher descriptions for both aspects.
func (r *recipe) distill(manifest string, m *dataset.Manifest, subset []recipeRow) string {
	t := r.t
	fake := distillfake.NewGemini()
	defer fake.Close()
	// The first call is rate limited; every answer takes a little while, so
	// the run can be killed in the middle.
	fake.SetScript(func(n, k int, req *distillfake.Request) distillfake.Reply {
		if n == 0 {
			return distillfake.Reply{Status: 429, RetryAfter: "0"}
		}
		return distillfake.Reply{Delay: 100 * time.Millisecond}
	})
	const keyEnv = "RECIPE_TEACHER_KEY"
	key1, key2 := "test-key-first-run", "test-key-second-run"
	fake.SetKey(key1)
	out := filepath.Join(r.dir, "conversations.jsonl")
	cache := filepath.Join(r.dir, "conversations.cache.jsonl")
	summary := filepath.Join(r.dir, "distill-summary.json")
	args := []string{"distill", "--manifest", manifest, "--format", "gemini", "--endpoint", fake.Endpoint(),
		"--model", "gemini-1.5-pro", "--key-env", keyEnv, "--concurrency", "2", "--out", out, "--summary", summary}

	r.killHalfway([]string{keyEnv + "=" + key1}, func() bool { return len(recipeCacheNames(t, cache)) >= 8 }, args...)
	cachedAtKill := recipeCacheNames(t, cache)
	if n := len(cachedAtKill); n >= len(subset) {
		t.Fatalf("all %d answers cached before the kill", n)
	}
	if _, err := os.Stat(out); err == nil {
		t.Errorf("%s exists after a killed run; it should be written at the end", out)
	}

	// The rerun authenticates with another key, so the fake can tell its
	// requests from any stray request of the killed run.
	fake.SetKey(key2)
	stdout, stderr := r.okEnv([]string{keyEnv + "=" + key2}, args...)
	shaOf := map[string]string{}
	for _, row := range subset {
		shaOf[row.sha] = row.name
	}
	var second []string
	for _, req := range fake.Requests() {
		if req.Header.Get("x-goog-api-key") == key2 {
			second = append(second, shaOf[req.ImageSHA])
		}
	}
	for _, name := range second {
		if cachedAtKill[name] {
			t.Errorf("the rerun asked the teacher again about %s, whose answer was cached", name)
		}
	}
	if want := len(subset) - len(cachedAtKill); len(second) != want {
		t.Errorf("the rerun made %d requests, want %d (32 images, %d cached)", len(second), want, len(cachedAtKill))
	}
	// What a real service would have billed: one good answer per cached
	// image, whichever run asked.
	good := fake.GoodAnswers()
	for _, row := range subset {
		if n := good[row.sha]; n < 1 || (cachedAtKill[row.name] && n != 1) {
			t.Errorf("%s got %d good answers (cached before the kill: %v)", row.name, n, cachedAtKill[row.name])
		}
	}
	t.Logf("distill: killed with %d of %d answers cached; the rerun made %d requests", len(cachedAtKill), len(subset), len(second))
	var sum struct{ Items, Cached, Fetched, Failed, Errors, Conversations int }
	recipeReadJSON(t, summary, &sum)
	if sum.Items != 32 || sum.Cached != len(cachedAtKill) || sum.Fetched != 32-len(cachedAtKill) || sum.Failed != 0 || sum.Errors != 0 || sum.Conversations != 64 {
		t.Errorf("rerun summary %+v; want 32 items, %d cached, %d fetched, 64 conversations", sum, len(cachedAtKill), 32-len(cachedAtKill))
	}
	for _, f := range []string{stdout, stderr, recipeRead(t, out), recipeRead(t, cache)} {
		if strings.Contains(f, key1) || strings.Contains(f, key2) {
			t.Error("the API key appears in distill's output or files")
		}
	}

	// 64 conversations: both aspects of every image, with the split and
	// rating word of the manifest and the teacher's description.
	byName := map[string]dataset.Record{}
	for _, rec := range m.Records {
		byName[rec.Name] = rec
	}
	count := map[string]int{}
	for i, line := range recipeLines(recipeRead(t, out)) {
		var c labels.Conversation
		if err := json.Unmarshal([]byte(line), &c); err != nil {
			t.Fatalf("%s:%d: %v", out, i+1, err)
		}
		rec, ok := byName[c.Image]
		switch {
		case !ok:
			t.Errorf("%s:%d: image %q is not in the manifest", out, i+1, c.Image)
		case c.Split != rec.Split || c.Prompt != rec.Prompt:
			t.Errorf("%s:%d: split %q prompt %q, want %q %q", out, i+1, c.Split, c.Prompt, rec.Split, rec.Prompt)
		case c.RatingWord != iqa.RatingWord(rec.MOS[c.Aspect]):
			t.Errorf("%s:%d: rating word %q for MOS %g", out, i+1, c.RatingWord, rec.MOS[c.Aspect])
		case len(strings.Fields(c.TeacherDescription)) < 20 || !strings.Contains(c.TeacherDescription, c.Aspect):
			t.Errorf("%s:%d: teacher description %q is not the teacher's %s answer", out, i+1, c.TeacherDescription, c.Aspect)
		}
		count[c.Aspect+"/"+c.Split]++
	}
	for _, a := range []string{"quality", "correspondence"} {
		if count[a+"/train"] != 24 || count[a+"/test"] != 8 {
			t.Errorf("conversations per aspect/split %v; want 24 train and 8 test for %s", count, a)
		}
	}
	return out
}

// finetune runs `m3gate finetune` on a repeated small batch (so that the
// loss must fall), kills it after a checkpoint, resumes it and checks that
// it continued from the checkpoint's step.
func (r *recipe) finetune(model, conv, images string) string {
	t := r.t
	const steps = 60
	out := filepath.Join(r.dir, "adapters", "agiqa3k-quality")
	metrics := filepath.Join(out, "metrics.jsonl")
	args := []string{"finetune", "--model", model, "--data", conv, "--images", images, "--aspect", "quality", "--out", out,
		"--max-train", "4", "--batch-size", "4", "--max-steps", strconv.Itoa(steps), "--lr", "1e-2", "--warmup-ratio", "0",
		"--lora-r", "8", "--lora-alpha", "16", "--lora-dropout", "0", "--max-val", "2", "--save-every", "5", "--threads", "1"}
	r.killHalfway(nil, func() bool {
		ck, _ := latestFinetuneCheckpoint(out)
		return ck >= 10
	}, args...)
	ck, err := latestFinetuneCheckpoint(out)
	if err != nil || ck <= 0 || ck >= steps {
		t.Fatalf("after the kill the latest checkpoint is at step %d (%v); want one between 1 and %d", ck, err, steps-1)
	}
	if _, err := os.Stat(filepath.Join(out, "trainer_state.json")); err == nil {
		t.Fatal("the killed finetune wrote its final state")
	}
	before := recipeLog(t, metrics)

	stdout, stderr := r.ok(append(args, "--resume")...)
	if want := fmt.Sprintf("resuming at step %d", ck); !strings.Contains(stderr, want) {
		t.Errorf("resumed finetune's stderr lacks %q:\n%s", want, stderr)
	}
	if !regexp.MustCompile(`finetune step \d+/60 loss [0-9.]+ lr \S+ [0-9.]+ items/s ETA`).MatchString(stderr) {
		t.Errorf("finetune shows no progress (loss, items/s, ETA) on stderr:\n%s", stderr)
	}
	if want := fmt.Sprintf("finetune: %d/%d steps", steps, steps); !strings.Contains(stdout, want) {
		t.Errorf("stdout %q lacks %q", stdout, want)
	}
	var st struct {
		Step int  `json:"step"`
		Done bool `json:"done"`
	}
	recipeReadJSON(t, filepath.Join(out, "trainer_state.json"), &st)
	if st.Step != steps || !st.Done {
		t.Errorf("final trainer_state.json: step %d done %v; want %d true", st.Step, st.Done, steps)
	}
	for _, f := range []string{"adapter_config.json", "adapter_model.safetensors"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Errorf("final PEFT adapter: %v", err)
		}
	}
	all := recipeLog(t, metrics)
	after := all[len(before):]
	loss := map[int]float64{}
	for _, e := range before {
		if v, ok := e["loss"]; ok {
			loss[int(e["step"])] = v
		}
	}
	var resumed []int
	for _, e := range after {
		v, ok := e["loss"]
		if !ok {
			continue
		}
		s := int(e["step"])
		resumed = append(resumed, s)
		// Steps that the killed run did after its last checkpoint are
		// redone from the same state: the same loss.
		if old, ok := loss[s]; ok && math.Abs(old-v) > 1e-3*math.Abs(old) {
			t.Errorf("step %d: loss %.6f after resuming, %.6f before the kill", s, v, old)
		}
		loss[s] = v
	}
	if len(resumed) != steps-ck || resumed[0] != ck+1 || resumed[len(resumed)-1] != steps {
		t.Fatalf("the resumed run logged steps %v; want %d..%d", resumed, ck+1, steps)
	}
	for s := 1; s <= steps; s++ {
		if _, ok := loss[s]; !ok {
			t.Fatalf("no loss logged for step %d", s)
		}
	}
	first := (loss[1] + loss[2] + loss[3]) / 3
	last := (loss[steps-2] + loss[steps-1] + loss[steps]) / 3
	t.Logf("finetune: killed at checkpoint %d; loss %.4f (steps 1-3) → %.4f (last 3)", ck, first, last)
	if !(last < 0.7*first) {
		t.Errorf("training loss did not fall: %.4f over the first 3 steps, %.4f over the last 3", first, last)
	}
	return out
}

// trainPredictor runs `m3gate train-predictor` with a small xLSTM, kills
// it after two epochs, resumes it and checks that it continued after the
// saved epoch, reused the cached features and that the loss fell.
func (r *recipe) trainPredictor(model, adapter, conv, images, labels string) string {
	t := r.t
	const epochs = 8
	out := filepath.Join(r.dir, "predictors", "agiqa3k-quality")
	metrics := filepath.Join(out, "metrics.jsonl")
	args := []string{"train-predictor", "--model", model, "--adapter", adapter, "--data", conv, "--images", images,
		"--labels", labels, "--aspect", "quality", "--out", out, "--epochs", strconv.Itoa(epochs), "--lr", "1e-3",
		"--embedding-dim", "32", "--blocks", "2", "--heads", "2", "--head-hidden", "16", "--max-len", "64",
		"--gen-max-tokens", "4", "--threads", "1"}
	r.killHalfway(nil, func() bool { return len(recipeLines(recipeReadIf(metrics))) >= 2 }, args...)
	state := predictorStateEpoch(t, filepath.Join(out, "train_state.safetensors"))
	if state < 2 || state >= epochs {
		t.Fatalf("after the kill the saved state is at epoch %d; want 2..%d", state, epochs-1)
	}
	before := recipeLog(t, metrics)
	features := recipeStamps(t, filepath.Join(out, "features"))
	if len(features) < 32 {
		t.Fatalf("%d cached feature files after the kill; want the 32 inputs (24 train, 8 validation)", len(features))
	}

	stdout, stderr := r.ok(append(args, "--resume")...)
	if !regexp.MustCompile(`train-predictor epoch \d+/8 train mse [0-9.]+ .* items/s ETA`).MatchString(stderr) {
		t.Errorf("train-predictor shows no progress (loss, items/s, ETA) on stderr:\n%s", stderr)
	}
	if want := fmt.Sprintf("train-predictor: %d epochs", epochs); !strings.Contains(stdout, want) {
		t.Errorf("stdout %q lacks %q", stdout, want)
	}
	for name, st := range recipeStamps(t, filepath.Join(out, "features")) {
		if old, ok := features[name]; ok && old != st {
			t.Errorf("cached feature %s was recomputed by the resumed run", name)
		}
	}
	all := recipeLog(t, metrics)
	after := all[len(before):]
	loss := map[int]float64{}
	for _, e := range before {
		loss[int(e["epoch"])] = e["train_loss"]
	}
	var resumed []int
	for _, e := range after {
		resumed = append(resumed, int(e["epoch"]))
		loss[int(e["epoch"])] = e["train_loss"]
	}
	if len(resumed) != epochs-state || resumed[0] != state+1 || resumed[len(resumed)-1] != epochs {
		t.Fatalf("the resumed run logged epochs %v; want %d..%d", resumed, state+1, epochs)
	}
	if got := predictorStateEpoch(t, filepath.Join(out, "train_state.safetensors")); got != epochs {
		t.Errorf("final state at epoch %d, want %d", got, epochs)
	}
	first, last := loss[1], (loss[epochs-1]+loss[epochs])/2
	t.Logf("train-predictor: killed after epoch %d; train MSE %.4f (epoch 1) → %.4f (last 2)", state, first, last)
	if !(last < 0.7*first) {
		t.Errorf("training loss did not fall: %.4f in epoch 1, %.4f over the last 2 epochs", first, last)
	}
	best := filepath.Join(out, "best.safetensors")
	if _, err := os.Stat(best); err != nil {
		t.Fatalf("best checkpoint: %v", err)
	}
	return best
}

// scoreAndEval scores the test split with the trained adapter and
// predictor (`m3gate score --json`) and evaluates the scores against the
// manifest (`m3gate eval`).
func (r *recipe) scoreAndEval(model, adapter, predictor, manifest string, m *dataset.Manifest) {
	t := r.t
	// grep '"split":"test"' agiqa3k.jsonl > test.jsonl
	var test []string
	for _, line := range recipeLines(recipeRead(t, manifest)) {
		if strings.Contains(line, `"split":"test"`) {
			test = append(test, line)
		}
	}
	testFile := filepath.Join(r.dir, "test.jsonl")
	if err := os.WriteFile(testFile, []byte(strings.Join(test, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	scores, _ := r.ok("score", "--prompts-file", testFile, "--aspects", "quality", "--json", "--model", model,
		"--adapter", "quality="+adapter, "--predictor", "quality="+predictor, "--max-new-tokens", "4", "--threads", "1")
	lines := recipeLines(scores)
	if len(lines) != len(test) {
		t.Fatalf("score printed %d lines for %d test images:\n%s", len(lines), len(test), scores)
	}
	for _, line := range lines {
		var s struct {
			Image   string
			Error   string
			Aspects map[string]struct {
				MOS    float64
				Source string
			}
		}
		if err := json.Unmarshal([]byte(line), &s); err != nil {
			t.Fatalf("score line %q: %v", line, err)
		}
		q, ok := s.Aspects["quality"]
		if s.Error != "" || !ok || q.Source != "predictor" || q.MOS < 0 || q.MOS > 5 {
			t.Errorf("score of %s: %s; want a quality MOS in [0, 5] from the predictor", s.Image, line)
		}
	}
	scoresFile := filepath.Join(r.dir, "scores.jsonl")
	if err := os.WriteFile(scoresFile, []byte(scores), 0o644); err != nil {
		t.Fatal(err)
	}

	evalDir := filepath.Join(r.dir, "eval")
	r.ok("eval", "--predictions", scoresFile, "--manifest", testFile, "--out", evalDir, "--bootstrap", "200")
	var report struct {
		Results []struct {
			Aspect           string
			N                int
			SRCC, PLCC, KRCC float64
			RMSE             float64
		}
	}
	recipeReadJSON(t, filepath.Join(evalDir, "report.json"), &report)
	if len(report.Results) != 1 || report.Results[0].Aspect != "quality" || report.Results[0].N != 8 {
		t.Fatalf("report.json results %+v; want quality over 8 images", report.Results)
	}
	res := report.Results[0]
	for name, v := range map[string]float64{"srcc": res.SRCC, "plcc": res.PLCC, "krcc": res.KRCC} {
		if math.IsNaN(v) || v < -1 || v > 1 {
			t.Errorf("%s = %g", name, v)
		}
	}
	byPath := map[string]float64{}
	for _, rec := range m.Records {
		byPath[m.ImagePath(rec)] = rec.MOS["quality"]
	}
	f, err := os.Open(filepath.Join(evalDir, "predictions.csv"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 9 {
		t.Fatalf("predictions.csv has %d rows, want a header and 8", len(rows))
	}
	col := map[string]int{}
	for i, h := range rows[0] {
		col[h] = i
	}
	for _, row := range rows[1:] {
		mos, err := strconv.ParseFloat(row[col["mos"]], 64)
		want, ok := byPath[row[col["image"]]]
		if err != nil || !ok || math.Abs(mos-want) > 1e-9 {
			t.Errorf("predictions.csv row %v: mos is not the manifest's (%g)", row, want)
		}
	}
	pf, err := os.Open(filepath.Join(evalDir, "scatter_quality.png"))
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Close()
	img, err := png.Decode(pf)
	if err != nil {
		t.Fatalf("scatter_quality.png: %v", err)
	}
	if b := img.Bounds(); b.Dx() < 100 || b.Dy() < 100 {
		t.Errorf("scatter plot is %v", b)
	}
}

// recipeRow is one row of the data.csv subset.
type recipeRow struct{ name, sha string }

// writeRecipeSubset writes the header and nTrain train + nTest test rows of
// src (rows spread over the file, images present) to dst.
func writeRecipeSubset(t *testing.T, src, images, dst string, nTrain, nTest int) []recipeRow {
	t.Helper()
	f, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	all, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatalf("read %s: %v", src, err)
	}
	col := map[string]int{}
	for i, h := range all[0] {
		col[h] = i
	}
	bySplit := map[string][][]string{}
	for _, row := range all[1:] {
		if _, err := os.Stat(filepath.Join(images, row[col["name"]])); err == nil {
			bySplit[row[col["split"]]] = append(bySplit[row[col["split"]]], row)
		}
	}
	out := [][]string{all[0]}
	for split, n := range map[string]int{"train": nTrain, "test": nTest} {
		rows := bySplit[split]
		if len(rows) < n {
			t.Skipf("the shared AGIQA-3K data has %d %s images, the test needs %d", len(rows), split, n)
		}
		for i := 0; i < n; i++ {
			out = append(out, rows[i*len(rows)/n])
		}
	}
	var buf bytes.Buffer
	w := csv.NewWriter(&buf)
	w.WriteAll(out)
	if err := os.WriteFile(dst, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	var rows []recipeRow
	for _, row := range out[1:] {
		b, err := os.ReadFile(filepath.Join(images, row[col["name"]]))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		rows = append(rows, recipeRow{name: row[col["name"]], sha: hex.EncodeToString(sum[:])})
	}
	return rows
}

// readCacheNames returns the images with an answer in distill's cache (a
// torn last line is ignored, as distill does).
func recipeCacheNames(t *testing.T, path string) map[string]bool {
	out := map[string]bool{}
	for _, line := range recipeLines(recipeReadIf(path)) {
		var e struct{ Image, Status string }
		if json.Unmarshal([]byte(line), &e) == nil && e.Status == "ok" {
			out[e.Image] = true
		}
	}
	return out
}

// latestFinetuneCheckpoint returns the step of the newest complete
// checkpoint-*/trainer_state.json under out (0 when none).
func latestFinetuneCheckpoint(out string) (int, error) {
	dirs, _ := filepath.Glob(filepath.Join(out, "checkpoint-*"))
	best := 0
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "trainer_state.json"))
		if err != nil {
			continue
		}
		var st struct{ Step int }
		if err := json.Unmarshal(b, &st); err != nil {
			return 0, fmt.Errorf("%s: %w", d, err)
		}
		best = max(best, st.Step)
	}
	return best, nil
}

// predictorStateEpoch reads the epoch from train_state.safetensors'
// metadata (the safetensors header is JSON after an 8-byte length).
func predictorStateEpoch(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil || len(b) < 8 {
		t.Fatalf("read %s: %v", path, err)
	}
	n := binary.LittleEndian.Uint64(b[:8])
	if n > uint64(len(b)-8) {
		t.Fatalf("%s: bad header length %d", path, n)
	}
	var hdr struct {
		Meta map[string]string `json:"__metadata__"`
	}
	if err := json.Unmarshal(b[8:8+n], &hdr); err != nil {
		t.Fatalf("%s: header: %v", path, err)
	}
	var st struct{ Epoch int }
	if err := json.Unmarshal([]byte(hdr.Meta["m3gate.train.state"]), &st); err != nil {
		t.Fatalf("%s: state metadata %q: %v", path, hdr.Meta["m3gate.train.state"], err)
	}
	return st.Epoch
}

// recipeLog reads a metrics.jsonl of numbers (null values are left out).
func recipeLog(t *testing.T, path string) []map[string]float64 {
	t.Helper()
	var out []map[string]float64
	for i, line := range recipeLines(recipeRead(t, path)) {
		var raw map[string]*float64
		if err := json.Unmarshal([]byte(line), &raw); err != nil {
			t.Fatalf("%s:%d: %v", path, i+1, err)
		}
		e := map[string]float64{}
		for k, v := range raw {
			if v != nil {
				e[k] = *v
			}
		}
		out = append(out, e)
	}
	return out
}

// fileStamps maps the files of dir to their size and modification time.
func recipeStamps(t *testing.T, dir string) map[string]string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range ents {
		if info, err := e.Info(); err == nil && info.Mode().IsRegular() {
			out[e.Name()] = fmt.Sprint(info.Size(), info.ModTime().UnixNano())
		}
	}
	return out
}

func recipeReadJSON(t *testing.T, path string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(recipeRead(t, path)), v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func recipeRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func recipeReadIf(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// nonEmptyLines splits s into its complete, non-blank lines (a last line
// without a newline, possibly half-written, is left out).
func recipeLines(s string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	complete := strings.HasSuffix(s, "\n")
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) != "" {
			out = append(out, sc.Text())
		}
	}
	if !complete && len(out) > 0 {
		out = out[:len(out)-1]
	}
	return out
}
