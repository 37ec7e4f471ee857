package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/m3gate/m3gate/schemas/api"
)

// The browser test drives Debian's chromium (installed by scripts/setup.sh)
// through the DevTools protocol against the real daemon on the tiny model.
// $M3GATE_CHROMIUM names another browser binary.

// chromiumPath finds the browser, or skips the test saying why.
func chromiumPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("M3GATE_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("skipping the browser test: no chromium on PATH (scripts/setup.sh installs Debian's chromium package; or set M3GATE_CHROMIUM)")
	return ""
}

// browser is one headless chromium tab with what it logged.
type browser struct {
	ctx      context.Context
	mu       sync.Mutex
	console  []string // errors and exceptions
	requests []string // URLs the page asked for
}

func newBrowser(t *testing.T, bin string) *browser {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(bin),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 800),
	}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelT := chromedp.NewContext(actx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 4*time.Minute)
	t.Cleanup(func() { cancelTimeout(); cancelT(); cancelA() })
	b := &browser{ctx: ctx}
	console := chromedp.Console(ctx)
	reqs := chromedp.Events(ctx, network.RequestWillBeSent)
	go func() {
		for m, err := range console {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.Type == chromedp.ConsoleException {
				b.mu.Lock()
				b.console = append(b.console, string(m.Type)+": "+m.Text)
				b.mu.Unlock()
			}
		}
	}()
	go func() {
		for ev, err := range reqs {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.requests = append(b.requests, ev.Request.URL)
			b.mu.Unlock()
		}
	}()
	return b
}

func (b *browser) do(t *testing.T, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(b.ctx, steps...); err != nil {
		t.Fatal(err)
	}
}

func eval[T any](t *testing.T, b *browser, js string) T {
	t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Evaluate[T](js))
	if err != nil {
		t.Fatalf("evaluate %s: %v", js, err)
	}
	return v
}

// waitFor polls js until it is true.
func waitFor(t *testing.T, b *browser, js string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !eval[bool](t, b, js) {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", within, js)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (b *browser) errors() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.console)
}

func (b *browser) urls() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.requests)
}

// shownCard is what a card shows, read from the DOM.
type shownCard struct {
	ID       string            `json:"id"`
	Prompt   string            `json:"prompt"`
	Seed     string            `json:"seed"`
	Attempt  string            `json:"attempt"`
	Badge    string            `json:"badge"`
	MOS      map[string]string `json:"mos"`  // data-mos: the number as the page holds it
	Text     map[string]string `json:"text"` // the number as shown
	Rating   map[string]string `json:"rating"`
	ThumbW   int               `json:"thumbW"` // longest side
	Desc     map[string]string `json:"desc"`
	DescOpen bool              `json:"descOpen"`
}

const readCards = `Array.from(document.querySelectorAll('#cards li.card')).map(function (li) {
  var c = {id: li.getAttribute('data-id'), prompt: li.querySelector('.prompt').textContent,
    seed: (li.querySelector('.m-seed') || {}).textContent || '', attempt: (li.querySelector('.m-attempt') || {}).textContent || '',
    badge: li.querySelector('.badge').textContent, mos: {}, text: {}, rating: {}, desc: {},
    thumbW: Math.max(li.querySelector('img.thumb').naturalWidth, li.querySelector('img.thumb').naturalHeight), descOpen: false};
  li.querySelectorAll('details.aspect').forEach(function (d) {
    var a = d.getAttribute('data-aspect'), m = d.querySelector('.mos');
    c.mos[a] = m.getAttribute('data-mos'); c.text[a] = m.textContent;
    c.rating[a] = d.querySelector('.rating').textContent; c.desc[a] = d.querySelector('.desc').textContent;
    c.descOpen = c.descOpen || d.open;
  });
  return c;
})`

// passCount computes, from the API's scores, how many images pass a
// quality threshold (the daemon scores quality only here).
func passCount(results map[string]api.Result, thr float64) int {
	n := 0
	for _, r := range results {
		if a, ok := r.Aspects["quality"]; ok && r.Error == "" && a.MOS >= thr {
			n++
		}
	}
	return n
}

func testImage(t *testing.T, w, h int, seed int) []byte {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.NRGBA{uint8(x*seed + y), uint8(y * seed), uint8((x ^ y) * seed), 255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// xssPrompt must be shown as text: were it parsed as HTML, the script or
// the image's onerror would set window.__m3xss.
const xssPrompt = `<script>window.__m3xss=1</script><img src=x onerror="window.__m3xss=2"> a "fox" & 'hen'`

// TestBrowserReviewPageAndReport: the real daemon on the tiny model scores
// three images; the page, opened in headless chromium before they are
// scored, shows three cards whose numbers equal the API's answer, with
// thumbnails, seed and attempt; the <script> prompt stays text; moving the
// quality slider (keyboard and drag) changes the pass count to the count
// computed from the API's scores; the page fits a phone's width. Then
// `m3gate report` writes the same results as one file, which opens without
// a single network request and shows the same numbers. Screenshots go to
// build/.
func TestBrowserReviewPageAndReport(t *testing.T) {
	bin := chromiumPath(t)
	t.Setenv("M3GATE_SCORING_THRESHOLDS_QUALITY", "2.5")
	_, base := startDaemon(t)
	waitReady(t, base)
	shots := filepath.Join("..", "..", "build")
	if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}

	b := newBrowser(t, bin)
	b.do(t, chromedp.EmulateViewport(1280, 800), chromedp.Navigate(base+"/"))
	waitFor(t, b, `(document.querySelector('#status [data-key="feed"] .v') || {}).textContent === 'live'`, 30*time.Second)

	// Score three images through the API, as the node pack does.
	imgs := [][]byte{testImage(t, 96, 64, 3), testImage(t, 64, 96, 7), testImage(t, 80, 80, 11)}
	type req struct {
		body   map[string]any
		prompt string
		seed   string
		try    int
	}
	reqs := []req{
		{map[string]any{"images": []map[string]any{{"data": imgs[0]}, {"data": imgs[1]}}, "prompt": "a red fox in the snow", "aspects": []string{"quality"}, "max_new_tokens": 6, "attempt": 1, "seed": 7}, "a red fox in the snow", "7", 1},
		{map[string]any{"images": []map[string]any{{"data": imgs[2]}}, "prompt": xssPrompt, "aspects": []string{"quality"}, "max_new_tokens": 6, "attempt": 2, "seed": uint64(math.MaxUint64)}, xssPrompt, "18446744073709551615", 2},
	}
	answered := map[string]api.Result{} // card id -> result
	meta := map[string]req{}
	var order []string
	for _, r := range reqs {
		resp, raw := postJSON(t, base+"/v1/score", r.body)
		var got api.ScoreResponse
		if resp.StatusCode != 200 || json.Unmarshal(raw, &got) != nil {
			t.Fatalf("score: %d %s", resp.StatusCode, raw)
		}
		for _, res := range got.Results {
			if res.Error != "" {
				t.Fatalf("score error: %s", res.Error)
			}
			id := got.RequestID + "-" + strconv.Itoa(res.Index)
			answered[id], meta[id] = res, r
			order = append(order, id)
		}
	}
	waitFor(t, b, `document.querySelectorAll('#cards li.card').length === 3 && Array.from(document.querySelectorAll('#cards img.thumb')).every(function (i) { return i.complete && i.naturalWidth > 0; })`, 30*time.Second)

	// Open the first card's description with the keyboard.
	b.do(t, chromedp.Focus(`#cards li.card details.aspect summary`), chromedp.KeyEvent(kb.Enter))
	checkCards := func(where string, cards []shownCard, wantThumbW func(id string) int, provenance bool) {
		t.Helper()
		if len(cards) != 3 {
			t.Fatalf("%s: %d cards, want 3", where, len(cards))
		}
		for _, c := range cards {
			res, ok := answered[c.ID]
			if !ok {
				t.Errorf("%s: card %q is not an API result (have %v)", where, c.ID, order)
				continue
			}
			want := res.Aspects["quality"]
			got, err := strconv.ParseFloat(c.MOS["quality"], 64)
			if err != nil || got != want.MOS {
				t.Errorf("%s: card %s holds MOS %q, the API answered %v", where, c.ID, c.MOS["quality"], want.MOS)
			}
			shown, err := strconv.ParseFloat(c.Text["quality"], 64)
			if err != nil || math.Abs(shown-want.MOS) > 0.005+1e-9 {
				t.Errorf("%s: card %s shows %q, the API answered %v", where, c.ID, c.Text["quality"], want.MOS)
			}
			if c.Rating["quality"] != want.Rating || c.Desc["quality"] != want.Description {
				t.Errorf("%s: card %s rating %q description %q, API %q %q", where, c.ID, c.Rating["quality"], c.Desc["quality"], want.Rating, want.Description)
			}
			wantBadge := "reject"
			if want.MOS >= 2.5 {
				wantBadge = "pass"
			}
			if c.Badge != wantBadge {
				t.Errorf("%s: card %s badge %q at threshold 2.5 with MOS %v", where, c.ID, c.Badge, want.MOS)
			}
			m := meta[c.ID]
			if c.Prompt != m.prompt || provenance && (c.Seed != m.seed || c.Attempt != strconv.Itoa(m.try)) {
				t.Errorf("%s: card %s prompt %q seed %q attempt %q, want %q %q %d", where, c.ID, c.Prompt, c.Seed, c.Attempt, m.prompt, m.seed, m.try)
			}
			if w := wantThumbW(c.ID); c.ThumbW != w {
				t.Errorf("%s: card %s thumbnail's longest side %d px, want %d", where, c.ID, c.ThumbW, w)
			}
		}
		if eval[bool](t, b, `window.__m3xss !== undefined || document.querySelector('img[src="x"]') !== null || document.querySelectorAll('script').length > 2`) {
			t.Errorf("%s: the <script> prompt was parsed as HTML", where)
		}
	}
	sides := map[string]int{order[0]: 96, order[1]: 96, order[2]: 80} // under the thumbnail side: kept
	cards := eval[[]shownCard](t, b, readCards)
	checkCards("page", cards, func(id string) int { return sides[id] }, true)
	if !cards[0].DescOpen {
		t.Errorf("Enter on an aspect did not open its description")
	}

	// What-if: the count starts at the configured gate, then follows the
	// slider, by keyboard (Home → 0, End → 5) and by a drag to a threshold
	// between the scores.
	pass := func() int {
		return int(eval[float64](t, b, `Number(document.getElementById('pass-count').getAttribute('data-pass'))`))
	}
	if got, want := pass(), passCount(answered, 2.5); got != want {
		t.Errorf("pass count at the configured 2.5: %d, computed %d", got, want)
	}
	b.do(t, chromedp.Focus(`#thr-quality`), chromedp.KeyEvent(kb.Home))
	if got, want := pass(), passCount(answered, 0); got != want {
		t.Errorf("pass count at 0 (Home): %d, computed %d", got, want)
	}
	b.do(t, chromedp.KeyEvent(kb.End))
	if got, want := pass(), passCount(answered, 5); got != want {
		t.Errorf("pass count at 5 (End): %d, computed %d", got, want)
	}
	var mos []float64
	for _, r := range answered {
		mos = append(mos, r.Aspects["quality"].MOS)
	}
	slices.Sort(mos)
	target := math.Ceil(mos[1]*100) / 100 // passes the images scoring at least the median, rounded up
	if target > 5 {
		target = 5
	}
	val := eval[string](t, b, fmt.Sprintf(`(function () { var s = document.getElementById('thr-quality'); s.value = '%v'; s.dispatchEvent(new Event('input', {bubbles: true})); return s.value; })()`, target))
	thr, _ := strconv.ParseFloat(val, 64)
	if got, want := pass(), passCount(answered, thr); got != want {
		t.Errorf("pass count at %v: %d, computed %d (scores %v)", thr, got, want, mos)
	}
	b.do(t, chromedp.KeyEvent(kb.ArrowLeft))
	thr2, _ := strconv.ParseFloat(eval[string](t, b, `document.getElementById('thr-quality').value`), 64)
	if got, want := pass(), passCount(answered, thr2); got != want || math.Abs(thr2-(thr-0.01)) > 1e-9 {
		t.Errorf("pass count at %v (ArrowLeft from %v): %d, computed %d", thr2, thr, got, want)
	}
	if cfg := eval[string](t, b, `document.getElementById('config-line').textContent`); !strings.Contains(cfg, "    quality: "+strconv.FormatFloat(thr2, 'f', -1, 64)+"\n") || !strings.Contains(cfg, "  gate: all") {
		t.Errorf("config lines for threshold %v:\n%s", thr2, cfg)
	}
	badges := eval[[]string](t, b, `Array.from(document.querySelectorAll('#cards .badge')).map(function (e) { return e.textContent; })`)
	if n := strings.Count(strings.Join(badges, " "), "pass"); n != passCount(answered, thr2) {
		t.Errorf("%d pass badges at %v, computed %d", n, thr2, passCount(answered, thr2))
	}
	// Filters: rejected only, then text in the prompt.
	b.do(t, chromedp.SetValue(`#f-status`, "rejected"))
	eval[bool](t, b, `document.getElementById('f-status').dispatchEvent(new Event('change')) || true`)
	if got, want := int(eval[float64](t, b, `document.querySelectorAll('#cards li.card').length`)), 3-passCount(answered, thr2); got != want {
		t.Errorf("rejected filter shows %d cards, want %d", got, want)
	}
	b.do(t, chromedp.SetValue(`#f-status`, "all"))
	eval[bool](t, b, `document.getElementById('f-status').dispatchEvent(new Event('change')) || true`)
	b.do(t, chromedp.Focus(`#f-text`), chromedp.KeyEvent("fox in"))
	if got := int(eval[float64](t, b, `document.querySelectorAll('#cards li.card').length`)); got != 2 {
		t.Errorf("prompt filter 'fox in' shows %d cards, want 2", got)
	}
	b.do(t, chromedp.KeyEvent(strings.Repeat(kb.Backspace, len("fox in"))))
	waitFor(t, b, `document.querySelectorAll('#cards li.card').length === 3`, 5*time.Second)
	// Sorting by an aspect orders the cards by its score.
	for _, dir := range []string{"asc", "desc"} {
		b.do(t, chromedp.SetValue(`#sort`, dir+":quality"))
		eval[bool](t, b, `document.getElementById('sort').dispatchEvent(new Event('change')) || true`)
		got := eval[[]string](t, b, `Array.from(document.querySelectorAll('#cards .mos')).map(function (e) { return e.getAttribute('data-mos'); })`)
		var vals []float64
		for _, g := range got {
			v, _ := strconv.ParseFloat(g, 64)
			vals = append(vals, v)
		}
		want := slices.Clone(mos)
		if dir == "desc" {
			slices.Reverse(want)
		}
		if !slices.Equal(vals, want) {
			t.Errorf("sorted %s by quality: %v, want %v", dir, vals, want)
		}
	}
	if h := eval[string](t, b, `document.querySelector('.hist[data-aspect="quality"] figcaption').textContent`); !strings.HasPrefix(h, "quality: 3 images") {
		t.Errorf("histogram caption %q", h)
	}
	// The header polls /v1/status: model, device, state, queue, restarts.
	waitFor(t, b, `(function (s) { return s.indexOf('state ready') >= 0 && s.indexOf('device cpu') >= 0 && s.indexOf('queue 0') >= 0 && s.indexOf('restarts 0') >= 0; })(document.getElementById('status').textContent)`, 15*time.Second)

	png1, err := chromedp.Run(b.ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(shots, "review-page.png"), png1, 0o644)
	b.do(t, chromedp.EmulateViewport(390, 844))
	if w := eval[float64](t, b, `document.documentElement.scrollWidth`); w > 390 {
		t.Errorf("at phone width the page is %v px wide (wider than 390)", w)
	}
	png2, err := chromedp.Run(b.ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(shots, "review-page-phone.png"), png2, 0o644)
	if errs := b.errors(); len(errs) > 0 {
		t.Errorf("the page logged errors: %v", errs)
	}
	for _, u := range b.urls() {
		if !strings.HasPrefix(u, base+"/") && !strings.HasPrefix(u, "data:") && !strings.HasPrefix(u, "blob:") {
			t.Errorf("the page asked for %s, outside the daemon", u)
		}
	}

	// The report: the API's results as `m3gate score --json` lines, with
	// the images beside them.
	dir := t.TempDir()
	var lines bytes.Buffer
	for i, id := range order {
		name := fmt.Sprintf("img%d.png", i)
		if err := os.WriteFile(filepath.Join(dir, name), imgs[i], 0o644); err != nil {
			t.Fatal(err)
		}
		line, _ := json.Marshal(map[string]any{"image": name, "prompt": meta[id].prompt, "aspects": answered[id].Aspects})
		lines.Write(append(line, '\n'))
	}
	results := filepath.Join(dir, "scores.jsonl")
	os.WriteFile(results, lines.Bytes(), 0o644)
	report := filepath.Join(dir, "report.html")
	m3gate, _, _ := daemonBinaries(t)
	cmd := exec.Command(m3gate, "report", results, "--out", report, "--thumb-size", "48")
	cmd.Env = append(os.Environ(), "M3GATE_SCORING_THRESHOLDS_QUALITY=2.5")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("m3gate report: %v\n%s", err, out)
	}
	rb := newBrowser(t, bin)
	rb.do(t, chromedp.EmulateViewport(1280, 800), chromedp.Navigate("file://"+report))
	waitFor(t, rb, `document.querySelectorAll('#cards li.card').length === 3 && Array.from(document.querySelectorAll('#cards img.thumb')).every(function (i) { return i.complete && i.naturalWidth > 0; })`, 10*time.Second)
	rcards := eval[[]shownCard](t, rb, readCards)
	// Report cards are numbered by line; map them onto the API's ids.
	for i := range rcards {
		n, _ := strconv.Atoi(rcards[i].ID)
		rcards[i].ID = order[n-1]
	}
	checkCards("report", rcards, func(id string) int { return 48 }, false) // score --json carries no seed or attempt
	if got, want := int(eval[float64](t, rb, `Number(document.getElementById('pass-count').getAttribute('data-pass'))`)), passCount(answered, 2.5); got != want {
		t.Errorf("report pass count %d, computed %d", got, want)
	}
	rb.do(t, chromedp.Focus(`#thr-quality`), chromedp.KeyEvent(kb.Home))
	if got, want := int(eval[float64](t, rb, `Number(document.getElementById('pass-count').getAttribute('data-pass'))`)), passCount(answered, 0); got != want {
		t.Errorf("report pass count at 0: %d, computed %d", got, want)
	}
	png3, err := chromedp.Run(rb.ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(shots, "review-report.png"), png3, 0o644)
	if errs := rb.errors(); len(errs) > 0 {
		t.Errorf("the report logged errors: %v", errs)
	}
	for _, u := range rb.urls() {
		if u != "file://"+report && !strings.HasPrefix(u, "data:") {
			t.Errorf("the report asked for %s: it must open offline", u)
		}
	}
	t.Logf("screenshots: %s/review-page.png, review-page-phone.png, review-report.png", shots)
}
