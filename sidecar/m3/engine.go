package m3

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/sugarme/gotch"

	"github.com/m3gate/m3gate/schemas"
	"github.com/m3gate/m3gate/sidecar/imageproc"
	"github.com/m3gate/m3gate/sidecar/lora"
	"github.com/m3gate/m3gate/sidecar/mllm"
	"github.com/m3gate/m3gate/sidecar/service"
	"github.com/m3gate/m3gate/sidecar/torch"
	"github.com/m3gate/m3gate/sidecar/xlstm"
)

// Engine serves the M3-AGIQA scorer to the sidecar's gRPC service: Load
// reads the MLLM, one LoRA adapter and one xLSTM predictor per aspect;
// Score decodes and preprocesses images and scores them.
type Engine struct {
	model      *mllm.Model
	scorer     *Scorer
	adapters   *lora.Set
	predictors map[string]*xlstm.Predictor
	info       schemas.ModelInfo
	maxPixels  int64
	maxPrompt  int
	image      imageproc.Options // preprocessing of every image
	// other serves a family other than idefics3 (minicpmv25) when loaded.
	other service.Engine
}

var _ service.Engine = (*Engine)(nil)

// NewEngine returns an engine with no model loaded.
func NewEngine() *Engine { return &Engine{} }

// Load options understood in LoadRequest.Options.
const (
	// OptionMaxPixels bounds the decoded size of an image (decompression
	// bombs); default imageproc.DefaultMaxPixels.
	OptionMaxPixels = "max_pixels"
	// OptionImageSplitting turns the tiled mode on or off ("true"/"false");
	// without it the model's preprocessor_config.json decides
	// (do_image_splitting).
	OptionImageSplitting = "image_splitting"
	// OptionMaxPromptTokens bounds the conversation of every aspect in
	// tokens; default DefaultMaxPromptTokens (see Engine.CheckPrompts).
	OptionMaxPromptTokens = "max_prompt_tokens"
)

// DTypeMixed is the LoadRequest dtype of f32 compute with bf16 products
// for the vision tower and prompts on the CPU (mllm.LoadOptions.
// BF16Products): opt-in, for CPUs with avx512_bf16 or amx_bf16.
const DTypeMixed = "mixed"

// DefaultMaxPromptTokens is the default OptionMaxPromptTokens: far more than
// any generation prompt needs (CLIP reads 77 tokens), far less than what
// would hold the model for minutes (prefill cost grows faster than
// linearly with length).
const DefaultMaxPromptTokens = 1024

// imageOptions is the preprocessing the model's processor config asks for
// (tile side, do_image_splitting, size.longest_edge), with split, when set,
// overriding do_image_splitting.
func imageOptions(p mllm.ProcessorConfig, split *bool) imageproc.Options {
	o := imageproc.Options{Size: p.Size, Split: p.Split, LongestEdge: p.LongestEdge}
	if split != nil {
		o.Split = *split
	}
	return o
}

// Load reads the model directory, the adapters and the predictors of req.
// A failed Load leaves no model loaded.
func (e *Engine) Load(ctx context.Context, req schemas.LoadRequest, progress func(schemas.LoadProgress)) (err error) {
	e.Unload(ctx)
	if progress == nil {
		progress = func(schemas.LoadProgress) {}
	}
	family := req.Family
	if family == "" {
		family = "idefics3"
	}
	if family == FamilyMiniCPMV25 {
		fe := &miniCPMEngine{}
		if err := fe.Load(ctx, req, progress); err != nil {
			return err
		}
		e.other = fe
		return nil
	}
	if !contains(mllm.Families(), family) {
		return fmt.Errorf("load: unknown model family %q (known: %s)", family, strings.Join(append(mllm.Families(), FamilyMiniCPMV25), ", "))
	}
	dev, err := torch.ParseDevice(req.Device)
	if err != nil {
		return fmt.Errorf("load: %w", err)
	}
	if err := torch.CheckDevice(dev); err != nil {
		return fmt.Errorf("load: %w", err)
	}
	opts := mllm.LoadOptions{DType: gotch.Float, Device: dev}
	switch strings.ToLower(req.DType) {
	case "", "f32", "float32":
	case "bf16", "bfloat16":
		opts.DType = gotch.BFloat16
	case DTypeMixed:
		opts.BF16Products = true
	default:
		return fmt.Errorf("load: dtype %q: want f32, %s or bf16", req.DType, DTypeMixed)
	}
	maxPixels := int64(imageproc.DefaultMaxPixels)
	var split *bool // nil: the model's processor config decides
	maxPrompt := DefaultMaxPromptTokens
	for k, v := range req.Options {
		switch k {
		case OptionMaxPixels:
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n <= 0 {
				return fmt.Errorf("load: option %s=%q: want a positive integer", k, v)
			}
			maxPixels = n
		case OptionImageSplitting:
			b, err := strconv.ParseBool(v)
			if err != nil {
				return fmt.Errorf("load: option %s=%q: want true or false", k, v)
			}
			split = &b
		case OptionMaxPromptTokens:
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return fmt.Errorf("load: option %s=%q: want a positive integer", k, v)
			}
			maxPrompt = n
		default:
			return fmt.Errorf("load: unknown option %q", k)
		}
	}
	if err := torch.SetThreads(req.Threads); err != nil {
		return fmt.Errorf("load: %w", err)
	}
	if err := checkModelDir(req.ModelDir, "get one with `m3gate model fetch smolvlm-256m`, or `m3gate model tiny --out DIR` for a random-weight demo model"); err != nil {
		return err
	}
	total := dirWeightBytes(req.ModelDir)
	progress(schemas.LoadProgress{Stage: "model", TotalBytes: total, Message: "loading " + req.ModelDir})
	model, err := mllm.Load(req.ModelDir, opts)
	if err != nil {
		return fmt.Errorf("load: %w", err)
	}
	defer func() {
		if err != nil { // a failed Load frees the model now
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

	set, err := loadAdapters(req.Adapters, model.Linears(), lora.SetOptions{}, progress)
	if err != nil {
		return err
	}
	preds, err := loadPredictors(req.Predictors, model.Device, model.Config.Text.VocabSize, progress)
	if err != nil {
		return err
	}
	var sw AdapterSwitch
	if set != nil {
		sw = set
	}
	scorer, err := New(model, sw)
	if err != nil {
		return fmt.Errorf("load: %w", err)
	}
	e.model, e.scorer, e.adapters, e.predictors = model, scorer, set, preds
	e.maxPixels, e.maxPrompt = maxPixels, maxPrompt
	e.image = imageOptions(model.Processor, split)
	dtype := "f32"
	if opts.DType == gotch.BFloat16 {
		dtype = "bf16"
	} else if opts.BF16Products {
		dtype = DTypeMixed
	}
	e.info = schemas.ModelInfo{
		Family: family, ModelDir: req.ModelDir, Device: torch.DeviceName(model.Device), DType: dtype,
		AdapterAspects: sortedKeys(req.Adapters), PredictorAspects: sortedKeys(req.Predictors),
		Details: map[string]string{
			"vocab":        strconv.Itoa(model.Config.Text.VocabSize),
			"image_size":   strconv.Itoa(model.Config.Vision.ImageSize),
			"image_tokens": strconv.Itoa(model.Config.ImageSeqLen()),
			"threads":      strconv.Itoa(torch.Threads()),
			"blas":         torch.BLAS(),
		},
	}
	progress(schemas.LoadProgress{Stage: "ready", DoneBytes: total, TotalBytes: total})
	return nil
}

// Score decodes, preprocesses and scores items. An image that cannot be
// read or decoded fails alone, in its result's Error.
func (e *Engine) Score(ctx context.Context, items []schemas.ScoreItem, opts schemas.ScoreOptions) ([]schemas.ItemResult, error) {
	if e.other != nil {
		return e.other.Score(ctx, items, opts)
	}
	if e.scorer == nil {
		return nil, schemas.ErrNotLoaded
	}
	if len(opts.Aspects) == 0 {
		return nil, fmt.Errorf("score: no aspects requested")
	}
	aspects := make([]Aspect, len(opts.Aspects))
	for i, name := range opts.Aspects {
		p, ok := opts.Prompts[name]
		if !ok {
			return nil, fmt.Errorf("score: no prompts for aspect %q", name)
		}
		a := Aspect{Name: name, Prompts: Prompts{Round1: p.Round1, Round2: p.Round2}, Predictor: e.predictors[name]}
		if _, ok := e.adapterFor(name); ok {
			a.Adapter = name
		}
		aspects[i] = a
	}
	out := make([]schemas.ItemResult, len(items))
	var batch []Item
	var index []int
	for i, it := range items {
		out[i].Index = i
		px, err := e.pixels(it)
		if err != nil {
			out[i].Error = err.Error()
			continue
		}
		batch = append(batch, Item{Pixels: px, Prompt: it.Prompt})
		index = append(index, i)
	}
	if len(batch) == 0 {
		return out, nil
	}
	res, err := e.scorer.Score(ctx, batch, aspects, Options{MaxNewTokens: opts.MaxNewTokens, SkipDescription: opts.SkipDescription})
	if err != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return nil, err
		}
		for _, i := range index {
			out[i].Error = err.Error()
		}
		return out, nil
	}
	for k, i := range index {
		out[i].Aspects = map[string]schemas.AspectResult{}
		for _, r := range res[k] {
			out[i].Aspects[r.Aspect] = schemas.AspectResult{
				MOS: r.MOS, Rating: r.Rating, WordProbs: r.WordProbs, Description: r.Description, Source: r.Source,
				Timings: map[string]time.Duration{
					"encode": r.Timings.Encode, "describe": r.Timings.Describe,
					"rate": r.Timings.Rate, "predict": r.Timings.Predict,
				},
			}
		}
	}
	return out, nil
}

// CheckPrompts implements service.PromptChecker: for every image's prompt
// and every requested aspect, the conversation the model runs (chat
// template, both questions and the generation prompt; the image's tokens
// and the generated description not counted) must fit in the
// max_prompt_tokens option. A prompt over the limit fails the whole
// request with schemas.ErrInvalid, naming its length and the limit.
func (e *Engine) CheckPrompts(items []schemas.ScoreItem, opts schemas.ScoreOptions) error {
	if pc, ok := e.other.(service.PromptChecker); ok {
		return pc.CheckPrompts(items, opts)
	}
	maxPrompt := e.maxPrompt
	if maxPrompt <= 0 {
		maxPrompt = DefaultMaxPromptTokens
	}
	seen := map[string]bool{}
	for i, it := range items {
		if seen[it.Prompt] {
			continue
		}
		seen[it.Prompt] = true
		// A token is at least one byte and rarely more than a few: refuse
		// absurd lengths without tokenizing them.
		if len(it.Prompt) > 32*maxPrompt {
			return fmt.Errorf("%w: image %d: prompt of %d bytes is over the limit of %d tokens (%s)", schemas.ErrInvalid, i, len(it.Prompt), maxPrompt, OptionMaxPromptTokens)
		}
		if e.scorer == nil {
			continue // another family (its own limits), or Score reports the missing model
		}
		for _, name := range opts.Aspects {
			p, ok := opts.Prompts[name]
			if !ok {
				continue // Score names the missing prompts
			}
			n, err := e.scorer.PromptTokens(Prompts{Round1: p.Round1, Round2: p.Round2}, it.Prompt)
			if err != nil {
				return fmt.Errorf("%w: image %d: %w", schemas.ErrInvalid, i, err)
			}
			if n > e.maxPrompt {
				return fmt.Errorf("%w: image %d: the %s conversation is %d tokens with its prompt, over the limit of %d (%s)", schemas.ErrInvalid, i, name, n, e.maxPrompt, OptionMaxPromptTokens)
			}
		}
	}
	return nil
}

var _ service.PromptChecker = (*Engine)(nil)

// pixels reads, decodes and preprocesses one item's image.
func (e *Engine) pixels(it schemas.ScoreItem) (mllm.Pixels, error) {
	data, name := it.Data, "image"
	if len(data) == 0 && it.Path != "" {
		name = it.Path
		var err error
		if data, err = os.ReadFile(it.Path); err != nil {
			return mllm.Pixels{}, fmt.Errorf("read image: %w", err)
		}
	}
	img, err := imageproc.Decode(data, e.maxPixels)
	if err != nil {
		return mllm.Pixels{}, fmt.Errorf("%s: %w", name, err)
	}
	p, err := imageproc.Preprocess(img, e.image)
	if b := img.Bounds(); b.Dx()*b.Dy() > bigImagePixels {
		// Hand a large decoded image's memory back to the system now,
		// rather than holding it through the model pass (which pauses the
		// collector).
		img = nil
		debug.FreeOSMemory()
	}
	if err != nil {
		return mllm.Pixels{}, fmt.Errorf("%s: %w", name, err)
	}
	return mllm.Pixels{Tiles: p.Tiles, Rows: p.Rows, Cols: p.Cols, Size: p.Size}, nil
}

// bigImagePixels is the decoded size above which pixels returns the
// image's memory to the system at once.
const bigImagePixels = 16 << 20

// adapterFor returns the adapter loaded for an aspect.
func (e *Engine) adapterFor(aspect string) (*lora.Adapter, bool) {
	if e.adapters == nil {
		return nil, false
	}
	return e.adapters.Adapter(aspect)
}

// Unload closes the model, freeing its weights now.
func (e *Engine) Unload(ctx context.Context) error {
	if e.other != nil {
		e.other.Unload(ctx)
		e.other = nil
	}
	if e.model != nil {
		e.model.Close()
	}
	e.model, e.scorer, e.adapters, e.predictors = nil, nil, nil, nil
	e.info = schemas.ModelInfo{}
	runtime.GC()
	return nil
}

// Info describes the loaded model.
func (e *Engine) Info() schemas.ModelInfo {
	if e.other != nil {
		return e.other.Info()
	}
	return e.info
}

// dirWeightBytes is the size of the safetensors files in dir.
func dirWeightBytes(dir string) int64 {
	files, _ := filepath.Glob(filepath.Join(dir, "*.safetensors"))
	var n int64
	for _, f := range files {
		if st, err := os.Stat(f); err == nil {
			n += st.Size()
		}
	}
	return n
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// checkModelDir reports a missing model directory with how to get one.
func checkModelDir(dir, howToGet string) error {
	if dir == "" {
		return fmt.Errorf("load: no model directory given")
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return fmt.Errorf("load: model directory %s does not exist (%s)", dir, howToGet)
	}
	return nil
}

// loadAdapters loads the LoRA adapter of each aspect (sorted) into one set
// over linears; nil when there are none.
func loadAdapters(adapters map[string]string, linears map[string]*mllm.Linear, opts lora.SetOptions, progress func(schemas.LoadProgress)) (*lora.Set, error) {
	var set *lora.Set
	for _, aspect := range sortedKeys(adapters) {
		dir := adapters[aspect]
		progress(schemas.LoadProgress{Stage: "adapter", Message: aspect + ": " + dir})
		a, err := lora.Load(dir, aspect)
		if err != nil {
			return nil, fmt.Errorf("load adapter %s: %w", aspect, err)
		}
		if set == nil {
			set = lora.NewSet(linears, opts)
		}
		if err := set.Add(a); err != nil {
			return nil, fmt.Errorf("load adapter %s: %w", aspect, err)
		}
	}
	return set, nil
}

// loadPredictors loads the xLSTM predictor of each aspect (sorted) on dev
// and checks that it takes vocab-wide logits.
func loadPredictors(predictors map[string]string, dev gotch.Device, vocab int, progress func(schemas.LoadProgress)) (map[string]*xlstm.Predictor, error) {
	preds := map[string]*xlstm.Predictor{}
	for _, aspect := range sortedKeys(predictors) {
		path := predictors[aspect]
		progress(schemas.LoadProgress{Stage: "predictor", Message: aspect + ": " + path})
		p, err := xlstm.Load(path, dev)
		if err != nil {
			return nil, fmt.Errorf("load predictor %s: %w", aspect, err)
		}
		if in := p.Config().InputDim; in != vocab {
			return nil, fmt.Errorf("load predictor %s: %s takes %d-wide logits but the model's vocabulary has %d tokens", aspect, path, in, vocab)
		}
		preds[aspect] = p
	}
	return preds, nil
}
