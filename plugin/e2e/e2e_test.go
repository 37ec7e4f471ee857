package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/m3gate/m3gate/nodes"
	"github.com/m3gate/m3gate/plugin/comfyui"
	"github.com/m3gate/m3gate/plugin/comfyui/comfyfake"
	"github.com/m3gate/m3gate/plugin/pipeline"
)

// workflowSeed is the KSampler seed written in testdata/txt2img-api.json.
const workflowSeed = 156680208700286

// runM3gate runs `m3gate run WORKFLOW args...` in dir (whose config.yaml
// names the daemon and the ComfyUI server) and returns its exit code.
func runM3gate(t *testing.T, dir, workflow string, args ...string) (*proc, int) {
	t.Helper()
	m3gate, _, _ := binaries(t)
	p := startProc(t, "m3gate run", dir, m3gate, append([]string{"run", workflow}, args...)...)
	return p, p.wait(t, 45*time.Second)
}

// sameScore reports whether two MOS values are the daemon's answer for the
// same pixels (the model is deterministic on CPU; the slack only covers
// float32 reductions of a batch scored differently).
func sameScore(a, b float64) bool { return math.Abs(a-b) <= 1e-6 }

// TestRunEndToEnd: `m3gate run` against the fake ComfyUI, scored by the
// real daemon and its real sidecar on the tiny model, configured from one
// config.yaml (comfyui.servers, daemon.listen).
func TestRunEndToEnd(t *testing.T) {
	checkNoLeaks(t)
	fake, imgs := startFake(t)
	d := startDaemon(t, fake.URL())
	wfPath, _ := readWorkflow(t, "txt2img-api.json")
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()

	// A threshold outside the MOS range is a usage error, named as such.
	t.Run("ThresholdOutOfRange", func(t *testing.T) {
		p, code := runM3gate(t, d.dir, wfPath, "--threshold", "quality=5.5", "--out", t.TempDir())
		if code != 2 || !strings.Contains(p.stderr.String(), "0..5") {
			t.Errorf("exit %d, stderr %q; want exit 2 naming the 0..5 range", code, p.stderr.String())
		}
	})

	// Case A: quality=5 needs P(excellent)=1, which a softmax never gives:
	// every image is rejected, every try gets new seeds, each job stops at
	// --max-tries, the exit code says the run is incomplete, and
	// results.jsonl lists every rejected image with the daemon's score.
	t.Run("RejectedUntilMaxTries", func(t *testing.T) {
		out := t.TempDir()
		before := len(history(t, ctx, fake.URL()))
		p, code := runM3gate(t, d.dir, wfPath, "--count", "2", "--threshold", "quality=5", "--max-tries", "3",
			"--parallel", "2", "--out", out, "--rand-seed", "11")
		if code != 1 {
			t.Fatalf("exit code %d, want 1 (incomplete run)\nstdout:\n%s\nstderr:\n%s", code, p.stdout.String(), p.stderr.String())
		}
		if msg := p.stderr.String(); !strings.Contains(msg, "only 0 of 2 images passed the gate") || !strings.Contains(msg, "2 jobs used all 3 tries") {
			t.Errorf("stderr does not say why the run failed:\n%s", msg)
		}
		if !strings.Contains(p.stdout.String(), "accepted 0/2 images") {
			t.Errorf("stdout: %s", p.stdout.String())
		}
		if pngs, _ := filepath.Glob(filepath.Join(out, "*.png")); len(pngs) != 0 {
			t.Errorf("rejected images written as accepted: %v", pngs)
		}

		results := readLines[pipeline.Result](t, filepath.Join(out, pipeline.ResultsFile))
		if len(results) != 6 {
			t.Fatalf("results.jsonl has %d lines, want 6 (2 jobs × 3 tries)", len(results))
		}
		attempts := map[int][]int{}
		runSeeds := map[uint64]bool{}
		for _, r := range results {
			attempts[r.Job] = append(attempts[r.Job], r.Attempt)
			if r.Passed || r.Accepted || r.File != "" || r.Error != "" {
				t.Errorf("result %+v: want a rejected, scored image", r)
			}
			if runSeeds[r.Seed] || r.Seed == workflowSeed {
				t.Errorf("seed %d used twice, or the workflow's own seed", r.Seed)
			}
			runSeeds[r.Seed] = true
			q, ok := r.Scores["quality"]
			if !ok || q.MOS < 0 || q.MOS >= 5 {
				t.Errorf("job %d try %d: quality %+v, want a MOS in [0, 5)", r.Job, r.Attempt, q)
				continue
			}
			// The recorded score is the daemon's score of that very image.
			cl, _ := comfyui.New(fake.URL())
			data, err := cl.View(ctx, r.Source)
			if err != nil {
				t.Fatalf("view %+v: %v", r.Source, err)
			}
			if got := d.score(t, data, "a red fox in the snow"); !sameScore(got.MOS, q.MOS) {
				t.Errorf("job %d try %d: results.jsonl MOS %v, daemon says %v for that image", r.Job, r.Attempt, q.MOS, got.MOS)
			}
		}
		for job, as := range attempts {
			slices.Sort(as)
			if !slices.Equal(as, []int{1, 2, 3}) {
				t.Errorf("job %d tries %v, want [1 2 3]", job, as)
			}
		}
		if len(attempts) != 2 {
			t.Errorf("jobs %v, want 2", attempts)
		}

		// The prompts the fake received: 6, each with its own sampler seed,
		// the very seeds of results.jsonl, each rendered (never a cached
		// re-run).
		h := history(t, ctx, fake.URL())
		if len(h)-before != 6 {
			t.Errorf("fake received %d prompts, want 6", len(h)-before)
		}
		fakeSeeds := map[uint64]bool{}
		for _, r := range results {
			e, ok := h[r.PromptID]
			if !ok {
				t.Errorf("prompt %s of results.jsonl unknown to the server", r.PromptID)
				continue
			}
			s := samplerSeed(t, e.Prompt.Prompt)
			if s != r.Seed {
				t.Errorf("prompt %s ran with seed %d, results.jsonl says %d", r.PromptID, s, r.Seed)
			}
			if fakeSeeds[s] {
				t.Errorf("the fake received seed %d twice", s)
			}
			fakeSeeds[s] = true
		}
		rendered := imgs.rendered()
		for s := range runSeeds {
			if rendered[s] != 1 {
				t.Errorf("seed %d rendered %d times, want once", s, rendered[s])
			}
		}
	})

	// Case B: threshold 0 accepts every image at its first try; accepted
	// images land in --out with the daemon's scores, the seed and the
	// attempt in their PNG text chunk.
	t.Run("AcceptedWithMetadata", func(t *testing.T) {
		out := t.TempDir()
		p, code := runM3gate(t, d.dir, wfPath, "--count", "3", "--threshold", "quality=0", "--max-tries", "2",
			"--out", out, "--rand-seed", "12")
		if code != 0 {
			t.Fatalf("exit code %d\nstdout:\n%s\nstderr:\n%s", code, p.stdout.String(), p.stderr.String())
		}
		if !strings.Contains(p.stdout.String(), "accepted 3/3 images") {
			t.Errorf("stdout: %s", p.stdout.String())
		}
		results := readLines[pipeline.Result](t, filepath.Join(out, pipeline.ResultsFile))
		byFile := map[string]pipeline.Result{}
		for _, r := range results {
			if !r.Accepted || r.File == "" {
				t.Errorf("result %+v: want accepted", r)
			}
			byFile[r.File] = r
		}
		pngs, _ := filepath.Glob(filepath.Join(out, "*.png"))
		if len(pngs) != 3 || len(byFile) != 3 {
			t.Fatalf("%d PNGs and %d accepted results, want 3 each: %v", len(pngs), len(byFile), pngs)
		}
		rendered := imgs.rendered()
		seeds := map[uint64]bool{}
		for _, path := range pngs {
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			md, err := pipeline.ReadMetadata(data)
			if err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			q, ok := md.Scores["quality"]
			if !ok || q.MOS < 0 || q.MOS > 5 || q.Rating == "" {
				t.Errorf("%s: quality %+v", path, q)
			}
			if !md.Passed || md.Attempt != 1 || md.Prompt != "a red fox in the snow" || md.Gate.Thresholds["quality"] != 0 {
				t.Errorf("%s: metadata %+v", path, md)
			}
			if seeds[md.Seed] || md.Seed == workflowSeed || rendered[md.Seed] != 1 || md.Seeds["3"] != md.Seed {
				t.Errorf("%s: seed %d (seeds %v) reused, the workflow's, or never rendered by the server", path, md.Seed, md.Seeds)
			}
			seeds[md.Seed] = true
			// ComfyUI's own "prompt" chunk (written by SaveImage) shows the
			// image came from a prompt with that seed.
			chunks, err := comfyui.PNGText(data)
			if err != nil {
				t.Fatal(err)
			}
			var ranWith uint64
			for _, c := range chunks {
				if c.Key == "prompt" {
					wf, err := comfyui.ParseWorkflow([]byte(c.Text))
					if err != nil {
						t.Fatalf("%s: prompt chunk: %v", path, err)
					}
					ranWith = samplerSeed(t, wf)
				}
			}
			if ranWith != md.Seed {
				t.Errorf("%s: generated with seed %d, metadata says %d", path, ranWith, md.Seed)
			}
			// The MOS in the PNG is the daemon's answer for these pixels.
			if got := d.score(t, data, md.Prompt); !sameScore(got.MOS, q.MOS) || got.Rating != q.Rating {
				t.Errorf("%s: PNG says quality %v (%s), the daemon says %v (%s)", path, q.MOS, q.Rating, got.MOS, got.Rating)
			}
			r, ok := byFile[path]
			if !ok || r.Seed != md.Seed || r.Attempt != md.Attempt || r.PromptID != md.PromptID || r.Scores["quality"].MOS != q.MOS {
				t.Errorf("%s: results.jsonl %+v disagrees with the PNG's metadata %+v", path, r, md)
			}
		}
	})

	// The daemon counted the scores it served.
	resp, err := http.Get(d.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if m := regexp.MustCompile(`m3gate_scores_count\{aspect="quality"\} (\d+)`).FindSubmatch(body); m == nil || string(m[1]) == "0" {
		t.Errorf("/metrics has no quality scores:\n%s", body)
	}
}

// TestRunSurvivesComfyUIRestart kills the fake ComfyUI server while
// `m3gate run` has prompts queued and running, restarts it on the same
// address, and checks the run still completes with every image on disk.
func TestRunSurvivesComfyUIRestart(t *testing.T) {
	checkNoLeaks(t)
	fake, imgs := startFake(t, comfyfake.WithStepDelay(40*time.Millisecond), comfyfake.WithMaxSteps(3))
	d := startDaemon(t, fake.URL())
	wfPath, _ := readWorkflow(t, "txt2img-api.json")
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()

	out := t.TempDir()
	m3gate, _, _ := binaries(t)
	p := startProc(t, "m3gate run", d.dir, m3gate, "run", wfPath, "--count", "6", "--threshold", "quality=0",
		"--max-tries", "1", "--parallel", "2", "--out", out, "--rand-seed", "13")

	cl, err := comfyui.New(fake.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	// Kill the server once two prompts are done and one is running.
	for {
		if fake.PromptsExecuted() >= 2 {
			if q, err := cl.Queue(ctx); err == nil && len(q.Running) == 1 {
				break
			}
		}
		if p.exited() || ctx.Err() != nil {
			t.Fatalf("run ended before the restart\nstdout:\n%s\nstderr:\n%s", p.stdout.String(), p.stderr.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	fake.Stop()
	time.Sleep(300 * time.Millisecond)
	if err := fake.Start(); err != nil {
		t.Fatal(err)
	}

	code := p.wait(t, 45*time.Second)
	if code != 0 {
		t.Fatalf("exit code %d\nstdout:\n%s\nstderr:\n%s", code, p.stdout.String(), p.stderr.String())
	}
	// --max-tries 1 and no rejections: a lost prompt that counted as a try
	// would have ended its job without an image.
	m := regexp.MustCompile(`accepted 6/6 images .* (\d+) resubmitted after a server restart`).FindStringSubmatch(p.stdout.String())
	if m == nil {
		t.Fatalf("stdout: %s", p.stdout.String())
	}
	if n, _ := strconv.Atoi(m[1]); n < 1 {
		t.Errorf("nothing resubmitted after the restart: %s", p.stdout.String())
	}
	jobs := map[int]bool{}
	rendered := imgs.rendered()
	for _, r := range readLines[pipeline.Result](t, filepath.Join(out, pipeline.ResultsFile)) {
		if !r.Accepted {
			t.Errorf("unexpected result %+v", r)
			continue
		}
		if jobs[r.Job] {
			t.Errorf("job %d accepted twice", r.Job)
		}
		jobs[r.Job] = true
		data, err := os.ReadFile(r.File)
		if err != nil {
			t.Errorf("accepted image lost: %v", err)
			continue
		}
		md, err := pipeline.ReadMetadata(data)
		if err != nil || md.Job != r.Job || md.Seed != r.Seed || rendered[r.Seed] == 0 {
			t.Errorf("%s: metadata %+v (%v); result %+v", r.File, md, err, r)
		}
	}
	pngs, _ := filepath.Glob(filepath.Join(out, "*.png"))
	if len(jobs) != 6 || len(pngs) != 6 {
		t.Errorf("accepted jobs %v and %d PNGs, want 6 each", jobs, len(pngs))
	}
	if leftovers, _ := filepath.Glob(filepath.Join(out, ".m3gate-*")); len(leftovers) != 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}
	// The daemon went on scoring through the restart.
	if resp, err := http.Get(d.url + "/readyz"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("daemon not ready after the run: %v", err)
	} else {
		resp.Body.Close()
	}
}

// rerollBody is the body the node pack's M3 Reroll posts to /v1/reroll
// (nodes/comfyui/m3gate/__init__.py, M3Reroll.reroll).
func rerollBody(t *testing.T, prompt comfyui.Workflow, attempt, maxTries int, clientID string) []byte {
	t.Helper()
	pj, err := json.Marshal(prompt)
	if err != nil {
		t.Fatal(err)
	}
	body, err := json.Marshal(map[string]any{
		"prompt": json.RawMessage(pj), "node_id": "12", "seed_nodes": []string{},
		"attempt": attempt, "max_tries": maxTries, "passed": 0, "wanted": 1, "client_id": clientID,
		"extra_pnginfo": map[string]any{
			"workflow":      map[string]any{"last_node_id": 13, "nodes": []any{}, "links": []any{}, "version": 0.4},
			"m3gate":        map[string]any{"images": []any{map[string]any{"quality": 3.1}}},
			"m3gate_reroll": map[string]any{"attempt": attempt, "max_tries": maxTries, "passed": 0, "wanted": 1},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return body
}

func postReroll(t *testing.T, url string, body []byte) (int, []byte) {
	t.Helper()
	resp, err := http.Post(url+nodes.PathReroll, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, raw
}

// TestPackRerollThroughDaemon drives the node pack's reroll path: a graph
// with M3 Score, M3 Gate and M3 Reroll runs on the fake ComfyUI; M3 Reroll's
// request goes to the real daemon, which queues the prompt again on
// ComfyUI (comfyui.servers[0]) with new sampler seeds and attempt n+1, for
// the websocket client that ran the first; at max_tries it refuses.
func TestPackRerollThroughDaemon(t *testing.T) {
	checkNoLeaks(t)
	var opts []comfyfake.Option
	for _, class := range []string{"M3Score", "M3Gate", "M3Reroll"} {
		def, ok := nodes.Lookup(class)
		if !ok {
			t.Fatalf("node %s not registered", class)
		}
		var info map[string]json.RawMessage
		if err := json.Unmarshal(def.ObjectInfoJSON(), &info); err != nil {
			t.Fatal(err)
		}
		opts = append(opts, comfyfake.WithNodeClass(class, info[class]))
	}
	fake, imgs := startFake(t, opts...)
	d := startDaemon(t, fake.URL())
	_, wf := readWorkflow(t, "pack-api.json")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// The artist's browser: a websocket client that queues attempt 1.
	cl, err := comfyui.New(fake.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	first, err := cl.RunPrompt(ctx, comfyui.PromptRequest{Prompt: wf,
		ExtraData: map[string]any{"extra_pnginfo": map[string]any{"workflow": map[string]any{"nodes": []any{}}}}})
	if err != nil {
		t.Fatal(err)
	}
	orig := samplerSeed(t, wf)
	if orig != math.MaxUint64 {
		t.Fatalf("testdata seed %d, want 2^64-1", orig)
	}

	prompt, seen := wf, []uint64{orig}
	for attempt := 1; attempt < 3; attempt++ {
		code, raw := postReroll(t, d.url, rerollBody(t, prompt, attempt, 3, cl.ID()))
		var ans nodes.RerollResponse
		if code != http.StatusOK || json.Unmarshal(raw, &ans) != nil || !ans.Queued || ans.PromptID == "" {
			t.Fatalf("reroll of attempt %d: HTTP %d %s", attempt, code, raw)
		}
		if ans.Attempt != attempt+1 || len(ans.Seeds) != 1 {
			t.Errorf("reroll answer %+v, want attempt %d and one new seed", ans, attempt+1)
		}
		// The prompt reaches the client that queued the first one, and it
		// really runs: the sampler is not served from the cache.
		res, err := cl.WaitPrompt(ctx, ans.PromptID)
		if err != nil {
			t.Fatalf("wait for rerolled prompt %s: %v", ans.PromptID, err)
		}
		if slices.Contains(res.Cached, "3") || !slices.Contains(res.Cached, "4") {
			t.Errorf("rerolled prompt: cached nodes %v; want the sampler re-run and the loader cached", res.Cached)
		}
		h, err := cl.History(ctx, ans.PromptID)
		if err != nil {
			t.Fatal(err)
		}
		got := h.Prompt.Prompt
		seed := samplerSeed(t, got)
		if seed != ans.Seeds["3.seed"] || slices.Contains(seen, seed) {
			t.Errorf("attempt %d ran with seed %d (answer %v); earlier seeds %v", attempt+1, seed, ans.Seeds, seen)
		}
		seen = append(seen, seed)
		if imgs.rendered()[seed] != 1 {
			t.Errorf("seed %d not rendered once by the server", seed)
		}
		if a, _ := comfyui.AsUint64(got["12"].Inputs["attempt"]); a != uint64(attempt+1) {
			t.Errorf("M3 Reroll attempt input %v, want %d", got["12"].Inputs["attempt"], attempt+1)
		}
		// Everything else is the prompt that ran.
		for id, n := range prompt {
			g := got[id]
			delete(g.Inputs, "seed")
			delete(g.Inputs, "attempt")
			w := comfyui.Node{ClassType: n.ClassType, Inputs: map[string]any{}}
			for k, v := range n.Inputs {
				if k != "seed" && k != "attempt" {
					w.Inputs[k] = v
				}
			}
			gj, _ := json.Marshal(g.Inputs)
			wj, _ := json.Marshal(w.Inputs)
			if g.ClassType != n.ClassType || !bytes.Equal(gj, wj) {
				t.Errorf("node %s changed by the reroll: %s %s, was %s %s", id, g.ClassType, gj, n.ClassType, wj)
			}
		}
		if cid, _ := h.Prompt.ExtraData["client_id"].(string); cid != cl.ID() {
			t.Errorf("rerolled prompt queued for client %q, want %q", cid, cl.ID())
		}
		pnginfo, _ := h.Prompt.ExtraData["extra_pnginfo"].(map[string]any)
		if _, ok := pnginfo["workflow"]; !ok || pnginfo[nodes.PNGInfoKey] != nil || pnginfo[nodes.PNGInfoRerollKey] != nil {
			t.Errorf("extra_pnginfo of the rerolled prompt %v: want the workflow kept and m3gate's keys dropped", pnginfo)
		}
		// The saved image carries the new seed in ComfyUI's prompt chunk.
		var saved *comfyui.NodeImage
		for _, im := range res.Images() {
			if im.Node == "9" {
				saved = &im
			}
		}
		if saved == nil {
			t.Fatalf("rerolled prompt saved no image: %v", res.Outputs)
		}
		data, err := cl.View(ctx, saved.ImageRef)
		if err != nil {
			t.Fatal(err)
		}
		chunks, _ := comfyui.PNGText(data)
		for _, c := range chunks {
			if c.Key == "prompt" {
				pw, err := comfyui.ParseWorkflow([]byte(c.Text))
				if err != nil || samplerSeed(t, pw) != seed {
					t.Errorf("saved PNG's prompt chunk: %v, seed want %d", err, seed)
				}
			}
		}
		prompt = got
		prompt["3"].Inputs["seed"] = comfyui.Uint64Input(seed)
		prompt["12"].Inputs["attempt"] = json.Number(strconv.Itoa(attempt + 1))
	}
	if first.PromptID == "" {
		t.Error("first prompt has no id")
	}

	// Attempt 3 of 3: the daemon refuses and queues nothing.
	before := fake.PromptsExecuted()
	q0, err := cl.Queue(ctx)
	if err != nil {
		t.Fatal(err)
	}
	code, raw := postReroll(t, d.url, rerollBody(t, prompt, 3, 3, cl.ID()))
	var refusal nodes.ErrorResponse
	if code != http.StatusConflict || json.Unmarshal(raw, &refusal) != nil || !strings.Contains(refusal.Error, "max_tries") {
		t.Errorf("reroll at max_tries: HTTP %d %s, want 409 naming max_tries", code, raw)
	}
	q1, err := cl.Queue(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(q0.Pending)+len(q0.Running) != 0 || len(q1.Pending)+len(q1.Running) != 0 || fake.PromptsExecuted() != before {
		t.Errorf("something was queued after the refusal: queue %+v, prompts %d → %d", q1, before, fake.PromptsExecuted())
	}
}

// TestRunSurvivesDaemonRestart stops the m3gate daemon (and so its model
// process) while `m3gate run` is scoring, keeps it down for longer than a
// few quick retries take, and starts it again on the same address: the run
// waits for it (within its retry timeout) and completes.
func TestRunSurvivesDaemonRestart(t *testing.T) {
	checkNoLeaks(t)
	fake, _ := startFake(t, comfyfake.WithStepDelay(20*time.Millisecond), comfyfake.WithMaxSteps(3))
	d := startDaemon(t, fake.URL())
	wfPath, _ := readWorkflow(t, "txt2img-api.json")
	out := t.TempDir()
	m3gate, _, _ := binaries(t)
	p := startProc(t, "m3gate run", d.dir, m3gate, "run", wfPath, "--count", "4", "--threshold", "quality=0",
		"--max-tries", "1", "--parallel", "1", "--out", out, "--rand-seed", "14")

	// Stop the daemon once the first image is accepted.
	results := filepath.Join(out, pipeline.ResultsFile)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if b, _ := os.ReadFile(results); bytes.Count(b, []byte("\n")) >= 1 {
			break
		}
		if p.exited() || time.Now().After(deadline) {
			t.Fatalf("no image accepted\nstdout:\n%s\nstderr:\n%s", p.stdout.String(), p.stderr.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	d.shutdown(t)
	time.Sleep(daemonDownFor)
	if p.exited() {
		t.Fatalf("run gave up while the daemon was down %v\nstdout:\n%s\nstderr:\n%s", daemonDownFor, p.stdout.String(), p.stderr.String())
	}
	d.start(t)

	if code := p.wait(t, 45*time.Second); code != 0 {
		t.Fatalf("exit code %d\nstdout:\n%s\nstderr:\n%s", code, p.stdout.String(), p.stderr.String())
	}
	if !strings.Contains(p.stdout.String(), "accepted 4/4 images") {
		t.Errorf("stdout: %s", p.stdout.String())
	}
	lines := readLines[pipeline.Result](t, results)
	for _, r := range lines {
		if !r.Accepted || r.Scores["quality"].MOS <= 0 {
			t.Errorf("result %+v", r)
		}
	}
	if len(lines) != 4 {
		t.Errorf("%d results, want 4", len(lines))
	}
}

// daemonDownFor is how long TestRunSurvivesDaemonRestart keeps the daemon
// down: longer than the scorer's quick retries (0.5+1+1.5+2 s).
const daemonDownFor = 6 * time.Second
