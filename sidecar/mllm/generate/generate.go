// Package generate is the decode loop of sidecar/mllm: greedy or
// temperature/top-p sampling over any text model that can take one
// decode step on a kvcache.Cache.
package generate

import (
	"context"
	"fmt"
	"math"
	"math/rand"
	"sort"

	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/mllm/kvcache"
	"github.com/m3gate/m3gate/sidecar/torch"
)

// Decoder is what the loop needs from a text model.
type Decoder interface {
	// DecodeStep feeds tokens[i] to sequence i of cache (a negative token:
	// the sequence has finished and gets a hidden padding slot) and
	// returns the logits of every sequence's next token, [B, V] f32 on the
	// model's device, and the extended cache. It leaves cache unchanged.
	DecodeStep(cache *kvcache.Cache, tokens []int64) (*ts.Tensor, *kvcache.Cache, error)
}

// HiddenDecoder is a Decoder that can also return the final normed hidden
// states of the tokens it was fed, [B, D] (the LM head's input), which
// Run keeps with Options.KeepHidden.
type HiddenDecoder interface {
	Decoder
	DecodeStepHidden(cache *kvcache.Cache, tokens []int64) (logits, hidden *ts.Tensor, next *kvcache.Cache, err error)
}

// Options configures Run.
type Options struct {
	MaxTokens   int     // at most this many new tokens per sequence (> 0)
	Temperature float64 // 0: greedy
	TopP        float64 // nucleus sampling mass in (0, 1]; 0 means 1
	Seed        int64
	StopTokens  []int64 // a sampled stop token ends its sequence (kept in Tokens)
	// KeepLogits records each step's logits [B, V] in Result.Logits.
	KeepLogits bool
	// KeepHidden records each step's hidden states in Result.Hidden; the
	// decoder must be a HiddenDecoder.
	KeepHidden bool
}

// Result is what Run generated.
type Result struct {
	Tokens  [][]int64    // new tokens per sequence, stop token included
	Stopped []bool       // true when the sequence ended on a stop token
	Logits  []*ts.Tensor // with KeepLogits, on the model's device
	// Hidden (with KeepHidden) holds, per decode step j, the final normed
	// hidden states [B, D] of the tokens fed in it: row i is that of
	// Tokens[i][j] while sequence i was still being fed (the rows of
	// finished sequences are padding). The caller frees them.
	Hidden []*ts.Tensor
	// Cache holds the prompt and every new token of each sequence except
	// its last one (which was sampled but never fed back).
	Cache *kvcache.Cache
}

// Run continues from cache, whose last forward pass returned last
// ([B, V] logits, f32), sampling up to MaxTokens tokens per sequence. It
// checks ctx before every step.
func Run(ctx context.Context, dec Decoder, cache *kvcache.Cache, last *ts.Tensor, opts Options) (_ *Result, err error) {
	if opts.MaxTokens <= 0 {
		return nil, fmt.Errorf("generate: max tokens must be positive, got %d", opts.MaxTokens)
	}
	if cache == nil || last == nil {
		return nil, fmt.Errorf("generate: nil cache or logits")
	}
	b := cache.Batch()
	sz := last.MustSize()
	if len(sz) != 2 || sz[0] != int64(b) {
		return nil, fmt.Errorf("generate: logits shape %v, want [%d V]", sz, b)
	}
	vocab := int(sz[1])
	hd, _ := dec.(HiddenDecoder)
	if opts.KeepHidden && hd == nil {
		return nil, fmt.Errorf("generate: KeepHidden needs a decoder that returns hidden states")
	}
	stop := map[int64]bool{}
	for _, s := range opts.StopTokens {
		stop[s] = true
	}
	rng := rand.New(rand.NewSource(opts.Seed))
	g := &Result{Tokens: make([][]int64, b), Stopped: make([]bool, b), Cache: cache}
	defer func() {
		if err != nil { // what the steps made so far is nobody's
			torch.Drop(g.Hidden...)
			if g.Cache != cache {
				g.Cache.Free()
			}
		}
	}()
	buf := make([]float32, b*vocab)
	logits := last
	for {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("generate: %w", err)
		}
		if opts.KeepLogits {
			g.Logits = append(g.Logits, logits)
		}
		// The one place Go reads the logits: copied to the CPU first
		// (no copy when the model runs there).
		host := torch.ToCPU(logits, false)
		err = torch.CopyOut(host, buf)
		torch.Keep(logits, host)
		if host != logits {
			torch.Drop(host)
		}
		if err != nil {
			return nil, fmt.Errorf("generate: %w", err)
		}
		feed := make([]int64, b)
		active := false
		for i := 0; i < b; i++ {
			feed[i] = -1
			if g.Stopped[i] || len(g.Tokens[i]) >= opts.MaxTokens {
				continue
			}
			tok := pickToken(buf[i*vocab:(i+1)*vocab], opts.Temperature, opts.TopP, rng)
			g.Tokens[i] = append(g.Tokens[i], tok)
			if stop[tok] {
				g.Stopped[i] = true
			}
			if !g.Stopped[i] && len(g.Tokens[i]) < opts.MaxTokens {
				active = true
				feed[i] = tok
			}
		}
		if !active {
			if logits != last && !opts.KeepLogits {
				torch.Drop(logits)
			}
			return g, nil
		}
		var out, hidden *ts.Tensor
		var nc *kvcache.Cache
		if opts.KeepHidden {
			out, hidden, nc, err = hd.DecodeStepHidden(g.Cache, feed)
		} else {
			out, nc, err = dec.DecodeStep(g.Cache, feed)
		}
		if err != nil {
			return nil, err
		}
		if hidden != nil {
			g.Hidden = append(g.Hidden, hidden)
		}
		// The caches and logits of earlier steps are this loop's own:
		// free them now (the caller's cache and logits are left alone).
		if g.Cache != cache {
			g.Cache.Free()
		}
		if logits != last && !opts.KeepLogits {
			torch.Drop(logits)
		}
		g.Cache, logits = nc, out
	}
}

// pickToken chooses the next token: argmax when temperature is 0, else a
// sample from the temperature-scaled distribution restricted to the top-p
// nucleus.
func pickToken(logits []float32, temperature, topP float64, rng *rand.Rand) int64 {
	best := 0
	for i, v := range logits {
		if v > logits[best] {
			best = i
		}
	}
	if temperature <= 0 {
		return int64(best)
	}
	if topP <= 0 || topP > 1 {
		topP = 1
	}
	type cand struct {
		id int
		p  float64
	}
	cs := make([]cand, len(logits))
	mx := float64(logits[best])
	sum := 0.0
	for i, v := range logits {
		p := math.Exp((float64(v) - mx) / temperature)
		cs[i] = cand{i, p}
		sum += p
	}
	sort.SliceStable(cs, func(a, b int) bool { return cs[a].p > cs[b].p })
	keep, acc := 0, 0.0
	for keep < len(cs) {
		acc += cs[keep].p / sum
		keep++
		if acc >= topP {
			break
		}
	}
	r := rng.Float64() * acc * sum
	for _, c := range cs[:keep] {
		r -= c.p
		if r <= 0 {
			return int64(c.id)
		}
	}
	return int64(cs[keep-1].id)
}
