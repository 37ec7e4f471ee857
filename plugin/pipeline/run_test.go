package pipeline

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"image"
	"image/color"
	"image/png"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/m3gate/m3gate/plugin/comfyui"
	"github.com/m3gate/m3gate/plugin/comfyui/comfyfake"
	"github.com/m3gate/m3gate/schemas/api"
)

const sdWorkflowJSON = `{
 "3": {"class_type": "KSampler", "inputs": {"seed": 156680208700286, "steps": 20, "cfg": 8, "sampler_name": "euler", "scheduler": "normal",
       "denoise": 1, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
 "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "fake.safetensors"}},
 "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
 "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox in snow", "clip": ["4", 1]}},
 "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
 "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
 "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}}
}`

func sdWorkflow(t *testing.T) comfyui.Workflow {
	t.Helper()
	w, err := comfyui.ParseWorkflow([]byte(sdWorkflowJSON))
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// grayImage is a flat image of brightness v.
func grayImage(v uint8) image.Image {
	img := image.NewGray(image.Rect(0, 0, 16, 16))
	for i := range img.Pix {
		img.Pix[i] = v
	}
	return img
}

// seedRecorder is an ImageFunc that remembers the seeds it rendered: seeds
// where good(seed) give bright images, the others dark ones.
type seedRecorder struct {
	mu    sync.Mutex
	seeds []uint64
	good  func(uint64) bool
}

func (s *seedRecorder) image(seed uint64) image.Image {
	s.mu.Lock()
	s.seeds = append(s.seeds, seed)
	s.mu.Unlock()
	if s.good(seed) {
		return grayImage(230)
	}
	return grayImage(20)
}

func (s *seedRecorder) all() []uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]uint64(nil), s.seeds...)
}

// brightnessScorer scores quality as mean brightness mapped to 0..5, read
// from the pixels the fake server rendered.
type brightnessScorer struct {
	mu      sync.Mutex
	prompts []string
}

func (b *brightnessScorer) Score(ctx context.Context, images []Image, prompt string, aspects []string) ([]Scores, error) {
	b.mu.Lock()
	b.prompts = append(b.prompts, prompt)
	b.mu.Unlock()
	out := make([]Scores, len(images))
	for i, img := range images {
		dec, err := png.Decode(bytes.NewReader(img.Data))
		if err != nil {
			return nil, err
		}
		var sum float64
		bnd := dec.Bounds()
		for y := bnd.Min.Y; y < bnd.Max.Y; y++ {
			for x := bnd.Min.X; x < bnd.Max.X; x++ {
				sum += float64(color.GrayModel.Convert(dec.At(x, y)).(color.Gray).Y)
			}
		}
		mos := sum / float64(bnd.Dx()*bnd.Dy()) / 255 * 5
		out[i] = Scores{Aspects: map[string]AspectScore{}}
		for _, a := range aspects {
			out[i].Aspects[a] = AspectScore{MOS: mos, Source: "fake"}
		}
	}
	return out, nil
}

func startFake(t *testing.T, opts ...comfyfake.Option) *comfyfake.Server {
	t.Helper()
	s := comfyfake.New(opts...)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func fastClient() []comfyui.Option {
	return []comfyui.Option{comfyui.WithBackoff(10*time.Millisecond, 100*time.Millisecond), comfyui.WithHistoryPoll(500 * time.Millisecond)}
}

func readResultsT(t *testing.T, dir string) []Result {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, ResultsFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []Result
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r Result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("results line %q: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	return out
}

// TestRunRerollsUntilMaxTries: every image is dark, so every job is
// rerolled with a new seed each try and stops after MaxTries.
func TestRunRerollsUntilMaxTries(t *testing.T) {
	rec := &seedRecorder{good: func(uint64) bool { return false }}
	s := startFake(t, comfyfake.WithImageFunc(rec.image))
	dir := t.TempDir()
	sc := &brightnessScorer{}
	var bar bytes.Buffer
	sum, err := Run(context.Background(), Config{
		Workflow: sdWorkflow(t), Servers: []string{s.URL()}, Count: 2, MaxTries: 3,
		Gate:   Gate{Thresholds: map[string]float64{"quality": 3.5}},
		Scorer: sc, OutDir: dir, Progress: &bar, RandSeed: 1, ClientOptions: fastClient(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Accepted) != 0 || sum.Exhausted != 2 || sum.Rejected != 6 || sum.Prompts != 6 || sum.Complete(2) {
		t.Errorf("summary %+v", sum)
	}
	seeds := rec.all()
	if len(seeds) != 6 {
		t.Fatalf("server rendered %d images, want 6 (one per try)", len(seeds))
	}
	distinct := map[uint64]bool{156680208700286: true}
	for _, sd := range seeds {
		if distinct[sd] {
			t.Errorf("seed %d used twice (or the workflow's own seed)", sd)
		}
		distinct[sd] = true
	}
	res := readResultsT(t, dir)
	if len(res) != 6 {
		t.Fatalf("%d results lines, want 6", len(res))
	}
	tries := map[int][]int{}
	for _, r := range res {
		if r.Passed || r.Accepted || r.File != "" || r.Scores["quality"].MOS > 1 || r.PromptID == "" || r.Seeds["3"] != r.Seed {
			t.Errorf("result %+v", r)
		}
		tries[r.Job] = append(tries[r.Job], r.Attempt)
	}
	for job := 1; job <= 2; job++ {
		if got := tries[job]; len(got) != 3 || got[0] != 1 || got[2] != 3 {
			t.Errorf("job %d attempts %v", job, got)
		}
	}
	for _, p := range sc.prompts {
		if p != "a red fox in snow" {
			t.Errorf("scored against prompt %q", p)
		}
	}
	if pngs, _ := filepath.Glob(filepath.Join(dir, "*.png")); len(pngs) != 0 {
		t.Errorf("rejected images written: %v", pngs)
	}
	if !strings.Contains(bar.String(), "exhausted 2") {
		t.Errorf("progress bar output %q", bar.String())
	}
}

// TestRunWritesAcceptedWithMetadata: a quarter of the seeds make good
// images; accepted ones land in the folder with their scores in the PNG.
func TestRunWritesAcceptedWithMetadata(t *testing.T) {
	rec := &seedRecorder{good: func(s uint64) bool { return s%4 == 0 }}
	s := startFake(t, comfyfake.WithImageFunc(rec.image))
	dir := t.TempDir()
	sum, err := Run(context.Background(), Config{
		Workflow: sdWorkflow(t), Servers: []string{s.URL()}, Count: 3, MaxTries: 60,
		Gate:   Gate{Thresholds: map[string]float64{"quality": 3.5}},
		Scorer: &brightnessScorer{}, OutDir: dir, RandSeed: 7, ClientOptions: fastClient(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Accepted) != 3 || sum.Exhausted != 0 {
		t.Fatalf("summary %+v", sum)
	}
	res := readResultsT(t, dir)
	var accepted int
	for _, r := range res {
		good := r.Seed%4 == 0
		if r.Passed != good || r.Accepted != good {
			t.Errorf("seed %d: passed %v accepted %v", r.Seed, r.Passed, r.Accepted)
		}
		if !r.Accepted {
			continue
		}
		accepted++
		data, err := os.ReadFile(r.File)
		if err != nil {
			t.Fatal(err)
		}
		md, err := ReadMetadata(data)
		if err != nil {
			t.Fatal(err)
		}
		if md.Seed != r.Seed || md.Attempt != r.Attempt || md.Job != r.Job || md.PromptID != r.PromptID || !md.Passed ||
			md.Scores["quality"].MOS < 4.4 || md.Prompt != "a red fox in snow" || md.Gate.Thresholds["quality"] != 3.5 {
			t.Errorf("metadata %+v for result %+v", md, r)
		}
		// ComfyUI's own chunk survives, with the rerolled seed.
		chunks, _ := comfyui.PNGText(data)
		if len(chunks) < 2 || chunks[0].Key != "prompt" || !strings.Contains(chunks[0].Text, `"seed":`+jsonUint(r.Seed)) {
			t.Errorf("comfyui chunk lost or stale: %+v", chunks)
		}
		if _, err := png.Decode(bytes.NewReader(data)); err != nil {
			t.Errorf("written PNG does not decode: %v", err)
		}
	}
	if accepted != 3 {
		t.Errorf("%d accepted lines", accepted)
	}
	pngs, _ := filepath.Glob(filepath.Join(dir, "*.png"))
	if len(pngs) != 3 {
		t.Errorf("%d PNGs in the folder", len(pngs))
	}
}

func jsonUint(u uint64) string { b, _ := json.Marshal(u); return string(b) }

// TestRunSurvivesRestart kills the fake server while prompts are queued
// and running, restarts it on the same address, and checks every job
// still ends with its image on disk.
func TestRunSurvivesRestart(t *testing.T) {
	rec := &seedRecorder{good: func(uint64) bool { return true }}
	s := startFake(t, comfyfake.WithImageFunc(rec.image), comfyfake.WithStepDelay(20*time.Millisecond), comfyfake.WithMaxSteps(3))
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	type out struct {
		sum *Summary
		err error
	}
	done := make(chan out, 1)
	go func() {
		sum, err := Run(ctx, Config{
			Workflow: sdWorkflow(t), Servers: []string{s.URL()}, Count: 6, MaxTries: 2,
			Gate:   Gate{Thresholds: map[string]float64{"quality": 3.5}},
			Scorer: &brightnessScorer{}, OutDir: dir, Parallel: 2, ClientOptions: fastClient(),
		})
		done <- out{sum, err}
	}()
	cl, err := comfyui.New(s.URL())
	if err != nil {
		t.Fatal(err)
	}
	// Wait until two prompts are done and one is running, then kill.
	for {
		if s.PromptsExecuted() >= 2 {
			q, err := cl.Queue(ctx)
			if err == nil && len(q.Running) == 1 {
				break
			}
		}
		if ctx.Err() != nil {
			t.Fatal("run never got going")
		}
		time.Sleep(5 * time.Millisecond)
	}
	s.Stop()
	time.Sleep(150 * time.Millisecond)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	o := <-done
	if o.err != nil {
		t.Fatal(o.err)
	}
	if len(o.sum.Accepted) != 6 || o.sum.Resubmitted < 1 {
		t.Errorf("summary %+v", o.sum)
	}
	jobs := map[int]bool{}
	for _, r := range readResultsT(t, dir) {
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
			t.Fatalf("accepted image lost: %v", err)
		}
		if md, err := ReadMetadata(data); err != nil || md.Job != r.Job {
			t.Errorf("metadata %v %v", md, err)
		}
	}
	if len(jobs) != 6 {
		t.Errorf("jobs accepted: %v", jobs)
	}
}

func TestRunTwoServersAndFailures(t *testing.T) {
	fail := func(s uint64) bool { return s%3 == 0 }
	rec := &seedRecorder{good: func(uint64) bool { return true }}
	a := startFake(t, comfyfake.WithImageFunc(rec.image), comfyfake.WithFailSeed(fail), comfyfake.WithStepDelay(5*time.Millisecond))
	b := startFake(t, comfyfake.WithImageFunc(rec.image), comfyfake.WithFailSeed(fail), comfyfake.WithStepDelay(5*time.Millisecond))
	dir := t.TempDir()
	sum, err := Run(context.Background(), Config{
		Workflow: sdWorkflow(t), Servers: []string{a.URL(), b.URL()}, Count: 8, MaxTries: 30,
		Gate:   Gate{Thresholds: map[string]float64{"quality": 1}},
		Scorer: &brightnessScorer{}, OutDir: dir, RandSeed: 3, Parallel: 1, ClientOptions: fastClient(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Accepted) != 8 || a.PromptsExecuted() == 0 || b.PromptsExecuted() == 0 {
		t.Errorf("summary %+v; prompts %d / %d", sum, a.PromptsExecuted(), b.PromptsExecuted())
	}
	var failed int
	for _, r := range readResultsT(t, dir) {
		if r.Error != "" {
			failed++
			if !fail(r.Seed) || !strings.Contains(r.Error, "sampler failed") || r.Accepted {
				t.Errorf("failed result %+v", r)
			}
		} else if fail(r.Seed) {
			t.Errorf("seed %d should have failed", r.Seed)
		}
	}
	if failed != sum.Failed {
		t.Errorf("%d failed lines, summary says %d", failed, sum.Failed)
	}
}

func TestRunRejectsInvalidWorkflow(t *testing.T) {
	s := startFake(t)
	w := sdWorkflow(t)
	w["5"].Inputs["width"] = json.Number("0")
	_, err := Run(context.Background(), Config{Workflow: w, Servers: []string{s.URL()}, Count: 1, MaxTries: 1,
		Scorer: &brightnessScorer{}, OutDir: t.TempDir(), ClientOptions: fastClient()})
	var pe *comfyui.PromptError
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), "node 5 (EmptyLatentImage)") {
		t.Errorf("error %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	base := func() Config {
		w, _ := comfyui.ParseWorkflow([]byte(sdWorkflowJSON))
		return Config{Workflow: w, Servers: []string{"http://127.0.0.1:1"}, Count: 1, MaxTries: 1, Scorer: &brightnessScorer{}, OutDir: "x"}
	}
	tests := []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"no server", func(c *Config) { c.Servers = nil }, "--server"},
		{"count", func(c *Config) { c.Count = 0 }, "count"},
		{"tries", func(c *Config) { c.MaxTries = 0 }, "max tries"},
		{"scorer", func(c *Config) { c.Scorer = nil }, "scorer"},
		{"mode", func(c *Config) { c.Gate.Mode = "most" }, "gate mode"},
		{"unscored aspect", func(c *Config) {
			c.Gate.Thresholds = map[string]float64{"authenticity": 3}
			c.Aspects = []string{"quality"}
		}, "not scored"},
		{"seed node", func(c *Config) { c.SeedNodes = []string{"6"} }, "no seed"},
	}
	for _, tt := range tests {
		c := base()
		tt.edit(&c)
		_, err := Run(context.Background(), c)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want %q", tt.name, err, tt.want)
		}
	}
}

// TestRunWithDaemonScorer runs the pipeline with the DaemonScorer against
// an HTTP daemon speaking the /v1/score contract (scoring brightness), so
// the whole path ComfyUI → PNG → base64 → daemon → gate → file is real.
func TestRunWithDaemonScorer(t *testing.T) {
	rec := &seedRecorder{good: func(s uint64) bool { return s%2 == 0 }}
	s := startFake(t, comfyfake.WithImageFunc(rec.image))
	inner := &brightnessScorer{}
	daemon := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req api.ScoreRequest // the images' base64 is decoded by encoding/json
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		imgs := make([]Image, len(req.Images))
		for i, im := range req.Images {
			imgs[i] = Image{Data: im.Data}
		}
		scores, err := inner.Score(r.Context(), imgs, req.Prompt, req.Aspects)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		var ans struct {
			Results []map[string]any `json:"results"`
		}
		for i, sc := range scores {
			ans.Results = append(ans.Results, map[string]any{"index": i, "error": "", "aspects": sc.Aspects})
		}
		json.NewEncoder(w).Encode(ans)
	}))
	defer daemon.Close()
	dir := t.TempDir()
	sum, err := Run(context.Background(), Config{
		Workflow: sdWorkflow(t), Servers: []string{s.URL()}, Count: 2, MaxTries: 40,
		Gate:   Gate{Thresholds: map[string]float64{"quality": 3.5, "correspondence": 3.5}, Mode: ModeAll},
		Scorer: &DaemonScorer{URL: daemon.URL}, OutDir: dir, ClientOptions: fastClient(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Accepted) != 2 {
		t.Fatalf("summary %+v", sum)
	}
	for _, f := range sum.Accepted {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		md, err := ReadMetadata(data)
		if err != nil || md.Seed%2 != 0 || len(md.Scores) != 2 || md.Scores["correspondence"].MOS < 3.5 {
			t.Errorf("metadata %+v %v", md, err)
		}
	}
	if inner.prompts[0] != "a red fox in snow" {
		t.Errorf("daemon got prompt %q", inner.prompts[0])
	}
}

// TestRunServerDiesJobsMove: one of two servers dies for good; its jobs
// move to the other after RetryTimeout and the run completes.
func TestRunServerDiesJobsMove(t *testing.T) {
	rec := &seedRecorder{good: func(uint64) bool { return true }}
	opts := []comfyfake.Option{comfyfake.WithImageFunc(rec.image), comfyfake.WithStepDelay(20 * time.Millisecond)}
	a, b := startFake(t, opts...), startFake(t, opts...)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go func() {
		for a.PromptsExecuted() < 1 && ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
		}
		a.Stop()
	}()
	dir := t.TempDir()
	sum, err := Run(ctx, Config{
		Workflow: sdWorkflow(t), Servers: []string{a.URL(), b.URL()}, Count: 6, MaxTries: 1,
		Gate: Gate{Thresholds: map[string]float64{"quality": 3.5}}, Scorer: &brightnessScorer{}, OutDir: dir,
		Parallel: 2, RetryTimeout: 300 * time.Millisecond, ClientOptions: fastClient(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Accepted) != 6 || sum.Exhausted != 0 {
		t.Errorf("summary %+v", sum)
	}
	if n := len(readResultsT(t, dir)); n != 6 {
		t.Errorf("%d results lines", n)
	}

	// Every server dead: the run fails and says why.
	b.Stop()
	_, err = Run(ctx, Config{
		Workflow: sdWorkflow(t), Servers: []string{b.URL()}, Count: 1, MaxTries: 1, Scorer: &brightnessScorer{},
		OutDir: t.TempDir(), RetryTimeout: 200 * time.Millisecond, ClientOptions: fastClient(),
	})
	if err == nil || !strings.Contains(err.Error(), "no ComfyUI server reachable") {
		t.Errorf("all servers down: %v", err)
	}
}

// TestRunBatchFillsSeveralSlots: with batch_size 3 one prompt can accept
// three images; the run stops once Count are accepted and records the
// extra passing images as surplus.
func TestRunBatchFillsSeveralSlots(t *testing.T) {
	rec := &seedRecorder{good: func(uint64) bool { return true }}
	s := startFake(t, comfyfake.WithImageFunc(rec.image))
	w := sdWorkflow(t)
	w["5"].Inputs["batch_size"] = json.Number("3")
	dir := t.TempDir()
	sum, err := Run(context.Background(), Config{
		Workflow: w, Servers: []string{s.URL()}, Count: 4, MaxTries: 3, Parallel: 1,
		Gate: Gate{Thresholds: map[string]float64{"quality": 3.5}}, Scorer: &brightnessScorer{}, OutDir: dir, ClientOptions: fastClient(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Accepted) != 4 || sum.Prompts != 2 || sum.Exhausted != 0 {
		t.Errorf("summary %+v", sum)
	}
	var accepted, surplus int
	indexes := map[int]bool{}
	for _, r := range readResultsT(t, dir) {
		switch {
		case r.Accepted:
			accepted++
			indexes[r.Index] = true
		case r.Passed && strings.HasPrefix(r.Note, "surplus"):
			surplus++
		default:
			t.Errorf("result %+v", r)
		}
	}
	if accepted != 4 || surplus != 2 || len(indexes) != 3 {
		t.Errorf("accepted %d surplus %d batch indexes %v", accepted, surplus, indexes)
	}
}

// TestRunResume: a second run with Resume counts the first run's accepted
// images, makes only the missing ones, and never reuses a seed.
func TestRunResume(t *testing.T) {
	rec := &seedRecorder{good: func(s uint64) bool { return s%2 == 0 }}
	s := startFake(t, comfyfake.WithImageFunc(rec.image))
	dir := t.TempDir()
	cfg := Config{Workflow: sdWorkflow(t), Servers: []string{s.URL()}, Count: 2, MaxTries: 40,
		Gate: Gate{Thresholds: map[string]float64{"quality": 3.5}}, Scorer: &brightnessScorer{}, OutDir: dir,
		RandSeed: 5, ClientOptions: fastClient()}
	if _, err := Run(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	first := readResultsT(t, dir)
	// Lose one accepted image and cut the log's last line short.
	var lost string
	for _, r := range first {
		if r.Accepted {
			lost = r.File
		}
	}
	os.Remove(lost)
	f, _ := os.OpenFile(filepath.Join(dir, ResultsFile), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"job":9,"acc`)
	f.Close()

	cfg.Count, cfg.Resume = 3, true
	sum, err := Run(context.Background(), cfg) // same RandSeed: seeds must still differ
	if err != nil {
		t.Fatal(err)
	}
	if sum.Resumed != 1 || len(sum.Accepted) != 3 {
		t.Errorf("summary %+v", sum)
	}
	all, err := readResults(filepath.Join(dir, ResultsFile)) // skips the cut line
	if err != nil || len(all) <= len(first) {
		t.Fatalf("%d results after resume (%d before): %v", len(all), len(first), err)
	}
	seen := map[uint64]bool{}
	jobs := map[int]bool{}
	for _, r := range all {
		if seen[r.Seed] {
			t.Errorf("seed %d reused", r.Seed)
		}
		seen[r.Seed] = true
		if r.Accepted {
			if jobs[r.Job] && r.File != lost {
				t.Errorf("job %d accepted twice", r.Job)
			}
			jobs[r.Job] = true
		}
	}
	pngs, _ := filepath.Glob(filepath.Join(dir, "*.png"))
	if len(pngs) != 3 {
		t.Errorf("%d images in the folder, want 3", len(pngs))
	}
}

// TestRunRespectsSeedRange: a custom sampler whose seed stops at 1000 gets
// seeds in range (read from /object_info), so the server accepts them.
func TestRunRespectsSeedRange(t *testing.T) {
	info := json.RawMessage(`{"input":{"required":{"seed":["INT",{"default":0,"min":0,"max":1000}],"latent_image":["LATENT"]}},
		"input_order":{"required":["seed","latent_image"]},"output":["LATENT"],"output_is_list":[false],"output_name":["LATENT"],
		"name":"TinySampler","display_name":"TinySampler","description":"","python_module":"custom_nodes.tiny","category":"sampling","output_node":false}`)
	rec := &seedRecorder{good: func(uint64) bool { return true }}
	s := startFake(t, comfyfake.WithImageFunc(rec.image), comfyfake.WithNodeClass("TinySampler", info))
	w, err := comfyui.ParseWorkflow([]byte(`{
	 "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
	 "2": {"class_type": "TinySampler", "inputs": {"seed": 5, "latent_image": ["1", 0]}},
	 "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 0]}},
	 "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "tiny"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	sum, err := Run(context.Background(), Config{Workflow: w, Servers: []string{s.URL()}, Count: 4, MaxTries: 1,
		Scorer: &brightnessScorer{}, OutDir: t.TempDir(), ClientOptions: fastClient()})
	if err != nil {
		t.Fatal(err)
	}
	if len(sum.Accepted) != 4 {
		t.Errorf("summary %+v", sum)
	}
	for _, sd := range rec.all() {
		if sd > 1000 {
			t.Errorf("seed %d out of range", sd)
		}
	}
}

func TestSeedRangeFromObjectInfo(t *testing.T) {
	tests := []struct {
		info string
		want SeedRange
		ok   bool
	}{
		{`{"input":{"required":{"seed":["INT",{"min":0,"max":18446744073709551615}]}}}`, FullSeedRange, true},
		{`{"input":{"optional":{"seed":["INT",{"min":-5,"max":4294967295}]}}}`, SeedRange{0, 4294967295}, true},
		{`{"input":{"required":{"seed":["INT",{"min":10}]}}}`, SeedRange{10, 18446744073709551615}, true},
		{`{"input":{"required":{"seed":["FLOAT",{"min":0,"max":1}]}}}`, SeedRange{}, false},
		{`{"input":{"required":{"other":["INT"]}}}`, SeedRange{}, false},
		{`not json`, SeedRange{}, false},
	}
	for _, tt := range tests {
		got, ok := SeedRangeFromObjectInfo(json.RawMessage(tt.info), "seed")
		if got != tt.want || ok != tt.ok {
			t.Errorf("%s: got %v %v, want %v %v", tt.info, got, ok, tt.want, tt.ok)
		}
	}
}
