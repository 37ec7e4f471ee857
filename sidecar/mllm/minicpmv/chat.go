package minicpmv

import (
	"strings"
	"unicode"

	"github.com/m3gate/m3gate/sidecar/bpe"
)

// Special token strings of MiniCPM-Llama3-V-2.5's tokenizer (Llama-3's
// reserved ids renamed: 128002 <unk>, 128010 <image>, 128011 </image>,
// 128020 <slice>, 128021 </slice>).
const (
	BOS         = "<|begin_of_text|>"
	EndOfText   = "<|end_of_text|>"
	EOT         = "<|eot_id|>"
	StartHeader = "<|start_header_id|>"
	EndHeader   = "<|end_header_id|>"
	Unk         = "<unk>"
	ImStart     = "<image>"
	ImEnd       = "</image>"
	SliceStart  = "<slice>"
	SliceEnd    = "</slice>"
)

// Terminators are the tokens that end a generated answer (generation stops
// on either).
var Terminators = []string{EndOfText, EOT}

// Placeholder returns the text that stands for one image in a prompt:
// <image> + queryNum×<unk> + </image> for the whole (resized) image, then,
// when it was cut into cols×rows cells, <slice> + the rows joined by "\n",
// each row cols placeholders side by side, + </slice>. The k-th
// <image>…</image> span receives the k-th resampler output (source first,
// then cells row-major).
func Placeholder(queryNum, cols, rows int) string {
	one := ImStart + strings.Repeat(Unk, queryNum) + ImEnd
	if cols == 0 || rows == 0 {
		return one
	}
	var sb strings.Builder
	sb.WriteString(one)
	sb.WriteString(SliceStart)
	for r := range rows {
		if r > 0 {
			sb.WriteString("\n")
		}
		sb.WriteString(strings.Repeat(one, cols))
	}
	sb.WriteString(SliceEnd)
	return sb.String()
}

// Message is one chat turn.
type Message struct {
	Role    string // "user" or "assistant"
	Content string
}

// Render lays out a conversation in the Llama-3 chat format MiniCPM-V 2.5
// and M3-AGIQA use: BOS, then per message <|start_header_id|>ROLE
// <|end_header_id|>\n\n + the trimmed content + <|eot_id|>. The image
// placeholder goes in front of the first message's content, separated by a
// newline (as chat() and M3-AGIQA's preprocess put it when the content
// holds no "<image>"). With generationPrompt the assistant header that
// opens the answer follows (the tokenizer's template, used to generate);
// M3-AGIQA's scoring template has none.
//
// The parts mark message contents as literal: special-token look-alikes a
// user typed stay text (bpe.Tokenizer.EncodeParts).
func Render(msgs []Message, placeholder string, generationPrompt bool) []bpe.Part {
	var parts []bpe.Part
	tmpl := func(s string) { parts = append(parts, bpe.Part{Text: s}) }
	text := func(s string) { parts = append(parts, bpe.Part{Text: s, Literal: true}) }
	tmpl(BOS)
	for i, m := range msgs {
		tmpl(StartHeader + m.Role + EndHeader + "\n\n")
		content := m.Content
		if i == 0 && placeholder != "" {
			// Jinja's trim applies to placeholder + "\n" + content as a
			// whole: the placeholder starts with <image>, so only the end
			// is trimmed (the newline too when the content is blank).
			content = strings.TrimRightFunc(content, pyIsSpace)
			if content == "" {
				tmpl(placeholder)
			} else {
				tmpl(placeholder + "\n")
				text(content)
			}
		} else {
			text(strings.TrimFunc(content, pyIsSpace))
		}
		tmpl(EOT)
	}
	if generationPrompt {
		tmpl(StartHeader + "assistant" + EndHeader + "\n\n")
	}
	return parts
}

// pyIsSpace is Python's str.isspace for one rune (what Jinja's trim
// strips): Unicode White_Space plus the separators U+001C–U+001F.
func pyIsSpace(r rune) bool {
	return unicode.IsSpace(r) || (r >= 0x1c && r <= 0x1f)
}

// PartsText concatenates parts (for logs and tests).
func PartsText(parts []bpe.Part) string {
	var sb strings.Builder
	for _, p := range parts {
		sb.WriteString(p.Text)
	}
	return sb.String()
}
