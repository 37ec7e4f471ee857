package minicpmv

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/m3gate/m3gate/sidecar/bpe"
)

func TestTinyTokenizer(t *testing.T) {
	raw, vocab, err := TinyTokenizerJSON()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "tokenizer.json")
	if err := os.WriteFile(p, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	tok, err := bpe.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if tok.VocabSize() != len(vocab) {
		t.Errorf("VocabSize %d, vocab %d", tok.VocabSize(), len(vocab))
	}
	ph := Placeholder(4, 2, 1)
	parts := Render([]Message{{"user", "Please closely examine this AI-generated image; prompt 'a <image> café'."}}, ph, true)
	ids, err := tok.EncodeParts(parts)
	if err != nil {
		t.Fatal(err)
	}
	imStart, _ := tok.TokenID(ImStart)
	unk, _ := tok.TokenID(Unk)
	if n := count(ids, imStart); n != 3 {
		t.Errorf("%d <image> ids, want 3 (the typed one is text)", n)
	}
	if n := count(ids, unk); n != 12 {
		t.Errorf("%d <unk> ids, want 12", n)
	}
	back, _ := tok.Decode(ids, false)
	if back != PartsText(parts) {
		t.Errorf("round trip:\n got %q\nwant %q", back, PartsText(parts))
	}
	// the corpus compresses: frequent words are single tokens
	w, _ := tok.Encode(" image")
	if len(w) != 1 {
		t.Errorf(`" image" is %d tokens`, len(w))
	}
	if !strings.Contains(string(raw), `"ignore_merges": true`) {
		t.Error("tokenizer.json lacks ignore_merges")
	}
}

func count(ids []int64, id int64) int {
	n := 0
	for i := range ids {
		if ids[i] == id {
			n++
		}
	}
	return n
}
