// Package distill asks an online multimodal LLM (the teacher) for
// per-aspect explanations of an image's human ratings, as M3-AGIQA does with
// Gemini: image, prompt and MOS in, a JSON object with one explanation per
// aspect (about 40–60 words, no numbers) out. It speaks the OpenAI-compatible
// chat completions API and the Gemini generateContent API, with bounded
// concurrency, retries with backoff, a resumable JSONL cache, and writes
// the conversations JSONL format that fine-tuning reads.
package distill

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"text/template"
	"unicode"

	"github.com/m3gate/m3gate/schemas/iqa"
)

//go:embed teacher_prompt.tmpl
var defaultTemplate string

// DefaultTemplate returns the embedded teacher prompt template (Go
// text/template; fields Prompt, Aspects{Name, Meaning, MOS, Word}, Keys).
func DefaultTemplate() string { return defaultTemplate }

// aspectMeaning explains each aspect to the teacher.
var aspectMeaning = map[string]string{
	iqa.Quality:        "overall visual quality: sharpness, detail, artefacts, lighting, colour and composition",
	iqa.Correspondence: "how well the image matches the text prompt",
	iqa.Authenticity:   "how real and natural the image looks",
}

// Teacher renders teacher prompts and checks answers.
type Teacher struct {
	tmpl *template.Template
	// Hash is the SHA-256 of the template text; it is part of the cache key.
	Hash string
}

// NewTeacher parses a teacher prompt template (empty: DefaultTemplate).
func NewTeacher(text string) (*Teacher, error) {
	if text == "" {
		text = defaultTemplate
	}
	t, err := template.New("teacher").Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, fmt.Errorf("parse teacher template: %w", err)
	}
	sum := sha256.Sum256([]byte(text))
	return &Teacher{tmpl: t, Hash: hex.EncodeToString(sum[:])}, nil
}

type aspectView struct {
	Name, Meaning, Word string
	MOS                 float64
}

// Render returns the teacher prompt for one item, asking about the aspects
// (in canonical order) that the item has a MOS for.
func (t *Teacher) Render(it Item) (string, error) {
	aspects := it.aspects()
	if len(aspects) == 0 {
		return "", fmt.Errorf("item %s: no MOS for any aspect", it.Name)
	}
	var views []aspectView
	var keys []string
	for _, a := range aspects {
		views = append(views, aspectView{Name: a, Meaning: aspectMeaning[a], MOS: it.MOS[a], Word: iqa.RatingWord(it.MOS[a])})
		keys = append(keys, `"`+a+`"`)
	}
	var buf bytes.Buffer
	err := t.tmpl.Execute(&buf, struct {
		Prompt  string
		Aspects []aspectView
		Keys    string
	}{it.Prompt, views, strings.Join(keys, ", ")})
	if err != nil {
		return "", fmt.Errorf("render teacher prompt for %s: %w", it.Name, err)
	}
	return buf.String(), nil
}

// ErrMalformed marks an answer that is not the JSON object asked for.
var ErrMalformed = errors.New("malformed answer")

// ParseAnswer extracts the per-aspect explanations from a teacher answer.
// It accepts a JSON object, optionally wrapped in a ``` code fence; every
// aspect must map to a non-empty string without digits. Extra keys are
// ignored.
func ParseAnswer(text string, aspects []string) (map[string]string, error) {
	s := strings.TrimSpace(text)
	if strings.HasPrefix(s, "```") {
		s = strings.TrimPrefix(s, "```")
		s = strings.TrimPrefix(s, "json")
		s = strings.TrimSuffix(strings.TrimSpace(s), "```")
	}
	var raw map[string]any
	if err := json.Unmarshal([]byte(s), &raw); err != nil {
		return nil, fmt.Errorf("%w: not a JSON object: %v", ErrMalformed, err)
	}
	out := map[string]string{}
	for _, a := range aspects {
		v, ok := raw[a]
		if !ok {
			return nil, fmt.Errorf("%w: no %q key (keys %v)", ErrMalformed, a, sortedKeys(raw))
		}
		str, ok := v.(string)
		if !ok || strings.TrimSpace(str) == "" {
			return nil, fmt.Errorf("%w: %q is not a non-empty string", ErrMalformed, a)
		}
		if strings.IndexFunc(str, unicode.IsDigit) >= 0 {
			return nil, fmt.Errorf("%w: %q contains digits", ErrMalformed, a)
		}
		out[a] = strings.TrimSpace(str)
	}
	return out, nil
}

func sortedKeys(m map[string]any) []string {
	var k []string
	for s := range m {
		k = append(k, s)
	}
	sort.Strings(k)
	return k
}

// WordCount counts whitespace-separated words.
func WordCount(s string) int { return len(strings.Fields(s)) }
