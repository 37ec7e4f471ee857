package nodes

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/m3gate/m3gate/schemas/api"
	"github.com/m3gate/m3gate/schemas/iqa"
)

const debianPython = "/usr/bin/python3"

// fakeDaemon answers /v1/score by decoding each PNG and scoring its mean
// brightness b (quality 5b, correspondence 5(1-b), authenticity 2.5), and
// /v1/reroll by acknowledging a new prompt id. It records what it got.
type fakeDaemon struct {
	mu      sync.Mutex
	scores  []api.ScoreRequest
	rerolls []api.RerollRequest
	plans   []RerollPlan
	sizes   [][2]int // width, height of every decoded image
	errs    []string
	token   string // the bearer token every request must carry, when set
}

func (f *fakeDaemon) fail(format string, args ...any) {
	f.mu.Lock()
	f.errs = append(f.errs, fmt.Sprintf(format, args...))
	f.mu.Unlock()
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func (f *fakeDaemon) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if f.token != "" && r.Header.Get("Authorization") != "Bearer "+f.token {
		f.fail("%s %s without the bearer token", r.Method, r.URL.Path)
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong bearer token"})
		return
	}
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
		f.fail("%s %s with content type %q", r.Method, r.URL.Path, r.Header.Get("Content-Type"))
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "POST application/json only"})
		return
	}
	switch r.URL.Path {
	case api.PathScore:
		f.score(w, r)
	case api.PathReroll:
		var req api.RerollRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			f.fail("reroll body: %v", err)
			writeJSON(w, http.StatusBadRequest, api.ErrorResponse{Error: err.Error()})
			return
		}
		plan, err := PlanReroll(req, nil)
		f.mu.Lock()
		f.rerolls = append(f.rerolls, req)
		f.plans = append(f.plans, plan)
		f.mu.Unlock()
		if err != nil {
			writeJSON(w, http.StatusBadRequest, api.ErrorResponse{Error: err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, api.RerollResponse{Queued: true,
			PromptID: fmt.Sprintf("rerolled-%d", plan.Attempt), Attempt: plan.Attempt, Seeds: plan.Seeds, Server: req.ComfyUIURL})
	default:
		f.fail("unexpected path %s", r.URL.Path)
		http.NotFound(w, r)
	}
}

func (f *fakeDaemon) score(w http.ResponseWriter, r *http.Request) {
	var req api.ScoreRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		f.fail("score body: %v", err)
		writeJSON(w, http.StatusBadRequest, api.ErrorResponse{Error: err.Error()})
		return
	}
	f.mu.Lock()
	f.scores = append(f.scores, req)
	f.mu.Unlock()
	// The daemon refuses correspondence without a prompt (400 naming the
	// field, plugin/server checkPrompts); the pack must show that answer.
	if slices.Contains(req.Aspects, "correspondence") && strings.TrimSpace(req.Prompt) == "" {
		writeJSON(w, http.StatusBadRequest, api.ErrorResponse{Error: `prompt is empty: correspondence needs the generation prompt of the image (set "prompt", or score other aspects)`})
		return
	}
	if req.Prompt == "daemon-error" {
		writeJSON(w, http.StatusServiceUnavailable, api.ErrorResponse{Error: "sidecar is not ready"})
		return
	}
	results := []api.Result{}
	for i, im := range req.Images {
		img, err := png.Decode(bytes.NewReader(im.Data))
		if err != nil {
			f.fail("image %d: png: %v", i, err)
			continue
		}
		b := img.Bounds()
		f.mu.Lock()
		f.sizes = append(f.sizes, [2]int{b.Dx(), b.Dy()})
		f.mu.Unlock()
		bright := meanBrightness(img)
		res := api.Result{Index: i, Aspects: map[string]api.AspectScore{}}
		if req.Prompt == "image-error" && i == len(req.Images)-1 {
			res.Error = fmt.Sprintf("model failed on image %d", i)
			res.Aspects = nil
			results = append(results, res)
			continue
		}
		for _, a := range req.Aspects {
			var mos float64
			switch a {
			case "quality":
				mos = 5 * bright
			case "correspondence":
				mos = 5 * (1 - bright)
			default:
				mos = 2.5
			}
			res.Aspects[a] = api.AspectScore{MOS: mos, Rating: iqa.RatingWord(mos), Description: "fake " + a,
				Source: "predictor", WordProbs: map[string]float64{iqa.RatingWord(mos): 1}}
		}
		results = append(results, res)
	}
	// Answer in reverse order: the pack must place results by index.
	for i, j := 0, len(results)-1; i < j; i, j = i+1, j-1 {
		results[i], results[j] = results[j], results[i]
	}
	writeJSON(w, http.StatusOK, api.ScoreResponse{Results: results})
}

func meanBrightness(img image.Image) float64 {
	b := img.Bounds()
	var sum float64
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			sum += float64(r+g+bl) / 3 / 0xffff
		}
	}
	return sum / float64(b.Dx()*b.Dy())
}

// closedURL returns the URL of a local port where nothing listens.
func closedURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr
}

// TestPythonPack runs testdata/pack_test.py under Debian's python3 (real
// torch, numpy, PIL; stub server/comfy/comfy_execution modules) against the
// fake daemon, then checks what reached the daemon on the wire.
func TestPythonPack(t *testing.T) {
	if _, err := os.Stat(debianPython); err != nil {
		t.Skipf("skipping the Python pack tests: %s not found (%v)", debianPython, err)
	}
	root := repoRoot(t)
	// Open every file python reads, so that go test's cache notices edits.
	for _, dir := range []string{"comfyui/m3gate", "testdata"} {
		err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			_, err = os.ReadFile(path)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	fake := &fakeDaemon{token: "pack-token"}
	srv := httptest.NewServer(fake)
	defer srv.Close()

	dir, outDir := t.TempDir(), t.TempDir()
	report := filepath.Join(dir, "report.json")
	compact := filepath.Join(dir, "object_info.json")
	if err := os.WriteFile(compact, Default().ObjectInfoJSON(), 0o644); err != nil {
		t.Fatal(err)
	}
	funcs := map[string]string{}
	for _, d := range Defs() {
		funcs[d.Class] = d.Function
	}
	funcsJSON, _ := json.Marshal(funcs)
	aspectsJSON, _ := json.Marshal(iqa.Aspects)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, debianPython, "-B", "testdata/pack_test.py")
	cmd.Env = append(os.Environ(),
		"PYTHONPATH="+filepath.Join(root, "nodes", "testdata", "pystubs")+string(os.PathListSeparator)+filepath.Join(root, "nodes", "testdata"),
		"PYTHONDONTWRITEBYTECODE=1",
		"OMP_NUM_THREADS=1",
		"M3GATE_PACK="+filepath.Join(root, "nodes", "comfyui", "m3gate"),
		"M3GATE_URL="+srv.URL,
		"M3GATE_DAEMON_TOKEN=pack-token",
		"M3GATE_DOWN_URL="+closedURL(t),
		"M3GATE_GOLDEN="+filepath.Join(root, filepath.FromSlash(ObjectInfoPath)),
		"M3GATE_COMPACT="+compact,
		"M3GATE_FUNCTIONS="+string(funcsJSON),
		"M3GATE_ASPECTS="+string(aspectsJSON),
		"M3GATE_TIMEOUT=30",
		"M3GATE_WORKFLOW="+filepath.Join(root, "nodes", "testdata", "workflow-api.json"),
		"M3GATE_OUT="+outDir,
		"M3GATE_REPORT="+report,
	)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("python pack tests failed: %v\n%s", err, out)
	}
	t.Logf("python pack tests:\n%s", lastLines(string(out), 6))

	fake.mu.Lock()
	defer fake.mu.Unlock()
	for _, e := range fake.errs {
		t.Errorf("fake daemon: %s", e)
	}
	if len(fake.scores) == 0 || len(fake.rerolls) == 0 {
		t.Fatalf("daemon saw %d score and %d reroll requests, want some of each", len(fake.scores), len(fake.rerolls))
	}
	for _, sz := range fake.sizes {
		if sz != [2]int{6, 8} {
			t.Errorf("PNG of %dx%d, want the 6x8 test images", sz[0], sz[1])
		}
	}
	var sawPrompt bool
	for _, s := range fake.scores {
		for _, a := range s.Aspects {
			if !contains(iqa.Aspects, a) {
				t.Errorf("score request asks for unknown aspect %q", a)
			}
		}
		if s.Prompt == "a red fox" {
			sawPrompt = true
			if s.Attempt != 2 || s.Seed == nil || *s.Seed != 18446744073709551615 {
				t.Errorf("score request says attempt %d seed %v, want the graph's 2 and 18446744073709551615", s.Attempt, s.Seed)
			}
			if strings.Join(s.Aspects, ",") != "quality,correspondence" || len(s.Images) != 2 {
				t.Errorf("score request %+v, want 2 images and quality,correspondence", s.Aspects)
			}
		}
	}
	if !sawPrompt {
		t.Error("no score request carried the linked prompt")
	}
	var got *api.RerollRequest
	for i := range fake.rerolls {
		if r := fake.rerolls[i]; r.Wanted == 2 && r.Passed == 0 && r.Attempt == 1 {
			got = &fake.rerolls[i]
		}
	}
	if got == nil {
		t.Fatalf("no reroll request with wanted=2 passed=0 attempt=1 among %d", len(fake.rerolls))
	}
	if got.NodeID != "12" || got.Attempt != 1 || got.MaxTries != 3 || got.Passed != 0 ||
		strings.Join(got.SeedNodes, ",") != "3" || got.ClientID != "client-1" {
		t.Errorf("reroll request node %s attempt %d/%d passed %d seeds %v client %q",
			got.NodeID, got.Attempt, got.MaxTries, got.Passed, got.SeedNodes, got.ClientID)
	}
	// Seeds up to 2^64-1 reach the daemon exactly, and the plan changes them.
	plan := fake.plans[len(fake.plans)-1]
	for i := range fake.rerolls {
		if &fake.rerolls[i] == got {
			plan = fake.plans[i]
		}
	}
	var prompt map[string]struct {
		Inputs map[string]json.RawMessage `json:"inputs"`
	}
	if err := decodeExact(got.Prompt, &prompt); err != nil {
		t.Fatalf("reroll prompt: %v", err)
	}
	if s := string(prompt["3"].Inputs["seed"]); s != "18446744073709551615" {
		t.Errorf("sampler seed sent = %s, want 18446744073709551615", s)
	}
	if seed, ok := plan.Seeds["3.seed"]; !ok || seed == math.MaxUint64 || plan.Attempt != 2 {
		t.Errorf("plan seeds %v attempt %d, want a new 3.seed and attempt 2", plan.Seeds, plan.Attempt)
	}
	if !strings.Contains(string(got.ExtraPNGInfo), PNGInfoRerollKey) {
		t.Errorf("extra_pnginfo %s lacks %s", got.ExtraPNGInfo, PNGInfoRerollKey)
	}
	if strings.Contains(string(plan.ExtraPNGInfo), PNGInfoRerollKey) {
		t.Errorf("planned extra_pnginfo %s keeps %s", plan.ExtraPNGInfo, PNGInfoRerollKey)
	}
	// The workflow runs: 1 of 2 passed, every seed input rerolled, on the
	// ComfyUI server that ran the graph.
	var wf int
	servers := map[string]bool{}
	for i, r := range fake.rerolls {
		servers[r.ComfyUIURL] = true
		if r.Passed == 1 && r.Wanted == 2 {
			wf++
			if len(r.SeedNodes) != 0 || r.NodeID != "12" {
				t.Errorf("workflow reroll node %s seed nodes %v", r.NodeID, r.SeedNodes)
			}
			if _, ok := fake.plans[i].Seeds["3.seed"]; !ok || len(fake.plans[i].Seeds) != 1 {
				t.Errorf("workflow reroll plan seeds %v, want 3.seed", fake.plans[i].Seeds)
			}
		}
	}
	if wf == 0 {
		t.Error("no workflow reroll requests")
	}
	for _, u := range []string{"http://127.0.0.1:8188", "http://0.0.0.0:8189", "http://[::1]:8189", "https://comfy.example:443"} {
		if !servers[u] {
			t.Errorf("no reroll request named ComfyUI server %s (saw %v)", u, servers)
		}
	}
	checkSavedPNGs(t, report)
}

// checkSavedPNGs reads again, with a Go PNG reader, every PNG the Python
// graph tests read: the m3gate chunk is iTXt, decodes strictly as an
// ImageMetadata, equals what Python (Pillow) read, and holds the fake
// daemon's scores of the very image in the file.
func checkSavedPNGs(t *testing.T, report string) {
	t.Helper()
	raw, err := os.ReadFile(report)
	if err != nil {
		t.Fatalf("graph tests report: %v", err)
	}
	var saw []struct {
		Path       string          `json:"path"`
		Brightness float64         `json:"brightness"`
		Meta       json.RawMessage `json:"meta"`
	}
	if err := json.Unmarshal(raw, &saw); err != nil {
		t.Fatal(err)
	}
	if len(saw) < 20 {
		t.Fatalf("the graph tests read %d PNGs, want many", len(saw))
	}
	prompts := map[string]bool{}
	for _, s := range saw {
		chunks, img := readPNGText(t, s.Path)
		c, ok := chunks[PNGInfoKey]
		if !ok || c.typ != "iTXt" {
			t.Errorf("%s: m3gate chunk %+v, want iTXt", s.Path, c)
			continue
		}
		var md, py ImageMetadata
		dec := json.NewDecoder(strings.NewReader(c.text))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&md); err != nil {
			t.Errorf("%s: m3gate chunk is not an ImageMetadata: %v\n%s", s.Path, err, c.text)
			continue
		}
		json.Unmarshal(s.Meta, &py)
		if !reflect.DeepEqual(md, py) {
			t.Errorf("%s: Go reads %+v, Pillow read %+v", s.Path, md, py)
		}
		b := meanBrightness(img)
		if math.Abs(b-s.Brightness) > 1e-6 || math.Abs(md.Scores["quality"].MOS-5*b) > 1e-3 {
			t.Errorf("%s: brightness %.4f, quality %.4f: not this image's score", s.Path, b, md.Scores["quality"].MOS)
		}
		if md.Attempt < 1 || md.Batch < 1 || md.Index >= md.Batch || md.Seeds["3"] != math.MaxUint64 {
			t.Errorf("%s: metadata %+v", s.Path, md)
		}
		prompts[md.Prompt] = true
	}
	if !prompts["statue café 雕像"] {
		t.Errorf("no PNG carried the non-ASCII prompt unchanged: %v", prompts)
	}
}

type pngText struct{ typ, text string }

// readPNGText returns a PNG's tEXt (Latin-1) and uncompressed iTXt (UTF-8)
// chunks by keyword, and its decoded image.
func readPNGText(t *testing.T, path string) (map[string]pngText, image.Image) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	chunks := map[string]pngText{}
	for p := 8; p+12 <= len(data); {
		n := int(binary.BigEndian.Uint32(data[p:]))
		typ := string(data[p+4 : p+8])
		if p+12+n > len(data) {
			t.Fatalf("%s: truncated %s chunk", path, typ)
		}
		body := data[p+8 : p+8+n]
		switch typ {
		case "tEXt":
			k, v, _ := bytes.Cut(body, []byte{0})
			r := make([]rune, len(v))
			for i, c := range v {
				r[i] = rune(c)
			}
			chunks[string(k)] = pngText{typ, string(r)}
		case "iTXt":
			k, rest, _ := bytes.Cut(body, []byte{0})
			if len(rest) < 2 || rest[0] != 0 {
				t.Fatalf("%s: iTXt %s is compressed or truncated", path, k)
			}
			parts := bytes.SplitN(rest[2:], []byte{0}, 3)
			if len(parts) != 3 {
				t.Fatalf("%s: iTXt %s has no language tag and translated keyword", path, k)
			}
			chunks[string(k)] = pngText{typ, string(parts[2])}
		}
		p += 12 + n
	}
	return chunks, img
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
