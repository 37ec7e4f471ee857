package mllm

import (
	"github.com/m3gate/m3gate/sidecar/bpe"
)

// Tokenizer is a Hugging Face tokenizer.json (byte-level BPE) loaded with
// the project's own sidecar/bpe, which reads both SmolLM2's pipeline
// (Digits + ByteLevel) and Llama-3's (a Split pattern with a lookahead +
// ByteLevel, ignore_merges).
type Tokenizer struct {
	*bpe.Tokenizer
}

// LoadTokenizer reads a tokenizer.json file.
func LoadTokenizer(path string) (*Tokenizer, error) {
	t, err := bpe.Load(path)
	if err != nil {
		return nil, err
	}
	return &Tokenizer{t}, nil
}

// Encode tokenizes text without adding any special tokens; added tokens
// written in the text (such as <image> in a chat template) become their
// single ids. Text a user typed goes through EncodeText or EncodeParts.
func (t *Tokenizer) Encode(text string) ([]int64, error) {
	return t.Tokenizer.EncodeWithAdded(text)
}

// EncodeText tokenizes text a user wrote: strings in it that look like
// special tokens stay text.
func (t *Tokenizer) EncodeText(text string) ([]int64, error) {
	return t.Tokenizer.Encode(text)
}
