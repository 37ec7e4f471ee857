package train

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/m3gate/m3gate/sidecar/mllm"
)

// TestLabelMask checks that exactly the assistant turns (description +
// <end_of_utterance>, rating word + <end_of_utterance>) carry labels.
func TestLabelMask(t *testing.T) {
	m := loadTiny(t)
	recs, err := ReadConversations(filepath.Join("testdata", "conversations.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	first, err := ratingFirstTokens(m)
	if err != nil {
		t.Fatal(err)
	}
	for _, rec := range recs {
		ex, err := buildExample(m, rec, rec.TeacherDescription, first)
		if err != nil {
			t.Fatal(err)
		}
		// Split the tokens into maximal runs of labelled / unlabelled tokens.
		type run struct {
			labelled bool
			ids      []int64
		}
		var runs []run
		for i, id := range ex.tokens {
			lab := ex.labels[i] != ignoreLabel
			if lab && ex.labels[i] != id {
				t.Fatalf("label %d at %d differs from token %d", ex.labels[i], i, id)
			}
			if len(runs) == 0 || runs[len(runs)-1].labelled != lab {
				runs = append(runs, run{labelled: lab})
			}
			runs[len(runs)-1].ids = append(runs[len(runs)-1].ids, id)
		}
		var spans []string
		var rest strings.Builder
		for _, r := range runs {
			s, err := m.Tokenizer.Decode(r.ids, false)
			if err != nil {
				t.Fatal(err)
			}
			if r.labelled {
				spans = append(spans, s)
			} else {
				rest.WriteString(s)
				rest.WriteString("|")
			}
		}
		want := []string{" " + rec.TeacherDescription + "<end_of_utterance>", " " + rec.RatingWord + "<end_of_utterance>"}
		if len(spans) != 2 || spans[0] != want[0] || spans[1] != want[1] {
			t.Fatalf("labelled spans:\n got %q\nwant %q", spans, want)
		}
		// Everything else is the template around them, user turns included.
		img := mllm.ImagePrompt(m.Config.ImageSeqLen(), 0, 0)
		wantRest := "<|im_start|>User:" + img + rec.Round1 + "<end_of_utterance>\nAssistant:|\nUser: " + rec.Round2 + "<end_of_utterance>\nAssistant:|\n|"
		if got := rest.String(); got != wantRest {
			t.Errorf("unlabelled text:\n got %q\nwant %q", got, wantRest)
		}
		// The answer position predicts the rating word's first token.
		if got, want := ex.tokens[ex.answerPos+1], first[ex.rating]; got != want {
			t.Errorf("token after the answer position: got %d, want %d", got, want)
		}
		if got, want := ex.labels[ex.answerPos], int64(ignoreLabel); got != want {
			t.Errorf("answer position itself is labelled")
		}
	}
}
