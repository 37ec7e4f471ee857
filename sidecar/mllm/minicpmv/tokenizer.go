package minicpmv

import (
	"encoding/json"
	"fmt"

	"github.com/m3gate/m3gate/sidecar/bpe"
)

// tinyCorpus is the text the tiny model's tokenizer learns its merges
// from: M3-AGIQA's prompt wording and description-like sentences.
const tinyCorpus = `Please closely examine this AI-generated image and provide a detailed analysis of its overall quality. The original prompt for the image was: 'statue of a man'. Consider aspects like visual clarity, composition, color balance, and technical execution.
Please closely examine this AI-generated image and provide a detailed analysis of its alignment with the original prompt. How well does the image match what was requested in the prompt?
Please closely examine this AI-generated image and provide a detailed analysis of its authenticity. How closely does the image resemble real artworks or scenes? Highlight any parts of the image that appear non-real or artificial.
Based on your analysis, could you please rate the image's overall quality? Choose one word from the following list: [bad, poor, fair, good, excellent], where the words range from low to high quality.
Based on your analysis, could you please rate the image's alignment with its original prompt? Choose one word from the following list: [bad, poor, fair, good, excellent], where the words indicate the degree of alignment from low to high.
The image shows a marble statue of a man with sharp details and balanced lighting, although the hands are slightly distorted and the background is blurry.
The composition is clear, the colors are natural, and the statue matches the prompt well. The rating is good. The rating is excellent. The rating is fair. The rating is poor. The rating is bad.
`

// tinyMerges is the number of merges of the tiny tokenizer.
const tinyMerges = 300

// SpecialTokens lists the family's added tokens in the order the tiny
// tokenizer gives them ids after its BPE vocabulary (the real tokenizer
// has them at 128000 and up).
func SpecialTokens() []string {
	return []string{BOS, EndOfText, Unk, StartHeader, EndHeader, EOT, ImStart, ImEnd, SliceStart, SliceEnd}
}

// TinyTokenizerJSON returns a tokenizer.json in Llama-3's layout (Split
// with Llama-3's pattern, ByteLevel without regex, BPE with ignore_merges,
// ByteLevel decoder) trained on a built-in corpus, with the family's
// special tokens, and the vocabulary size including them.
func TinyTokenizerJSON() ([]byte, map[string]int, error) {
	merges, err := bpe.Train(tinyCorpus, tinyMerges, bpe.Llama3Pattern)
	if err != nil {
		return nil, nil, fmt.Errorf("tiny tokenizer: %w", err)
	}
	vocab := map[string]int{}
	for _, a := range bpe.Alphabet() {
		vocab[a] = len(vocab)
	}
	for _, m := range merges {
		l, r, _ := cutSpace(m)
		if _, ok := vocab[l+r]; !ok {
			vocab[l+r] = len(vocab)
		}
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
	for _, s := range SpecialTokens() {
		vocab[s] = len(vocab)
		added = append(added, addedTok{ID: vocab[s], Content: s, Special: true})
	}
	model := map[string]int{}
	for k, v := range vocab {
		model[k] = v
	}
	for _, s := range SpecialTokens() {
		delete(model, s)
	}
	doc := map[string]any{
		"version": "1.0", "truncation": nil, "padding": nil,
		"added_tokens": added,
		"normalizer":   nil,
		"pre_tokenizer": map[string]any{
			"type": "Sequence",
			"pretokenizers": []any{
				map[string]any{"type": "Split", "pattern": map[string]string{"Regex": bpe.Llama3Pattern}, "behavior": "Isolated", "invert": false},
				map[string]any{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
			},
		},
		"post_processor": map[string]any{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
		"decoder":        map[string]any{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
		"model": map[string]any{
			"type": "BPE", "dropout": nil, "unk_token": nil, "continuing_subword_prefix": nil,
			"end_of_word_suffix": nil, "fuse_unk": false, "byte_fallback": false, "ignore_merges": true,
			"vocab": model, "merges": merges,
		},
	}
	raw, err := json.MarshalIndent(doc, "", " ")
	if err != nil {
		return nil, nil, fmt.Errorf("tiny tokenizer: %w", err)
	}
	return raw, vocab, nil
}

func cutSpace(m string) (string, string, bool) {
	for i := 0; i < len(m); i++ {
		if m[i] == ' ' {
			return m[:i], m[i+1:], true
		}
	}
	return m, "", false
}
