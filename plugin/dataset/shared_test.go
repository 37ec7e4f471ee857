package dataset

import (
	"path/filepath"
	"testing"

	"github.com/m3gate/m3gate/internal/testenv"
	"github.com/m3gate/m3gate/schemas/iqa"
	"github.com/m3gate/m3gate/schemas/labels"
)

// sharedData returns the shared data folder (testenv.SharedData) or skips
// the test when it is absent.
func sharedData(t *testing.T) string {
	t.Helper()
	return testenv.SharedData(t, "agiqa-3k/data.csv")
}

func countBy(recs []Record, key func(Record) string) map[string]int {
	m := map[string]int{}
	for _, r := range recs {
		m[key(r)]++
	}
	return m
}

func TestSharedAGIQA3K(t *testing.T) {
	dir := sharedData(t)
	recs, rep, err := Convert(FormatAGIQA3K, []string{filepath.Join(dir, "agiqa-3k", "data.csv")}, Options{ImagesDir: filepath.Join(dir, "agiqa-3k", "images")})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) != 0 {
		t.Fatalf("problems: %v", rep.Problems[:min(5, len(rep.Problems))])
	}
	if rep.Rows != 2682 || len(recs) != 2682 {
		t.Errorf("rows %d records %d, want 2682", rep.Rows, len(recs))
	}
	splits := countBy(recs, func(r Record) string { return r.Split })
	if splits["train"] != 2385 || splits["test"] != 297 {
		t.Errorf("splits %v", splits)
	}
	sources := countBy(recs, func(r Record) string { return r.Source })
	want := map[string]int{"sd1.5": 1085, "midjourney": 531, "glide": 272, "AttnGAN": 271, "xl2.2": 262, "DALLE2": 261}
	for k, v := range want {
		if sources[k] != v {
			t.Errorf("source %s: %d, want %d (all %v)", k, sources[k], v, sources)
		}
	}
	for _, r := range recs {
		if len(r.MOS) != 2 {
			t.Fatalf("%s: mos %v", r.Name, r.MOS)
		}
	}
}

func TestSharedLabels(t *testing.T) {
	dir := filepath.Join(sharedData(t), "labels")
	for _, tc := range []struct {
		format  Format
		files   []string
		records int
		withMOS int
		sources int
	}{
		{FormatAIGCIQA2023, []string{"aigciqa2023.csv"}, 2400, 2400, 6},
		{FormatAGIQA1K, []string{"agiqa-1k.csv"}, 1080, 1080, 2},
		{FormatAIGIQA20K, []string{"aigiqa-20k_info_train.csv", "aigiqa-20k_info_val.csv"}, 16000, 14000, 15},
	} {
		var in []string
		for _, f := range tc.files {
			in = append(in, filepath.Join(dir, f))
		}
		recs, rep, err := Convert(tc.format, in, Options{})
		if err != nil {
			t.Fatalf("%s: %v", tc.format, err)
		}
		if len(rep.Problems) != 0 {
			t.Errorf("%s: problems %v", tc.format, rep.Problems[:min(5, len(rep.Problems))])
		}
		withMOS := 0
		for _, r := range recs {
			if r.MOS != nil {
				withMOS++
			}
		}
		sources := countBy(recs, func(r Record) string { return r.Source })
		if len(recs) != tc.records || withMOS != tc.withMOS || len(sources) != tc.sources {
			t.Errorf("%s: %d records, %d with MOS, sources %v; want %d %d %d", tc.format, len(recs), withMOS, sources, tc.records, tc.withMOS, tc.sources)
		}
		if tc.format == FormatAIGIQA20K {
			splits := countBy(recs, func(r Record) string { return r.Split })
			if splits["train"] != 14000 || splits["val"] != 2000 {
				t.Errorf("20k splits %v", splits)
			}
		}
	}
}

// TestSharedConversations checks the reference conversations against
// data.csv and prompts.json: every round-1/round-2 string is the embedded
// wording, and every quality rating word is iqa.RatingWord(mos_quality).
func TestSharedConversations(t *testing.T) {
	dir := sharedData(t)
	rep := &labels.Report{}
	convs, err := labels.ReadConversations(filepath.Join(dir, "agiqa-3k", "conversations.jsonl"), rep)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) != 0 || len(convs) != 5364 {
		t.Fatalf("%d conversations, problems %v", len(convs), rep.Problems)
	}
	recs, _, err := Convert(FormatAGIQA3K, []string{filepath.Join(dir, "agiqa-3k", "data.csv")}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]Record{}
	for _, r := range recs {
		byName[r.Name] = r
	}
	words := 0
	for _, c := range convs {
		r1, r2 := Prompts(c.Aspect, "agiqa-3k")
		if got := FillRound1(r1, c.Prompt); got != c.Round1 {
			t.Fatalf("line %d round1:\n got %q\nwant %q", c.Line, got, c.Round1)
		}
		if r2 != c.Round2 {
			t.Fatalf("line %d round2:\n got %q\nwant %q", c.Line, r2, c.Round2)
		}
		rec, ok := byName[c.Image]
		if !ok || rec.Prompt != c.Prompt {
			t.Fatalf("line %d: image %s not in data.csv with the same prompt", c.Line, c.Image)
		}
		if c.Aspect == iqa.Quality {
			if iqa.RatingWord(rec.MOS[iqa.Quality]) != c.RatingWord {
				t.Errorf("line %d: rating word %q, RatingWord(%v) = %q", c.Line, c.RatingWord, rec.MOS[iqa.Quality], iqa.RatingWord(rec.MOS[iqa.Quality]))
			}
			words++
		}
	}
	if words != 2682 {
		t.Errorf("%d quality conversations", words)
	}
}
