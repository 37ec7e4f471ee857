package dataset

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/m3gate/m3gate/schemas/iqa"
	"github.com/m3gate/m3gate/schemas/labels"
)

func problemKeys(rep *labels.Report) []string {
	var out []string
	for _, p := range rep.Problems {
		out = append(out, fmt.Sprintf("%s:%d:%s", filepath.Base(p.File), p.Line, p.Kind))
	}
	return out
}

func TestConvertBrokenAGIQA3K(t *testing.T) {
	base := t.TempDir()
	recs, rep, err := Convert(FormatAGIQA3K, []string{"testdata/agiqa3k_broken.csv"}, Options{ImagesDir: "testdata/images", BaseDir: base})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"agiqa3k_broken.csv:3:parse",
		"agiqa3k_broken.csv:4:range",
		"agiqa3k_broken.csv:5:missing-field",
		"agiqa3k_broken.csv:6:duplicate",
		"agiqa3k_broken.csv:7:parse",
		"agiqa3k_broken.csv:8:parse",
		"agiqa3k_broken.csv:9:range",
		"agiqa3k_broken.csv:11:missing-image",
	}
	if got := problemKeys(rep); !reflect.DeepEqual(got, want) {
		t.Errorf("problems:\n got %v\nwant %v", got, want)
	}
	if rep.Rows != 10 || rep.Records != 2 || len(recs) != 2 {
		t.Fatalf("rows %d records %d len %d, want 10 2 2", rep.Rows, rep.Records, len(recs))
	}
	if rep.OnlyKinds(labels.KindMissingImage) {
		t.Error("OnlyKinds(missing-image) = true with parse problems present")
	}
	r := recs[1]
	if r.Name != "gen_normal_008.jpg" || r.Prompt != "a house, red" || r.Split != "test" || r.Source != "gen" {
		t.Errorf("record = %+v", r)
	}
	if r.MOS[iqa.Quality] != 3.9 || r.MOS[iqa.Correspondence] != 4.1 || r.STD != nil {
		t.Errorf("mos %v std %v", r.MOS, r.STD)
	}
	if r.Origin != "agiqa3k_broken.csv:12" {
		t.Errorf("origin %q", r.Origin)
	}
	// The image path is relative to the manifest folder and resolves there.
	m := &Manifest{Path: filepath.Join(base, "m.jsonl")}
	if _, err := os.Stat(m.ImagePath(r)); err != nil {
		t.Errorf("image path %q does not resolve: %v", r.Image, err)
	}
	var buf bytes.Buffer
	if err := rep.WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"agiqa3k_broken.csv:4: range: mos_quality 5.5 outside [0, 5]", "agiqa3k_broken.csv:11: missing-image: image gen_normal_007.jpg: no such file", "10 rows, 2 records, 8 problems"} {
		if !strings.Contains(buf.String(), s) {
			t.Errorf("report lacks %q:\n%s", s, buf.String())
		}
	}
}

func TestConvertAIGCIQA2023Scaled(t *testing.T) {
	recs, rep, err := Convert(FormatAIGCIQA2023, []string{"testdata/aigciqa2023_small.csv"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := problemKeys(rep), []string{"aigciqa2023_small.csv:4:range", "aigciqa2023_small.csv:5:parse"}; !reflect.DeepEqual(got, want) {
		t.Errorf("problems %v, want %v", got, want)
	}
	if len(recs) != 2 {
		t.Fatalf("%d records", len(recs))
	}
	got := recs[0]
	want := map[string]float64{iqa.Quality: 3, iqa.Authenticity: 2, iqa.Correspondence: 4}
	if !reflect.DeepEqual(got.MOS, want) {
		t.Errorf("mos %v, want %v", got.MOS, want)
	}
	if math.Abs(got.STD[iqa.Correspondence]-0.15) > 1e-12 {
		t.Errorf("std %v, want 0.15", got.STD[iqa.Correspondence])
	}
	if *got.Scale != (Scale{0, 100}) || got.Source != "block-0" || recs[1].Source != "block-1" {
		t.Errorf("scale %v source %q %q", *got.Scale, got.Source, recs[1].Source)
	}
	if v := got.Scale.FromManifest(got.MOS[iqa.Quality]); v != 60 {
		t.Errorf("FromManifest = %v, want 60", v)
	}
	if recs[1].MOS[iqa.Quality] != 5 || recs[1].MOS[iqa.Authenticity] != 0 {
		t.Errorf("edges %v", recs[1].MOS)
	}
}

func TestConvertAIGIQA20KMixed(t *testing.T) {
	recs, rep, err := Convert(FormatAIGIQA20K, []string{"testdata/aigiqa20k_mixed_train.csv"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := problemKeys(rep), []string{"aigiqa20k_mixed_train.csv:3:range", "aigiqa20k_mixed_train.csv:4:parse"}; !reflect.DeepEqual(got, want) {
		t.Errorf("problems %v, want %v", got, want)
	}
	if len(recs) != 2 || recs[0].Prompt != "a cat, on a mat" || recs[0].MOS[iqa.Quality] != 3.5 || recs[0].Source != "DALLE2" || recs[0].Split != "train" {
		t.Fatalf("records %+v", recs)
	}
	if recs[1].MOS != nil || recs[1].Source != "SDXL_Turbo" {
		t.Errorf("val-style row: %+v", recs[1])
	}
}

func TestConvertErrors(t *testing.T) {
	if _, _, err := Convert(FormatAGIQA1K, []string{"testdata/bad_header_agiqa1k.csv"}, Options{}); err == nil || !strings.Contains(err.Error(), "lacks columns [score]") {
		t.Errorf("bad header: err = %v", err)
	}
	if _, _, err := Convert(FormatAGIQA3K, []string{"testdata/nope.csv"}, Options{}); err == nil || !strings.Contains(err.Error(), "nope.csv") {
		t.Errorf("missing file: err = %v", err)
	}
	if _, err := ParseFormat("koniq"); err == nil {
		t.Error("ParseFormat(koniq) succeeded")
	}
}

func TestConversationsBroken(t *testing.T) {
	rep := &labels.Report{}
	convs, err := labels.ReadConversations("testdata/conversations_broken.jsonl", rep)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"conversations_broken.jsonl:3:duplicate",
		"conversations_broken.jsonl:4:parse",
		"conversations_broken.jsonl:4:parse",
		"conversations_broken.jsonl:5:missing-field",
		"conversations_broken.jsonl:6:parse",
	}
	if got := problemKeys(rep); !reflect.DeepEqual(got, want) {
		t.Errorf("problems\n got %v\nwant %v", got, want)
	}
	if len(convs) != 2 {
		t.Fatalf("%d conversations", len(convs))
	}
	recs, _, err := Convert(FormatConversations, []string{"testdata/conversations_broken.jsonl"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || !reflect.DeepEqual(recs[0].RatingWords, map[string]string{iqa.Quality: "good", iqa.Correspondence: "fair"}) {
		t.Errorf("records %+v", recs)
	}
}

func TestManifestRoundTripAndValidation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "m.jsonl")
	recs, _, err := Convert(FormatAIGCIQA2023, []string{"testdata/aigciqa2023_small.csv"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteManifestFile(path, recs); err != nil {
		t.Fatal(err)
	}
	m, rep, err := ReadManifest(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) != 0 || !reflect.DeepEqual(m.Records, recs) {
		t.Fatalf("round trip: problems %v\n got %+v\nwant %+v", rep.Problems, m.Records, recs)
	}
	bad := `{"image":"a.png","mos":{"quality":6}}
{"image":"b.png","mos":{"beauty":1}}
{"prompt":"x"}
{"image":"a.png","extra":1}
not json

{"image":"c.png","rating_words":{"quality":"superb"}}
{"image":"d.png","mos":{"quality":2.5}}
{"image":"d.png"}
`
	if err := os.WriteFile(path, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	m, rep, err = ReadManifest(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"m.jsonl:1:range", "m.jsonl:2:parse", "m.jsonl:3:missing-field", "m.jsonl:4:parse", "m.jsonl:5:parse", "m.jsonl:7:parse", "m.jsonl:9:duplicate"}
	got := problemKeys(rep)
	sort.Strings(got)
	sort.Strings(want)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("problems\n got %v\nwant %v", got, want)
	}
	if len(m.Records) != 1 || m.Records[0].Image != "d.png" || rep.Rows != 8 {
		t.Errorf("records %+v rows %d", m.Records, rep.Rows)
	}
}

func TestPrompts(t *testing.T) {
	for _, a := range iqa.Aspects {
		r1, r2 := Prompts(a, "")
		if !strings.Contains(r1, PromptPlaceholder) || r2 == "" || !strings.Contains(r2, "[bad, poor, fair, good, excellent]") {
			t.Errorf("%s: %q %q", a, r1, r2)
		}
	}
	if r1, r2 := Prompts("beauty", ""); r1 != "" || r2 != "" {
		t.Error("unknown aspect gave prompts")
	}
	if _, err := LookupPrompts(iqa.Quality, "koniq"); err == nil || !strings.Contains(err.Error(), "koniq") {
		t.Errorf("unknown style err = %v", err)
	}
	if got := FillRound1("x '{prompt}' y", "a cat"); got != "x 'a cat' y" {
		t.Errorf("FillRound1 = %q", got)
	}
}

func TestRelativeTo(t *testing.T) {
	for _, tc := range []struct{ base, p, want string }{
		{"/data", "/data/images/a.jpg", "images/a.jpg"},
		{"/data/manifests", "/data/images/a.jpg", "/data/images/a.jpg"},
		{"/data", "/data/../etc/a.jpg", "/etc/a.jpg"},
	} {
		if got := relativeTo(tc.base, tc.p); got != tc.want {
			t.Errorf("relativeTo(%q, %q) = %q, want %q", tc.base, tc.p, got, tc.want)
		}
	}
}

func TestAssignSplits(t *testing.T) {
	var recs []Record
	for i := 0; i < 100; i++ {
		recs = append(recs, Record{Image: fmt.Sprintf("%d.png", i), Prompt: fmt.Sprintf("p%d", i/4)})
	}
	recs[0].Split = "val"
	a := append([]Record(nil), recs...)
	train, test, err := AssignSplits(a, 0.2, 7, true)
	if err != nil || train+test != 99 || a[0].Split != "val" {
		t.Fatalf("train %d test %d err %v split0 %q", train, test, err, a[0].Split)
	}
	// 25 prompts, 5 of them test; a prompt never straddles the splits.
	byPrompt := map[string]string{}
	for _, r := range a[1:] {
		if s, ok := byPrompt[r.Prompt]; ok && s != r.Split {
			t.Fatalf("prompt %s in %s and %s", r.Prompt, s, r.Split)
		}
		byPrompt[r.Prompt] = r.Split
	}
	if test != 20 && test != 19 {
		t.Errorf("test = %d, want 5 prompts' images", test)
	}
	b := append([]Record(nil), recs...)
	AssignSplits(b, 0.2, 7, true)
	c := append([]Record(nil), recs...)
	AssignSplits(c, 0.2, 8, true)
	same, differ := true, false
	for i := range a {
		same = same && a[i].Split == b[i].Split
		differ = differ || a[i].Split != c[i].Split
	}
	if !same || !differ {
		t.Errorf("seeded: same seed equal %v, other seed differs %v", same, differ)
	}
	if _, _, err := AssignSplits(recs, 1.5, 1, false); err == nil {
		t.Error("fraction 1.5 accepted")
	}
}
