package train

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/schemas/iqa"
	"github.com/m3gate/m3gate/sidecar/lora"
	"github.com/m3gate/m3gate/sidecar/mllm"
	"github.com/m3gate/m3gate/sidecar/tensorio"
	"github.com/m3gate/m3gate/sidecar/torch"
)

// FinetuneOptions configures Finetune. Start from DefaultFinetuneOptions.
type FinetuneOptions struct {
	Model   string // model directory (config.json, model.safetensors, tokenizer.json)
	Data    string // conversations JSONL
	Images  string // folder the records' image names resolve against
	Out     string // output directory: final adapter, checkpoints, metrics.jsonl
	Adapter string // optional PEFT adapter to start from

	Aspect     string // records of this aspect only ("" = all)
	TrainSplit string // split of the training records
	ValSplit   string // split of the validation records ("" = no validation)
	MaxTrain   int    // at most this many training records (0 = all)
	MaxVal     int    // at most this many validation records (0 = all)

	Epochs      int
	MaxSteps    int // optimiser steps (0 = Epochs over the data)
	BatchSize   int // conversations per forward pass
	GradAccum   int // forward passes per optimiser step
	LR          float64
	WarmupRatio float64 // warmup steps = ceil(ratio · total steps)
	WeightDecay float64
	MaxGradNorm float64 // global gradient-norm clip (0 = none)
	LoRA        lora.Config
	DType       string // f32 or bf16 (base weights; LoRA weights stay f32)
	Device      string // cpu (or ""), cuda or cuda:N (a CUDA libtorch build)
	Seed        int64

	SaveEvery int  // checkpoint every this many steps (0 = only at the end)
	EvalEvery int  // validation every this many steps (0 = only at the end)
	Keep      int  // checkpoints kept (0 = all)
	Resume    bool // continue from the latest checkpoint in Out
	Threads   int  // libtorch intra-op threads (0 = leave as is)
	// CacheImages keeps each image's vision features in memory after its
	// first use (the vision tower is frozen).
	CacheImages bool

	// onStep, when set, runs after every optimiser step (tests cancel here).
	onStep func(step int)
}

// DefaultFinetuneOptions returns the reference's recipe: LoRA r=64,
// alpha=64, dropout 0.05 on q/k/v/o, AdamW lr 2e-6, cosine schedule with
// 1% warmup, gradient clipping at 1.
func DefaultFinetuneOptions() FinetuneOptions {
	return FinetuneOptions{
		TrainSplit: "train", ValSplit: "test", Epochs: 1, BatchSize: 1, GradAccum: 1,
		LR: 2e-6, WarmupRatio: 0.01, WeightDecay: 0, MaxGradNorm: 1, LoRA: defaultLoRA(),
		DType: "f32", Seed: 42, SaveEvery: 500, Keep: 2, CacheImages: true,
	}
}

func (o FinetuneOptions) validate() error {
	switch {
	case o.Model == "":
		return errors.New("finetune: --model is required")
	case o.Data == "":
		return errors.New("finetune: --data is required")
	case o.Out == "":
		return errors.New("finetune: --out is required")
	case o.Epochs <= 0 && o.MaxSteps <= 0:
		return fmt.Errorf("finetune: --epochs %d and --max-steps %d: one must be positive", o.Epochs, o.MaxSteps)
	case o.BatchSize <= 0 || o.GradAccum <= 0:
		return fmt.Errorf("finetune: --batch-size %d and --grad-accum %d must be positive", o.BatchSize, o.GradAccum)
	case !(o.LR > 0) || o.WarmupRatio < 0 || o.WarmupRatio > 1 || o.WeightDecay < 0 || o.MaxGradNorm < 0:
		return fmt.Errorf("finetune: lr %g must be positive, warmup ratio %g in [0,1], weight decay %g and max grad norm %g non-negative", o.LR, o.WarmupRatio, o.WeightDecay, o.MaxGradNorm)
	case o.DType != "f32" && o.DType != "bf16":
		return fmt.Errorf("finetune: --dtype %q: want f32 or bf16", o.DType)
	}
	if o.Aspect != "" {
		if err := iqa.CheckAspect(o.Aspect); err != nil {
			return fmt.Errorf("finetune: --aspect: %w", err)
		}
	}
	if _, err := torch.ParseDevice(o.Device); err != nil {
		return fmt.Errorf("finetune: --device: %w", err)
	}
	return nil
}

// defaultLoRA is the reference's LoRA: r=64, alpha=64, dropout 0.05 on the
// text model's q/k/v/o projections.
func defaultLoRA() lora.Config {
	c := lora.DefaultConfig()
	c.TargetModules = TextAttention([]string{"q_proj", "k_proj", "v_proj", "o_proj"})
	return c
}

// FinetuneResult summarises a finetune run.
type FinetuneResult struct {
	Steps      int       // optimiser steps completed in total
	TotalSteps int       // steps of the whole run
	Losses     []float64 // training loss of each step this process ran
	ValLoss    float64   // last validation loss (NaN without validation)
	ValAcc     float64   // last validation rating-word accuracy
	AdapterDir string    // where the final adapter is (Out)
}

// trainerState is trainer_state.json of a finetune checkpoint.
type trainerState struct {
	Step        int     `json:"step"`
	TotalSteps  int     `json:"total_steps"`
	Fingerprint string  `json:"fingerprint"`
	Seed        int64   `json:"seed"`
	BatchSize   int     `json:"batch_size"`
	GradAccum   int     `json:"grad_accum"`
	NumTrain    int     `json:"num_train"`
	LastLoss    float64 `json:"last_loss"`
	Done        bool    `json:"done"`
}

// finetuner holds one run's state.
type finetuner struct {
	opts       FinetuneOptions
	m          *mllm.Model
	lora       *trainableAdapter
	opt        *adamW
	train, val []example
	feats      *featureCache
	ratingIDs  *ts.Tensor
	lmHead     *mllm.Linear
	micros     int // micro-batches per epoch
	total      int
	warmup     int
	log        *jsonlLog
}

// Finetune trains a LoRA adapter of the MLLM on two-round conversations,
// with the loss on the assistant tokens of both turns. It writes PEFT
// checkpoints (plus optimiser and trainer state) to Out every SaveEvery
// steps and when ctx is cancelled, and the final adapter to Out.
func Finetune(ctx context.Context, opts FinetuneOptions, stderr io.Writer) (*FinetuneResult, error) {
	if stderr == nil {
		stderr = io.Discard
	}
	f, start, err := newFinetuner(opts, stderr)
	if err != nil {
		return nil, err
	}
	defer f.close()
	return f.run(ctx, start, stderr)
}

// close detaches the adapter, frees the model and closes the metrics log.
func (f *finetuner) close() {
	if f.lora != nil {
		f.lora.set.Detach()
	}
	if f.m != nil {
		f.m.Close()
	}
	if f.log != nil {
		f.log.Close()
	}
}

// newFinetuner loads the model and data, builds the examples and the
// adapter (fresh, from --adapter or from the latest checkpoint) and returns
// the step to start at.
func newFinetuner(opts FinetuneOptions, stderr io.Writer) (_ *finetuner, _ int, err error) {
	if err := opts.validate(); err != nil {
		return nil, 0, err
	}
	if stderr == nil {
		stderr = io.Discard
	}
	if opts.Threads > 0 {
		if err := torch.SetThreads(opts.Threads); err != nil {
			return nil, 0, fmt.Errorf("finetune: %w", err)
		}
	}
	kind := gotch.Float
	if opts.DType == "bf16" {
		kind = gotch.BFloat16
	}
	dev, _ := torch.ParseDevice(opts.Device) // checked by validate
	m, err := mllm.Load(opts.Model, mllm.LoadOptions{DType: kind, Device: dev})
	if err != nil {
		return nil, 0, fmt.Errorf("finetune: %w", err)
	}
	defer func() {
		if err != nil { // a failed start frees the model now
			m.Close()
		}
	}()
	if m.Tokenizer == nil {
		return nil, 0, fmt.Errorf("finetune: model %s has no tokenizer.json", opts.Model)
	}
	recs, err := ReadConversations(opts.Data)
	if err != nil {
		return nil, 0, fmt.Errorf("finetune: %w", err)
	}
	if opts.Images == "" {
		opts.Images = filepath.Join(filepath.Dir(opts.Data), "images")
	}
	f := &finetuner{opts: opts, m: m, feats: newFeatureCache(m, opts.Images, opts.CacheImages)}
	first, err := ratingFirstTokens(m)
	if err != nil {
		return nil, 0, fmt.Errorf("finetune: %w", err)
	}
	f.ratingIDs = torch.ToDevice(ts.MustOfSlice(first[:]), m.Device, true)
	if f.lmHead = m.Linears()["lm_head"]; f.lmHead == nil {
		return nil, 0, fmt.Errorf("finetune: the model has no lm_head")
	}
	build := func(rs []Record) ([]example, error) {
		var out []example
		for _, r := range rs {
			ex, err := buildExample(m, r, r.TeacherDescription, first)
			if err != nil {
				return nil, err
			}
			out = append(out, ex)
		}
		return out, nil
	}
	if f.train, err = build(Select(recs, opts.Aspect, opts.TrainSplit, opts.MaxTrain)); err != nil {
		return nil, 0, fmt.Errorf("finetune: %w", err)
	}
	if len(f.train) == 0 {
		return nil, 0, fmt.Errorf("finetune: no training records of aspect %q and split %q in %s", opts.Aspect, opts.TrainSplit, opts.Data)
	}
	if opts.ValSplit != "" {
		if f.val, err = build(Select(recs, opts.Aspect, opts.ValSplit, opts.MaxVal)); err != nil {
			return nil, 0, fmt.Errorf("finetune: %w", err)
		}
	}
	f.micros = (len(f.train) + opts.BatchSize - 1) / opts.BatchSize
	f.total = opts.MaxSteps
	if f.total <= 0 {
		f.total = (opts.Epochs*f.micros + opts.GradAccum - 1) / opts.GradAccum
	}
	f.warmup = int(math.Ceil(opts.WarmupRatio * float64(f.total)))
	if err := os.MkdirAll(opts.Out, 0o755); err != nil {
		return nil, 0, fmt.Errorf("finetune: %w", err)
	}
	start, err := f.initAdapter()
	if err != nil {
		return nil, 0, fmt.Errorf("finetune: %w", err)
	}
	if f.log, err = openJSONL(filepath.Join(opts.Out, "metrics.jsonl")); err != nil {
		f.close()
		return nil, 0, fmt.Errorf("finetune: %w", err)
	}
	fmt.Fprintf(stderr, "finetune: %d training and %d validation conversations, %d LoRA modules (r=%d), %d steps (warmup %d), resuming at step %d\n",
		len(f.train), len(f.val), len(f.lora.a.Layers), f.lora.a.Config.R, f.total, f.warmup, start)
	return f, start, nil
}

// fingerprint identifies what fixes the data order and schedule.
func (f *finetuner) fingerprint() string {
	h := sha256.New()
	fmt.Fprintf(h, "%d|%d|%d|%d|%d|%g|%g|%g", f.opts.Seed, f.opts.BatchSize, f.opts.GradAccum, f.total, len(f.train), f.opts.LR, f.opts.WarmupRatio, f.opts.WeightDecay)
	for _, ex := range f.train {
		fmt.Fprintf(h, "|%s", ex.rec.Key())
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// initAdapter creates, loads or resumes the adapter and optimiser and
// returns the step to start at.
func (f *finetuner) initAdapter() (int, error) {
	opts := f.opts
	var ckpt string
	var st trainerState
	if opts.Resume {
		var err error
		ckpt, st, err = latestCheckpoint(opts.Out)
		if err != nil {
			return 0, err
		}
		if ckpt != "" && st.Fingerprint != f.fingerprint() {
			return 0, fmt.Errorf("resume %s: the checkpoint was made with other data or settings (seed, batch size, grad accum, steps, lr); start a new --out", ckpt)
		}
	}
	dir := opts.Adapter
	if ckpt != "" {
		dir = ckpt
	}
	var err error
	if f.lora, err = attachAdapter(f.m, dir, opts.LoRA, opts.Seed); err != nil {
		return 0, err
	}
	f.lora.a.Config.LoraDropout = opts.LoRA.LoraDropout
	f.opt = newAdamW(f.lora.params(), opts.WeightDecay)
	if ckpt != "" {
		if err := f.opt.loadState(filepath.Join(ckpt, "optimizer.safetensors"), int64(st.Step)); err != nil {
			return 0, err
		}
		return st.Step, nil
	}
	return 0, nil
}

// microBatch returns the examples of global micro-batch k: epoch k/micros
// shuffled by a generator seeded with the seed and the epoch.
func (f *finetuner) microBatch(k int) []*example {
	epoch, j := k/f.micros, k%f.micros
	perm := rand.New(rand.NewSource(f.opts.Seed + int64(epoch)*7919 + 1)).Perm(len(f.train))
	lo := j * f.opts.BatchSize
	hi := min(lo+f.opts.BatchSize, len(f.train))
	out := make([]*example, 0, hi-lo)
	for _, i := range perm[lo:hi] {
		out = append(out, &f.train[i])
	}
	return out
}

// forward runs exs and returns the summed token loss (a graph when grad),
// the number of label tokens and the number of correct rating words.
func (f *finetuner) forward(exs []*example, grad bool) (*ts.Tensor, int, int, error) {
	seqs := make([]mllm.Sequence, len(exs))
	for i, ex := range exs {
		ft, err := f.feats.get(ex.rec.Image)
		if err != nil {
			return nil, 0, 0, err
		}
		seqs[i] = mllm.Sequence{Tokens: ex.tokens, Images: []*mllm.ImageFeatures{ft}}
	}
	// Only the positions that predict an assistant token need logits: take
	// the final hidden states there and apply lm_head to those rows alone.
	out, cache, err := f.m.Prefill(seqs, mllm.ForwardOptions{Logits: mllm.LogitsNone, Hidden: true, Grad: grad})
	if err != nil {
		return nil, 0, 0, err
	}
	// The cache is not used; the keys and values the backward pass needs
	// are held by autograd's graph, not by the cache's handles.
	cache.Free()
	// mllm restores grad mode through gotch's GradSetEnabled, whose result
	// is wrong (always false): set it again for the loss.
	setGradEnabled(grad)
	sz := out.Hidden.MustSize()
	B, T, D := sz[0], sz[1], sz[2]
	var rows, targets []int64
	answer := make([]int, len(exs))
	for b, ex := range exs {
		pad := out.Pad[b]
		for t := 0; t+1 < len(ex.tokens); t++ {
			if l := ex.labels[t+1]; l != ignoreLabel {
				if t == ex.answerPos {
					answer[b] = len(rows)
				}
				rows = append(rows, int64(b)*T+int64(pad+t))
				targets = append(targets, l)
			}
		}
	}
	// Tensors passed as arguments are kept alive past the call: gotch frees
	// a tensor in its finalizer, which may otherwise run mid-call.
	idx := torch.ToDevice(ts.MustOfSlice(rows), f.m.Device, true)
	h := out.Hidden.MustView([]int64{B * T, D}, false).MustIndexSelect(0, idx, true)
	torch.Drop(idx)
	logits := f.lmHead.Forward(h).MustTotype(gotch.Float, true) // [N, V]
	vals := torch.Float64s(logits.MustIndexSelect(1, f.ratingIDs, false), true)
	correct := 0
	for b, ex := range exs {
		r := vals[answer[b]*5 : answer[b]*5+5]
		best := 0
		for i, v := range r {
			if v > r[best] {
				best = i
			}
		}
		if best == ex.rating {
			correct++
		}
	}
	tt := torch.ToDevice(ts.MustOfSlice(targets), f.m.Device, true)
	loss := logits.MustCrossEntropyLoss(tt, ts.None, 2, ignoreLabel, 0, true)
	torch.Drop(tt)
	return loss, len(rows), correct, nil
}

// evaluate returns the validation loss per token and rating accuracy.
func (f *finetuner) evaluate(ctx context.Context) (float64, float64, error) {
	if len(f.val) == 0 {
		return math.NaN(), math.NaN(), nil
	}
	f.lora.set.SetTraining(false)
	defer f.lora.set.SetTraining(true)
	sum, ntok, correct := 0.0, 0, 0
	for lo := 0; lo < len(f.val); lo += f.opts.BatchSize {
		if err := ctx.Err(); err != nil {
			return 0, 0, err
		}
		var exs []*example
		for i := lo; i < min(lo+f.opts.BatchSize, len(f.val)); i++ {
			exs = append(exs, &f.val[i])
		}
		var n, c int
		err := torch.Run("evaluate", false, func() error {
			loss, nn, cc, err := f.forward(exs, false)
			if err != nil {
				return err
			}
			n, c = nn, cc
			sum += scalar(loss)
			return nil
		})
		if err != nil {
			return 0, 0, err
		}
		ntok += n
		correct += c
	}
	return sum / float64(max(ntok, 1)), float64(correct) / float64(len(f.val)), nil
}

func (f *finetuner) run(ctx context.Context, start int, stderr io.Writer) (*FinetuneResult, error) {
	res := &FinetuneResult{TotalSteps: f.total, ValLoss: math.NaN(), ValAcc: math.NaN(), AdapterDir: f.opts.Out, Steps: start}
	f.lora.set.SetTraining(true)
	prog := newProgress(stderr, "finetune step", start, f.total)
	accum := f.opts.GradAccum
	for step := start; step < f.total; step++ {
		if err := ctx.Err(); err != nil {
			return res, f.interrupted(step, err)
		}
		t0 := time.Now()
		stepLoss, items, norm, lr, err := f.step(step)
		if err != nil {
			return res, err
		}
		done := step + 1
		res.Steps = done
		res.Losses = append(res.Losses, stepLoss)
		ips := float64(items) / time.Since(t0).Seconds()
		if err := f.log.write(map[string]any{"step": done, "loss": stepLoss, "lr": lr, "grad_norm": norm, "items_per_s": ips, "epoch": float64(done*accum) / float64(f.micros)}); err != nil {
			return res, err
		}
		last := done == f.total
		prog.update(done, items, last, fmt.Sprintf("loss %.4f lr %.2e", stepLoss, lr))
		if (f.opts.EvalEvery > 0 && done%f.opts.EvalEvery == 0) || last {
			vl, va, err := f.evaluate(ctx)
			if err != nil {
				return res, f.interrupted(done, err)
			}
			res.ValLoss, res.ValAcc = vl, va
			if !math.IsNaN(vl) {
				if err := f.log.write(map[string]any{"step": done, "val_loss": vl, "val_rating_acc": va}); err != nil {
					return res, err
				}
				fmt.Fprintf(stderr, "finetune step %d/%d val loss %.4f rating acc %.3f\n", done, f.total, vl, va)
			}
		}
		if f.opts.SaveEvery > 0 && done%f.opts.SaveEvery == 0 && !last {
			if err := f.saveCheckpoint(done, stepLoss); err != nil {
				return res, err
			}
		}
		if f.opts.onStep != nil {
			f.opts.onStep(done)
		}
	}
	if err := f.saveFinal(res); err != nil {
		return res, err
	}
	return res, nil
}

// step runs optimiser step (0-based): GradAccum micro-batches forward and
// backward, clipping, AdamW. It returns the step's loss, the items it saw,
// the gradient norm before clipping and the learning rate.
func (f *finetuner) step(step int) (stepLoss float64, items int, norm, lr float64, err error) {
	accum := f.opts.GradAccum
	f.opt.zeroGrad()
	for a := 0; a < accum; a++ {
		k := step*accum + a
		manualSeed(f.opts.Seed*1_000_003 + int64(k))
		exs := f.microBatch(k)
		err := torch.Run("finetune step", true, func() error {
			loss, ntok, _, err := f.forward(exs, true)
			if err != nil {
				return err
			}
			mean := loss.MustDivScalar(ts.FloatScalar(float64(max(ntok, 1))*float64(accum)), true)
			if err := mean.Backward(); err != nil {
				return fmt.Errorf("backward: %w", err)
			}
			stepLoss += scalar(mean)
			return nil
		})
		if err != nil {
			return 0, 0, 0, 0, fmt.Errorf("finetune step %d: %w", step+1, err)
		}
		items += len(exs)
	}
	if norm, err = f.opt.clipGradNorm(f.opts.MaxGradNorm); err != nil {
		return 0, 0, 0, 0, fmt.Errorf("finetune step %d: %w", step+1, err)
	}
	lr = cosineLR(f.opts.LR, step, f.warmup, f.total)
	if err := f.opt.stepLR(lr); err != nil {
		return 0, 0, 0, 0, fmt.Errorf("finetune step %d: %w", step+1, err)
	}
	return stepLoss, items, norm, lr, nil
}

// interrupted saves a checkpoint at step (the last finished one) and
// returns the cause.
func (f *finetuner) interrupted(step int, cause error) error {
	if step > 0 {
		if err := f.saveCheckpoint(step, math.NaN()); err != nil {
			return fmt.Errorf("finetune: %w (and saving a checkpoint failed: %v)", cause, err)
		}
	}
	return fmt.Errorf("finetune: stopped after step %d, resume with --resume: %w", step, cause)
}

func (f *finetuner) state(step int, loss float64, done bool) trainerState {
	if math.IsNaN(loss) {
		loss = 0
	}
	return trainerState{Step: step, TotalSteps: f.total, Fingerprint: f.fingerprint(), Seed: f.opts.Seed,
		BatchSize: f.opts.BatchSize, GradAccum: f.opts.GradAccum, NumTrain: len(f.train), LastLoss: loss, Done: done}
}

// saveCheckpoint writes Out/checkpoint-NNNNNN (adapter, optimiser state,
// trainer_state.json last) and prunes old ones.
func (f *finetuner) saveCheckpoint(step int, loss float64) error {
	dir := filepath.Join(f.opts.Out, fmt.Sprintf("checkpoint-%06d", step))
	if err := f.writeState(dir, f.state(step, loss, false)); err != nil {
		return fmt.Errorf("finetune: save checkpoint: %w", err)
	}
	if f.opts.Keep > 0 {
		dirs, _ := filepath.Glob(filepath.Join(f.opts.Out, "checkpoint-*"))
		sort.Strings(dirs)
		for len(dirs) > f.opts.Keep {
			os.RemoveAll(dirs[0])
			dirs = dirs[1:]
		}
	}
	return nil
}

func (f *finetuner) writeState(dir string, st trainerState) error {
	os.Remove(filepath.Join(dir, "trainer_state.json"))
	if err := f.lora.save(dir, f.opts.Model); err != nil {
		return err
	}
	if err := tensorio.Write(filepath.Join(dir, "optimizer.safetensors"), f.opt.stateTensors(), map[string]string{"step": fmt.Sprint(st.Step)}); err != nil {
		return err
	}
	raw, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(filepath.Join(dir, "trainer_state.json"), append(raw, '\n'))
}

// saveFinal writes the final adapter and state to Out.
func (f *finetuner) saveFinal(res *FinetuneResult) error {
	loss := math.NaN()
	if n := len(res.Losses); n > 0 {
		loss = res.Losses[n-1]
	}
	if err := f.writeState(f.opts.Out, f.state(res.Steps, loss, true)); err != nil {
		return fmt.Errorf("finetune: save adapter: %w", err)
	}
	return nil
}

// latestCheckpoint finds the newest complete checkpoint in out (the final
// state in out itself counts); "" when there is none.
func latestCheckpoint(out string) (string, trainerState, error) {
	dirs, _ := filepath.Glob(filepath.Join(out, "checkpoint-*"))
	dirs = append(dirs, out)
	best, bestSt := "", trainerState{Step: -1}
	for _, d := range dirs {
		raw, err := os.ReadFile(filepath.Join(d, "trainer_state.json"))
		if err != nil {
			continue
		}
		var st trainerState
		if err := json.Unmarshal(raw, &st); err != nil {
			return "", trainerState{}, fmt.Errorf("resume: %s: %w", filepath.Join(d, "trainer_state.json"), err)
		}
		if st.Step > bestSt.Step {
			best, bestSt = d, st
		}
	}
	if best == "" {
		return "", trainerState{}, nil
	}
	return best, bestSt, nil
}
