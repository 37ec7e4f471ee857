package dataset

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/m3gate/m3gate/schemas/iqa"
)

//go:embed prompts.json
var promptsJSON []byte

// PromptPair is the two user turns of one aspect's conversation.
type PromptPair struct {
	// Round1 is the first user turn; PromptPlaceholder marks where the
	// image's text prompt goes.
	Round1 string `json:"round1"`
	// Round2 asks for one rating word.
	Round2 string `json:"round2"`
}

// PromptPlaceholder is the marker in Round1 replaced by the text prompt.
const PromptPlaceholder = "{prompt}"

type promptFile struct {
	Comment      string                           `json:"comment"`
	DefaultStyle string                           `json:"default_style"`
	Styles       map[string]map[string]PromptPair `json:"styles"`
}

var (
	promptsOnce sync.Once
	prompts     promptFile
	promptsErr  error
)

func loadPrompts() (promptFile, error) {
	promptsOnce.Do(func() {
		promptsErr = json.Unmarshal(promptsJSON, &prompts)
		if promptsErr == nil {
			promptsErr = checkPrompts(prompts)
		}
		if promptsErr != nil {
			promptsErr = fmt.Errorf("embedded prompts.json: %w", promptsErr)
		}
	})
	return prompts, promptsErr
}

func checkPrompts(p promptFile) error {
	if _, ok := p.Styles[p.DefaultStyle]; !ok {
		return fmt.Errorf("default style %q not defined", p.DefaultStyle)
	}
	for style, aspects := range p.Styles {
		for aspect, pp := range aspects {
			if !iqa.IsAspect(aspect) {
				return fmt.Errorf("style %s: unknown aspect %q", style, aspect)
			}
			if !strings.Contains(pp.Round1, PromptPlaceholder) || pp.Round2 == "" {
				return fmt.Errorf("style %s aspect %s: round1 needs %s and round2 must be set", style, aspect, PromptPlaceholder)
			}
		}
	}
	return nil
}

// DefaultPromptStyle returns the style used when none is named.
func DefaultPromptStyle() string {
	p, err := loadPrompts()
	if err != nil {
		return ""
	}
	return p.DefaultStyle
}

// PromptStyles lists the defined prompt styles, sorted.
func PromptStyles() []string {
	p, _ := loadPrompts()
	var out []string
	for s := range p.Styles {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

// LookupPrompts returns the conversation prompts of an aspect in a style
// (empty style: the default), or an error naming what is unknown.
func LookupPrompts(aspect, style string) (PromptPair, error) {
	p, err := loadPrompts()
	if err != nil {
		return PromptPair{}, err
	}
	if style == "" {
		style = p.DefaultStyle
	}
	aspects, ok := p.Styles[style]
	if !ok {
		return PromptPair{}, fmt.Errorf("unknown prompt style %q (known: %s)", style, strings.Join(PromptStyles(), ", "))
	}
	pp, ok := aspects[aspect]
	if !ok {
		return PromptPair{}, fmt.Errorf("prompt style %s has no aspect %q", style, aspect)
	}
	return pp, nil
}

// Prompts returns the round-1 template and the round-2 question of an
// aspect in a style (empty style: the default); both are empty when the
// aspect or style is unknown (LookupPrompts says why).
func Prompts(aspect, style string) (round1Template, round2 string) {
	pp, err := LookupPrompts(aspect, style)
	if err != nil {
		return "", ""
	}
	return pp.Round1, pp.Round2
}

// FillRound1 puts the text prompt into a round-1 template.
func FillRound1(template, prompt string) string {
	return strings.ReplaceAll(template, PromptPlaceholder, prompt)
}
