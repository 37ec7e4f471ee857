package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/m3gate/m3gate/nodes"
	"github.com/m3gate/m3gate/plugin/comfyui"
	"github.com/m3gate/m3gate/plugin/comfyui/comfyfake"
	"github.com/m3gate/m3gate/plugin/pipeline"
	"github.com/m3gate/m3gate/plugin/review"
	"github.com/m3gate/m3gate/schemas/api"
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

	// Without a daemon `m3gate run` says how to start one, and queues
	// nothing on ComfyUI (no image is made for nothing).
	t.Run("DaemonDown", func(t *testing.T) {
		before := len(history(t, ctx, fake.URL()))
		p, code := runM3gate(t, d.dir, wfPath, "--daemon", "http://127.0.0.1:1", "--out", t.TempDir())
		if code != 1 || !strings.Contains(p.stderr.String(), "m3gate serve") {
			t.Errorf("exit %d, stderr %q; want exit 1 saying how to start the daemon", code, p.stderr.String())
		}
		if n := len(history(t, ctx, fake.URL())) - before; n != 0 {
			t.Errorf("%d prompts queued without a daemon", n)
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

		// m3gate report makes the review page of this run: one card per
		// image with the run's numbers, seeds and gate, thumbnails inline.
		m3gate, _, _ := binaries(t)
		report := filepath.Join(out, "report.html")
		rp := startProc(t, "m3gate report", d.dir, m3gate, "report", out, "--out", report)
		if code := rp.wait(t, 30*time.Second); code != 0 {
			t.Fatalf("m3gate report: exit %d\n%s", code, rp.stderr.String())
		}
		html, err := os.ReadFile(report)
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(`(?s)<script type="application/json" id="m3gate-data">(.*?)</script>`).FindSubmatch(html)
		if m == nil {
			t.Fatalf("report has no data element")
		}
		var view review.View
		if err := json.Unmarshal(m[1], &view); err != nil {
			t.Fatal(err)
		}
		if len(view.Items) != len(results) || view.Gate.Thresholds["quality"] != 0 || view.Gate.Mode != "all" {
			t.Fatalf("report: %d items, gate %+v; want %d and the run's quality=0", len(view.Items), view.Gate, len(results))
		}
		for i, it := range view.Items {
			r := results[i]
			if it.Prompt != "a red fox in the snow" || r.Prompt != it.Prompt || it.Seed != strconv.FormatUint(r.Seed, 10) || it.Attempt != r.Attempt ||
				it.Recorded != "passed" || it.Aspects["quality"].MOS != r.Scores["quality"].MOS || !strings.HasPrefix(it.Thumb, "data:image/jpeg;base64,") {
				t.Errorf("report item %d %+v disagrees with results.jsonl %+v", i, it, r)
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
	resp, err := http.Post(url+api.PathReroll, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, raw
}

// TestPackRerollThroughDaemon drives the node pack's reroll path: a graph
// with M3 Score, M3 Gate and M3 Reroll runs on the fake ComfyUI; the real
// pack (Python) scores its image through the real daemon, and its M3 Reroll
// asks the daemon to queue the prompt again on ComfyUI
// that ran it (the address the pack sends) with new sampler seeds and attempt n+1, for the
// websocket client that ran the first. A pack-shaped request from Go takes
// the next step; at max_tries the pack gives up and the daemon refuses.
func TestPackRerollThroughDaemon(t *testing.T) {
	checkNoLeaks(t)
	var opts []comfyfake.Option
	for _, class := range []string{"M3Score", "M3Gate", "M3Reroll", "M3SaveImage"} {
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
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()

	// A dashboard on the daemon's /v1/events.
	events := subscribeEvents(t, d)

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
	if s := samplerSeed(t, wf); s != math.MaxUint64 {
		t.Fatalf("testdata seed %d, want 2^64-1 (exact 64-bit seeds)", s)
	}
	seen := []uint64{math.MaxUint64}

	// checkRerolled waits for the re-queued prompt on the client's socket
	// and checks it is prev with only the seed and the attempt changed.
	checkRerolled := func(promptID string, prev comfyui.Workflow, attempt int, newSeeds map[string]uint64) comfyui.Workflow {
		t.Helper()
		res, err := cl.WaitPrompt(ctx, promptID)
		if err != nil {
			t.Fatalf("wait for rerolled prompt %s: %v", promptID, err)
		}
		// It really runs: the sampler is not served from the cache.
		if slices.Contains(res.Cached, "3") || !slices.Contains(res.Cached, "4") {
			t.Errorf("rerolled prompt: cached nodes %v; want the sampler re-run and the loader cached", res.Cached)
		}
		h, err := cl.History(ctx, promptID)
		if err != nil {
			t.Fatal(err)
		}
		got := h.Prompt.Prompt
		seed := samplerSeed(t, got)
		if newSeeds != nil && (len(newSeeds) != 1 || newSeeds["3.seed"] != seed) {
			t.Errorf("attempt %d ran with seed %d; the daemon answered seeds %v", attempt, seed, newSeeds)
		}
		if slices.Contains(seen, seed) {
			t.Errorf("attempt %d reuses seed %d (earlier %v)", attempt, seed, seen)
		}
		seen = append(seen, seed)
		if imgs.rendered()[seed] != 1 {
			t.Errorf("seed %d not rendered once by the server", seed)
		}
		if a, _ := comfyui.AsUint64(got["12"].Inputs["attempt"]); a != uint64(attempt) {
			t.Errorf("M3 Reroll attempt input %v, want %d", got["12"].Inputs["attempt"], attempt)
		}
		// Everything else is the prompt that ran.
		if len(got) != len(prev) {
			t.Errorf("rerolled prompt has %d nodes, the one that ran %d", len(got), len(prev))
		}
		for id, n := range prev {
			strip := func(in map[string]any) string {
				c := map[string]any{}
				for k, v := range in {
					if !(id == "3" && k == "seed") && !(id == "12" && k == "attempt") {
						c[k] = v
					}
				}
				b, _ := json.Marshal(c)
				return string(b)
			}
			if g := got[id]; g.ClassType != n.ClassType || strip(g.Inputs) != strip(n.Inputs) {
				t.Errorf("node %s changed by the reroll: %s %s, was %s %s", id, g.ClassType, strip(g.Inputs), n.ClassType, strip(n.Inputs))
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
		data := savedImage(t, ctx, cl, res)
		chunks, _ := comfyui.PNGText(data)
		found := false
		for _, c := range chunks {
			if c.Key == "prompt" {
				pw, err := comfyui.ParseWorkflow([]byte(c.Text))
				found = err == nil && samplerSeed(t, pw) == seed
			}
		}
		if !found {
			t.Errorf("saved PNG's prompt chunk does not carry seed %d", seed)
		}
		return got
	}

	// Attempt 1 → 2 through the real pack.
	h1, err := cl.History(ctx, first.PromptID)
	if err != nil {
		t.Fatal(err)
	}
	pack := runPack(t, d, fake.URL(), h1.Prompt.Prompt, savedImage(t, ctx, cl, first), cl.ID(), 1)
	var requeued string
	for _, ev := range pack.Events {
		if ev.Event == "m3gate.reroll" {
			requeued, _ = ev.Data["prompt_id"].(string)
			if ev.SID != cl.ID() || ev.Data["requeued"] != true {
				t.Errorf("reroll event %+v, want requeued for %s", ev, cl.ID())
			}
		}
	}
	if pack.Passed != 0 || requeued == "" || !strings.Contains(pack.RerollText, "re-queued attempt 2 of 3") {
		t.Fatalf("pack: passed %d, reroll %q, events %+v", pack.Passed, pack.RerollText, pack.Events)
	}
	prompt := checkRerolled(requeued, h1.Prompt.Prompt, 2, nil)
	// The daemon told its subscribers about the pack's score and reroll.
	var sawScore, sawReroll bool
	for !sawScore || !sawReroll {
		select {
		case ev := <-events:
			switch ev.Type {
			case "score":
				sawScore = sawScore || strings.Contains(string(ev.Data), `"prompt":"a red fox in the snow"`)
			case "reroll":
				var re struct {
					PromptID string `json:"prompt_id"`
					Attempt  int    `json:"attempt"`
					MaxTries int    `json:"max_tries"`
				}
				json.Unmarshal(ev.Data, &re)
				if re.PromptID != requeued || re.Attempt != 2 || re.MaxTries != 3 {
					t.Errorf("reroll event %s, want prompt %s attempt 2 of 3", ev.Data, requeued)
				}
				sawReroll = true
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("/v1/events: score event %v, reroll event %v", sawScore, sawReroll)
		}
	}

	// Attempt 2 → 3: the request the pack sends, from Go.
	code, raw := postReroll(t, d.url, rerollBody(t, prompt, 2, 3, cl.ID()))
	var ans api.RerollResponse
	if code != http.StatusOK || json.Unmarshal(raw, &ans) != nil || !ans.Queued || ans.PromptID == "" || ans.Attempt != 3 {
		t.Fatalf("reroll of attempt 2: HTTP %d %s", code, raw)
	}
	prompt = checkRerolled(ans.PromptID, prompt, 3, ans.Seeds)

	// Attempt 3 of 3: the pack gives up without asking; asked anyway, the
	// daemon refuses and queues nothing.
	before := fake.PromptsExecuted()
	last, err := cl.History(ctx, ans.PromptID)
	if err != nil {
		t.Fatal(err)
	}
	res3, err := cl.WaitPrompt(ctx, ans.PromptID)
	if err != nil {
		t.Fatal(err)
	}
	pack = runPack(t, d, fake.URL(), last.Prompt.Prompt, savedImage(t, ctx, cl, res3), cl.ID(), 3)
	if !strings.Contains(pack.RerollText, "gave up") || pack.RerollResult[1] != false {
		t.Errorf("pack at max_tries: %q %v", pack.RerollText, pack.RerollResult)
	}
	code, raw = postReroll(t, d.url, rerollBody(t, prompt, 3, 3, cl.ID()))
	var refusal api.ErrorResponse
	if code != http.StatusConflict || json.Unmarshal(raw, &refusal) != nil || !strings.Contains(refusal.Error, "max_tries") {
		t.Errorf("reroll at max_tries: HTTP %d %s, want 409 naming max_tries", code, raw)
	}
	q, err := cl.Queue(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(q.Pending)+len(q.Running) != 0 || fake.PromptsExecuted() != before {
		t.Errorf("something was queued after max_tries: queue %+v, prompts %d → %d", q, before, fake.PromptsExecuted())
	}

	// With ComfyUI down, the daemon says so (the pack shows the message).
	fake.Stop()
	code, raw = postReroll(t, d.url, rerollBody(t, wf, 1, 3, cl.ID()))
	if code != http.StatusBadGateway || !strings.Contains(string(raw), "queue on ComfyUI") {
		t.Errorf("reroll with ComfyUI down: HTTP %d %s, want 502 naming ComfyUI", code, raw)
	}
}

// event is a /v1/events message.
type event struct {
	Type string          `json:"type"`
	Data json.RawMessage `json:"data"`
}

// subscribeEvents connects to the daemon's /v1/events websocket and
// returns its events after the first (the model process's state, which
// must be "ready").
func subscribeEvents(t *testing.T, d *daemon) <-chan event {
	t.Helper()
	conn, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(d.url, "http")+"/v1/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	var first event
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if err := conn.ReadJSON(&first); err != nil || first.Type != "state" || !strings.Contains(string(first.Data), `"ready"`) {
		t.Fatalf("first /v1/events message %s %s (%v), want the ready state", first.Type, first.Data, err)
	}
	conn.SetReadDeadline(time.Time{})
	ch := make(chan event, 64)
	go func() {
		for {
			var ev event
			if err := conn.ReadJSON(&ev); err != nil {
				return
			}
			select {
			case ch <- ev:
			default:
			}
		}
	}()
	return ch
}

// savedImage fetches the image SaveImage node 9 wrote for a prompt.
func savedImage(t *testing.T, ctx context.Context, cl *comfyui.Client, res *comfyui.PromptResult) []byte {
	t.Helper()
	for _, im := range res.Images() {
		if im.Node == "9" {
			data, err := cl.View(ctx, im.ImageRef)
			if err != nil {
				t.Fatal(err)
			}
			return data
		}
	}
	t.Fatalf("prompt %s saved no image: %v", res.PromptID, res.Outputs)
	return nil
}

// packRun is what testdata/pack_e2e.py prints.
type packRun struct {
	Quality      float64          `json:"quality"`
	Scores       []map[string]any `json:"scores"`
	Passed       int              `json:"passed_count"`
	RerollText   string           `json:"reroll_text"`
	RerollResult []any            `json:"reroll_result"`
	Events       []packEvent      `json:"events"`
	ExtraPNGInfo map[string]any   `json:"extra_pnginfo"`
}

type packEvent struct {
	Event string
	Data  map[string]any
	SID   string
}

func (e *packEvent) UnmarshalJSON(b []byte) error {
	var parts []json.RawMessage
	if err := json.Unmarshal(b, &parts); err != nil || len(parts) != 3 {
		return fmt.Errorf("event %s: want [event, data, sid]", b)
	}
	json.Unmarshal(parts[0], &e.Event)
	json.Unmarshal(parts[1], &e.Data)
	json.Unmarshal(parts[2], &e.SID)
	return nil
}

const debianPython = "/usr/bin/python3"

// runPack runs the pack's nodes of a prompt that ran on the fake ComfyUI
// at comfyURL (testdata/pack_e2e.py under Debian's python3, the real pack,
// stub ComfyUI modules, the executor of nodes/testdata) on the image it made,
// against the daemon, and checks that the scores the pack shows and stores
// are the daemon's for the PNG the pack sent.
func runPack(t *testing.T, d *daemon, comfyURL string, prompt comfyui.Workflow, img []byte, clientID string, attempt int) packRun {
	t.Helper()
	dir := t.TempDir()
	imgFile := filepath.Join(dir, "in.png")
	if err := os.WriteFile(imgFile, img, 0o644); err != nil {
		t.Fatal(err)
	}
	prompt = cloneWorkflow(t, prompt)
	prompt["12"].Inputs["attempt"] = json.Number(strconv.Itoa(attempt))
	host, port := hostPort(t, comfyURL)
	runs, sent := runPlan(t, d, []planRun{{Prompt: prompt, Images: []string{imgFile}, ClientID: clientID,
		Address: host, Port: port, ExtraData: map[string]any{"extra_pnginfo": map[string]any{
			"workflow": map[string]any{"last_node_id": 13, "nodes": []any{}, "links": []any{}}}}}})
	r := runs[0]
	run := packRun{Events: r.Events, ExtraPNGInfo: r.ExtraPNGInfo}
	out10, out11, out12 := r.Outputs["10"], r.Outputs["11"], r.Outputs["12"]
	if len(out10) != 5 || len(out11) != 6 || len(out12) != 2 || len(r.UI["12"]) != 1 {
		t.Fatalf("pack outputs %v, ui %v", r.Outputs, r.UI)
	}
	run.Quality, _ = out10[1].(float64)
	s, _ := out10[4].(string)
	json.Unmarshal([]byte(s), &run.Scores)
	p, _ := out11[2].(float64)
	run.Passed = int(p)
	run.RerollText = r.UI["12"][0]
	run.RerollResult = out12
	want := d.score(t, sent, "a red fox in the snow")
	stored, _ := run.ExtraPNGInfo[nodes.PNGInfoKey].(map[string]any)
	storedQ := -1.0
	if ims, _ := stored["images"].([]any); len(ims) == 1 {
		im, _ := ims[0].(map[string]any)
		as, _ := im["aspects"].(map[string]any)
		q, _ := as["quality"].(map[string]any)
		storedQ, _ = q["mos"].(float64)
	}
	if !sameScore(run.Quality, want.MOS) || !sameScore(storedQ, want.MOS) || stored["attempt"] != float64(attempt) ||
		stored["prompt"] != "a red fox in the snow" {
		t.Errorf("pack shows quality %v and stores %v (%v); the daemon says %v for the image the pack sent",
			run.Quality, storedQ, stored, want.MOS)
	}
	return run
}

// TestRunSurvivesDaemonRestart stops the m3gate daemon (and so its model
// process) while `m3gate run` is scoring, keeps it down for longer than a
// few quick retries take, and starts it again on the same address: the run
// waits for it (within its retry timeout) and completes.
func TestRunSurvivesDaemonRestart(t *testing.T) {
	checkNoLeaks(t)
	fake, _ := startFake(t, comfyfake.WithStepDelay(100*time.Millisecond), comfyfake.WithMaxSteps(3))
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
	// Each further image takes 300 ms to make: the daemon is down before
	// the run needs it again.
	d.shutdown(t)
	if p.exited() {
		t.Fatalf("run ended before the daemon was down\nstdout:\n%s\nstderr:\n%s", p.stdout.String(), p.stderr.String())
	}
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

// TestRunInterruptedAndResumed stops `m3gate run` with SIGTERM mid-run:
// it exits 130 with every accepted image on disk and in results.jsonl (and
// nothing half-written); a second run with --resume into the same folder
// counts them and makes only the rest, with fresh seeds.
func TestRunInterruptedAndResumed(t *testing.T) {
	checkNoLeaks(t)
	fake, _ := startFake(t, comfyfake.WithStepDelay(30*time.Millisecond), comfyfake.WithMaxSteps(3))
	d := startDaemon(t, fake.URL())
	wfPath, _ := readWorkflow(t, "txt2img-api.json")
	out := t.TempDir()
	m3gate, _, _ := binaries(t)
	args := []string{"run", wfPath, "--count", "5", "--threshold", "quality=0", "--max-tries", "1", "--parallel", "1", "--out", out}
	p := startProc(t, "m3gate run", d.dir, m3gate, append(args, "--rand-seed", "15")...)
	results := filepath.Join(out, pipeline.ResultsFile)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if b, _ := os.ReadFile(results); bytes.Count(b, []byte("\n")) >= 2 {
			break
		}
		if p.exited() || time.Now().After(deadline) {
			t.Fatalf("run did not get going\nstdout:\n%s\nstderr:\n%s", p.stdout.String(), p.stderr.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if code := p.stop(t, 10*time.Second); code != 130 {
		t.Fatalf("exit code %d after SIGTERM, want 130\nstdout:\n%s\nstderr:\n%s", code, p.stdout.String(), p.stderr.String())
	}
	first := checkOutDir(t, out)
	if len(first) < 2 || len(first) >= 5 {
		t.Fatalf("%d images accepted before SIGTERM, want 2..4", len(first))
	}

	p = startProc(t, "m3gate run --resume", d.dir, m3gate, append(args, "--rand-seed", "16", "--resume")...)
	if code := p.wait(t, 45*time.Second); code != 0 {
		t.Fatalf("resumed run: exit code %d\nstdout:\n%s\nstderr:\n%s", code, p.stdout.String(), p.stderr.String())
	}
	if want := "accepted 5/5 images"; !strings.Contains(p.stdout.String(), want) ||
		!strings.Contains(p.stdout.String(), strconv.Itoa(len(first))+" resumed") {
		t.Errorf("resumed run stdout %q, want %q and %d resumed", p.stdout.String(), want, len(first))
	}
	all := checkOutDir(t, out)
	if len(all) != 5 {
		t.Errorf("%d images after the resumed run, want 5", len(all))
	}
	for f, r := range first {
		if all[f].Seed != r.Seed {
			t.Errorf("%s changed by the resumed run", f)
		}
	}
}

// checkOutDir checks that the accepted lines of results.jsonl and the PNGs
// of an output folder match one to one (jobs and seeds distinct, metadata
// agreeing, no temporary files) and returns the accepted results by file.
func checkOutDir(t *testing.T, out string) map[string]pipeline.Result {
	t.Helper()
	accepted := map[string]pipeline.Result{}
	jobs, seeds := map[int]bool{}, map[uint64]bool{}
	for _, r := range readLines[pipeline.Result](t, filepath.Join(out, pipeline.ResultsFile)) {
		if !r.Accepted {
			t.Errorf("unexpected result %+v", r)
			continue
		}
		if jobs[r.Job] || seeds[r.Seed] {
			t.Errorf("job %d or seed %d accepted twice", r.Job, r.Seed)
		}
		jobs[r.Job], seeds[r.Seed] = true, true
		accepted[r.File] = r
		data, err := os.ReadFile(r.File)
		if err != nil {
			t.Errorf("accepted image lost: %v", err)
			continue
		}
		if md, err := pipeline.ReadMetadata(data); err != nil || md.Seed != r.Seed || md.Job != r.Job {
			t.Errorf("%s: metadata %+v (%v), result %+v", r.File, md, err, r)
		}
	}
	pngs, _ := filepath.Glob(filepath.Join(out, "*.png"))
	for _, f := range pngs {
		if _, ok := accepted[f]; !ok {
			t.Errorf("%s is in the folder but not accepted in results.jsonl", f)
		}
	}
	if tmp, _ := filepath.Glob(filepath.Join(out, ".m3gate-*")); len(tmp) != 0 {
		t.Errorf("temporary files left: %v", tmp)
	}
	return accepted
}

// TestRunSurvivesSidecarCrash kills the daemon's model process (SIGKILL)
// while `m3gate run` is scoring: the daemon's supervisor starts a new one,
// the run waits for it and completes.
func TestRunSurvivesSidecarCrash(t *testing.T) {
	checkNoLeaks(t)
	fake, _ := startFake(t, comfyfake.WithStepDelay(20*time.Millisecond), comfyfake.WithMaxSteps(3))
	d := startDaemon(t, fake.URL())
	wfPath, _ := readWorkflow(t, "txt2img-api.json")
	out := t.TempDir()
	m3gate, _, _ := binaries(t)
	p := startProc(t, "m3gate run", d.dir, m3gate, "run", wfPath, "--count", "4", "--threshold", "quality=0",
		"--max-tries", "1", "--parallel", "2", "--out", out, "--rand-seed", "17")
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
	old := d.sidecar
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t, 45*time.Second); code != 0 {
		t.Fatalf("exit code %d\nstdout:\n%s\nstderr:\n%s\ndaemon:\n%s", code, p.stdout.String(), p.stderr.String(), d.stderr.String())
	}
	if !strings.Contains(p.stdout.String(), "accepted 4/4 images") {
		t.Errorf("stdout: %s", p.stdout.String())
	}
	t.Logf("scoring retried %d times around the crash", strings.Count(p.stderr.String(), "scoring failed, retrying"))
	if got := checkOutDir(t, out); len(got) != 4 {
		t.Errorf("%d images, want 4", len(got))
	}
	resp, err := http.Get(d.url + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	var ready struct {
		Ready    bool `json:"ready"`
		Restarts int  `json:"restarts"`
	}
	json.NewDecoder(resp.Body).Decode(&ready)
	resp.Body.Close()
	if !ready.Ready || ready.Restarts < 1 {
		t.Errorf("daemon after the crash: %+v, want ready with a restart", ready)
	}
	d.findSidecar(t)
	if d.sidecar == old {
		t.Errorf("sidecar pid %d unchanged after SIGKILL", old)
	}
}
