package beam

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fakeLM is a deterministic language model over a small vocabulary whose
// next-token logits depend on the whole generated sequence, written the
// same way in the Python check below.
func fakeLM(vocab int, seq []int64) []float32 {
	h := 0.0
	for i, t := range seq {
		h += float64(t+1) * float64(i+2) * 0.37
	}
	out := make([]float32, vocab)
	for v := range vocab {
		out[v] = float32(3 * math.Sin(1.3*float64(v)+0.71*h+0.5*float64(len(seq))))
	}
	return out
}

// run drives Search over fakeLM, keeping each beam's sequence as the model
// state that origins reorder.
func run(t *testing.T, vocab int, o Options) *Result {
	t.Helper()
	state := make([][]int64, o.NumBeams)
	step := func(ctx context.Context, origins []int, tokens []int64) ([][]float32, error) {
		next := make([][]int64, len(origins))
		rows := make([][]float32, len(origins))
		for i, b := range origins {
			next[i] = append(slices.Clone(state[b]), tokens[i])
			rows[i] = fakeLM(vocab, next[i])
		}
		state = next
		return rows, nil
	}
	r, err := Search(context.Background(), fakeLM(vocab, nil), step, o)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestSearchMatchesReference runs the same fake model through
// scripts/ref_minicpmv.py's beam_search (an independent formulation of
// transformers 4.40's) for several settings.
func TestSearchMatchesReference(t *testing.T) {
	py := "/usr/bin/python3"
	if err := exec.Command(py, "-c", "import torch, numpy, PIL").Run(); err != nil {
		t.Skipf("skipping: %s cannot import torch, numpy, PIL", py)
	}
	cases := []struct {
		vocab int
		o     Options
	}{
		{12, Options{NumBeams: 3, MaxTokens: 10, RepetitionPenalty: 1.2, EOS: []int64{2, 5}}},
		{12, Options{NumBeams: 3, MaxTokens: 10, RepetitionPenalty: 1.0, EOS: []int64{7}}},
		{30, Options{NumBeams: 4, MaxTokens: 16, RepetitionPenalty: 1.5, EOS: []int64{3}}},
		{9, Options{NumBeams: 2, MaxTokens: 25, RepetitionPenalty: 1.2, EOS: []int64{0, 1}}},
		{50, Options{NumBeams: 3, MaxTokens: 6, RepetitionPenalty: 1.2, EOS: nil}},
	}
	script := `import json, math, sys, torch
sys.path.insert(0, sys.argv[1])
from ref_minicpmv import beam_search
out = []
for c in json.loads(sys.argv[2]):
    V = c["vocab"]
    def lm(seq, V=V):
        h = sum((t + 1) * (i + 2) * 0.37 for i, t in enumerate(seq))
        return torch.tensor([float(torch.tensor(3 * math.sin(1.3 * v + 0.71 * h + 0.5 * len(seq)), dtype=torch.float32)) for v in range(V)], dtype=torch.float64)
    out.append(beam_search(lm, c["max"], c["eos"], c["beams"], c["penalty"]))
print(json.dumps(out))`
	type pc struct {
		Vocab   int     `json:"vocab"`
		Max     int     `json:"max"`
		EOS     []int64 `json:"eos"`
		Beams   int     `json:"beams"`
		Penalty float64 `json:"penalty"`
	}
	var in []pc
	for _, c := range cases {
		eos := c.o.EOS
		if eos == nil {
			eos = []int64{}
		}
		in = append(in, pc{c.vocab, c.o.MaxTokens, eos, c.o.NumBeams, c.o.RepetitionPenalty})
	}
	arg, _ := json.Marshal(in)
	raw, err := exec.Command(py, "-c", script, filepath.Join("..", "..", "..", "scripts"), string(arg)).CombinedOutput()
	if err != nil {
		t.Fatalf("reference: %v\n%s", err, raw)
	}
	var want [][]int64
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatalf("%v: %s", err, raw)
	}
	finished := 0
	for i, c := range cases {
		got := run(t, c.vocab, c.o)
		if !slices.Equal(got.Tokens, want[i]) && !(len(got.Tokens) == 0 && len(want[i]) == 0) {
			t.Errorf("case %d %+v:\n got %v\nwant %v", i, c.o, got.Tokens, want[i])
		}
		if got.Finished {
			finished++
		}
		for _, tok := range got.Tokens {
			if slices.Contains(c.o.EOS, tok) {
				t.Errorf("case %d: EOS %d inside the result %v", i, tok, got.Tokens)
			}
		}
	}
	if finished == 0 {
		t.Error("no case ended on an EOS: the cases do not exercise hypotheses")
	}
	t.Logf("%d of %d cases ended on an EOS", finished, len(cases))
}

func TestRepetitionPenaltyChangesResult(t *testing.T) {
	a := run(t, 12, Options{NumBeams: 3, MaxTokens: 12, RepetitionPenalty: 1.0})
	b := run(t, 12, Options{NumBeams: 3, MaxTokens: 12, RepetitionPenalty: 3.0})
	if slices.Equal(a.Tokens, b.Tokens) {
		t.Errorf("penalty 3 gives the same tokens as none: %v", a.Tokens)
	}
	count := func(ts []int64) int {
		seen := map[int64]int{}
		n := 0
		for _, t := range ts {
			if seen[t] > 0 {
				n++
			}
			seen[t]++
		}
		return n
	}
	if count(b.Tokens) > count(a.Tokens) {
		t.Errorf("penalty raised repeats: %v (none) vs %v (3.0)", a.Tokens, b.Tokens)
	}
}

func TestSearchErrors(t *testing.T) {
	step := func(ctx context.Context, origins []int, tokens []int64) ([][]float32, error) {
		return nil, fmt.Errorf("model crashed")
	}
	for _, tc := range []struct {
		o    Options
		want string
	}{
		{Options{NumBeams: 1, MaxTokens: 4, RepetitionPenalty: 1}, "at least 2"},
		{Options{NumBeams: 3, MaxTokens: 0, RepetitionPenalty: 1}, "max tokens"},
		{Options{NumBeams: 3, MaxTokens: 4, RepetitionPenalty: 0}, "repetition penalty"},
		{Options{NumBeams: 3, MaxTokens: 4, RepetitionPenalty: 1}, "model crashed"},
	} {
		_, err := Search(context.Background(), fakeLM(10, nil), step, tc.o)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err %v, want %q", tc.o, err, tc.want)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Search(ctx, fakeLM(10, nil), step, Options{NumBeams: 2, MaxTokens: 3, RepetitionPenalty: 1}); err == nil {
		t.Error("cancelled context: no error")
	}
}

func TestTopK(t *testing.T) {
	v := []float64{0.1, 5, 3, 5, -1, 4}
	if got := topK(v, 3); !slices.Equal(got, []int{1, 3, 5}) {
		t.Errorf("topK = %v, want [1 3 5]", got)
	}
	if got := topK(v, 10); len(got) != 6 || got[0] != 1 || got[5] != 4 {
		t.Errorf("topK(all) = %v", got)
	}
}
