package mllm

import (
	"context"
	"testing"
)

func TestSmoke(t *testing.T) {
	m := loadTiny(t, 0)
	f, err := m.EncodeImage(testPixels(1, 64))
	if err != nil {
		t.Fatal(err)
	}
	seq, err := m.EncodeChat([]Message{UserMessage("Rate the quality of this image.", true)}, true, []*ImageFeatures{f})
	if err != nil {
		t.Fatal(err)
	}
	t.Log(len(seq.Tokens), seq.Tokens)
	out, cache, err := m.Prefill([]Sequence{seq}, ForwardOptions{})
	if err != nil {
		t.Fatal(err)
	}
	g, err := m.Generate(context.Background(), cache, out.Logits, GenerateOptions{MaxTokens: 10})
	if err != nil {
		t.Fatal(err)
	}
	s, _ := m.Tokenizer.Decode(g.Tokens[0], false)
	t.Logf("%v %q", g.Tokens, s)
}
