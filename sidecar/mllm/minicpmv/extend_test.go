package minicpmv

import (
	"strings"
	"testing"

	"github.com/sugarme/gotch"
)

// TestExtendMatchesPrefill: a prompt prefilled in two parts (the image and
// the first tokens, then the rest through Extend) gives the whole prompt's
// hidden states at the extended positions and its last logits; the first
// part's cache stays usable (extended twice, the same result); text that
// is not text (an image marker, a token outside the vocabulary, nothing)
// is refused with the cause.
func TestExtendMatchesPrefill(t *testing.T) {
	m, err := Load(tinyModel(t, gotch.Float), LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	f, err := m.EncodeImage(testImage(64, 48), 2)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Drop()
	ids, err := m.Tokenizer.EncodeParts(Render([]Message{{Role: "user", Content: "describe the image in detail"}, {Role: "assistant", Content: "a cat on a mat"}, {Role: "user", Content: "rate it"}}, f.Placeholder(m.Config.QueryNum), true))
	if err != nil {
		t.Fatal(err)
	}
	cut := len(ids) - 9
	whole, wc, err := m.Prefill(ids, f)
	if err != nil {
		t.Fatal(err)
	}
	defer whole.Drop()
	defer wc.Free()
	head, hc, err := m.Prefill(ids[:cut], f)
	if err != nil {
		t.Fatal(err)
	}
	defer head.Drop()
	defer hc.Free()
	for round := range 2 {
		tail, tc, err := m.Extend(hc, ids[cut:])
		if err != nil {
			t.Fatal(err)
		}
		want := whole.Hidden.MustNarrow(0, int64(cut), int64(len(ids)-cut), false)
		if d := want.MustSub(tail.Hidden, false).MustAbs(true).MustMax(true).Float64Values()[0]; d > 1e-5 {
			t.Errorf("round %d: extended hidden states differ from the whole prompt's by %g", round, d)
		}
		if d := whole.Last.MustSub(tail.Last, false).MustAbs(true).MustMax(true).Float64Values()[0]; d > 1e-5 {
			t.Errorf("round %d: last logits differ by %g", round, d)
		}
		want.MustDrop()
		tail.Drop()
		tc.Free()
	}
	for _, c := range []struct {
		name string
		ids  []int64
		want string
	}{
		{"image marker", []int64{ids[0], m.ids.imStart}, "image marker at position 1"},
		{"outside the vocabulary", []int64{int64(m.Config.Text.VocabSize)}, "outside the vocabulary"},
		{"nothing", nil, "0 tokens"},
	} {
		if _, _, err := m.Extend(hc, c.ids); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Extend error %v, want one saying %q", c.name, err, c.want)
		}
	}
}
