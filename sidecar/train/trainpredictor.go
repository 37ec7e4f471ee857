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
	"time"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/schemas/iqa"
	"github.com/m3gate/m3gate/sidecar/mllm"
	"github.com/m3gate/m3gate/sidecar/tensorio"
	"github.com/m3gate/m3gate/sidecar/torch"
	"github.com/m3gate/m3gate/sidecar/xlstm"
)

// PredictorOptions configures TrainPredictor. Start from
// DefaultPredictorOptions.
type PredictorOptions struct {
	Model   string // MLLM directory
	Adapter string // PEFT LoRA adapter applied to the MLLM ("" = base model)
	Data    string // conversations JSONL
	Images  string // image folder ("" = DATA's folder/images)
	Labels  string // MOS labels: AGIQA-3K data.csv or a manifest JSONL ("" = the records' mos field)
	Out     string // output: best.safetensors, last.safetensors, train_state.safetensors, metrics.jsonl
	Cache   string // feature cache folder ("" = OUT/features)

	Aspect     string
	TrainSplit string
	ValSplit   string
	MaxTrain   int
	MaxVal     int
	// ValDescription is the description in validation inputs: generated
	// (the paper's test-time setting), teacher or student.
	ValDescription string
	GenMaxTokens   int // bound on generated descriptions
	MaxLen         int // predictor input length S (truncated on the right)

	Epochs      int
	LR          float64
	WeightDecay float64
	Seed        int64
	// Predictor sizes; zero keeps the paper's (512 wide, 4 blocks, sLSTM at 1, 4 heads).
	EmbeddingDim, Blocks, Heads, HeadHidden int

	DType   string // MLLM dtype: f32 or bf16
	Device  string // cpu (or ""), cuda or cuda:N (a CUDA libtorch build)
	Resume  bool
	Threads int

	onEpoch func(epoch int) // tests cancel here
}

// DefaultPredictorOptions is the reference recipe for AGIQA-3K: MSE on raw
// MOS, AdamW lr 1e-5, weight decay 1e-5, batch 1, 20 epochs, S ≤ 512.
func DefaultPredictorOptions() PredictorOptions {
	return PredictorOptions{TrainSplit: "train", ValSplit: "test", ValDescription: DescGenerated, GenMaxTokens: 128,
		MaxLen: 512, Epochs: 20, LR: 1e-5, WeightDecay: 1e-5, Seed: 42, DType: "f32"}
}

func (o PredictorOptions) validate() error {
	switch {
	case o.Model == "" || o.Data == "" || o.Out == "":
		return errors.New("train-predictor: --model, --data and --out are required")
	case o.Epochs <= 0:
		return fmt.Errorf("train-predictor: --epochs %d must be positive", o.Epochs)
	case !(o.LR > 0) || o.WeightDecay < 0:
		return fmt.Errorf("train-predictor: lr %g must be positive and weight decay %g non-negative", o.LR, o.WeightDecay)
	case o.MaxLen <= 0 || o.GenMaxTokens <= 0:
		return fmt.Errorf("train-predictor: --max-len %d and --gen-max-tokens %d must be positive", o.MaxLen, o.GenMaxTokens)
	case o.ValDescription != DescGenerated && o.ValDescription != DescTeacher && o.ValDescription != DescStudent:
		return fmt.Errorf("train-predictor: --val-description %q: want generated, teacher or student", o.ValDescription)
	case o.DType != "f32" && o.DType != "bf16":
		return fmt.Errorf("train-predictor: --dtype %q: want f32 or bf16", o.DType)
	}
	if o.Aspect != "" {
		if err := iqa.CheckAspect(o.Aspect); err != nil {
			return fmt.Errorf("train-predictor: --aspect: %w", err)
		}
	}
	if _, err := torch.ParseDevice(o.Device); err != nil {
		return fmt.Errorf("train-predictor: --device: %w", err)
	}
	return nil
}

// PredictorResult summarises a train-predictor run.
type PredictorResult struct {
	Epochs    int       // epochs completed in total
	TrainLoss []float64 // mean training MSE of each epoch this process ran
	ValSRCC   []float64 // validation SRCC of each epoch this process ran
	BestSRCC  float64
	BestEpoch int
	Best      string // path of the best checkpoint
	Computed  int    // feature items computed (not found in the cache)
}

// predictorState is predictor_state.json.
type predictorState struct {
	Epoch       int     `json:"epoch"`
	BestSRCC    float64 `json:"best_srcc"`
	BestEpoch   int     `json:"best_epoch"`
	Steps       int64   `json:"optimizer_steps"`
	Fingerprint string  `json:"fingerprint"`
}

// TrainPredictor builds (or finds in the cache) the predictor inputs and
// trains the xLSTM predictor with MSE on raw MOS, keeping the checkpoint
// with the best validation SRCC at Out/best.safetensors. State is saved
// after every epoch; with Resume a run continues after the last full epoch.
func TrainPredictor(ctx context.Context, opts PredictorOptions, stderr io.Writer) (*PredictorResult, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	if stderr == nil {
		stderr = io.Discard
	}
	if opts.Threads > 0 {
		if err := torch.SetThreads(opts.Threads); err != nil {
			return nil, fmt.Errorf("train-predictor: %w", err)
		}
	}
	if opts.Images == "" {
		opts.Images = filepath.Join(filepath.Dir(opts.Data), "images")
	}
	if opts.Cache == "" {
		opts.Cache = filepath.Join(opts.Out, "features")
	}
	train, val, err := predictorRecords(opts)
	if err != nil {
		return nil, fmt.Errorf("train-predictor: %w", err)
	}
	b, closeModel, err := newPredictorFeatures(opts)
	if err != nil {
		return nil, fmt.Errorf("train-predictor: %w", err)
	}
	defer closeModel()
	if err := os.MkdirAll(opts.Out, 0o755); err != nil {
		return nil, fmt.Errorf("train-predictor: %w", err)
	}
	res := &PredictorResult{Best: filepath.Join(opts.Out, "best.safetensors")}
	fmt.Fprintf(stderr, "train-predictor: inputs of %d training (teacher descriptions) and %d validation (%s descriptions) records\n", len(train), len(val), opts.ValDescription)
	trainItems, n1, err := b.build(ctx, train, DescTeacher, newProgress(stderr, "features train", 0, len(train)))
	if err != nil {
		return res, fmt.Errorf("train-predictor: %w", err)
	}
	valItems, n2, err := b.build(ctx, val, opts.ValDescription, newProgress(stderr, "features val", 0, len(val)))
	if err != nil {
		return res, fmt.Errorf("train-predictor: %w", err)
	}
	res.Computed = n1 + n2

	r, err := newPredictorRun(opts, b.m, trainItems, valItems, res)
	if err != nil {
		return res, fmt.Errorf("train-predictor: %w", err)
	}
	defer r.log.Close()
	prog := newProgress(stderr, "train-predictor epoch", r.st.Epoch, opts.Epochs)
	for epoch := r.st.Epoch; epoch < opts.Epochs; epoch++ {
		t0 := time.Now()
		trainLoss, err := r.trainEpoch(ctx, epoch)
		if err != nil {
			return res, fmt.Errorf("train-predictor: %w", err)
		}
		vloss, srcc, err := r.endEpoch(ctx, epoch, trainLoss, t0)
		if err != nil {
			return res, fmt.Errorf("train-predictor: %w", err)
		}
		prog.update(epoch+1, len(trainItems), true, fmt.Sprintf("train mse %.4f val mse %.4f srcc %.4f (best %.4f @%d)", trainLoss, vloss, srcc, reportSRCC(r.st.BestSRCC), r.st.BestEpoch))
		if opts.onEpoch != nil {
			opts.onEpoch(epoch + 1)
		}
	}
	return res, nil
}

// predictorRecords reads the training and validation records of opts,
// joins the MOS labels and checks that every record has a MOS.
func predictorRecords(opts PredictorOptions) (train, val []Record, err error) {
	recs, err := ReadConversations(opts.Data)
	if err != nil {
		return nil, nil, err
	}
	train = Select(recs, opts.Aspect, opts.TrainSplit, opts.MaxTrain)
	if opts.ValSplit != "" {
		val = Select(recs, opts.Aspect, opts.ValSplit, opts.MaxVal)
	}
	if len(train) == 0 {
		return nil, nil, fmt.Errorf("no training records of aspect %q and split %q in %s", opts.Aspect, opts.TrainSplit, opts.Data)
	}
	if opts.Labels != "" {
		t, err := ReadMOS(opts.Labels)
		if err != nil {
			return nil, nil, err
		}
		if err := JoinMOS(train, t); err != nil {
			return nil, nil, fmt.Errorf("training records: %w", err)
		}
		if err := JoinMOS(val, t); err != nil {
			return nil, nil, fmt.Errorf("validation records: %w", err)
		}
	}
	for _, r := range append(append([]Record(nil), train...), val...) {
		if r.MOS == nil {
			return nil, nil, fmt.Errorf("%s line %d (%s): %w", opts.Data, r.Line, r.Image, errNoMOS)
		}
	}
	return train, val, nil
}

// newPredictorFeatures loads the MLLM (with the aspect's adapter, frozen)
// into a feature builder; closeModel detaches the adapter and frees the
// model.
func newPredictorFeatures(opts PredictorOptions) (b *featureBuilder, closeModel func(), err error) {
	kind := gotch.Float
	if opts.DType == "bf16" {
		kind = gotch.BFloat16
	}
	dev, _ := torch.ParseDevice(opts.Device) // checked by validate
	m, err := mllm.Load(opts.Model, mllm.LoadOptions{DType: kind, Device: dev})
	if err != nil {
		return nil, nil, err
	}
	closers := []func(){m.Close}
	closeModel = func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	defer func() {
		if err != nil {
			closeModel()
		}
	}()
	if m.Tokenizer == nil {
		return nil, nil, fmt.Errorf("model %s has no tokenizer.json", opts.Model)
	}
	b = &featureBuilder{m: m, images: opts.Images, cacheDir: opts.Cache, maxLen: opts.MaxLen, genTokens: opts.GenMaxTokens}
	if b.modelHash, err = dirHash(opts.Model); err != nil {
		return nil, nil, err
	}
	if id, ok := m.Tokenizer.TokenID("<end_of_utterance>"); ok {
		b.stops = append(b.stops, id)
	}
	b.stops = append(b.stops, m.Generation.EOSTokenIDs...)
	if opts.Adapter != "" {
		if b.adaptHash, err = dirHash(opts.Adapter); err != nil {
			return nil, nil, err
		}
		ad, err := attachAdapter(m, opts.Adapter, defaultLoRA(), 0)
		if err != nil {
			return nil, nil, err
		}
		closers = append(closers, func() { ad.set.Detach() })
		ad.set.SetTraining(false)
		for _, p := range ad.a.Parameters() {
			p.MustRequiresGrad_(false)
		}
	}
	return b, closeModel, nil
}

// predictorConfig is the xLSTM config of opts for a vocabulary of vocab.
func predictorConfig(opts PredictorOptions, vocab int) xlstm.Config {
	cfg := xlstm.DefaultConfig(vocab)
	cfg.ContextLength = opts.MaxLen
	if opts.EmbeddingDim > 0 {
		cfg.EmbeddingDim = opts.EmbeddingDim
	}
	if opts.Blocks > 0 {
		cfg.NumBlocks = opts.Blocks
		if cfg.NumBlocks < 2 {
			cfg.SLSTMAt = nil
		}
	}
	if opts.Heads > 0 {
		cfg.NumHeads, cfg.SLSTMHeads = opts.Heads, opts.Heads
	}
	if opts.HeadHidden > 0 {
		cfg.HeadHidden = opts.HeadHidden
	}
	return cfg
}

// predictorRun is one TrainPredictor run's predictor, optimiser, state
// and log.
type predictorRun struct {
	opts       PredictorOptions
	p          *xlstm.Predictor
	params     []namedParam
	opt        *adamW
	st         predictorState
	statePath  string
	lmW        *ts.Tensor // the MLLM's lm_head, fused into the predictor's input
	train, val []featureItem
	log        *jsonlLog
	res        *PredictorResult
}

// newPredictorRun builds the predictor and its optimiser, resumes their
// state when asked and opens the metrics log.
func newPredictorRun(opts PredictorOptions, m *mllm.Model, trainItems, valItems []featureItem, res *PredictorResult) (*predictorRun, error) {
	cfg := predictorConfig(opts, m.Config.Text.VocabSize)
	p, err := xlstm.New(cfg, opts.Seed, m.Device)
	if err != nil {
		return nil, err
	}
	r := &predictorRun{opts: opts, p: p, lmW: m.Linears()["lm_head"].W, train: trainItems, val: valItems, res: res,
		statePath: filepath.Join(opts.Out, "train_state.safetensors")}
	for _, q := range p.Parameters() {
		r.params = append(r.params, namedParam{q.Name, q.Tensor})
	}
	r.opt = newAdamW(r.params, opts.WeightDecay)
	fp := predictorFingerprint(opts, cfg, trainItems, valItems)
	r.st = predictorState{BestSRCC: noSRCC, Fingerprint: fp}
	if opts.Resume {
		if _, err := os.Stat(r.statePath); err == nil {
			prev, err := loadPredictorState(r.statePath, r.params, r.opt)
			if err != nil {
				return nil, fmt.Errorf("resume: %w", err)
			}
			if prev.Fingerprint != fp {
				return nil, fmt.Errorf("resume: %s was made with other data or settings; start a new --out", r.statePath)
			}
			r.st = prev
		}
	}
	res.Epochs, res.BestSRCC, res.BestEpoch = r.st.Epoch, reportSRCC(r.st.BestSRCC), r.st.BestEpoch
	if r.log, err = openJSONL(filepath.Join(opts.Out, "metrics.jsonl")); err != nil {
		return nil, err
	}
	return r, nil
}

// trainEpoch runs one epoch of single-item AdamW steps in the epoch's
// seeded order and returns the mean training MSE.
func (r *predictorRun) trainEpoch(ctx context.Context, epoch int) (float64, error) {
	r.p.SetTraining(true)
	perm := rand.New(rand.NewSource(r.opts.Seed + int64(epoch)*104729 + 7)).Perm(len(r.train))
	sum := 0.0
	for _, i := range perm {
		if err := ctx.Err(); err != nil {
			return 0, fmt.Errorf("stopped in epoch %d (resume with --resume continues after epoch %d): %w", epoch+1, epoch, err)
		}
		it := r.train[i]
		loss, err := r.step(it)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", it.rec.Image, err)
		}
		sum += loss
	}
	return sum / float64(len(r.train)), nil
}

// step is one optimiser step on one item; it returns the item's MSE.
func (r *predictorRun) step(it featureItem) (loss float64, err error) {
	h, err := loadHidden(it.path, r.p.Device())
	if err != nil {
		return 0, err
	}
	defer torch.Drop(h)
	r.opt.zeroGrad()
	err = torch.Run("train predictor", true, func() error {
		y, err := r.p.ForwardHidden(h, r.lmW, nil)
		if err != nil {
			return err
		}
		setGradEnabled(true) // see finetuner.forward
		mos := ts.FloatScalar(*it.rec.MOS)
		l := y.MustSubScalar(mos, true).MustSquare(true).MustMean(gotch.Float, true)
		torch.KeepScalars(mos)
		if err := l.Backward(); err != nil {
			return fmt.Errorf("backward: %w", err)
		}
		loss = scalar(l)
		return nil
	})
	if err != nil {
		return 0, err
	}
	return loss, r.opt.stepLR(r.opts.LR)
}

// endEpoch validates after an epoch, keeps the best and the last
// predictor, saves the resumable state, and logs the epoch; it returns
// the validation MSE and SRCC (NaN without validation items).
func (r *predictorRun) endEpoch(ctx context.Context, epoch int, trainLoss float64, t0 time.Time) (vloss, srcc float64, err error) {
	r.p.SetTraining(false)
	preds, mos, err := predictItems(ctx, r.p, r.lmW, r.val)
	if err != nil {
		return 0, 0, fmt.Errorf("validation: %w", err)
	}
	srcc, vloss = math.NaN(), math.NaN()
	if len(preds) > 0 {
		srcc, vloss = validationSRCC(preds, mos), mse(preds, mos)
	}
	st := &r.st
	st.Epoch, st.Steps = epoch+1, r.opt.step
	better := !math.IsNaN(srcc) && srcc > st.BestSRCC
	if len(r.val) == 0 || (math.IsNaN(srcc) && st.BestEpoch == 0) {
		better = true // no usable validation (yet): keep the last
	}
	if better {
		st.BestEpoch = epoch + 1
		if !math.IsNaN(srcc) {
			st.BestSRCC = srcc
		}
		if err := savePredictor(r.p, r.res.Best); err != nil {
			return 0, 0, err
		}
	}
	if err := savePredictor(r.p, filepath.Join(r.opts.Out, "last.safetensors")); err != nil {
		return 0, 0, err
	}
	if err := savePredictorState(r.statePath, r.params, r.opt, *st); err != nil {
		return 0, 0, err
	}
	res := r.res
	res.Epochs, res.BestSRCC, res.BestEpoch = st.Epoch, reportSRCC(st.BestSRCC), st.BestEpoch
	res.TrainLoss = append(res.TrainLoss, trainLoss)
	res.ValSRCC = append(res.ValSRCC, srcc)
	err = r.log.write(map[string]any{"epoch": epoch + 1, "train_loss": trainLoss, "val_loss": jsonNum(vloss), "val_srcc": jsonNum(srcc),
		"best_srcc": jsonNum(reportSRCC(st.BestSRCC)), "best_epoch": st.BestEpoch, "seconds": time.Since(t0).Seconds()})
	return vloss, srcc, err
}

// savePredictor writes p in the reference layout through a temporary file.
func savePredictor(p *xlstm.Predictor, path string) error {
	tmp := path + ".tmp"
	if err := p.Save(tmp); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// savePredictorState writes the resumable state in one file (so a kill
// never leaves a half-updated state): the parameters, AdamW's moments under
// exp_avg.NAME / exp_avg_sq.NAME and predictorState as JSON metadata.
func savePredictorState(path string, params []namedParam, opt *adamW, st predictorState) error {
	raw, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	var named []tensorio.Named
	for _, p := range params {
		named = append(named, tensorio.Named{Name: p.name, Tensor: p.t.MustDetach(false).MustContiguous(true)})
	}
	named = append(named, opt.stateTensors()...)
	tmp := path + ".tmp"
	if err := tensorio.Write(tmp, named, map[string]string{"m3gate.train.state": string(raw)}); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	return os.Rename(tmp, path)
}

// loadPredictorState restores what savePredictorState wrote.
func loadPredictorState(path string, params []namedParam, opt *adamW) (predictorState, error) {
	var st predictorState
	ck, err := tensorio.Open(path)
	if err != nil {
		return st, err
	}
	raw := ck.Metadata()["m3gate.train.state"]
	ck.Close()
	if err := json.Unmarshal([]byte(raw), &st); err != nil {
		return st, fmt.Errorf("%s: state metadata: %w", path, err)
	}
	if err := copyParamsFrom(params, path); err != nil {
		return st, fmt.Errorf("%s: %w", path, err)
	}
	if err := opt.loadState(path, st.Steps); err != nil {
		return st, err
	}
	return st, nil
}

// noSRCC marks "no validation SRCC yet" in the state (SRCC lies in [−1, 1]).
const noSRCC = -2

func reportSRCC(v float64) float64 {
	if v == noSRCC {
		return math.NaN()
	}
	return v
}

func jsonNum(v float64) any {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return nil
	}
	return v
}

// predictItems scores items without autograd.
func predictItems(ctx context.Context, p *xlstm.Predictor, lmW *ts.Tensor, items []featureItem) (preds, mos []float64, err error) {
	for _, it := range items {
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		h, err := loadHidden(it.path, p.Device())
		if err != nil {
			return nil, nil, err
		}
		y, err := p.PredictHidden(h, lmW, nil)
		if err != nil {
			return nil, nil, err
		}
		preds = append(preds, y[0])
		mos = append(mos, *it.rec.MOS)
	}
	return preds, mos, nil
}

func predictorFingerprint(o PredictorOptions, cfg xlstm.Config, tr, va []featureItem) string {
	h := sha256.New()
	c, _ := json.Marshal(cfg)
	fmt.Fprintf(h, "%s|%d|%g|%g|%d", c, o.Seed, o.LR, o.WeightDecay, o.Epochs)
	for _, it := range tr {
		fmt.Fprintf(h, "|t%s", filepath.Base(it.path))
	}
	for _, it := range va {
		fmt.Fprintf(h, "|v%s", filepath.Base(it.path))
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

func mse(a, b []float64) float64 {
	s := 0.0
	for i := range a {
		d := a[i] - b[i]
		s += d * d
	}
	return s / float64(len(a))
}

// validationSRCC is iqa.SRCC of the predictions against the labels, NaN
// where it is undefined (fewer than 2 items, or a constant vector).
func validationSRCC(preds, mos []float64) float64 {
	v, err := iqa.SRCC(preds, mos)
	if err != nil {
		return math.NaN()
	}
	return v
}
