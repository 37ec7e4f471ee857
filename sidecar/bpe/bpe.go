// Package bpe implements the byte-level BPE tokenizers of Hugging Face
// `tokenizer.json` files in pure Go: the added (special) tokens, the
// pre-tokenizers these families use (Sequence, Split with a regex pattern —
// lookarounds included, as Llama-3's `\s+(?!\S)` — ByteLevel and Digits),
// the BPE model with its merge ranks and `ignore_merges`, and the ByteLevel
// decoder.
//
// It reads what SmolLM2 (Idefics3 / SmolVLM) and Llama-3 (MiniCPM-Llama3-V
// 2.5) ship. Patterns are compiled with github.com/dlclark/regexp2, whose
// `\s`, `\p{L}` and `\p{N}` classes are Unicode's, as in the Oniguruma engine
// Hugging Face tokenizers uses.
package bpe

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/dlclark/regexp2/v2"
)

// Tokenizer is a loaded byte-level BPE tokenizer. It is safe for concurrent
// use.
type Tokenizer struct {
	vocab        map[string]int64
	tokens       []string // id -> token (byte-level alphabet or added content)
	ranks        map[string]int
	ignoreMerges bool
	pre          []pretokenizer

	added   map[string]int64
	special map[int64]bool
	maxLen  int // longest added token, in bytes

	mu    sync.Mutex
	cache map[string][]int64 // pre-token -> ids, bounded
}

// AddedToken is one entry of tokenizer.json's added_tokens.
type AddedToken struct {
	ID      int64  `json:"id"`
	Content string `json:"content"`
	Special bool   `json:"special"`
}

// cacheMax bounds the per-word cache.
const cacheMax = 1 << 16

// ErrUnsupported marks a tokenizer.json component this package does not
// implement.
var ErrUnsupported = errors.New("unsupported tokenizer.json component")

// Load reads a tokenizer.json file.
func Load(path string) (*Tokenizer, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load tokenizer %s: %w", path, err)
	}
	t, err := Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("load tokenizer %s: %w", path, err)
	}
	return t, nil
}

// document is the part of tokenizer.json this package reads.
type document struct {
	AddedTokens  []AddedToken    `json:"added_tokens"`
	Normalizer   json.RawMessage `json:"normalizer"`
	PreTokenizer json.RawMessage `json:"pre_tokenizer"`
	Decoder      json.RawMessage `json:"decoder"`
	Model        struct {
		Type         string           `json:"type"`
		Vocab        map[string]int64 `json:"vocab"`
		Merges       json.RawMessage  `json:"merges"`
		IgnoreMerges bool             `json:"ignore_merges"`
		ByteFallback bool             `json:"byte_fallback"`
		UnkToken     *string          `json:"unk_token"`
		Prefix       *string          `json:"continuing_subword_prefix"`
		Suffix       *string          `json:"end_of_word_suffix"`
	} `json:"model"`
}

// Parse builds a Tokenizer from the bytes of a tokenizer.json document.
func Parse(raw []byte) (*Tokenizer, error) {
	var doc document
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("parse tokenizer.json: %w", err)
	}
	if doc.Model.Type != "BPE" {
		return nil, fmt.Errorf("model type %q: %w (want BPE)", doc.Model.Type, ErrUnsupported)
	}
	if doc.Model.ByteFallback {
		return nil, fmt.Errorf("model byte_fallback: %w", ErrUnsupported)
	}
	if (doc.Model.Prefix != nil && *doc.Model.Prefix != "") || (doc.Model.Suffix != nil && *doc.Model.Suffix != "") {
		return nil, fmt.Errorf("model subword prefix/suffix: %w", ErrUnsupported)
	}
	if n := strings.TrimSpace(string(doc.Normalizer)); n != "" && n != "null" {
		return nil, fmt.Errorf("normalizer %s: %w", clip(n, 60), ErrUnsupported)
	}
	if len(doc.Model.Vocab) == 0 {
		return nil, errors.New("parse tokenizer.json: empty model.vocab")
	}
	merges, err := parseMerges(doc.Model.Merges)
	if err != nil {
		return nil, err
	}
	pre, err := parsePretokenizer(doc.PreTokenizer)
	if err != nil {
		return nil, fmt.Errorf("pre_tokenizer: %w", err)
	}
	if err := checkDecoder(doc.Decoder); err != nil {
		return nil, fmt.Errorf("decoder: %w", err)
	}
	t := &Tokenizer{
		vocab:        doc.Model.Vocab,
		ranks:        make(map[string]int, len(merges)),
		ignoreMerges: doc.Model.IgnoreMerges,
		pre:          pre,
		added:        map[string]int64{},
		special:      map[int64]bool{},
		cache:        map[string][]int64{},
	}
	size := int64(0)
	for _, id := range doc.Model.Vocab {
		if id < 0 {
			return nil, fmt.Errorf("parse tokenizer.json: negative vocab id %d", id)
		}
		size = max(size, id+1)
	}
	for _, a := range doc.AddedTokens {
		if a.ID < 0 {
			return nil, fmt.Errorf("parse tokenizer.json: negative added token id %d", a.ID)
		}
		size = max(size, a.ID+1)
	}
	if size > 1<<24 {
		return nil, fmt.Errorf("parse tokenizer.json: vocabulary of %d ids is too large", size)
	}
	t.tokens = make([]string, size)
	for tok, id := range doc.Model.Vocab {
		t.tokens[id] = tok
	}
	for i, m := range merges {
		key := m[0] + " " + m[1]
		if _, dup := t.ranks[key]; !dup {
			t.ranks[key] = i
		}
	}
	for _, a := range doc.AddedTokens {
		if a.Content == "" {
			continue
		}
		t.added[a.Content] = a.ID
		t.tokens[a.ID] = a.Content
		if a.Special {
			t.special[a.ID] = true
		}
		t.maxLen = max(t.maxLen, len(a.Content))
	}
	return t, nil
}

// parseMerges accepts both layouts: "a b" strings and ["a", "b"] pairs.
func parseMerges(raw json.RawMessage) ([][2]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var asStrings []string
	if err := json.Unmarshal(raw, &asStrings); err == nil {
		out := make([][2]string, len(asStrings))
		for i, s := range asStrings {
			l, r, ok := strings.Cut(s, " ")
			if !ok {
				return nil, fmt.Errorf("parse tokenizer.json: merge %d %q has no space", i, clip(s, 40))
			}
			out[i] = [2]string{l, r}
		}
		return out, nil
	}
	var pairs [][]string
	if err := json.Unmarshal(raw, &pairs); err != nil {
		return nil, fmt.Errorf("parse tokenizer.json: model.merges: %w", err)
	}
	out := make([][2]string, len(pairs))
	for i, p := range pairs {
		if len(p) != 2 {
			return nil, fmt.Errorf("parse tokenizer.json: merge %d has %d parts", i, len(p))
		}
		out[i] = [2]string{p[0], p[1]}
	}
	return out, nil
}

// checkDecoder accepts the ByteLevel decoder (alone or in a Sequence) and
// none.
func checkDecoder(raw json.RawMessage) error {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	var d struct {
		Type     string            `json:"type"`
		Decoders []json.RawMessage `json:"decoders"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		return err
	}
	switch d.Type {
	case "ByteLevel":
		return nil
	case "Sequence":
		for _, s := range d.Decoders {
			if err := checkDecoder(s); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("type %q: %w", d.Type, ErrUnsupported)
}

// Encode tokenizes text as plain text: strings that look like added tokens
// ("<image>", "<|eot_id|>") are split like any other text, never turned into
// their control ids. Use it for text a user typed.
func (t *Tokenizer) Encode(text string) ([]int64, error) {
	var ids []int64
	return t.appendText(ids, text)
}

// EncodeWithAdded tokenizes text in which added tokens written verbatim
// (the chat template's "<|im_start|>", "<image>", ...) become their single
// ids, leftmost and longest first, as Hugging Face tokenizers splits them
// before anything else.
func (t *Tokenizer) EncodeWithAdded(text string) ([]int64, error) {
	var ids []int64
	start := 0
	var err error
	for i := 0; i < len(text); {
		if t.maxLen > 0 {
			if id, n := t.matchAdded(text[i:]); n > 0 {
				if ids, err = t.appendText(ids, text[start:i]); err != nil {
					return nil, err
				}
				ids = append(ids, id)
				i += n
				start = i
				continue
			}
		}
		i++
	}
	return t.appendText(ids, text[start:])
}

// matchAdded returns the longest added token that prefixes s.
func (t *Tokenizer) matchAdded(s string) (int64, int) {
	if s == "" {
		return 0, 0
	}
	for n := min(len(s), t.maxLen); n > 0; n-- {
		if id, ok := t.added[s[:n]]; ok {
			return id, n
		}
	}
	return 0, 0
}

// appendText pre-tokenizes text and appends the BPE ids of every piece.
func (t *Tokenizer) appendText(ids []int64, text string) ([]int64, error) {
	if text == "" {
		return ids, nil
	}
	if !utf8.ValidString(text) {
		text = strings.ToValidUTF8(text, "\uFFFD")
	}
	pieces := []string{text}
	for _, p := range t.pre {
		var next []string
		for _, s := range pieces {
			out, err := p.split(s)
			if err != nil {
				return nil, err
			}
			next = append(next, out...)
		}
		pieces = next
	}
	for _, w := range pieces {
		if w == "" {
			continue
		}
		got, err := t.word(byteLevel(w))
		if err != nil {
			return nil, err
		}
		ids = append(ids, got...)
	}
	return ids, nil
}

// word returns the ids of one pre-token already in the byte-level alphabet.
func (t *Tokenizer) word(w string) ([]int64, error) {
	t.mu.Lock()
	if ids, ok := t.cache[w]; ok {
		t.mu.Unlock()
		return ids, nil
	}
	t.mu.Unlock()
	var ids []int64
	if id, ok := t.vocab[w]; ok && t.ignoreMerges {
		ids = []int64{id}
	} else {
		syms := make([]string, 0, utf8.RuneCountInString(w))
		for _, r := range w {
			syms = append(syms, string(r))
		}
		syms = t.merge(syms)
		ids = make([]int64, len(syms))
		for i, s := range syms {
			id, ok := t.vocab[s]
			if !ok {
				return nil, fmt.Errorf("encode: symbol %q is not in the vocabulary and the model has no unk token", s)
			}
			ids[i] = id
		}
	}
	t.mu.Lock()
	if len(t.cache) >= cacheMax {
		clear(t.cache)
	}
	t.cache[w] = ids
	t.mu.Unlock()
	return ids, nil
}

// merge applies the merges in rank order: at each step the adjacent pair of
// lowest rank is joined (leftmost first among equal ranks), until no pair
// has a rank.
func (t *Tokenizer) merge(syms []string) []string {
	for len(syms) > 1 {
		best, at := -1, -1
		for i := 0; i+1 < len(syms); i++ {
			if r, ok := t.ranks[syms[i]+" "+syms[i+1]]; ok && (best < 0 || r < best) {
				best, at = r, i
			}
		}
		if at < 0 {
			break
		}
		left, right := syms[at], syms[at+1]
		joined := left + right
		out := syms[:0:0]
		for i := 0; i < len(syms); i++ {
			if i+1 < len(syms) && syms[i] == left && syms[i+1] == right {
				out = append(out, joined)
				i++
				continue
			}
			out = append(out, syms[i])
		}
		syms = out
	}
	return syms
}

// Decode turns ids back into text; skipSpecial drops special added tokens.
// Ids past the vocabulary decode to nothing, as in transformers (a model's
// embedding table is often padded beyond its tokenizer).
func (t *Tokenizer) Decode(ids []int64, skipSpecial bool) (string, error) {
	var buf []byte
	for _, id := range ids {
		if id < 0 {
			return "", fmt.Errorf("decode: negative id %d", id)
		}
		if id >= int64(len(t.tokens)) {
			continue
		}
		tok := t.tokens[id]
		if _, isAdded := t.added[tok]; isAdded && t.added[tok] == id {
			if skipSpecial && t.special[id] {
				continue
			}
			buf = append(buf, tok...)
			continue
		}
		buf = appendUnByteLevel(buf, tok)
	}
	return string(buf), nil
}

// TokenID returns the id of one token string: an added token's content or a
// vocabulary entry in the byte-level alphabet.
func (t *Tokenizer) TokenID(tok string) (int64, bool) {
	if id, ok := t.added[tok]; ok {
		return id, true
	}
	id, ok := t.vocab[tok]
	return id, ok
}

// Token returns the string of one id ("" past the vocabulary).
func (t *Tokenizer) Token(id int64) string {
	if id < 0 || id >= int64(len(t.tokens)) {
		return ""
	}
	return t.tokens[id]
}

// IsSpecial reports whether id is a special added token.
func (t *Tokenizer) IsSpecial(id int64) bool { return t.special[id] }

// Added returns the added tokens' contents and ids.
func (t *Tokenizer) Added() map[string]int64 {
	out := make(map[string]int64, len(t.added))
	for k, v := range t.added {
		out[k] = v
	}
	return out
}

// VocabSize is the number of ids, added tokens included.
func (t *Tokenizer) VocabSize() int { return len(t.tokens) }

// compile compiles a tokenizer.json regex the way Hugging Face tokenizers
// reads it.
func compile(pattern string) (*regexp2.Regexp, error) {
	re, err := regexp2.Compile(pattern)
	if err != nil {
		return nil, fmt.Errorf("compile %q: %w", clip(pattern, 60), err)
	}
	return re, nil
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}

// Part is one span of text for EncodeParts.
type Part struct {
	// Text is the span's text.
	Text string
	// Literal marks text a user wrote: strings in it that look like added
	// tokens stay text.
	Literal bool
}

// EncodeParts tokenizes the concatenation of parts as EncodeWithAdded
// does, except that added tokens are recognised only where they lie wholly
// inside non-literal parts. The text between added tokens is encoded as one
// run across part boundaries, so the ids equal EncodeWithAdded's whenever
// the literal parts hold no added token.
func (t *Tokenizer) EncodeParts(parts []Part) ([]int64, error) {
	var sb strings.Builder
	var allowed []bool
	for _, p := range parts {
		sb.WriteString(p.Text)
		for range len(p.Text) {
			allowed = append(allowed, !p.Literal)
		}
	}
	text := sb.String()
	var ids []int64
	var err error
	start := 0
	for i := 0; i < len(text); {
		if t.maxLen > 0 && allowed[i] {
			if id, n := t.matchAdded(text[i:]); n > 0 && !slices.Contains(allowed[i:i+n], false) {
				if ids, err = t.appendText(ids, text[start:i]); err != nil {
					return nil, err
				}
				ids = append(ids, id)
				i += n
				start = i
				continue
			}
		}
		i++
	}
	return t.appendText(ids, text[start:])
}
