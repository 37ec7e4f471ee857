package m3

import (
	"context"
	"errors"
	"fmt"
	"image"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/schemas"
	"github.com/m3gate/m3gate/schemas/iqa"
	"github.com/m3gate/m3gate/sidecar/imageproc"
	"github.com/m3gate/m3gate/sidecar/lora"
	"github.com/m3gate/m3gate/sidecar/mllm/kvcache"
	"github.com/m3gate/m3gate/sidecar/mllm/minicpmv"
	"github.com/m3gate/m3gate/sidecar/service"
	"github.com/m3gate/m3gate/sidecar/torch"
	"github.com/m3gate/m3gate/sidecar/xlstm"
)

// FamilyMiniCPMV25 is the model.family of MiniCPM-Llama3-V-2.5, the model
// the paper's released adapters and predictors were trained on.
const FamilyMiniCPMV25 = "minicpmv25"

// Load options of the minicpmv25 family (LoadRequest.Options). A key may
// carry an aspect suffix ("max_slices.correspondence") to override the
// value for that aspect only.
const (
	// OptionMaxSlices is max_slice_nums (the reference: 9; 4 for the
	// AIGIQA-20K adapter); default the model's slice_config.
	OptionMaxSlices = "max_slices"
	// OptionMaxLength truncates the predictor's input (model_max_length:
	// 512; 768 for AIGIQA-20K); default 512.
	OptionMaxLength = "max_length"
	// OptionNumBeams selects beam search for descriptions (the reference's
	// chat(sampling=False): 3); 1 is greedy.
	OptionNumBeams = "num_beams"
	// OptionRepetitionPenalty applies to beam search (reference 1.2).
	OptionRepetitionPenalty = "repetition_penalty"
)

// miniCPMEngine serves the minicpmv25 family: per aspect, with that
// aspect's adapter (LoRA on the LLM plus its own copies of the vision
// tower, resampler and embeddings), the image is encoded, described
// (beam search by default, as the reference) and the three-message prompt
// in M3-AGIQA's template goes through the model and the aspect's
// predictor.
type miniCPMEngine struct {
	model      *minicpmv.Model
	adapters   *lora.Set
	predictors map[string]*xlstm.Predictor
	info       schemas.ModelInfo
	maxPixels  int64
	opts       familyOptions
	wordIDs    [5]int64
	header     []int64 // the assistant header that opens an answer
}

var _ service.Engine = (*miniCPMEngine)(nil)

// familyOptions are the parsed minicpmv25 load options.
type familyOptions struct {
	maxSlices, maxLength map[string]int // "" = every aspect
	numBeams             int
	penalty              float64
}

func (o familyOptions) slices(aspect string) int {
	if v, ok := o.maxSlices[aspect]; ok {
		return v
	}
	return o.maxSlices[""]
}

func (o familyOptions) length(aspect string) int {
	if v, ok := o.maxLength[aspect]; ok {
		return v
	}
	if v, ok := o.maxLength[""]; ok {
		return v
	}
	return 512
}

// parseFamilyOptions reads the minicpmv25 options and max_pixels.
func parseFamilyOptions(in map[string]string) (familyOptions, int64, error) {
	o := familyOptions{maxSlices: map[string]int{}, maxLength: map[string]int{}, numBeams: 3, penalty: 1.2}
	maxPixels := int64(imageproc.DefaultMaxPixels)
	for k, v := range in {
		base, aspect, _ := strings.Cut(k, ".")
		posInt := func() (int, error) {
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return 0, fmt.Errorf("option %s=%q: want a positive integer", k, v)
			}
			return n, nil
		}
		switch base {
		case OptionMaxSlices:
			n, err := posInt()
			if err != nil {
				return o, 0, err
			}
			o.maxSlices[aspect] = n
		case OptionMaxLength:
			n, err := posInt()
			if err != nil {
				return o, 0, err
			}
			o.maxLength[aspect] = n
		case OptionNumBeams, OptionRepetitionPenalty, OptionMaxPixels:
			if aspect != "" {
				return o, 0, fmt.Errorf("option %s: %s applies to every aspect", k, base)
			}
			switch base {
			case OptionNumBeams:
				n, err := posInt()
				if err != nil {
					return o, 0, err
				}
				o.numBeams = n
			case OptionRepetitionPenalty:
				f, err := strconv.ParseFloat(v, 64)
				if err != nil || f <= 0 || math.IsInf(f, 0) {
					return o, 0, fmt.Errorf("option %s=%q: want a positive number", k, v)
				}
				o.penalty = f
			default:
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil || n <= 0 {
					return o, 0, fmt.Errorf("option %s=%q: want a positive integer", k, v)
				}
				maxPixels = n
			}
		default:
			return o, 0, fmt.Errorf("unknown option %q for family %s (known: %s, %s, %s, %s, %s)", k, FamilyMiniCPMV25,
				OptionMaxSlices, OptionMaxLength, OptionNumBeams, OptionRepetitionPenalty, OptionMaxPixels)
		}
	}
	return o, maxPixels, nil
}

// Load reads the model, the adapters (with their saved modules) and the
// predictors. A failed Load leaves no model loaded.
func (e *miniCPMEngine) Load(ctx context.Context, req schemas.LoadRequest, progress func(schemas.LoadProgress)) (err error) {
	e.Unload(ctx)
	if progress == nil {
		progress = func(schemas.LoadProgress) {}
	}
	fo, maxPixels, err := parseFamilyOptions(req.Options)
	if err != nil {
		return fmt.Errorf("load: %w", err)
	}
	dev, err := torch.ParseDevice(req.Device)
	if err != nil {
		return fmt.Errorf("load: %w", err)
	}
	kind := gotch.Float
	switch strings.ToLower(req.DType) {
	case "", "f32", "float32":
	case "bf16", "bfloat16":
		kind = gotch.BFloat16
	case DTypeMixed:
		return fmt.Errorf("load: dtype %q is for the idefics3 family; MiniCPM-V runs f32 or bf16", req.DType)
	default:
		return fmt.Errorf("load: dtype %q: want f32 or bf16", req.DType)
	}
	if err := torch.SetThreads(req.Threads); err != nil {
		return fmt.Errorf("load: %w", err)
	}
	if err := checkModelDir(req.ModelDir, "get it with `m3gate model fetch m3-agiqa`, or `m3gate model tiny --family minicpmv25 --out DIR` for a random-weight test model"); err != nil {
		return err
	}
	total := dirWeightBytes(req.ModelDir)
	progress(schemas.LoadProgress{Stage: "model", TotalBytes: total, Message: "loading " + req.ModelDir})
	model, err := minicpmv.Load(req.ModelDir, minicpmv.LoadOptions{DType: kind, Device: dev})
	if err != nil {
		return fmt.Errorf("load: %w", err)
	}
	defer func() {
		if err != nil {
			model.Close()
		}
	}()
	if model.Tokenizer == nil {
		return fmt.Errorf("load: %s has no tokenizer.json", req.ModelDir)
	}
	progress(schemas.LoadProgress{Stage: "model", DoneBytes: total, TotalBytes: total})
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("load: %w", err)
	}
	params := map[string]*ts.Tensor{}
	for _, p := range model.Params() {
		params[p.Name] = *p.Dst
	}
	set, err := loadAdapters(req.Adapters, model.Linears(), lora.SetOptions{Params: params}, progress)
	if err != nil {
		return err
	}
	preds, err := loadPredictors(req.Predictors, model.Device, model.Config.Text.VocabSize, progress)
	if err != nil {
		return err
	}
	seen := map[int64]string{}
	for i, w := range iqa.RatingWords {
		// The answer follows the header's "\n\n": the word has no space.
		ids, err := model.Tokenizer.Encode(w)
		if err != nil || len(ids) == 0 {
			return fmt.Errorf("load: tokenize rating word %q: %v", w, err)
		}
		if prev, dup := seen[ids[0]]; dup {
			return fmt.Errorf("load: rating words %q and %q start with the same token %d", prev, w, ids[0])
		}
		seen[ids[0]] = w
		e.wordIDs[i] = ids[0]
	}
	if e.header, err = model.Tokenizer.EncodeWithAdded(minicpmv.StartHeader + "assistant" + minicpmv.EndHeader + "\n\n"); err != nil {
		return fmt.Errorf("load: %w", err)
	}
	e.model, e.adapters, e.predictors, e.opts, e.maxPixels = model, set, preds, fo, maxPixels
	dtype := "f32"
	if kind == gotch.BFloat16 {
		dtype = "bf16"
	}
	e.info = schemas.ModelInfo{
		Family: FamilyMiniCPMV25, ModelDir: req.ModelDir, Device: torch.DeviceName(model.Device), DType: dtype,
		AdapterAspects: sortedKeys(req.Adapters), PredictorAspects: sortedKeys(req.Predictors),
		Details: map[string]string{
			"vocab":     strconv.Itoa(model.Config.Text.VocabSize),
			"query_num": strconv.Itoa(model.Config.QueryNum),
			"decode":    decodeName(fo),
			"threads":   strconv.Itoa(torch.Threads()),
			"blas":      torch.BLAS(),
		},
	}
	progress(schemas.LoadProgress{Stage: "ready", DoneBytes: total, TotalBytes: total})
	return nil
}

func decodeName(o familyOptions) string {
	if o.numBeams > 1 {
		return fmt.Sprintf("beam search (%d beams, repetition penalty %g)", o.numBeams, o.penalty)
	}
	return "greedy"
}

// Score scores every item on every aspect, one image at a time (the
// reference's batch size), aspects grouped by adapter.
func (e *miniCPMEngine) Score(ctx context.Context, items []schemas.ScoreItem, opts schemas.ScoreOptions) ([]schemas.ItemResult, error) {
	if e.model == nil {
		return nil, schemas.ErrNotLoaded
	}
	if len(opts.Aspects) == 0 {
		return nil, fmt.Errorf("score: no aspects requested")
	}
	for _, name := range opts.Aspects {
		if _, ok := opts.Prompts[name]; !ok {
			return nil, fmt.Errorf("score: no prompts for aspect %q", name)
		}
	}
	maxNew := opts.MaxNewTokens
	if maxNew <= 0 {
		maxNew = 128
	}
	out := make([]schemas.ItemResult, len(items))
	for i, it := range items {
		out[i].Index = i
		img, err := decodeItem(it, e.maxPixels)
		if err != nil {
			out[i].Error = err.Error()
			continue
		}
		out[i].Aspects = map[string]schemas.AspectResult{}
		for _, name := range opts.Aspects {
			p := opts.Prompts[name]
			r, err := e.scoreAspect(ctx, img, it.Prompt, name, Prompts{Round1: p.Round1, Round2: p.Round2}, maxNew, opts.SkipDescription)
			if err != nil {
				if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
					return nil, err
				}
				out[i].Error = err.Error()
				out[i].Aspects = nil
				break
			}
			out[i].Aspects[name] = r
		}
	}
	return out, nil
}

// scoreAspect runs one aspect on one image.
func (e *miniCPMEngine) scoreAspect(ctx context.Context, img image.Image, genPrompt, aspect string, p Prompts, maxNew int, skip bool) (schemas.AspectResult, error) {
	m := e.model
	var res schemas.AspectResult
	if e.adapters != nil {
		name := ""
		if _, ok := e.adapters.Adapter(aspect); ok {
			name = aspect
		}
		if err := e.adapters.Activate(name); err != nil {
			return res, err
		}
	}
	t0 := time.Now()
	// the adapter replaces the vision tower and the resampler: encode per aspect
	f, err := m.EncodeImage(img, e.opts.slices(aspect))
	if err != nil {
		return res, err
	}
	defer f.Drop()
	ph := f.Placeholder(m.Config.QueryNum)
	encode := time.Since(t0)

	t1 := time.Now()
	r1 := p.RoundOneText(genPrompt)
	desc := ""
	// round 1's prompt (the image and the question), kept for round 2
	var r1IDs []int64
	var r1Out *minicpmv.Output
	var r1Cache *kvcache.Cache
	defer func() {
		if r1Out != nil {
			r1Out.Drop()
			r1Cache.Free()
		}
	}()
	if !skip {
		ids, err := m.Tokenizer.EncodeParts(minicpmv.Render([]minicpmv.Message{{Role: "user", Content: r1}}, ph, true))
		if err != nil {
			return res, err
		}
		out, cache, err := m.Prefill(ids, f)
		if err != nil {
			return res, err
		}
		r1IDs, r1Out, r1Cache = ids, out, cache
		toks, err := m.Describe(ctx, cache, out.Last, minicpmv.DecodeOptions{MaxTokens: maxNew, NumBeams: e.opts.numBeams, RepetitionPenalty: e.opts.penalty})
		if err != nil {
			return res, err
		}
		text, err := m.Tokenizer.Decode(toks, true)
		if err != nil {
			return res, err
		}
		desc = strings.TrimSpace(strings.ToValidUTF8(text, "\uFFFD"))
	}
	describe := time.Since(t1)

	t2 := time.Now()
	msgs := []minicpmv.Message{{Role: "user", Content: r1}, {Role: "assistant", Content: desc}, {Role: "user", Content: p.Round2}}
	ids, err := m.Tokenizer.EncodeParts(minicpmv.Render(msgs, ph, false))
	if err != nil {
		return res, err
	}
	out, cache, err := e.roundTwo(ids, f, r1IDs, r1Out, r1Cache)
	if r1Out != nil { // round 1's cache and states are round 2's copies now
		r1Out.Drop()
		r1Cache.Free()
		r1Out = nil
	}
	if err != nil {
		return res, err
	}
	defer out.Drop()
	// the rating word: the answer's first token after the assistant header
	var pv []float64
	err = torch.Run("rating words", false, func() error {
		logits, next := m.Text.Step(cache, e.header[:1])
		for _, t := range e.header[1:] {
			logits.MustDrop()
			prev := next
			logits, next = m.Text.Step(next, []int64{t})
			prev.Free()
		}
		next.Free()
		probs := logits.MustSoftmax(-1, gotch.Float, true)
		ids := torch.ToDevice(ts.MustOfSlice(e.wordIDs[:]), torch.TensorDevice(probs), true)
		pv = torch.Float64s(probs.MustIndexSelect(1, ids, true), true)
		torch.Drop(ids)
		return nil
	})
	cache.Free()
	if err != nil {
		return res, err
	}
	r := ratingResult(aspect, pv)
	res = schemas.AspectResult{MOS: r.MOS, Rating: r.Rating, WordProbs: r.WordProbs, Description: desc, Source: r.Source}
	rate := time.Since(t2)
	var predict time.Duration
	if pr := e.predictors[aspect]; pr != nil {
		t3 := time.Now()
		// M3-AGIQA truncates the three messages on the right
		// (model_max_length); the model is causal, so the first positions
		// of the whole prompt are those of the truncated one.
		maxLen := e.opts.length(aspect)
		if cl := pr.Config().ContextLength; cl > 0 && cl < maxLen {
			maxLen = cl
		}
		var mos float64
		err := torch.Run("predict", false, func() error {
			h := out.Hidden
			if n := h.MustSize()[0]; n > int64(maxLen) {
				h = h.MustNarrow(0, 0, int64(maxLen), false)
				defer torch.Drop(h)
			}
			h1 := h.MustUnsqueeze(0, false)
			defer torch.Drop(h1)
			y, err := pr.ForwardHidden(h1, m.Text.Head.W, nil)
			if err != nil {
				return err
			}
			mos = torch.Float64s(y, true)[0]
			return nil
		})
		if err != nil {
			return res, fmt.Errorf("predictor: %w", err)
		}
		res.MOS, res.Source = clamp(mos, 0, 5), SourcePredictor
		predict = time.Since(t3)
	}
	if math.IsNaN(res.MOS) || math.IsInf(res.MOS, 0) {
		return res, fmt.Errorf("%s MOS is not finite", aspect)
	}
	res.Timings = map[string]time.Duration{"encode": encode, "describe": describe, "rate": rate, "predict": predict}
	return res, nil
}

// roundTwo runs the three-message prompt ids: after round 1's cache when
// round 1's prompt r1 starts it (the image and the question, most of an
// 8B model's prompt, then run once per aspect instead of twice), else
// whole. Its output holds the hidden states of every position of ids.
func (e *miniCPMEngine) roundTwo(ids []int64, f *minicpmv.ImageFeatures, r1 []int64, r1Out *minicpmv.Output, r1Cache *kvcache.Cache) (*minicpmv.Output, *kvcache.Cache, error) {
	m := e.model
	if r1Out == nil || noRoundOneReuse || len(ids) <= len(r1) || !slices.Equal(ids[:len(r1)], r1) {
		return m.Prefill(ids, f)
	}
	ext, cache, err := m.Extend(r1Cache, ids[len(r1):])
	if err != nil {
		return nil, nil, err
	}
	roundOneReused.Add(1)
	out := &minicpmv.Output{Last: ext.Last}
	err = torch.Run("round two", false, func() error {
		out.Hidden = ts.MustCat([]*ts.Tensor{r1Out.Hidden, ext.Hidden}, 0)
		return nil
	})
	ext.Hidden.MustDrop()
	if err != nil {
		ext.Last.MustDrop()
		cache.Free()
		return nil, nil, err
	}
	return out, cache, nil
}

// roundOneReused counts the round-2 prompts that continued round 1's
// cache, for tests.
var roundOneReused atomic.Int64

// noRoundOneReuse makes round 2 prefill its whole prompt, for tests that
// compare it with the reuse of round 1's cache.
var noRoundOneReuse bool

// decodeItem reads and decodes one item's image.
func decodeItem(it schemas.ScoreItem, maxPixels int64) (image.Image, error) {
	data, name := it.Data, "image"
	if len(data) == 0 && it.Path != "" {
		name = it.Path
		var err error
		if data, err = os.ReadFile(it.Path); err != nil {
			return nil, fmt.Errorf("read image: %w", err)
		}
	}
	img, err := imageproc.Decode(data, maxPixels)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return img, nil
}

// Unload closes the model.
func (e *miniCPMEngine) Unload(ctx context.Context) error {
	if e.model != nil {
		e.model.Close()
	}
	e.model, e.adapters, e.predictors = nil, nil, nil
	e.info = schemas.ModelInfo{}
	return nil
}

// Info describes the loaded model.
func (e *miniCPMEngine) Info() schemas.ModelInfo { return e.info }
