package mllm

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sort"
	"sync"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/torch"
)

// Pixels is one preprocessed image as sidecar/imageproc produces it: Tiles
// are 3×Size×Size CHW normalised planes; with Rows·Cols > 0 the first
// Rows·Cols tiles are the split tiles in row-major order and the last one
// is the global image, otherwise there is a single tile.
type Pixels struct {
	Tiles      [][]float32
	Rows, Cols int
	Size       int
}

// ImageFeatures are the connector outputs of one image: Tokens is
// [tiles·ImageSeqLen, text hidden], in the order its image tokens appear
// in the prompt, on the model's Device.
type ImageFeatures struct {
	Tokens     *ts.Tensor
	Rows, Cols int
}

// NumTokens is the number of <image> tokens the image takes in a prompt.
func (f *ImageFeatures) NumTokens() int { return int(f.Tokens.MustSize()[0]) }

// WithGradMode runs fn on a locked OS thread with libtorch's autograd
// explicitly on or off, turning gotch panics into errors. Grad mode is
// thread-local in libtorch and a goroutine moves between OS threads, and
// threads libtorch did not start can begin with grad off: code that builds
// a loss and calls Backward (LoRA training) must run inside
// WithGradMode(true, ...).
func WithGradMode(grad bool, fn func() error) error { return withGrad(grad, "run", fn) }

func withGrad(grad bool, what string, fn func() error) (err error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	holdGC()
	defer releaseGC()
	defer recoverErr(&err, what)
	// torch.SetGradEnabled, not ts.MustGradSetEnabled: gotch misreads the
	// previous mode and would leave autograd off on this thread.
	prev := torch.SetGradEnabled(grad)
	defer torch.SetGradEnabled(prev)
	return fn()
}

// gotch v0.9.1 frees a tensor's C memory from a Go finalizer. A *Tensor
// whose last use is as an argument of a gotch call is unreachable while
// the C++ op still runs on it, so a garbage collection in that window can
// free it under the op (use after free). Model passes therefore run with
// the collector paused (reference-counted across concurrent passes); the
// Go heap grows by about 100 KB per tensor created until the pass ends,
// and the big intermediates are dropped explicitly.
var (
	gcMu    sync.Mutex
	gcHolds int
	gcPrev  int
)

func holdGC() {
	gcMu.Lock()
	defer gcMu.Unlock()
	if gcHolds == 0 {
		gcPrev = debug.SetGCPercent(-1)
	}
	gcHolds++
}

func releaseGC() {
	gcMu.Lock()
	defer gcMu.Unlock()
	gcHolds--
	if gcHolds == 0 {
		debug.SetGCPercent(gcPrev)
	}
}

// EncodeImage runs the vision encoder and connector on one image.
func (m *Model) EncodeImage(p Pixels) (*ImageFeatures, error) {
	f, err := m.EncodeImages([]Pixels{p}, false)
	if err != nil {
		return nil, err
	}
	return f[0], nil
}

// EncodeImages encodes several images in one vision batch. grad keeps
// autograd on (for training); inference passes false.
func (m *Model) EncodeImages(ps []Pixels, grad bool) (out []*ImageFeatures, err error) {
	v := m.Config.Vision
	s := v.ImageSize
	var flat []float32
	var counts []int
	for i, p := range ps {
		if len(p.Tiles) == 0 {
			return nil, fmt.Errorf("encode image %d: no tiles", i)
		}
		if p.Size != s {
			return nil, fmt.Errorf("encode image %d: tile size %d, the model wants %d", i, p.Size, s)
		}
		want := 1
		if p.Rows*p.Cols > 0 {
			want = p.Rows*p.Cols + 1
		}
		if len(p.Tiles) != want {
			return nil, fmt.Errorf("encode image %d: %d tiles for %d×%d split, want %d", i, len(p.Tiles), p.Rows, p.Cols, want)
		}
		for j, t := range p.Tiles {
			if len(t) != v.NumChannels*s*s {
				return nil, fmt.Errorf("encode image %d: tile %d has %d values, want %d", i, j, len(t), v.NumChannels*s*s)
			}
			flat = append(flat, t...)
		}
		counts = append(counts, len(p.Tiles))
	}
	if err := m.usable(); err != nil {
		return nil, err
	}
	n := len(flat) / (v.NumChannels * s * s)
	err = withGrad(grad, "encode image", func() error {
		px := m.onDevice(ts.MustOfSlice(flat).MustView([]int64{int64(n), int64(v.NumChannels), int64(s), int64(s)}, true))
		// at most visionChunk tiles per vision pass bounds the activations
		// (a 4×4 split image has 17 tiles)
		var parts []*ts.Tensor
		for start := int64(0); start < int64(n); start += visionChunk {
			c := min(visionChunk, int64(n)-start)
			parts = append(parts, m.connectorForward(m.visionForward(px.MustNarrow(0, start, c, false))))
		}
		feats := parts[0] // [n, seq, D]
		if len(parts) > 1 {
			feats = ts.MustCat(parts, 0)
		}
		d := feats.MustSize()[2]
		start := int64(0)
		seq := int64(m.Config.ImageSeqLen())
		for i, c := range counts {
			t := feats.MustNarrow(0, start, int64(c), false).MustReshape([]int64{int64(c) * seq, d}, true)
			out = append(out, &ImageFeatures{Tokens: t, Rows: ps[i].Rows, Cols: ps[i].Cols})
			start += int64(c)
		}
		return nil
	})
	return out, err
}

// visionChunk is the most tiles one vision forward pass takes.
const visionChunk = 8

// connectorForward applies pixel shuffle and the modality projection.
func (m *Model) connectorForward(x *ts.Tensor) *ts.Tensor {
	return m.connector.Forward(pixelShuffle(x, int64(m.Config.ScaleFactor)))
}

// Sequence is one prompt of a batch: token ids and the features of the
// images whose <image> tokens it contains, in order.
type Sequence struct {
	Tokens []int64
	Images []*ImageFeatures
}

// LogitsMode says which logits a forward pass returns.
type LogitsMode int

const (
	// LogitsLast returns the logits of each sequence's last token, [B, V].
	LogitsLast LogitsMode = iota
	// LogitsAll returns logits at every position, [B, T, V].
	LogitsAll
	// LogitsNone returns no logits (use Hidden).
	LogitsNone
)

// ForwardOptions configures Prefill and Extend.
type ForwardOptions struct {
	Logits LogitsMode
	// Hidden also returns the final normed hidden states [B, T, D].
	Hidden bool
	// Grad keeps autograd on (LoRA training); inference leaves it false.
	Grad bool
}

// Output is the result of a forward pass. Sequences shorter than the
// longest of the call are left-padded: Pad[b] slots at the start of the
// time axis of Logits (LogitsAll) and Hidden belong to no token.
type Output struct {
	Logits *ts.Tensor // f32, on the model's Device
	Hidden *ts.Tensor // on the model's Device
	Pad    []int
}

// Prefill runs a fresh batch of prompts and returns the output and the KV
// cache that holds them.
func (m *Model) Prefill(seqs []Sequence, opts ForwardOptions) (*Output, *KVCache, error) {
	return m.forward(nil, seqs, opts)
}

// Extend continues cache with more tokens per sequence (len(seqs) must be
// the cache's batch). The given cache stays valid and unchanged.
func (m *Model) Extend(cache *KVCache, seqs []Sequence, opts ForwardOptions) (*Output, *KVCache, error) {
	if cache == nil {
		return nil, nil, fmt.Errorf("extend: nil cache")
	}
	return m.forward(cache, seqs, opts)
}

func (m *Model) forward(cache *KVCache, seqs []Sequence, opts ForwardOptions) (out *Output, next *KVCache, err error) {
	if len(seqs) == 0 {
		return nil, nil, fmt.Errorf("forward: no sequences")
	}
	if err := m.usable(); err != nil {
		return nil, nil, err
	}
	if cache != nil && cache.Batch() != len(seqs) {
		return nil, nil, fmt.Errorf("forward: %d sequences for a cache of batch %d", len(seqs), cache.Batch())
	}
	t := m.Config.Text
	tq := 0
	for i, s := range seqs {
		if len(s.Tokens) == 0 {
			return nil, nil, fmt.Errorf("forward: sequence %d has no tokens", i)
		}
		tq = max(tq, len(s.Tokens))
		nimg := 0
		for _, id := range s.Tokens {
			if id < 0 || id >= int64(t.VocabSize) {
				return nil, nil, fmt.Errorf("forward: sequence %d: token id %d outside the vocabulary of %d", i, id, t.VocabSize)
			}
			if id == m.Config.ImageTokenID {
				nimg++
			}
		}
		nfeat := 0
		for _, f := range s.Images {
			nfeat += f.NumTokens()
		}
		if nimg != nfeat {
			return nil, nil, fmt.Errorf("forward: sequence %d has %d image tokens but its images give %d feature rows", i, nimg, nfeat)
		}
	}
	b := len(seqs)
	padID := int64(0)
	if padID == m.Config.ImageTokenID {
		padID = 1
	}
	ids := make([]int64, b*tq)
	valid := make([][]bool, b)
	isImg := make([]bool, b*tq)
	anyImg := false
	out = &Output{Pad: make([]int, b)}
	for i, s := range seqs {
		pad := tq - len(s.Tokens)
		out.Pad[i] = pad
		valid[i] = make([]bool, tq)
		for j := 0; j < tq; j++ {
			ids[i*tq+j] = padID
			if j >= pad {
				id := s.Tokens[j-pad]
				ids[i*tq+j] = id
				valid[i][j] = true
				if id == m.Config.ImageTokenID {
					isImg[i*tq+j] = true
					anyImg = true
				}
			}
		}
	}
	err = withGrad(opts.Grad, "forward", func() error {
		it := m.onDevice(ts.MustOfSlice(ids).MustView([]int64{int64(b), int64(tq)}, true))
		x := ts.MustEmbedding(m.embed, it, -1, false, false)
		if anyImg {
			var feats []*ts.Tensor
			for _, s := range seqs {
				for _, f := range s.Images {
					ft := f.Tokens
					if ft.DType() != m.DType {
						ft = ft.MustTotype(m.DType, false)
					}
					ft = torch.ToDevice(ft, m.Device, ft != f.Tokens)
					feats = append(feats, ft)
				}
			}
			src := ts.MustCat(feats, 0)
			mk := m.onDevice(ts.MustOfSlice(isImg).MustView([]int64{int64(b), int64(tq), 1}, true))
			x = x.MustMaskedScatter(mk, src, true)
		}
		h, nc := m.textForward(x, valid, cache)
		next = nc
		if h.Dim() == 1 { // single-token mode
			h = h.MustView([]int64{1, 1, -1}, true)
		}
		switch opts.Logits {
		case LogitsLast:
			last := h.MustSelect(1, int64(tq-1), false)
			out.Logits = m.lmHead.Forward(last).MustTotype(gotch.Float, true)
		case LogitsAll:
			out.Logits = m.lmHead.Forward(h).MustTotype(gotch.Float, true)
		}
		if opts.Hidden {
			out.Hidden = h
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return out, next, nil
}

// GenerateOptions configures Generate.
type GenerateOptions struct {
	MaxTokens   int     // at most this many new tokens per sequence (> 0)
	Temperature float64 // 0: greedy
	TopP        float64 // nucleus sampling mass in (0, 1]; 0 means 1
	Seed        int64
	StopTokens  []int64 // a sampled stop token ends its sequence (kept in Tokens)
	// KeepLogits records each step's logits [B, V] in Generation.Logits.
	KeepLogits bool
}

// Generation is the result of Generate.
type Generation struct {
	Tokens  [][]int64    // new tokens per sequence, stop token included
	Stopped []bool       // true when the sequence ended on a stop token
	Logits  []*ts.Tensor // with KeepLogits, on the model's Device
	// Cache holds the prompt and every new token of each sequence except
	// its last one (which was sampled but never fed back).
	Cache *KVCache
}

// Generate continues from cache, whose last forward pass returned last
// ([B, V] logits, f32), sampling up to MaxTokens tokens per sequence.
func (m *Model) Generate(ctx context.Context, cache *KVCache, last *ts.Tensor, opts GenerateOptions) (*Generation, error) {
	if opts.MaxTokens <= 0 {
		return nil, fmt.Errorf("generate: max tokens must be positive, got %d", opts.MaxTokens)
	}
	if err := m.usable(); err != nil {
		return nil, fmt.Errorf("generate: %w", err)
	}
	if cache == nil || last == nil {
		return nil, fmt.Errorf("generate: nil cache or logits")
	}
	b := cache.Batch()
	vocab := m.Config.Text.VocabSize
	if sz := last.MustSize(); len(sz) != 2 || sz[0] != int64(b) || sz[1] != int64(vocab) {
		return nil, fmt.Errorf("generate: logits shape %v, want [%d %d]", sz, b, vocab)
	}
	stop := map[int64]bool{}
	for _, s := range opts.StopTokens {
		stop[s] = true
	}
	rng := rand.New(rand.NewSource(opts.Seed))
	g := &Generation{Tokens: make([][]int64, b), Stopped: make([]bool, b), Cache: cache}
	buf := make([]float32, b*vocab)
	logits := last
	for step := 0; ; step++ {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("generate: %w", err)
		}
		if opts.KeepLogits {
			g.Logits = append(g.Logits, logits)
		}
		// The one place Go reads the logits: copied to the CPU first
		// (no copy when the model runs there).
		host := torch.ToCPU(logits, false)
		err := host.CopyData(buf, uint(b*vocab))
		runtime.KeepAlive(logits) // see holdGC
		runtime.KeepAlive(host)
		if err != nil {
			return nil, fmt.Errorf("generate: %w", err)
		}
		feed := make([]Sequence, b)
		active := false
		for i := 0; i < b; i++ {
			done := g.Stopped[i] || len(g.Tokens[i]) >= opts.MaxTokens
			if done {
				feed[i] = Sequence{Tokens: []int64{-1}}
				continue
			}
			tok := pickToken(buf[i*vocab:(i+1)*vocab], opts.Temperature, opts.TopP, rng)
			g.Tokens[i] = append(g.Tokens[i], tok)
			if stop[tok] {
				g.Stopped[i] = true
			}
			if !g.Stopped[i] && len(g.Tokens[i]) < opts.MaxTokens {
				active = true
				feed[i] = Sequence{Tokens: []int64{tok}}
			} else {
				feed[i] = Sequence{Tokens: []int64{-1}}
			}
		}
		if !active {
			return g, nil
		}
		out, next, err := m.step(g.Cache, feed)
		if err != nil {
			return nil, err
		}
		g.Cache, logits = next, out
	}
}

// step feeds one token per sequence; a token of -1 is a hidden padding
// slot (the sequence has finished).
func (m *Model) step(cache *KVCache, feed []Sequence) (logits *ts.Tensor, next *KVCache, err error) {
	b := len(feed)
	ids := make([]int64, b)
	valid := make([][]bool, b)
	for i, s := range feed {
		valid[i] = []bool{s.Tokens[0] >= 0}
		if s.Tokens[0] >= 0 {
			ids[i] = s.Tokens[0]
		}
	}
	err = withGrad(false, "decode step", func() error {
		it := m.onDevice(ts.MustOfSlice(ids).MustView([]int64{int64(b), 1}, true))
		x := ts.MustEmbedding(m.embed, it, -1, false, false)
		h, nc := m.textForward(x, valid, cache)
		next = nc
		if h.Dim() == 1 { // single-token mode
			logits = m.lmHead.Forward(h).MustView([]int64{1, -1}, true)
		} else {
			logits = m.lmHead.Forward(h.MustSelect(1, 0, true))
		}
		if logits.DType() != gotch.Float {
			logits = logits.MustTotype(gotch.Float, true)
		}
		return nil
	})
	return logits, next, err
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

// GenerationConfig is the part of generation_config.json the runtime uses.
type GenerationConfig struct {
	BOSTokenID  int64
	EOSTokenIDs []int64
	PadTokenID  int64
}

func loadGenerationConfig(dir string) (GenerationConfig, error) {
	g := GenerationConfig{}
	raw, err := os.ReadFile(filepath.Join(dir, "generation_config.json"))
	if os.IsNotExist(err) {
		return g, nil
	}
	if err != nil {
		return g, fmt.Errorf("load generation config: %w", err)
	}
	var doc struct {
		BOS *int64 `json:"bos_token_id"`
		EOS any    `json:"eos_token_id"`
		Pad *int64 `json:"pad_token_id"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return g, fmt.Errorf("load generation config: %w", err)
	}
	if doc.BOS != nil {
		g.BOSTokenID = *doc.BOS
	}
	if doc.Pad != nil {
		g.PadTokenID = *doc.Pad
	}
	switch e := doc.EOS.(type) {
	case float64:
		g.EOSTokenIDs = []int64{int64(e)}
	case []any:
		for _, v := range e {
			if f, ok := v.(float64); ok {
				g.EOSTokenIDs = append(g.EOSTokenIDs, int64(f))
			}
		}
	}
	return g, nil
}
