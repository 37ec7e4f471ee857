package train

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/m3gate/m3gate/schemas/iqa"
	"github.com/m3gate/m3gate/sidecar/m3"
	"github.com/m3gate/m3gate/sidecar/mllm"
)

// ignoreLabel marks a token that the loss skips (as in Hugging Face).
const ignoreLabel = -100

// example is one tokenised training conversation.
type example struct {
	rec    Record
	tokens []int64
	// labels[t] is tokens[t] on assistant tokens (description,
	// <end_of_utterance>, rating word, <end_of_utterance>), else ignoreLabel.
	labels []int64
	// answerPos is the position whose logits predict the rating word's first
	// token; rating is the record's rating index (0 bad … 4 excellent).
	answerPos int
	rating    int
}

// placeholderImages stands in for one single-tile image while tokenising:
// the expansion of <image> depends only on the split (none).
var placeholderImages = []*mllm.ImageFeatures{{}}

// encodeText renders msgs, expands the image and tokenises; trimNL drops the
// trailing "\n" after the last <end_of_utterance>.
func encodeText(m *mllm.Model, msgs []mllm.Message, addGen, trimNL bool) ([]int64, error) {
	text := mllm.RenderChat(msgs, addGen)
	if trimNL {
		text = strings.TrimSuffix(text, "\n")
	}
	text, err := m.ExpandImages(text, placeholderImages)
	if err != nil {
		return nil, err
	}
	return m.Tokenizer.Encode(text)
}

func commonPrefix(a, b []int64) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

// buildExample tokenises the full two-round conversation of rec (with the
// given description) and marks the assistant tokens of both turns: for the
// assistant message i, the tokens after the prefix render(msgs[:i],
// Assistant:) up to and including its <end_of_utterance>.
func buildExample(m *mllm.Model, rec Record, description string, ratingFirst [5]int64) (example, error) {
	if m.Tokenizer == nil {
		return example{}, fmt.Errorf("build example: the model has no tokenizer")
	}
	msgs := m3.FullConversation(rec.Prompts(), rec.Prompt, description, rec.RatingWord)
	full, err := encodeText(m, msgs, false, false)
	if err != nil {
		return example{}, fmt.Errorf("build example %s line %d: %w", rec.Image, rec.Line, err)
	}
	ex := example{rec: rec, tokens: full, labels: make([]int64, len(full)), rating: iqa.RatingIndex(rec.RatingWord)}
	for i := range ex.labels {
		ex.labels[i] = ignoreLabel
	}
	var starts []int
	for i, msg := range msgs {
		if msg.Role != "assistant" {
			continue
		}
		pre, err := encodeText(m, msgs[:i], true, false)
		if err != nil {
			return example{}, fmt.Errorf("build example %s line %d: %w", rec.Image, rec.Line, err)
		}
		upto, err := encodeText(m, msgs[:i+1], false, true)
		if err != nil {
			return example{}, fmt.Errorf("build example %s line %d: %w", rec.Image, rec.Line, err)
		}
		start := commonPrefix(pre, full)
		end := len(upto)
		if commonPrefix(upto, full) != end || start >= end {
			return example{}, fmt.Errorf("build example %s line %d: assistant turn %d does not tokenise as a prefix of the conversation", rec.Image, rec.Line, i)
		}
		for t := start; t < end; t++ {
			ex.labels[t] = full[t]
		}
		starts = append(starts, start)
	}
	if len(starts) != 2 {
		return example{}, fmt.Errorf("build example %s line %d: %d assistant turns, want 2", rec.Image, rec.Line, len(starts))
	}
	ex.answerPos = starts[1] - 1
	if got := full[starts[1]]; got != ratingFirst[ex.rating] {
		return example{}, fmt.Errorf("build example %s line %d: rating word %q starts with token %d in context but %d alone", rec.Image, rec.Line, rec.RatingWord, got, ratingFirst[ex.rating])
	}
	return ex, nil
}

// ratingFirstTokens returns the first token of " bad", " poor", … (the
// words as the assistant writes them after "Assistant:"); they must differ.
func ratingFirstTokens(m *mllm.Model) ([5]int64, error) {
	var out [5]int64
	seen := map[int64]string{}
	for i, w := range iqa.RatingWords {
		ids, err := m.Tokenizer.Encode(" " + w)
		if err != nil || len(ids) == 0 {
			return out, fmt.Errorf("rating word %q does not tokenise: %v", w, err)
		}
		if prev, ok := seen[ids[0]]; ok {
			return out, fmt.Errorf("rating words %q and %q share their first token %d", prev, w, ids[0])
		}
		seen[ids[0]] = w
		out[i] = ids[0]
	}
	return out, nil
}

// imagePath resolves a record's image against the images folder.
func imagePath(dir, image string) string {
	if filepath.IsAbs(image) {
		return image
	}
	return filepath.Join(dir, image)
}

// featureCache encodes each image once: the vision tower and connector carry
// no adapter, so their output does not change during training.
type featureCache struct {
	m      *mllm.Model
	dir    string
	feats  map[string]*mllm.ImageFeatures
	enable bool
}

func newFeatureCache(m *mllm.Model, dir string, enable bool) *featureCache {
	return &featureCache{m: m, dir: dir, feats: map[string]*mllm.ImageFeatures{}, enable: enable}
}

func (c *featureCache) get(image string) (*mllm.ImageFeatures, error) {
	if f, ok := c.feats[image]; ok {
		return f, nil
	}
	px, err := loadPixels(imagePath(c.dir, image), c.m.Config.Vision.ImageSize)
	if err != nil {
		return nil, err
	}
	fs, err := c.m.EncodeImages([]mllm.Pixels{px}, false)
	if err != nil {
		return nil, fmt.Errorf("encode image %s: %w", image, err)
	}
	if c.enable {
		c.feats[image] = fs[0]
	}
	return fs[0], nil
}
