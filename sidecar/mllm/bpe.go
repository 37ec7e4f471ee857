package mllm

import (
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strings"
)

// byteToUnicode is GPT-2's reversible byte-to-printable-rune map used by
// byte-level BPE: printable Latin-1 bytes map to themselves, the rest to
// runes from U+0100 on.
func byteToUnicode() [256]rune {
	var out [256]rune
	keep := make([]bool, 256)
	for b := '!'; b <= '~'; b++ {
		keep[b] = true
	}
	for b := '¡'; b <= '¬'; b++ {
		keep[b] = true
	}
	for b := '®'; b <= 'ÿ'; b++ {
		keep[b] = true
	}
	n := 0
	for b := 0; b < 256; b++ {
		if keep[b] {
			out[b] = rune(b)
		} else {
			out[b] = rune(256 + n)
			n++
		}
	}
	return out
}

// pretokenRE approximates GPT-2's split pattern; it only shapes which
// merges are learned, any merge list is a valid BPE.
var pretokenRE = regexp.MustCompile(`'s|'t|'re|'ve|'m|'ll|'d| ?\pL+| ?\pN+| ?[^\s\pL\pN]+|\s+`)

// trainBPE learns up to numMerges byte-level BPE merges from corpus. It
// returns the merges in rank order, each as "left right" in the byte-level
// alphabet.
func trainBPE(corpus string, numMerges int) []string {
	b2u := byteToUnicode()
	counts := map[string]int{}
	for _, w := range pretokenRE.FindAllString(corpus, -1) {
		var sb strings.Builder
		for _, c := range []byte(w) {
			sb.WriteRune(b2u[c])
		}
		counts[sb.String()]++
	}
	type word struct {
		syms []string
		n    int
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	words := make([]word, 0, len(keys))
	for _, k := range keys {
		var syms []string
		for _, r := range k {
			syms = append(syms, string(r))
		}
		words = append(words, word{syms, counts[k]})
	}
	var merges []string
	for len(merges) < numMerges {
		pairs := map[[2]string]int{}
		for _, w := range words {
			for i := 0; i+1 < len(w.syms); i++ {
				pairs[[2]string{w.syms[i], w.syms[i+1]}] += w.n
			}
		}
		var best [2]string
		bestN := 0
		for p, n := range pairs {
			if n > bestN || (n == bestN && p[0]+" "+p[1] < best[0]+" "+best[1]) {
				best, bestN = p, n
			}
		}
		if bestN < 2 {
			break
		}
		merges = append(merges, best[0]+" "+best[1])
		joined := best[0] + best[1]
		for wi := range words {
			s := words[wi].syms
			out := s[:0:0]
			for i := 0; i < len(s); i++ {
				if i+1 < len(s) && s[i] == best[0] && s[i+1] == best[1] {
					out = append(out, joined)
					i++
				} else {
					out = append(out, s[i])
				}
			}
			words[wi].syms = out
		}
	}
	return merges
}

// SpecialTokens lists the Idefics3/SmolVLM family's added tokens in the
// order the tiny tokenizer assigns their ids after the BPE vocabulary.
func SpecialTokens() []string {
	toks := []string{"<fake_token_around_image>", "<image>", "<global-img>"}
	for r := 1; r <= 6; r++ {
		for c := 1; c <= 6; c++ {
			toks = append(toks, fmt.Sprintf("<row_%d_col_%d>", r, c))
		}
	}
	return append(toks, "<end_of_utterance>")
}

// leadingSpecial are the special tokens that take the first ids, as in
// SmolLM2 (<|endoftext|> = 0, <|im_start|> = 1, <|im_end|> = 2).
var leadingSpecial = []string{"<|endoftext|>", "<|im_start|>", "<|im_end|>"}

// buildTokenizerJSON trains a byte-level BPE on the built-in corpus and
// returns a Hugging Face tokenizer.json document plus the full vocabulary
// size (including added tokens).
func buildTokenizerJSON(numMerges int) ([]byte, map[string]int, error) {
	b2u := byteToUnicode()
	vocab := map[string]int{}
	next := 0
	add := func(s string) {
		if _, ok := vocab[s]; !ok {
			vocab[s] = next
			next++
		}
	}
	for _, s := range leadingSpecial {
		add(s)
	}
	for b := 0; b < 256; b++ {
		add(string(b2u[b]))
	}
	merges := trainBPE(tinyCorpus, numMerges)
	for _, m := range merges {
		add(strings.Replace(m, " ", "", 1))
	}
	for _, s := range SpecialTokens() {
		add(s)
	}
	type addedTok struct {
		ID         int    `json:"id"`
		Content    string `json:"content"`
		SingleWord bool   `json:"single_word"`
		Lstrip     bool   `json:"lstrip"`
		Rstrip     bool   `json:"rstrip"`
		Normalized bool   `json:"normalized"`
		Special    bool   `json:"special"`
	}
	var added []addedTok
	for _, s := range append(append([]string{}, leadingSpecial...), SpecialTokens()...) {
		added = append(added, addedTok{ID: vocab[s], Content: s, Special: true})
	}
	doc := map[string]any{
		"version":      "1.0",
		"truncation":   nil,
		"padding":      nil,
		"added_tokens": added,
		"normalizer":   nil,
		// the same pipeline as SmolLM2's tokenizer.json: single digits, then
		// GPT-2 byte-level splitting
		"pre_tokenizer": map[string]any{
			"type": "Sequence",
			"pretokenizers": []any{
				map[string]any{"type": "Digits", "individual_digits": true},
				map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
			},
		},
		"post_processor": map[string]any{
			"type":             "ByteLevel",
			"add_prefix_space": true,
			"trim_offsets":     false,
			"use_regex":        true,
		},
		"decoder": map[string]any{
			"type":             "ByteLevel",
			"add_prefix_space": true,
			"trim_offsets":     true,
			"use_regex":        true,
		},
		"model": map[string]any{
			"type":                      "BPE",
			"dropout":                   nil,
			"unk_token":                 nil,
			"continuing_subword_prefix": nil,
			"end_of_word_suffix":        nil,
			"fuse_unk":                  false,
			"byte_fallback":             false,
			"vocab":                     vocab,
			"merges":                    merges,
		},
	}
	raw, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, nil, fmt.Errorf("encode tokenizer.json: %w", err)
	}
	return raw, vocab, nil
}
