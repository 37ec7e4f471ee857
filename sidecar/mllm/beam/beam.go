// Package beam is beam-search decoding as Hugging Face transformers 4.40
// runs it for a decoder-only model started from inputs_embeds (the way
// MiniCPM-V 2.5's chat(sampling=False) generates: 3 beams, repetition
// penalty 1.2), written against a Stepper so that any model family can
// drive it. It is pure Go: the caller turns beam choices into forward
// passes (reordering its KV cache by the origins it is given).
//
// The semantics followed, step by step:
//   - scores are log_softmax of the next-token logits; the repetition
//     penalty then multiplies the (negative) log-probability of every token
//     the beam has generated so far by the penalty (the prompt is not
//     included: with inputs_embeds the generated ids start empty);
//   - each beam's running score is added, and the best
//     max(2, 1+len(eos))·numBeams (beam, token) pairs over all beams are
//     taken in descending order (beam-major flattening, as torch.topk);
//   - an end-of-sequence candidate ranked below numBeams is ignored; one
//     ranked within closes a hypothesis scored sum/(generated length + 1)
//     (the eos counted, length penalty 1); other candidates fill the next
//     beams until numBeams are taken;
//   - the search is done when numBeams hypotheses exist and the worst of
//     them is at least the best candidate score / current length
//     (early_stopping False); at the token limit the open beams become
//     hypotheses scored sum/length; the best hypothesis wins;
//   - at the start only beam 0 is live (the others score −1e9).
package beam

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
)

// Options configures Search.
type Options struct {
	// NumBeams is the beam width (> 1).
	NumBeams int
	// MaxTokens bounds the generated tokens.
	MaxTokens int
	// RepetitionPenalty is applied to the log-probabilities of generated
	// tokens (1 turns it off).
	RepetitionPenalty float64
	// EOS are the tokens that end a hypothesis (not part of the result).
	EOS []int64
}

// Stepper runs the model for the next position of every beam: beam i
// continues beam origins[i] of the previous step with token tokens[i].
// It returns one row of logits (vocabulary-wide) per beam.
type Stepper func(ctx context.Context, origins []int, tokens []int64) ([][]float32, error)

// Result is the winning hypothesis.
type Result struct {
	// Tokens are the generated tokens, the closing EOS left out.
	Tokens []int64
	// Score is the hypothesis's length-normalised log-probability.
	Score float64
	// Finished reports whether it ended with an EOS (not at MaxTokens).
	Finished bool
}

type hypothesis struct {
	score    float64
	tokens   []int64
	finished bool
}

// hypotheses is BeamHypotheses: the numBeams best finished sequences.
type hypotheses struct {
	n     int
	beams []hypothesis
	worst float64
}

func (h *hypotheses) add(tokens []int64, sumLogProbs float64, genLen int, finished bool) {
	score := sumLogProbs / float64(genLen)
	if len(h.beams) < h.n || score > h.worst {
		h.beams = append(h.beams, hypothesis{score, slices.Clone(tokens), finished})
		if len(h.beams) > h.n {
			type si struct {
				s float64
				i int
			}
			order := make([]si, len(h.beams))
			for i, b := range h.beams {
				order[i] = si{b.score, i}
			}
			sort.SliceStable(order, func(a, b int) bool { return order[a].s < order[b].s })
			h.beams = slices.Delete(h.beams, order[0].i, order[0].i+1)
			h.worst = order[1].s
		} else {
			h.worst = math.Min(score, h.worst)
		}
	}
}

// Search decodes from first, the logits at the prompt's last position.
func Search(ctx context.Context, first []float32, step Stepper, o Options) (*Result, error) {
	if o.NumBeams < 2 {
		return nil, fmt.Errorf("beam search: %d beams (want at least 2; use greedy decoding for 1)", o.NumBeams)
	}
	if o.MaxTokens < 1 {
		return nil, fmt.Errorf("beam search: max tokens %d", o.MaxTokens)
	}
	if len(first) == 0 {
		return nil, errors.New("beam search: empty logits")
	}
	if o.RepetitionPenalty <= 0 {
		return nil, fmt.Errorf("beam search: repetition penalty %g must be positive", o.RepetitionPenalty)
	}
	nb := o.NumBeams
	vocab := len(first)
	rows := make([][]float32, nb)
	for i := range rows {
		rows[i] = first
	}
	beams := make([][]int64, nb)
	scores := make([]float64, nb)
	for i := 1; i < nb; i++ {
		scores[i] = -1e9
	}
	hyps := &hypotheses{n: nb, worst: 1e9}
	k := max(2, 1+len(o.EOS)) * nb
	done := false
	cand := make([]float64, nb*vocab)
	for curLen := 0; curLen < o.MaxTokens && !done; {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		for b := range nb {
			if len(rows[b]) != vocab {
				return nil, fmt.Errorf("beam search: beam %d has %d logits, want %d", b, len(rows[b]), vocab)
			}
			lp := logSoftmax(rows[b])
			if o.RepetitionPenalty != 1 {
				seen := map[int64]bool{}
				for _, t := range beams[b] {
					if seen[t] {
						continue
					}
					seen[t] = true
					if lp[t] < 0 {
						lp[t] *= o.RepetitionPenalty
					} else {
						lp[t] /= o.RepetitionPenalty
					}
				}
			}
			for t, v := range lp {
				cand[b*vocab+t] = v + scores[b]
			}
		}
		top := topK(cand, k)
		var origins []int
		var tokens []int64
		var next []float64
		var nextBeams [][]int64
		for rank, idx := range top {
			b, t, s := idx/vocab, int64(idx%vocab), cand[idx]
			if slices.Contains(o.EOS, t) {
				if rank >= nb {
					continue
				}
				hyps.add(beams[b], s, curLen+1, true)
			} else {
				origins = append(origins, b)
				tokens = append(tokens, t)
				next = append(next, s)
				nextBeams = append(nextBeams, append(slices.Clone(beams[b]), t))
			}
			if len(origins) == nb {
				break
			}
		}
		if len(origins) < nb {
			return nil, fmt.Errorf("beam search: only %d non-EOS candidates among the best %d", len(origins), k)
		}
		curLen++
		if len(hyps.beams) >= nb {
			best := cand[top[0]] / float64(curLen)
			done = hyps.worst >= best
		}
		beams, scores = nextBeams, next
		if done || curLen >= o.MaxTokens {
			break
		}
		var err error
		if rows, err = step(ctx, origins, tokens); err != nil {
			return nil, err
		}
		if len(rows) != nb {
			return nil, fmt.Errorf("beam search: stepper returned %d rows for %d beams", len(rows), nb)
		}
	}
	if !done {
		for b := range nb {
			hyps.add(beams[b], scores[b], len(beams[b]), false)
		}
	}
	best := hyps.beams[0]
	for _, h := range hyps.beams[1:] {
		if h.score >= best.score { // sorted(...).pop(): the last of equal scores wins
			best = h
		}
	}
	return &Result{Tokens: best.tokens, Score: best.score, Finished: best.finished}, nil
}

// logSoftmax returns log_softmax of a row in float64.
func logSoftmax(row []float32) []float64 {
	m := math.Inf(-1)
	for _, v := range row {
		m = math.Max(m, float64(v))
	}
	var sum float64
	for _, v := range row {
		sum += math.Exp(float64(v) - m)
	}
	lse := m + math.Log(sum)
	out := make([]float64, len(row))
	for i, v := range row {
		out[i] = float64(v) - lse
	}
	return out
}

// topK returns the indices of the k largest values, largest first (lower
// index first among equal values).
func topK(v []float64, k int) []int {
	k = min(k, len(v))
	idx := make([]int, 0, k+1)
	for i, x := range v {
		if len(idx) == k && x <= v[idx[k-1]] {
			continue
		}
		pos := sort.Search(len(idx), func(j int) bool { return v[idx[j]] < x })
		idx = slices.Insert(idx, pos, i)
		if len(idx) > k {
			idx = idx[:k]
		}
	}
	return idx
}
