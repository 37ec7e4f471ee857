package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"image"
	"image/draw"
	"image/png"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/m3gate/m3gate/nodes"
	"github.com/m3gate/m3gate/plugin/comfyui"
	"github.com/m3gate/m3gate/plugin/comfyui/comfyfake"
	"github.com/m3gate/m3gate/plugin/pipeline"
	"github.com/m3gate/m3gate/schemas/api"
)

// planRun is one prompt run of testdata/pack_e2e.py: runs that name the
// same Executor share one ComfyUI process's cache.
type planRun struct {
	Executor  string           `json:"executor,omitempty"`
	OrderSeed int              `json:"order_seed"`
	Address   string           `json:"address"`
	Port      int              `json:"port"`
	Prompt    comfyui.Workflow `json:"prompt"`
	Images    []string         `json:"images"`
	ExtraData map[string]any   `json:"extra_data"`
	ClientID  string           `json:"client_id,omitempty"`
}

// planResult is what testdata/pack_e2e.py prints for one run.
type planResult struct {
	Outputs      map[string][]any    `json:"outputs"`
	UI           map[string][]string `json:"ui"`
	Saved        map[string][]string `json:"saved"`
	Ran          []string            `json:"ran"`
	Cached       []string            `json:"cached"`
	Order        []string            `json:"order"`
	Events       []packEvent         `json:"events"`
	ExtraPNGInfo map[string]any      `json:"extra_pnginfo"`
}

// runPlan runs testdata/pack_e2e.py on runs against the daemon and returns
// its results and the PNG the pack sent for the first image.
func runPlan(t *testing.T, d *daemon, runs []planRun) ([]planResult, []byte) {
	t.Helper()
	if _, err := os.Stat(debianPython); err != nil {
		t.Skipf("the node pack needs %s (%v)", debianPython, err)
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "output")
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	planFile, sentFile := filepath.Join(dir, "plan.json"), filepath.Join(dir, "sent.png")
	pj, err := json.Marshal(runs)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(planFile, pj, 0o644); err != nil {
		t.Fatal(err)
	}
	testdata := filepath.Join(root, "nodes", "testdata")
	cmd := exec.Command(debianPython, "-B", filepath.Join("testdata", "pack_e2e.py"))
	cmd.Env = append(childEnv(),
		"PYTHONPATH="+filepath.Join(testdata, "pystubs")+string(os.PathListSeparator)+testdata,
		"PYTHONDONTWRITEBYTECODE=1", "OMP_NUM_THREADS=1",
		"M3GATE_PACK="+filepath.Join(root, "nodes", "comfyui", "m3gate"),
		"M3GATE_URL="+d.url, "M3GATE_TIMEOUT=60", "M3GATE_OUT="+out,
		"E2E_PLAN="+planFile, "E2E_SENT_PNG="+sentFile,
	)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	raw, err := cmd.Output()
	if err != nil {
		if strings.Contains(stderr.String(), "No module named 'torch'") {
			t.Skipf("the node pack needs torch in %s", debianPython)
		}
		t.Fatalf("pack: %v\n%s", err, stderr.String())
	}
	var res []planResult
	if err := json.Unmarshal(raw, &res); err != nil || len(res) != len(runs) {
		t.Fatalf("pack output %s: %v", raw, err)
	}
	sent, err := os.ReadFile(sentFile)
	if err != nil {
		t.Fatal(err)
	}
	return res, sent
}

func cloneWorkflow(t *testing.T, w comfyui.Workflow) comfyui.Workflow {
	t.Helper()
	b, err := json.Marshal(w)
	if err != nil {
		t.Fatal(err)
	}
	c, err := comfyui.ParseWorkflow(b)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func hostPort(t *testing.T, base string) (string, int) {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	host, p, err := net.SplitHostPort(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return host, port
}

// TestPackSavesScoresThroughDaemon: the graph of testdata/pack-api.json with
// M3 Save Image, run on a 3-image batch with a non-ASCII prompt through the
// real pack, daemon and sidecar, as a ComfyUI server does: a first run; a
// re-queue with only the threshold changed (M3 Score comes from the cache);
// runs in other output orders; a run queued without extra_pnginfo. Every
// PNG M3 Save Image wrote carries, in an iTXt chunk, the daemon's scores
// of that very image, the gate result, the attempt and the seed. Two
// ComfyUI servers run; the daemon's config names the other one, yet the
// pack's reroll is queued on the server that ran the graph.
func TestPackSavesScoresThroughDaemon(t *testing.T) {
	checkNoLeaks(t)
	var opts []comfyfake.Option
	for _, class := range []string{nodes.ClassScore, nodes.ClassGate, nodes.ClassReroll, nodes.ClassSave} {
		def, _ := nodes.Lookup(class)
		var info map[string]json.RawMessage
		if err := json.Unmarshal(def.ObjectInfoJSON(), &info); err != nil {
			t.Fatal(err)
		}
		opts = append(opts, comfyfake.WithNodeClass(class, info[class]))
	}
	other, _ := startFake(t, opts...) // comfyui.servers[0]: not where the graph runs
	fake, _ := startFake(t, opts...)
	d := startDaemon(t, other.URL())
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	// The artist's browser queues the graph on its ComfyUI: a 3-image batch.
	_, wf := readWorkflow(t, "pack-api.json")
	const text = "statue café 雕像"
	wf["6"].Inputs["text"] = text
	wf["5"].Inputs["batch_size"] = json.Number("3")
	cl, err := comfyui.New(fake.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := cl.RunPrompt(ctx, comfyui.PromptRequest{Prompt: wf,
		ExtraData: map[string]any{"extra_pnginfo": map[string]any{"workflow": map[string]any{"nodes": []any{}}}}})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var rendered []string
	for _, im := range res.Images() {
		if im.Node != "9" {
			continue
		}
		data, err := cl.View(ctx, im.ImageRef)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, "rendered-"+strconv.Itoa(len(rendered))+".png")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		rendered = append(rendered, p)
	}
	if len(rendered) != 3 {
		t.Fatalf("ComfyUI rendered %d images, want 3", len(rendered))
	}
	seed := samplerSeed(t, wf)
	host, port := hostPort(t, fake.URL())
	withExtra := func() map[string]any {
		return map[string]any{"extra_pnginfo": map[string]any{"workflow": map[string]any{"nodes": []any{}}}}
	}
	lowered := cloneWorkflow(t, wf)
	lowered["11"].Inputs["quality_min"] = json.Number("0.0") // 0 turns the aspect off: all pass
	runs := []planRun{
		{Executor: "comfy", Address: host, Port: port, Prompt: wf, Images: rendered, ExtraData: withExtra(), ClientID: cl.ID()},
		{Executor: "comfy", Address: host, Port: port, Prompt: lowered, Images: rendered, ExtraData: withExtra(), ClientID: cl.ID()},
		{Executor: "order-1", OrderSeed: 1, Address: host, Port: port, Prompt: lowered, Images: rendered, ExtraData: withExtra()},
		{Executor: "order-2", OrderSeed: 2, Address: host, Port: port, Prompt: lowered, Images: rendered, ExtraData: map[string]any{}},
	}
	out, _ := runPlan(t, d, runs)

	// Run 1: quality_min 5 rejects all three; M3 Reroll re-queued the graph
	// on the server that ran it, not on comfyui.servers[0].
	if slices.Contains(out[0].Cached, "10") || len(out[0].Saved["14"]) != 3 || len(out[0].Saved["13"]) != 0 {
		t.Fatalf("run 1: cached %v, saved %v", out[0].Cached, out[0].Saved)
	}
	if txt := out[0].UI["12"]; len(txt) != 1 || !strings.Contains(txt[0], "re-queued attempt 2 of 3") ||
		!strings.Contains(txt[0], "on "+fake.URL()) {
		t.Fatalf("run 1 reroll: %v", txt)
	}
	var requeued string
	for _, ev := range out[0].Events {
		if ev.Event == "m3gate.reroll" {
			requeued, _ = ev.Data["prompt_id"].(string)
		}
	}
	if requeued == "" {
		t.Fatalf("no reroll event: %+v", out[0].Events)
	}
	next, err := cl.WaitPrompt(ctx, requeued)
	if err != nil {
		t.Fatalf("the rerolled prompt %s on the calling server: %v", requeued, err)
	}
	if h, err := cl.History(ctx, next.PromptID); err != nil || samplerSeed(t, h.Prompt.Prompt) == seed {
		t.Errorf("rerolled prompt: %v, seed unchanged", err)
	}
	if n := other.PromptsExecuted(); n != 0 {
		t.Errorf("comfyui.servers[0] ran %d prompts; the reroll belongs to the calling server", n)
	}
	// Run 2: the same process, threshold lowered: M3 Score is replayed from
	// the cache, the gate and the saves run again.
	if !slices.Contains(out[1].Cached, "10") || slices.Contains(out[1].Ran, "10") || !slices.Contains(out[1].Ran, "13") {
		t.Errorf("run 2: ran %v, cached %v; want M3 Score cached and the passed save run", out[1].Ran, out[1].Cached)
	}
	orders := map[string]bool{}
	for _, r := range out {
		orders[strings.Join(r.Order, ",")] = true
	}
	if len(orders) < 2 {
		t.Errorf("every run used the output order %v", orders)
	}

	// Every file M3 Save Image wrote: its own scores, from the daemon.
	daemonScore := map[[32]byte]float64{}
	distinct := map[float64]bool{}
	for i, r := range out {
		side, passed := "14", false
		if i > 0 {
			side, passed = "13", true
		}
		if len(r.Saved[side]) != 3 {
			t.Errorf("run %d saved %v, want 3 files from node %s", i+1, r.Saved, side)
			continue
		}
		for k, path := range r.Saved[side] {
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			md := readImageMetadata(t, data)
			if md.Prompt != text || md.Attempt != 1 || md.Seeds["3"] != seed || md.Index != k || md.SourceIndex != k ||
				md.Batch != 3 || md.Passed == nil || *md.Passed != passed || md.Gate == nil || md.Node != side {
				t.Errorf("run %d %s: metadata %+v", i+1, filepath.Base(path), md)
			}
			key := sha256.Sum256(pixels(t, data))
			want, ok := daemonScore[key]
			if !ok {
				want = d.score(t, data, text).MOS
				daemonScore[key] = want
			}
			if got := md.Scores["quality"].MOS; !sameScore(got, want) {
				t.Errorf("run %d %s: quality %v in the PNG, the daemon scores this image %v", i+1, filepath.Base(path), got, want)
			}
			distinct[md.Scores["quality"].MOS] = true
			// pipeline's reader (m3gate run's files) reads it too.
			if pm, err := pipeline.ReadMetadata(data); err != nil || pm.Prompt != text || pm.Seeds["3"] != seed {
				t.Errorf("pipeline.ReadMetadata: %+v %v", pm, err)
			}
		}
	}
	if len(daemonScore) != 3 {
		t.Errorf("%d distinct images saved, want the 3 rendered", len(daemonScore))
	}
	if len(distinct) < 2 {
		t.Logf("the tiny model gave the 3 images the same score %v: per-image order not distinguished by score", distinct)
	}
	// A request that names no server (an older pack) falls back on
	// comfyui.servers[0]; a named server that is down is named in the error.
	code, raw := postReroll(t, d.url, rerollBody(t, wf, 1, 3, cl.ID()))
	var ans api.RerollResponse
	if code != 200 || json.Unmarshal(raw, &ans) != nil || ans.Server != other.URL() {
		t.Errorf("reroll without comfyui_url: HTTP %d %s, want it queued on comfyui.servers[0] %s", code, raw, other.URL())
	}
	fake.Stop()
	var body map[string]json.RawMessage
	json.Unmarshal(rerollBody(t, wf, 1, 3, cl.ID()), &body)
	body["comfyui_url"], _ = json.Marshal(fake.URL())
	b, _ := json.Marshal(body)
	code, raw = postReroll(t, d.url, b)
	if code != 502 || !strings.Contains(string(raw), fake.URL()+" (comfyui_url") {
		t.Errorf("reroll to a stopped calling server: HTTP %d %s, want 502 naming comfyui_url", code, raw)
	}
	// A loopback service that is not a ComfyUI with the pack gets no prompt.
	var posts atomic.Int32
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			posts.Add(1)
		}
		w.Write([]byte("<html>a local web app</html>"))
	}))
	defer web.Close()
	body["comfyui_url"], _ = json.Marshal(web.URL)
	b, _ = json.Marshal(body)
	code, raw = postReroll(t, d.url, b)
	if code != 502 || posts.Load() != 0 || !strings.Contains(string(raw), "object info") {
		t.Errorf("reroll to a non-ComfyUI loopback service: HTTP %d %s, %d POSTs; want 502 and none", code, raw, posts.Load())
	}
	// Without extra_pnginfo the pack says SaveImage gets no scores.
	if ui := out[3].UI["10"]; len(ui) != 1 || !strings.Contains(ui[0], "no extra_pnginfo") {
		t.Errorf("M3 Score without extra_pnginfo shows %v", ui)
	}
}

// readImageMetadata reads the m3gate iTXt chunk of a PNG as a strict
// nodes.ImageMetadata.
func readImageMetadata(t *testing.T, data []byte) nodes.ImageMetadata {
	t.Helper()
	chunks, err := comfyui.PNGText(data)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range chunks {
		if c.Key != nodes.PNGInfoKey {
			continue
		}
		if !c.International {
			t.Errorf("m3gate chunk is tEXt, want iTXt")
		}
		var md nodes.ImageMetadata
		dec := json.NewDecoder(strings.NewReader(c.Text))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&md); err != nil {
			t.Fatalf("m3gate chunk %s: %v", c.Text, err)
		}
		return md
	}
	t.Fatalf("no m3gate chunk among %+v", chunks)
	return nodes.ImageMetadata{}
}

// pixels returns a PNG's decoded RGBA pixels.
func pixels(t *testing.T, data []byte) []byte {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	rgba := image.NewRGBA(img.Bounds())
	draw.Draw(rgba, rgba.Bounds(), img, img.Bounds().Min, draw.Src)
	return rgba.Pix
}

// TestRunOnExampleWorkflow: the README's command, `m3gate run` on
// examples/comfyui/m3gate-api.json (the graph with the m3gate nodes, M3
// Reroll's max_tries set to 1 so that only `m3gate run` re-rolls), works
// against a ComfyUI that has the pack installed. The fake runs the pack's
// nodes as no-ops, so the images `m3gate run` scores are the previews.
func TestRunOnExampleWorkflow(t *testing.T) {
	checkNoLeaks(t)
	var opts []comfyfake.Option
	for _, d := range nodes.Defs() {
		var info map[string]json.RawMessage
		if err := json.Unmarshal(d.ObjectInfoJSON(), &info); err != nil {
			t.Fatal(err)
		}
		opts = append(opts, comfyfake.WithNodeClass(d.Class, info[d.Class]))
	}
	fake, _ := startFake(t, opts...)
	d := startDaemon(t, fake.URL())
	raw, err := os.ReadFile(filepath.Join("..", "..", "examples", "comfyui", "m3gate-api.json"))
	if err != nil {
		t.Fatal(err)
	}
	wf, err := comfyui.ParseWorkflow(raw)
	if err != nil {
		t.Fatal(err)
	}
	wf["12"].Inputs["max_tries"] = json.Number("1") // what the README's jq line does
	wf["5"].Inputs["batch_size"] = json.Number("1")
	b, _ := json.Marshal(wf)
	wfPath := filepath.Join(t.TempDir(), "wf.json")
	if err := os.WriteFile(wfPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	p, code := runM3gate(t, d.dir, wfPath, "--count", "2", "--threshold", "quality=0", "--max-tries", "2", "--out", out)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, p.stdout.String(), p.stderr.String())
	}
	pngs, _ := filepath.Glob(filepath.Join(out, "*.png"))
	if len(pngs) != 2 {
		t.Fatalf("%d accepted PNGs, want 2", len(pngs))
	}
	for _, f := range pngs {
		data, _ := os.ReadFile(f)
		md, err := pipeline.ReadMetadata(data)
		if err != nil || md.Prompt != "statue of a man, marble, museum lighting" || len(md.Scores) == 0 {
			t.Errorf("%s: metadata %+v, %v", filepath.Base(f), md, err)
		}
	}
}
