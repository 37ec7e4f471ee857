package bpe

import (
	"encoding/json"
	"fmt"
	"strings"
	"unicode"

	"github.com/dlclark/regexp2/v2"
)

// pretokenizer splits one piece of text into smaller pieces.
type pretokenizer interface {
	split(s string) ([]string, error)
}

// gpt2Pattern is the split pattern of the ByteLevel pre-tokenizer with
// use_regex (GPT-2's), as Hugging Face tokenizers writes it.
const gpt2Pattern = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`

// parsePretokenizer reads tokenizer.json's pre_tokenizer into the steps it
// applies in order.
func parsePretokenizer(raw json.RawMessage) ([]pretokenizer, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var p struct {
		Type           string            `json:"type"`
		Pretokenizers  []json.RawMessage `json:"pretokenizers"`
		Pattern        map[string]string `json:"pattern"`
		Behavior       string            `json:"behavior"`
		Invert         bool              `json:"invert"`
		AddPrefixSpace bool              `json:"add_prefix_space"`
		UseRegex       *bool             `json:"use_regex"`
		Individual     bool              `json:"individual_digits"`
	}
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, err
	}
	switch p.Type {
	case "Sequence":
		var out []pretokenizer
		for _, s := range p.Pretokenizers {
			steps, err := parsePretokenizer(s)
			if err != nil {
				return nil, err
			}
			out = append(out, steps...)
		}
		return out, nil
	case "Split":
		if p.Invert {
			return nil, fmt.Errorf("Split invert: %w", ErrUnsupported)
		}
		var re *regexp2.Regexp
		var err error
		switch {
		case p.Pattern["Regex"] != "":
			re, err = compile(p.Pattern["Regex"])
		case p.Pattern["String"] != "":
			re, err = compile(regexp2.Escape(p.Pattern["String"]))
		default:
			return nil, fmt.Errorf("Split without a pattern: %w", ErrUnsupported)
		}
		if err != nil {
			return nil, err
		}
		switch p.Behavior {
		case "Isolated", "Removed":
		default:
			return nil, fmt.Errorf("Split behavior %q: %w", p.Behavior, ErrUnsupported)
		}
		return []pretokenizer{splitter{re: re, remove: p.Behavior == "Removed"}}, nil
	case "ByteLevel":
		bl := byteLevelSplit{prefixSpace: p.AddPrefixSpace}
		if p.UseRegex == nil || *p.UseRegex {
			re, err := compile(gpt2Pattern)
			if err != nil {
				return nil, err
			}
			bl.re = re
		}
		return []pretokenizer{bl}, nil
	case "Digits":
		return []pretokenizer{digits{individual: p.Individual}}, nil
	}
	return nil, fmt.Errorf("type %q: %w", p.Type, ErrUnsupported)
}

// splitter is the Split pre-tokenizer with behaviour Isolated (every match
// and every gap between matches is a piece) or Removed (gaps only).
type splitter struct {
	re     *regexp2.Regexp
	remove bool
}

func (sp splitter) split(s string) ([]string, error) {
	return splitMatches(sp.re, s, sp.remove)
}

// splitMatches cuts s at every match of re.
func splitMatches(re *regexp2.Regexp, s string, removeMatches bool) ([]string, error) {
	locs, err := re.FindAllStringIndex(s, -1)
	if err != nil {
		return nil, fmt.Errorf("pre-tokenize: %w", err)
	}
	out := make([]string, 0, 2*len(locs)+1)
	prev := 0
	for _, l := range locs {
		if l[0] > prev {
			out = append(out, s[prev:l[0]])
		}
		if l[1] > l[0] && !removeMatches {
			out = append(out, s[l[0]:l[1]])
		}
		prev = l[1]
	}
	if prev < len(s) {
		out = append(out, s[prev:])
	}
	return out, nil
}

// byteLevelSplit is the splitting half of the ByteLevel pre-tokenizer: an
// optional prefix space, then GPT-2's pattern when use_regex is on. The
// byte-to-rune mapping happens once for every final piece (byteLevel).
type byteLevelSplit struct {
	prefixSpace bool
	re          *regexp2.Regexp
}

func (b byteLevelSplit) split(s string) ([]string, error) {
	if b.prefixSpace && !strings.HasPrefix(s, " ") {
		s = " " + s
	}
	if b.re == nil {
		return []string{s}, nil
	}
	return splitMatches(b.re, s, false)
}

// digits is the Digits pre-tokenizer: runs of decimal digits (or each digit
// alone) become their own pieces.
type digits struct{ individual bool }

func (d digits) split(s string) ([]string, error) {
	var out []string
	start := 0
	inDigits := false
	for i, r := range s {
		isD := unicode.IsNumber(r) // Rust char::is_numeric: Nd, Nl, No
		switch {
		case isD && d.individual:
			if i > start {
				out = append(out, s[start:i])
			}
			n := len(string(r))
			out = append(out, s[i:i+n])
			start = i + n
			inDigits = false
			continue
		case i > start && isD != inDigits:
			out = append(out, s[start:i])
			start = i
		}
		inDigits = isD
	}
	if start < len(s) {
		out = append(out, s[start:])
	}
	return out, nil
}

// b2u is GPT-2's reversible byte-to-printable-rune map; u2b its inverse.
var b2u, u2b = byteMaps()

func byteMaps() ([256]rune, map[rune]byte) {
	var out [256]rune
	inv := make(map[rune]byte, 256)
	n := 0
	for b := 0; b < 256; b++ {
		keep := (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)
		if keep {
			out[b] = rune(b)
		} else {
			out[b] = rune(256 + n)
			n++
		}
		inv[out[b]] = byte(b)
	}
	return out, inv
}

// ByteToRune maps a byte to its rune in the byte-level alphabet.
func ByteToRune(b byte) rune { return b2u[b] }

// byteLevel maps every byte of s to its rune in the byte-level alphabet.
func byteLevel(s string) string {
	var sb strings.Builder
	sb.Grow(2 * len(s))
	for i := 0; i < len(s); i++ {
		sb.WriteRune(b2u[s[i]])
	}
	return sb.String()
}

// appendUnByteLevel appends the bytes a byte-level token stands for; runes
// outside the alphabet are kept as UTF-8.
func appendUnByteLevel(buf []byte, tok string) []byte {
	for _, r := range tok {
		if b, ok := u2b[r]; ok {
			buf = append(buf, b)
			continue
		}
		buf = append(buf, string(r)...)
	}
	return buf
}
