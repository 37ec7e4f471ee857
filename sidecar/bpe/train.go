package bpe

import (
	"sort"
	"strings"
)

// Llama3Pattern is the Split pre-tokenizer pattern of Llama-3's
// tokenizer.json.
const Llama3Pattern = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`

// Train learns up to numMerges byte-level BPE merges from corpus, split
// into words by pattern (a tokenizer.json regex). It returns the merges in
// rank order as "left right" in the byte-level alphabet, and the alphabet
// token of every byte. Ties between equally frequent pairs go to the
// lexicographically smallest, so the result is deterministic. It makes the
// tokenizers of the project's tiny test models; any merge list is a valid
// BPE.
func Train(corpus string, numMerges int, pattern string) ([]string, error) {
	re, err := compile(pattern)
	if err != nil {
		return nil, err
	}
	words, err := splitMatches(re, corpus, false)
	if err != nil {
		return nil, err
	}
	counts := map[string]int{}
	for _, w := range words {
		counts[byteLevel(w)]++
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	type word struct {
		syms []string
		n    int
	}
	ws := make([]word, 0, len(keys))
	for _, k := range keys {
		var syms []string
		for _, r := range k {
			syms = append(syms, string(r))
		}
		ws = append(ws, word{syms, counts[k]})
	}
	var merges []string
	for len(merges) < numMerges {
		pairs := map[[2]string]int{}
		for _, w := range ws {
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
		for wi := range ws {
			s := ws[wi].syms
			out := s[:0:0]
			for i := 0; i < len(s); i++ {
				if i+1 < len(s) && s[i] == best[0] && s[i+1] == best[1] {
					out = append(out, joined)
					i++
				} else {
					out = append(out, s[i])
				}
			}
			ws[wi].syms = out
		}
	}
	return merges, nil
}

// Alphabet returns the 256 byte-level tokens in byte order.
func Alphabet() []string {
	out := make([]string, 256)
	for b := range 256 {
		out[b] = string(b2u[b])
	}
	return out
}

// joinMerge returns the token a merge "left right" produces.
func joinMerge(m string) string { return strings.Replace(m, " ", "", 1) }
