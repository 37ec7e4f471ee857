package bpe

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// tinyDoc builds a tokenizer.json with a byte alphabet, the given merges and
// pre-tokenizer.
func tinyDoc(merges []string, pre string, extra string) []byte {
	vocab := map[string]int{}
	for b := 0; b < 256; b++ {
		vocab[string(b2u[b])] = len(vocab)
	}
	for _, m := range merges {
		vocab[strings.Replace(m, " ", "", 1)] = len(vocab)
	}
	var sb strings.Builder
	sb.WriteString(`{"added_tokens":[{"id":` + fmt.Sprint(len(vocab)) + `,"content":"<eot>","special":true},{"id":` + fmt.Sprint(len(vocab)+1) + `,"content":"<eo","special":false}],`)
	sb.WriteString(`"normalizer":null,"pre_tokenizer":` + pre + `,"decoder":{"type":"ByteLevel"},`)
	sb.WriteString(`"model":{"type":"BPE",` + extra + `"vocab":{`)
	first := true
	for k, v := range vocab {
		if !first {
			sb.WriteString(",")
		}
		first = false
		fmt.Fprintf(&sb, "%q:%d", k, v)
	}
	sb.WriteString(`},"merges":[`)
	for i, m := range merges {
		if i > 0 {
			sb.WriteString(",")
		}
		fmt.Fprintf(&sb, "%q", m)
	}
	sb.WriteString("]}}")
	return []byte(sb.String())
}

func TestPretokenizers(t *testing.T) {
	for _, tc := range []struct {
		name, pre, in string
		want          []string
	}{
		{"digits individual", `{"type":"Digits","individual_digits":true}`, "ab123c4", []string{"ab", "1", "2", "3", "c", "4"}},
		{"digits contiguous", `{"type":"Digits","individual_digits":false}`, "ab123c4", []string{"ab", "123", "c", "4"}},
		{"digits other numerals", `{"type":"Digits","individual_digits":true}`, "x½٣", []string{"x", "½", "٣"}},
		{"bytelevel regex", `{"type":"ByteLevel","add_prefix_space":false,"use_regex":true}`, "Hi  there's 42!\n\n x", []string{"Hi", " ", " there", "'s", " 42", "!", "\n\n", " x"}},
		{"bytelevel prefix space", `{"type":"ByteLevel","add_prefix_space":true,"use_regex":true}`, "Hi", []string{" Hi"}},
		{"bytelevel no regex", `{"type":"ByteLevel","add_prefix_space":false,"use_regex":false}`, "a b  c", []string{"a b  c"}},
		{"split isolated lookahead", `{"type":"Split","pattern":{"Regex":"\\s+(?!\\S)|\\s+|\\S+"},"behavior":"Isolated"}`, "a   b", []string{"a", "  ", " ", "b"}},
		{"split removed", `{"type":"Split","pattern":{"String":","},"behavior":"Removed"}`, "a,b,,c", []string{"a", "b", "c"}},
		{"sequence", `{"type":"Sequence","pretokenizers":[{"type":"Digits","individual_digits":true},{"type":"ByteLevel","add_prefix_space":false,"use_regex":true}]}`, "x 12", []string{"x", " ", "1", "2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			steps, err := parsePretokenizer([]byte(tc.pre))
			if err != nil {
				t.Fatal(err)
			}
			pieces := []string{tc.in}
			for _, s := range steps {
				var next []string
				for _, p := range pieces {
					out, err := s.split(p)
					if err != nil {
						t.Fatal(err)
					}
					next = append(next, out...)
				}
				pieces = next
			}
			if !slices.Equal(pieces, tc.want) {
				t.Errorf("got %q, want %q", pieces, tc.want)
			}
		})
	}
}

// TestMergeOrder checks rank order (not left-to-right) and ignore_merges.
func TestMergeOrder(t *testing.T) {
	pre := `{"type":"ByteLevel","add_prefix_space":false,"use_regex":true}`
	// ranks: "b c" first, then "a b" can no longer apply, "a bc" joins.
	tok, err := Parse(tinyDoc([]string{"b c", "a b", "a bc"}, pre, ""))
	if err != nil {
		t.Fatal(err)
	}
	ids, err := tok.Encode("abc")
	if err != nil {
		t.Fatal(err)
	}
	if got := tok.Token(ids[0]); len(ids) != 1 || got != "abc" {
		t.Errorf("abc -> %v (%q), want the single token abc", ids, got)
	}
	ids, _ = tok.Encode("abd")
	var toks []string
	for _, id := range ids {
		toks = append(toks, tok.Token(id))
	}
	if !slices.Equal(toks, []string{"ab", "d"}) {
		t.Errorf("abd -> %q, want [ab d]", toks)
	}
	// with ignore_merges, a word that is itself in the vocabulary is taken
	// whole even when the merges would not reach it.
	tok2, err := Parse(tinyDoc([]string{"x y", "y z", "xy z"}, pre, `"ignore_merges":true,`))
	if err != nil {
		t.Fatal(err)
	}
	tok3, _ := Parse(tinyDoc([]string{"x y", "y z", "xy z"}, pre, ""))
	a, _ := tok2.Encode("xyz")
	b, _ := tok3.Encode("xyz")
	if len(a) != 1 || len(b) != 1 || a[0] != b[0] {
		t.Errorf("xyz: ignore_merges %v, merges %v", a, b)
	}
}

func TestAddedTokensLongestFirst(t *testing.T) {
	tok, err := Parse(tinyDoc([]string{"e o"}, `{"type":"ByteLevel","add_prefix_space":false,"use_regex":true}`, ""))
	if err != nil {
		t.Fatal(err)
	}
	eot, _ := tok.TokenID("<eot>")
	eo, _ := tok.TokenID("<eo")
	got, err := tok.EncodeWithAdded("x<eot><eo<eo")
	if err != nil {
		t.Fatal(err)
	}
	if got[1] != eot || got[2] != eo || got[3] != eo || len(got) != 4 {
		t.Errorf("got %v, want [x %d %d %d]", got, eot, eo, eo)
	}
	plain, _ := tok.Encode("<eot>")
	if slices.Contains(plain, eot) {
		t.Errorf("Encode turned typed <eot> into its control id: %v", plain)
	}
	s, _ := tok.Decode(got, true)
	if s != "x<eo<eo" {
		t.Errorf("decode skipping special = %q", s)
	}
}

func TestParseErrors(t *testing.T) {
	pre := `{"type":"ByteLevel"}`
	for _, tc := range []struct {
		name string
		doc  string
		want string
	}{
		{"not json", `{`, "parse tokenizer.json"},
		{"wordpiece", `{"model":{"type":"WordPiece","vocab":{"a":0}}}`, "WordPiece"},
		{"normalizer", `{"normalizer":{"type":"NFC"},"model":{"type":"BPE","vocab":{"a":0}}}`, "normalizer"},
		{"empty vocab", `{"model":{"type":"BPE","vocab":{}}}`, "empty model.vocab"},
		{"bad merge", `{"pre_tokenizer":` + pre + `,"model":{"type":"BPE","vocab":{"a":0},"merges":["ab"]}}`, "has no space"},
		{"bad regex", `{"pre_tokenizer":{"type":"Split","pattern":{"Regex":"(?<"},"behavior":"Isolated"},"model":{"type":"BPE","vocab":{"a":0}}}`, "compile"},
		{"unknown pre", `{"pre_tokenizer":{"type":"Metaspace"},"model":{"type":"BPE","vocab":{"a":0}}}`, "Metaspace"},
		{"huge id", `{"model":{"type":"BPE","vocab":{"a":99999999999}}}`, "too large"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
	_, err := Parse([]byte(`{"model":{"type":"Unigram","vocab":{"a":0}}}`))
	if !errors.Is(err, ErrUnsupported) {
		t.Errorf("Unigram: %v is not ErrUnsupported", err)
	}
}

func TestMergesAsPairs(t *testing.T) {
	doc := strings.Replace(string(tinyDoc(nil, `{"type":"ByteLevel"}`, "")), `"merges":[]`, `"merges":[["a","b"]]`, 1)
	doc = strings.Replace(doc, `"vocab":{`, `"vocab":{"ab":999,`, 1)
	tok, err := Parse([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	ids, _ := tok.Encode("ab")
	if !slices.Equal(ids, []int64{999}) {
		t.Errorf("ab -> %v, want [999]", ids)
	}
}

func TestEncodeParts(t *testing.T) {
	tok, err := Parse(tinyDoc([]string{"e o"}, `{"type":"ByteLevel","add_prefix_space":false,"use_regex":true}`, ""))
	if err != nil {
		t.Fatal(err)
	}
	eot, _ := tok.TokenID("<eot>")
	whole, _ := tok.EncodeWithAdded("<eot>say hello world<eot>")
	parts, err := tok.EncodeParts([]Part{{Text: "<eot>say "}, {Text: "hello", Literal: true}, {Text: " world<eot>"}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(whole, parts) {
		t.Errorf("parts %v != whole %v", parts, whole)
	}
	inj, _ := tok.EncodeParts([]Part{{Text: "<eot>"}, {Text: "x<eot>y", Literal: true}, {Text: "<eot>"}})
	if n := strings.Count(fmt.Sprint(inj), fmt.Sprint(eot)); inj[0] != eot || inj[len(inj)-1] != eot || n != 2 {
		t.Errorf("typed <eot> became a control id: %v", inj)
	}
	// an added token straddling a literal boundary is not recognised
	str, _ := tok.EncodeParts([]Part{{Text: "<e"}, {Text: "ot>", Literal: true}})
	if slices.Contains(str, eot) {
		t.Errorf("straddling <eot> recognised: %v", str)
	}
}

// TestTrainRoundTrip trains on a small corpus with Llama-3's pattern,
// builds a tokenizer from the merges and checks that training text
// compresses and every string round-trips.
func TestTrainRoundTrip(t *testing.T) {
	corpus := strings.Repeat("the statue of a man is sharp and well lit; the statue's hand is malformed. 12345\n", 20)
	merges, err := Train(corpus, 60, Llama3Pattern)
	if err != nil {
		t.Fatal(err)
	}
	if len(merges) < 20 {
		t.Fatalf("only %d merges", len(merges))
	}
	pre := `{"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":` + fmt.Sprintf("%q", Llama3Pattern) + `},"behavior":"Isolated","invert":false},{"type":"ByteLevel","add_prefix_space":false,"use_regex":false}]}`
	tok, err := Parse(tinyDoc(merges, pre, `"ignore_merges":true,`))
	if err != nil {
		t.Fatal(err)
	}
	ids, _ := tok.Encode("the statue is sharp")
	if len(ids) > 6 {
		t.Errorf("training text not compressed: %d ids", len(ids))
	}
	for _, s := range []string{"the statue", "unseen wörds 雕像", "  x\n\n"} {
		ids, err := tok.Encode(s)
		if err != nil {
			t.Fatal(err)
		}
		if back, _ := tok.Decode(ids, false); back != s {
			t.Errorf("round trip %q -> %q", s, back)
		}
	}
	if got := joinMerge("a b"); got != "ab" {
		t.Errorf("joinMerge = %q", got)
	}
	if a := Alphabet(); len(a) != 256 || a['A'] != "A" || a[' '] != "Ġ" {
		t.Errorf("alphabet: %d entries, A=%q space=%q", len(a), a['A'], a[' '])
	}
}
