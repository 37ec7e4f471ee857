package train

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/m3gate/m3gate/schemas/labels"
)

func TestReadConversations(t *testing.T) {
	recs, err := ReadConversations(filepath.Join("testdata", "conversations.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(recs), 2; got != want {
		t.Fatalf("records: got %d, want %d", got, want)
	}
	if recs[0].MOS == nil || *recs[0].MOS != 3.4 || recs[1].MOS != nil {
		t.Errorf("mos: got %v and %v, want 3.4 and none", recs[0].MOS, recs[1].MOS)
	}
	if got := Select(recs, "correspondence", "test", 0); len(got) != 1 || got[0].Image != "b.jpg" || got[0].Line != 2 {
		t.Errorf("select: got %+v", got)
	}
}

func TestReadConversationsErrors(t *testing.T) {
	good := `{"image":"a.jpg","aspect":"quality","round1":"q1","teacher_description":"d","round2":"q2","rating_word":"good"}`
	for _, tc := range []struct {
		name, body, want string
	}{
		{"bad json", good + "\n{not json\n", "x.jsonl:2"},
		{"empty description", strings.Replace(good, `"d"`, `""`, 1), "empty teacher_description"},
		{"unknown word", strings.Replace(good, `"good"`, `"great"`, 1), `rating word "great"`},
		{"duplicate", good + "\n" + good, "x.jsonl:2: duplicate: image \"a.jpg\" aspect quality already on line 1"},
		{"unknown aspect", strings.Replace(good, `"quality"`, `"beauty"`, 1), `x.jsonl:1: parse: unknown aspect "beauty" (known:`},
		{"every bad line", "{\n" + good + "\n[]\n", "x.jsonl:3: parse: json"},
		{"mos range", strings.Replace(good, `"rating_word"`, `"mos":7,"rating_word"`, 1), "mos 7 outside"},
		{"empty file", "\n", "no records"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "x.jsonl")
			if err := os.WriteFile(p, []byte(tc.body), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := ReadConversations(p)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestReadMOS(t *testing.T) {
	dir := t.TempDir()
	csv := filepath.Join(dir, "data.csv")
	os.WriteFile(csv, []byte("name,prompt,mos_quality,std_quality,mos_align,std_align\na.jpg,x,3.5,0.1,1.25,0.2\nb.jpg,\"y, z\",0.5,0.1,4.5,0.2\n"), 0o644)
	man := filepath.Join(dir, "m.jsonl")
	os.WriteFile(man, []byte(`{"image":"imgs/a.jpg","mos":{"quality":2}}`+"\n"), 0o644)
	tcsv, err := ReadMOS(csv)
	if err != nil {
		t.Fatal(err)
	}
	if got := tcsv["b.jpg"]["correspondence"]; got != 4.5 {
		t.Errorf("csv b.jpg correspondence: got %v, want 4.5", got)
	}
	tman, err := ReadMOS(man)
	if err != nil {
		t.Fatal(err)
	}
	twoRecs := func() []Record {
		return []Record{
			{Conversation: labels.Conversation{Image: "a.jpg", Aspect: "quality", Line: 1}},
			{Conversation: labels.Conversation{Image: "b.jpg", Aspect: "quality", Line: 2}},
		}
	}
	recs := twoRecs()
	if err := JoinMOS(recs, tcsv); err != nil || recs[1].MOS == nil || *recs[1].MOS != 0.5 {
		t.Errorf("join csv: err %v, b.jpg %v", err, recs[1].MOS)
	}
	recs = twoRecs()
	if err := JoinMOS(recs, tman); err == nil || !strings.Contains(err.Error(), "line 2 (b.jpg") {
		t.Errorf("join manifest: got %v, want an error naming line 2", err)
	}
	bad := filepath.Join(dir, "bad.csv")
	os.WriteFile(bad, []byte("name,mos_quality\na.jpg,9\n"), 0o644)
	if _, err := ReadMOS(bad); err == nil || !strings.Contains(err.Error(), "bad.csv:2") {
		t.Errorf("bad csv: got %v, want an error naming bad.csv:2", err)
	}
}

func TestCosineLR(t *testing.T) {
	const base = 1.0
	for _, tc := range []struct {
		step, warmup, total int
		want                float64
	}{
		{0, 4, 20, 0.25},
		{3, 4, 20, 1},
		{4, 4, 20, 1},
		{12, 4, 20, 0.5},
		{20, 4, 20, 0},
		{19, 4, 20, 0.5 * (1 + math.Cos(math.Pi*15/16))},
		{0, 0, 10, 1},
	} {
		if got := cosineLR(base, tc.step, tc.warmup, tc.total); got-tc.want > 1e-12 || tc.want-got > 1e-12 {
			t.Errorf("cosineLR(step %d, warmup %d, total %d) = %v, want %v", tc.step, tc.warmup, tc.total, got, tc.want)
		}
	}
}

// TestOptionsUnknownAspect: both trainers refuse an --aspect that is not
// one of iqa.Aspects before loading anything, with the one aspect error.
func TestOptionsUnknownAspect(t *testing.T) {
	want := `--aspect: unknown aspect "beauty" (known: quality, correspondence, authenticity)`
	f := DefaultFinetuneOptions()
	f.Model, f.Data, f.Out = "m", "d", "o"
	p := DefaultPredictorOptions()
	p.Model, p.Data, p.Out = "m", "d", "o"
	for _, aspect := range []string{"", "authenticity"} {
		f.Aspect, p.Aspect = aspect, aspect
		if err := f.validate(); err != nil {
			t.Errorf("finetune --aspect %q: %v", aspect, err)
		}
		if err := p.validate(); err != nil {
			t.Errorf("train-predictor --aspect %q: %v", aspect, err)
		}
	}
	f.Aspect, p.Aspect = "beauty", "beauty"
	for name, err := range map[string]error{"finetune": f.validate(), "train-predictor": p.validate()} {
		if err == nil || err.Error() != name+": "+want {
			t.Errorf("%s: got %v, want %q", name, err, name+": "+want)
		}
	}
}
