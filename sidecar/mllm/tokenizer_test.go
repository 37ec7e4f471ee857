package mllm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sugarme/tokenizer/pretrained"
)

// TestTokenizerMatchesSugarme checks sidecar/bpe against an independent
// implementation (github.com/sugarme/tokenizer, which read SmolLM2-style
// tokenizer.json files before sidecar/bpe replaced it) on the tiny model's
// tokenizer: every line of the training corpus, the chat template's texts,
// whitespace, digits and Unicode give the same ids. Added tokens are split
// out first, as both implementations agree on the text between them only.
func TestTokenizerMatchesSugarme(t *testing.T) {
	raw, _, err := buildTokenizerJSON(400)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "tokenizer.json")
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	ours, err := LoadTokenizer(path)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := pretrained.FromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	texts := strings.Split(tinyCorpus, "\n")
	texts = append(texts,
		"Please closely examine this AI-generated image: 'a cat, HDR lighting'.",
		"ünïcödé — 日本語のプロンプト 🙂🎨 Ελληνικά\ttab  two  spaces\n\nnew lines",
		"statue café 雕像", "2025 12345 1e-6 ½", "   leading", "trailing   ", "a  b   c", "\n\n\n", " good", " excellent",
		"I'm sure it's what they'll've said", "!!! ??? ...", strings.Repeat("ab ", 50))
	n := 0
	for _, s := range texts {
		if s == "" {
			continue
		}
		got, err := ours.EncodeText(s)
		if err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		enc, err := ref.EncodeSingle(s, false)
		if err != nil {
			t.Fatalf("sugarme %q: %v", s, err)
		}
		if len(got) != len(enc.Ids) {
			t.Errorf("%q: ours %v, sugarme %v", s, got, enc.Ids)
			continue
		}
		for i := range got {
			if got[i] != int64(enc.Ids[i]) {
				t.Errorf("%q: ours %v, sugarme %v", s, got, enc.Ids)
				break
			}
		}
		n++
	}
	if n < 20 {
		t.Fatalf("compared only %d texts", n)
	}
}
