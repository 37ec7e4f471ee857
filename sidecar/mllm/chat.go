package mllm

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/m3gate/m3gate/sidecar/bpe"
)

// ChatTemplate is SmolVLM-Instruct's chat template (tokenizer_config.json
// / processor chat_template). RenderChat implements exactly this template.
const ChatTemplate = "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"

// Part is one content item of a chat message: text, or an image.
type Part struct {
	Text  string
	Image bool
}

// Message is one chat turn.
type Message struct {
	Role    string // "user", "assistant" or "system"
	Content []Part
}

// UserMessage is a user turn with an optional leading image.
func UserMessage(text string, image bool) Message {
	var parts []Part
	if image {
		parts = append(parts, Part{Image: true})
	}
	return Message{Role: "user", Content: append(parts, Part{Text: text})}
}

// AssistantMessage is an assistant turn of plain text.
func AssistantMessage(text string) Message {
	return Message{Role: "assistant", Content: []Part{{Text: text}}}
}

// RenderChat renders messages with SmolVLM's chat template: one leading
// <|im_start|>, then per message "Role:" (": " when the first part is
// text), its parts (images as <image>), "<end_of_utterance>\n"; and
// "Assistant:" when addGenerationPrompt is set.
func RenderChat(msgs []Message, addGenerationPrompt bool) string {
	var sb strings.Builder
	sb.WriteString("<|im_start|>")
	for _, m := range msgs {
		sb.WriteString(capitalize(m.Role))
		if len(m.Content) > 0 && m.Content[0].Image {
			sb.WriteString(":")
		} else {
			sb.WriteString(": ")
		}
		for _, p := range m.Content {
			if p.Image {
				sb.WriteString("<image>")
			} else {
				sb.WriteString(p.Text)
			}
		}
		sb.WriteString("<end_of_utterance>\n")
	}
	if addGenerationPrompt {
		sb.WriteString("Assistant:")
	}
	return sb.String()
}

// capitalize is Jinja's filter: first character upper case, rest lower.
func capitalize(s string) string {
	if s == "" {
		return s
	}
	r, n := utf8.DecodeRuneInString(s)
	return string(unicode.ToUpper(r)) + strings.ToLower(s[n:])
}

// ImagePrompt is the text an <image> placeholder expands to, as the
// Idefics3 processor writes it: for a single image
// <fake_token_around_image><global-img><image>×seqLen<fake_token_around_image>;
// for a rows×cols split, each tile as <fake_token_around_image><row_r_col_c>
// <image>×seqLen, "\n" after each row, then "\n" and the global image.
func ImagePrompt(seqLen, rows, cols int) string {
	img := strings.Repeat("<image>", seqLen)
	global := "<fake_token_around_image><global-img>" + img + "<fake_token_around_image>"
	if rows*cols == 0 {
		return global
	}
	var sb strings.Builder
	for r := 0; r < rows; r++ {
		for c := 0; c < cols; c++ {
			fmt.Fprintf(&sb, "<fake_token_around_image><row_%d_col_%d>%s", r+1, c+1, img)
		}
		sb.WriteString("\n")
	}
	sb.WriteString("\n")
	sb.WriteString(global)
	return sb.String()
}

// ExpandImages replaces the k-th <image> placeholder of text with the
// expansion for images[k]; the counts must match.
func (m *Model) ExpandImages(text string, images []*ImageFeatures) (string, error) {
	parts := strings.Split(text, "<image>")
	if len(parts)-1 != len(images) {
		return "", fmt.Errorf("expand images: %d <image> placeholders for %d images", len(parts)-1, len(images))
	}
	var sb strings.Builder
	sb.WriteString(parts[0])
	for i, f := range images {
		sb.WriteString(ImagePrompt(m.Config.ImageSeqLen(), f.Rows, f.Cols))
		sb.WriteString(parts[i+1])
	}
	return sb.String(), nil
}

// EncodeChat renders msgs with the chat template, expands each image part
// for images (in order) and tokenizes the result. Text parts are always
// text: special tokens written in a prompt or a description (<image>,
// <end_of_utterance>, <|im_end|>) are tokenized as characters; only the
// template's own markers and image expansions are control tokens.
func (m *Model) EncodeChat(msgs []Message, addGenerationPrompt bool, images []*ImageFeatures) (Sequence, error) {
	if m.Tokenizer == nil {
		return Sequence{}, fmt.Errorf("encode chat: the model has no tokenizer")
	}
	parts, err := m.renderChat(msgs, addGenerationPrompt, images)
	if err != nil {
		return Sequence{}, err
	}
	ids, err := m.Tokenizer.EncodeParts(parts)
	if err != nil {
		return Sequence{}, fmt.Errorf("encode chat: %w", err)
	}
	return Sequence{Tokens: ids, Images: images}, nil
}

// renderChat is RenderChat with each image part expanded for images[k], as
// tokenizer parts: the text parts of the messages are literal.
func (m *Model) renderChat(msgs []Message, addGenerationPrompt bool, images []*ImageFeatures) ([]bpe.Part, error) {
	var parts []bpe.Part
	tmpl := func(s string) { parts = append(parts, bpe.Part{Text: s}) }
	k := 0
	tmpl("<|im_start|>")
	for _, msg := range msgs {
		if len(msg.Content) > 0 && msg.Content[0].Image {
			tmpl(capitalize(msg.Role) + ":")
		} else {
			tmpl(capitalize(msg.Role) + ": ")
		}
		for _, p := range msg.Content {
			switch {
			case p.Image:
				if k >= len(images) {
					return nil, fmt.Errorf("expand images: more image parts than the %d images given", len(images))
				}
				tmpl(ImagePrompt(m.Config.ImageSeqLen(), images[k].Rows, images[k].Cols))
				k++
			case p.Text != "":
				parts = append(parts, bpe.Part{Text: p.Text, Literal: true})
			}
		}
		tmpl("<end_of_utterance>\n")
	}
	if addGenerationPrompt {
		tmpl("Assistant:")
	}
	if k != len(images) {
		return nil, fmt.Errorf("expand images: %d image parts for %d images", k, len(images))
	}
	return parts, nil
}
