package review

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"hash/crc32"
	stdhtml "html"
	"image"
	"image/color"
	"image/jpeg"
	"image/png"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/m3gate/m3gate/plugin/comfyui"
	"github.com/m3gate/m3gate/plugin/pipeline"
)

func pngOf(t *testing.T, w, h int) []byte {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for i := range img.Pix {
		img.Pix[i] = byte(i)
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// hugePNGHeader is a PNG whose header claims w×h pixels and that has no
// pixel data: Thumbnail must refuse it from the header alone.
func hugePNGHeader(w, h uint32) []byte {
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr[0:], w)
	binary.BigEndian.PutUint32(ihdr[4:], h)
	ihdr[8], ihdr[9] = 8, 6 // 8-bit RGBA
	binary.Write(&b, binary.BigEndian, uint32(len(ihdr)))
	chunk := append([]byte("IHDR"), ihdr...)
	b.Write(chunk)
	binary.Write(&b, binary.BigEndian, crc32.ChecksumIEEE(chunk))
	return b.Bytes()
}

func TestThumbnail(t *testing.T) {
	for _, tt := range []struct {
		w, h, side, wantW, wantH int
	}{
		{1024, 512, 320, 320, 160},
		{512, 1024, 320, 160, 320},
		{100, 60, 320, 100, 60}, // never scaled up
		{1000, 1, 100, 100, 1},  // a sliver keeps a pixel
	} {
		b, err := Thumbnail(pngOf(t, tt.w, tt.h), tt.side)
		if err != nil {
			t.Fatal(err)
		}
		im, err := jpeg.Decode(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("thumbnail is not a JPEG: %v", err)
		}
		if got := im.Bounds().Size(); got.X != tt.wantW || got.Y != tt.wantH {
			t.Errorf("%dx%d at %d: %v, want %dx%d", tt.w, tt.h, tt.side, got, tt.wantW, tt.wantH)
		}
	}
	if _, err := Thumbnail(hugePNGHeader(100000, 100000), 0); !errors.Is(err, ErrTooLarge) {
		t.Errorf("a 10-gigapixel header: %v, want ErrTooLarge", err)
	}
	if _, err := Thumbnail([]byte("not an image"), 0); err == nil || !strings.Contains(err.Error(), "thumbnail") {
		t.Errorf("junk: %v", err)
	}
	// Transparent pixels become white, not black.
	img := image.NewNRGBA(image.Rect(0, 0, 4, 4))
	var buf bytes.Buffer
	png.Encode(&buf, img)
	b, err := Thumbnail(buf.Bytes(), 0)
	if err != nil {
		t.Fatal(err)
	}
	im, _ := jpeg.Decode(bytes.NewReader(b))
	if r, g, bl, _ := im.At(1, 1).RGBA(); r < 0xf000 || g < 0xf000 || bl < 0xf000 {
		t.Errorf("transparent pixel became %v", color.RGBA64{uint16(r), uint16(g), uint16(bl), 0xffff})
	}
}

// TestWriteReportEscapes: data that looks like markup cannot leave its
// script element, and the file names no external resource.
func TestWriteReportEscapes(t *testing.T) {
	evil := `</script><script>alert(1)</script><!--`
	var buf bytes.Buffer
	err := WriteReport(&buf, View{Title: "t </title><script>x()</script>", Gate: Gate{Thresholds: map[string]float64{"quality": 3}, Mode: "all"},
		Items: []Item{{ID: "1", Prompt: evil, Aspects: map[string]Aspect{"quality": {MOS: 3.25, Description: evil}}}}})
	if err != nil {
		t.Fatal(err)
	}
	html := buf.String()
	if strings.Contains(html, "<script>alert") || strings.Contains(html, "<script>x()") {
		t.Errorf("markup in the data reached the HTML:\n%s", html[:min(len(html), 2000)])
	}
	if n := strings.Count(html, "</script>"); n != 2 {
		t.Errorf("%d </script> tags, want 2 (data and app)", n)
	}
	if regexp.MustCompile(`(src|href)="https?:`).MatchString(html) {
		t.Errorf("the report loads something from the network")
	}
	// The data decodes back to the same view.
	m := regexp.MustCompile(`(?s)<script type="application/json" id="m3gate-data">(.*?)</script>`).FindStringSubmatch(html)
	if m == nil {
		t.Fatal("no data element")
	}
	var v View
	if err := json.Unmarshal([]byte(m[1]), &v); err != nil {
		t.Fatal(err)
	}
	if v.Items[0].Prompt != evil || v.Items[0].Aspects["quality"].MOS != 3.25 {
		t.Errorf("data decodes to %+v", v.Items[0])
	}
	if !strings.Contains(stdhtml.UnescapeString(html), `content="default-src 'none'`) {
		t.Errorf("no CSP in the report")
	}
}

// writeRun lays out an output folder of m3gate run: an accepted PNG with
// its metadata chunk, a rejected one in rejected/, a line whose file is
// gone, and a failed prompt.
func writeRun(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "rejected"), 0o755)
	gate := pipeline.Gate{Thresholds: map[string]float64{"quality": 3.5}, Mode: pipeline.ModeAny}
	md, _ := json.Marshal(pipeline.Metadata{Prompt: "a statue", Gate: gate, Passed: true})
	acc, err := comfyui.AddPNGText(pngOf(t, 400, 200), comfyui.TextChunk{Key: pipeline.MetadataKey, Text: string(md)})
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "acc.png"), acc, 0o644)
	os.WriteFile(filepath.Join(dir, "rejected", "rej.png"), pngOf(t, 50, 100), 0o644)
	results := []pipeline.Result{
		// written by a run in another folder: found by name
		{Time: time.Unix(100, 0).UTC(), Job: 1, Attempt: 1, PromptID: "p1", Seed: 18446744073709551615, Passed: true, Accepted: true, File: "/elsewhere/acc.png",
			Scores: map[string]pipeline.AspectScore{"quality": {MOS: 4.25, Rating: "excellent", Description: "sharp"}}},
		{Job: 2, Attempt: 2, PromptID: "p2", Seed: 5, Prompt: "own prompt", File: "rejected/rej.png",
			Scores: map[string]pipeline.AspectScore{"quality": {MOS: 1.5, Rating: "poor"}}},
		{Job: 3, Attempt: 3, PromptID: "p3", Seed: 6, File: "gone.png", Scores: map[string]pipeline.AspectScore{"quality": {MOS: 2}}},
		{Job: 4, Attempt: 1, PromptID: "p4", Error: "server died"},
	}
	var lines bytes.Buffer
	for _, r := range results {
		b, _ := json.Marshal(r)
		lines.Write(append(b, '\n'))
	}
	lines.WriteString(`{"job": 5, "prompt_id": "p5", "sco`) // cut short by a crash
	os.WriteFile(filepath.Join(dir, pipeline.ResultsFile), lines.Bytes(), 0o644)
	return dir
}

func TestLoadRunFolder(t *testing.T) {
	dir := writeRun(t)
	got, err := Load(dir, LoadOptions{ThumbSide: 64})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Items) != 4 || got.Missing != 1 {
		t.Fatalf("%d items, %d missing; want 4 and 1", len(got.Items), got.Missing)
	}
	if got.Gate == nil || got.Gate.Mode != "any" || got.Gate.Thresholds["quality"] != 3.5 {
		t.Errorf("gate %+v, want the run's (quality 3.5, any)", got.Gate)
	}
	a, r, gone, failed := got.Items[0], got.Items[1], got.Items[2], got.Items[3]
	if a.Prompt != "a statue" || a.Seed != "18446744073709551615" || a.Attempt != 1 || a.Recorded != "passed" || a.Aspects["quality"].MOS != 4.25 || a.Aspects["quality"].Description != "sharp" {
		t.Errorf("accepted item %+v", a)
	}
	if r.Prompt != "own prompt" || r.Attempt != 2 || r.Recorded != "rejected" || r.Name != "rej.png" {
		t.Errorf("rejected item %+v", r)
	}
	for _, tt := range []struct {
		it   Item
		w, h int
	}{{a, 64, 32}, {r, 32, 64}} {
		b, _ := strings.CutPrefix(tt.it.Thumb, "data:image/jpeg;base64,")
		im, err := jpeg.Decode(base64Reader(b))
		if err != nil {
			t.Fatalf("thumb of %s: %v", tt.it.Name, err)
		}
		if sz := im.Bounds().Size(); sz.X != tt.w || sz.Y != tt.h {
			t.Errorf("thumb of %s is %v, want %dx%d", tt.it.Name, sz, tt.w, tt.h)
		}
	}
	if gone.Thumb != "" || failed.Error != "server died" || failed.Recorded != "rejected" {
		t.Errorf("gone %+v failed %+v", gone, failed)
	}
}

func TestLoadScoreJSON(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a.png"), pngOf(t, 10, 10), 0o644)
	lines := `{"image":"a.png","prompt":"p","aspects":{"quality":{"mos":2.5,"rating":"fair","source":"word_probs","description":"d"}}}
{"image":"-","error":"decode image: unknown format"}
`
	path := filepath.Join(dir, "s.jsonl")
	os.WriteFile(path, []byte(lines), 0o644)
	got, err := Load(path, LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Items) != 2 || got.Gate != nil || got.Missing != 0 {
		t.Fatalf("%+v", got)
	}
	if it := got.Items[0]; it.Prompt != "p" || it.Aspects["quality"].MOS != 2.5 || !strings.HasPrefix(it.Thumb, "data:image/jpeg;base64,") || it.Seed != "" {
		t.Errorf("item %+v", it)
	}
	if got.Items[1].Error == "" {
		t.Errorf("the failed image lost its error")
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct{ name, content, want string }{
		{"bad.jsonl", "{\"image\":\"a\"}\nnot json\n{\"image\":\"b\"}\n", "line 2: not a JSON object"},
		{"other.jsonl", "{\"foo\": 1}\n", "line 1: neither an m3gate run result"},
	} {
		p := filepath.Join(dir, tt.name)
		os.WriteFile(p, []byte(tt.content), 0o644)
		if _, err := Load(p, LoadOptions{}); err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: %v, want an error naming the file and %q", tt.name, err, tt.want)
		}
	}
	if _, err := Load(dir, LoadOptions{}); err == nil || !strings.Contains(err.Error(), "has no results.jsonl") {
		t.Errorf("folder without results: %v", err)
	}
	if _, err := Load(filepath.Join(dir, "nope"), LoadOptions{}); err == nil {
		t.Error("missing path: no error")
	}
}

func base64Reader(s string) *bytes.Reader {
	b, _ := base64.StdEncoding.DecodeString(s)
	return bytes.NewReader(b)
}
