package server

import (
	"bytes"
	"context"
	"encoding/json"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"io"
	"io/fs"
	"mime/multipart"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/m3gate/m3gate/plugin/review"
	"github.com/m3gate/m3gate/schemas"
	"github.com/m3gate/m3gate/schemas/api"
	"github.com/m3gate/m3gate/schemas/iqa"
)

// pngScorer scores real images: MOS = 5 × the mean red level of the image.
type pngScorer struct{ fakeScorer }

func (p *pngScorer) Score(ctx context.Context, req schemas.ScoreRequest) ([]schemas.ItemResult, error) {
	out := make([]schemas.ItemResult, len(req.Items))
	for i, it := range req.Items {
		img, _, err := image.Decode(bytes.NewReader(it.Data))
		if err != nil {
			out[i] = schemas.ItemResult{Index: i, Error: "decode image: " + err.Error()}
			continue
		}
		r, _, _, _ := img.At(0, 0).RGBA()
		mos := 5 * float64(r) / 0xffff
		out[i] = schemas.ItemResult{Index: i, Aspects: map[string]schemas.AspectResult{}}
		for _, a := range req.Options.Aspects {
			out[i].Aspects[a] = schemas.AspectResult{MOS: mos, Rating: iqa.RatingWord(mos), Description: "described", Source: schemas.SourcePredictor}
		}
	}
	return out, nil
}

// solidPNG is a w×h PNG of one colour with the given red level.
func solidPNG(t *testing.T, w, h int, red uint8) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.RGBA{red, 40, 90, 255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func get(t *testing.T, url string, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// recentUntil polls GET /v1/recent until its last event is request id
// (events follow the answer: thumbnails are made after it) and returns the
// raw answer.
func recentUntil(t *testing.T, base, id string) []byte {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, raw := get(t, base+"/v1/recent", nil)
		var r RecentJSON
		if resp.StatusCode == 200 && json.Unmarshal(raw, &r) == nil && len(r.Events) > 0 && r.Events[len(r.Events)-1].RequestID == id {
			return raw
		}
		if time.Now().After(deadline) {
			t.Fatalf("request %s never reached /v1/recent: %d %s", id, resp.StatusCode, raw)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestPageServesEmbeddedAssets: / and /ui/ serve the embedded page with a
// CSP that allows nothing but the daemon itself, and nothing else is served
// under /ui/.
func TestPageServesEmbeddedAssets(t *testing.T) {
	_, ts := newTestServer(t, &fakeScorer{}, nil)
	for _, tt := range []struct{ path, ctype, contains string }{
		{"/", "text/html", `src="/ui/app.js"`},
		{"/ui/app.js", "text/javascript", "textContent"},
		{"/ui/style.css", "text/css", ".card"},
	} {
		resp, body := get(t, ts.URL+tt.path, nil)
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), tt.ctype) || !bytes.Contains(body, []byte(tt.contains)) {
			t.Errorf("GET %s: %d %s, body has %q: %v", tt.path, resp.StatusCode, resp.Header.Get("Content-Type"), tt.contains, bytes.Contains(body, []byte(tt.contains)))
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "frame-ancestors 'none'") {
			t.Errorf("GET %s: CSP %q", tt.path, csp)
		}
	}
	for _, p := range []string{"/ui/index.html", "/ui/review.go", "/ui/..%2fpage.go", "/nothing"} {
		if resp, _ := get(t, ts.URL+p, nil); resp.StatusCode != 404 {
			t.Errorf("GET %s: %d, want 404", p, resp.StatusCode)
		}
	}
}

// TestAssetsMakeNoExternalRequest: the page's files name no other host
// (no CDN, no web font) and never assign innerHTML.
func TestAssetsMakeNoExternalRequest(t *testing.T) {
	err := fs.WalkDir(review.Assets(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, _ := review.Asset(p)
		for _, bad := range []string{"http://", "https://", "//cdn", "@import", "innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("} {
			if bytes.Contains(b, []byte(bad)) {
				t.Errorf("%s contains %q", p, bad)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestRecentEventsAndThumbnails: a scored request shows up in /v1/recent
// with the configured gate, its attempt and seed (a 64-bit seed as a
// string) and thumbnail URLs that serve scaled-down JPEGs; the messages
// match schemas/daemon_api.schema.json.
func TestRecentEventsAndThumbnails(t *testing.T) {
	gate := review.Gate{Thresholds: map[string]float64{"quality": 3}, Mode: "any"}
	_, ts := newTestServer(t, &fakeScorer{}, func(c *Config) { c.Scorer, c.Gate = &pngScorer{}, gate })
	seed := uint64(18446744073709551615)
	imgs := [][]byte{solidPNG(t, 1024, 512, 250), solidPNG(t, 64, 64, 10)}
	body := map[string]any{"images": []map[string]any{{"data": imgs[0]}, {"data": imgs[1]}}, "prompt": "p", "aspects": []string{"quality"}, "attempt": 2, "seed": seed}
	if resp, b := postJSON(t, ts.URL+"/v1/score", body); resp.StatusCode != 200 {
		t.Fatalf("score: %d %s", resp.StatusCode, b)
	}
	raw := recentUntil(t, ts.URL, "1")
	root := loadSchema(t)
	if err := validate(root, root["$defs"].(map[string]any)["recent_response"].(map[string]any), decodeNumbers(t, raw), "recent"); err != nil {
		t.Errorf("recent answer breaks the schema: %v\n%s", err, raw)
	}
	var got RecentJSON
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatal(err)
	}
	if got.Gate.Mode != "any" || got.Gate.Thresholds["quality"] != 3 || len(got.Events) != 1 {
		t.Fatalf("got %+v", got)
	}
	ev := got.Events[0]
	if ev.Seed != "18446744073709551615" || ev.Attempt != 2 || ev.Prompt != "p" || len(ev.Thumbs) != 2 || ev.Time.IsZero() {
		t.Errorf("event %+v", ev)
	}
	for i, want := range [][2]int{{320, 160}, {64, 64}} {
		resp, b := get(t, ts.URL+ev.Thumbs[i], map[string]string{"Sec-Fetch-Site": "same-origin"})
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/jpeg" {
			t.Fatalf("thumb %d: %d %s", i, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		im, err := jpeg.Decode(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		if sz := im.Bounds().Size(); sz.X != want[0] || sz.Y != want[1] {
			t.Errorf("thumb %d is %v, want %v", i, sz, want)
		}
	}
	// Another site's page may not embed or read the feed.
	for _, p := range []string{ev.Thumbs[0], "/v1/recent"} {
		for _, site := range []string{"cross-site", "same-site"} {
			if resp, _ := get(t, ts.URL+p, map[string]string{"Sec-Fetch-Site": site}); resp.StatusCode != http.StatusForbidden {
				t.Errorf("GET %s from a %s page: %d, want 403", p, site, resp.StatusCode)
			}
		}
	}
	if resp, _ := get(t, ts.URL+"/v1/thumbs/99-0", nil); resp.StatusCode != 404 {
		t.Errorf("unknown thumb: %d", resp.StatusCode)
	}
}

// TestFeedIsBounded: the daemon keeps the last RecentImages images and
// forgets older events and their thumbnails.
func TestFeedIsBounded(t *testing.T) {
	_, ts := newTestServer(t, &fakeScorer{}, func(c *Config) { c.Scorer, c.RecentImages = &pngScorer{}, 4 })
	var first api.ScoreEvent
	for i := range 5 {
		body := map[string]any{"images": []map[string]any{{"data": solidPNG(t, 8, 8, uint8(i*40))}, {"data": solidPNG(t, 8, 8, 1)}}, "aspects": []string{"quality"}}
		if resp, b := postJSON(t, ts.URL+"/v1/score", body); resp.StatusCode != 200 {
			t.Fatalf("score: %d %s", resp.StatusCode, b)
		}
		raw := recentUntil(t, ts.URL, strconv.Itoa(i+1))
		if i == 0 {
			var r RecentJSON
			json.Unmarshal(raw, &r)
			first = r.Events[0]
		}
	}
	raw := recentUntil(t, ts.URL, "5")
	var r RecentJSON
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Events) != 2 || r.Events[0].RequestID != "4" || r.Events[1].RequestID != "5" {
		t.Errorf("kept %d events, want requests 4 and 5: %+v", len(r.Events), r.Events)
	}
	if resp, _ := get(t, ts.URL+first.Thumbs[0], nil); resp.StatusCode != 404 {
		t.Errorf("thumbnail of a forgotten event: %d, want 404", resp.StatusCode)
	}
}

// TestScoreProvenanceFields: attempt and seed are accepted as JSON and
// multipart fields and reach the score event; bad ones are refused.
func TestScoreProvenanceFields(t *testing.T) {
	_, ts := newTestServer(t, &fakeScorer{}, func(c *Config) { c.Scorer = &pngScorer{} })
	multipartBody := func(fields map[string]string) (string, *bytes.Buffer) {
		var buf bytes.Buffer
		mw := multipart.NewWriter(&buf)
		fw, _ := mw.CreateFormFile("image", "a.png")
		fw.Write(solidPNG(t, 4, 4, 100))
		for k, v := range fields {
			mw.WriteField(k, v)
		}
		mw.Close()
		return mw.FormDataContentType(), &buf
	}
	ct, body := multipartBody(map[string]string{"attempt": "3", "seed": "42", "aspects": "quality"})
	resp, err := http.Post(ts.URL+"/v1/score", ct, body)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("multipart: %d", resp.StatusCode)
	}
	raw := recentUntil(t, ts.URL, "1")
	var r RecentJSON
	json.Unmarshal(raw, &r)
	if len(r.Events) != 1 || r.Events[0].Attempt != 3 || r.Events[0].Seed != "42" {
		t.Errorf("events %+v", r.Events)
	}
	for _, f := range []map[string]string{{"attempt": "x"}, {"seed": "-1"}, {"attempt": "-2"}} {
		ct, body := multipartBody(f)
		resp, err := http.Post(ts.URL+"/v1/score", ct, body)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 {
			t.Errorf("%v: %d %s, want 400", f, resp.StatusCode, b)
		}
	}
	if resp, b := postJSON(t, ts.URL+"/v1/score", map[string]any{"images": []map[string]any{{"data": solidPNG(t, 4, 4, 1)}}, "seed": -5}); resp.StatusCode != 400 {
		t.Errorf("negative JSON seed: %d %s", resp.StatusCode, b)
	}
}

// TestThumbnailsWaitWithBoundedMemory: thumbnails are made after the
// answer; while the images waiting for theirs exceed the bound, a further
// request's event goes out at once without thumbnails.
func TestThumbnailsWaitWithBoundedMemory(t *testing.T) {
	s, ts := newTestServer(t, &fakeScorer{}, func(c *Config) { c.Scorer = &pngScorer{} })
	img := solidPNG(t, 32, 32, 200)
	s.feed.maxPending = int64(len(img)) // room for one image
	s.feed.work.Lock()                  // the thumbnail maker is busy
	body := map[string]any{"images": []map[string]any{{"data": img}}, "aspects": []string{"quality"}}
	for range 2 {
		if resp, b := postJSON(t, ts.URL+"/v1/score", body); resp.StatusCode != 200 {
			t.Fatalf("score: %d %s (an answer must not wait for thumbnails)", resp.StatusCode, b)
		}
	}
	var r RecentJSON
	json.Unmarshal(recentUntil(t, ts.URL, "2"), &r)
	if len(r.Events) != 1 || r.Events[0].Thumbs[0] != "" {
		t.Fatalf("over the bound: events %+v, want request 2 alone, without a thumbnail", r.Events)
	}
	s.feed.work.Unlock()
	json.Unmarshal(recentUntil(t, ts.URL, "1"), &r)
	if len(r.Events) != 2 || r.Events[1].Thumbs[0] != "/v1/thumbs/1-0" {
		t.Fatalf("events %+v, want request 1 with its thumbnail after request 2", r.Events)
	}
	if s.feed.pending.Load() != 0 {
		t.Errorf("%d bytes still pending", s.feed.pending.Load())
	}
}
