package mllm

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/sugarme/tokenizer"
	"github.com/sugarme/tokenizer/pretrained"
)

// Tokenizer wraps a Hugging Face tokenizer.json (byte-level BPE) loaded with
// github.com/sugarme/tokenizer; its panics are turned into errors. Added
// tokens (the chat template's special tokens) are split out here, leftmost
// and longest first, because sugarme v0.3.0 mis-orders matches of several
// different added tokens in one string; only the text between them goes
// through sugarme's BPE.
type Tokenizer struct {
	tk      *tokenizer.Tokenizer
	special map[int64]bool
	added   map[string]int64 // added token content -> id
	addedBy map[int64]string
	maxLen  int
}

// LoadTokenizer reads a tokenizer.json file.
func LoadTokenizer(path string) (t *Tokenizer, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("load tokenizer %s: %v", path, r)
		}
	}()
	tk, err := pretrained.FromFile(path)
	if err != nil {
		return nil, fmt.Errorf("load tokenizer %s: %w", path, err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load tokenizer %s: %w", path, err)
	}
	var doc struct {
		AddedTokens []struct {
			ID      int64  `json:"id"`
			Content string `json:"content"`
			Special bool   `json:"special"`
		} `json:"added_tokens"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("load tokenizer %s: %w", path, err)
	}
	t = &Tokenizer{tk: tk, special: map[int64]bool{}, added: map[string]int64{}, addedBy: map[int64]string{}}
	for _, a := range doc.AddedTokens {
		if a.Content == "" {
			continue
		}
		t.added[a.Content] = a.ID
		t.addedBy[a.ID] = a.Content
		if a.Special {
			t.special[a.ID] = true
		}
		if len(a.Content) > t.maxLen {
			t.maxLen = len(a.Content)
		}
	}
	return t, nil
}

// Encode tokenizes text without adding any special tokens; special tokens
// written in the text (such as <image>) become their single ids.
func (t *Tokenizer) Encode(text string) (ids []int64, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("encode %q: %v", clip(text, 40), r)
		}
	}()
	start := 0
	flush := func(end int) error {
		if end <= start {
			return nil
		}
		enc, err := t.tk.EncodeSingle(text[start:end], false)
		if err != nil {
			return fmt.Errorf("encode %q: %w", clip(text[start:end], 40), err)
		}
		for _, id := range enc.Ids {
			ids = append(ids, int64(id))
		}
		return nil
	}
	for i := 0; i < len(text); {
		if t.maxLen > 0 {
			if id, n := t.matchAdded(text[i:]); n > 0 {
				if err := flush(i); err != nil {
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
	if err := flush(len(text)); err != nil {
		return nil, err
	}
	return ids, nil
}

// matchAdded returns the longest added token that prefixes s.
func (t *Tokenizer) matchAdded(s string) (int64, int) {
	best, bestN := int64(0), 0
	for n := min(len(s), t.maxLen); n > 0; n-- {
		if id, ok := t.added[s[:n]]; ok {
			best, bestN = id, n
			break
		}
	}
	return best, bestN
}

// Decode turns ids back into text; skipSpecial drops the family's special
// tokens.
func (t *Tokenizer) Decode(ids []int64, skipSpecial bool) (s string, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("decode %d ids: %v", len(ids), r)
		}
	}()
	n := t.VocabSize()
	var sb strings.Builder
	run := make([]int, 0, len(ids))
	for _, id := range ids {
		if id < 0 {
			return "", fmt.Errorf("decode: negative id %d", id)
		}
		if int(id) >= n {
			continue // a model row past the tokenizer's vocabulary decodes to nothing, as in transformers
		}
		if content, ok := t.addedBy[id]; ok {
			if len(run) > 0 {
				sb.WriteString(t.tk.Decode(run, false))
				run = run[:0]
			}
			if !(skipSpecial && t.special[id]) {
				sb.WriteString(content)
			}
			continue
		}
		run = append(run, int(id))
	}
	if len(run) > 0 {
		sb.WriteString(t.tk.Decode(run, false))
	}
	return sb.String(), nil
}

// TokenID returns the id of a single token string (such as "<image>").
func (t *Tokenizer) TokenID(tok string) (int64, bool) {
	id, ok := t.tk.TokenToId(tok)
	return int64(id), ok
}

// VocabSize is the number of ids, added tokens included.
func (t *Tokenizer) VocabSize() int { return t.tk.GetVocabSize(true) }

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}
