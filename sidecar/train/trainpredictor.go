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
	recs, err := ReadConversations(opts.Data)
	if err != nil {
		return nil, fmt.Errorf("train-predictor: %w", err)
	}
	train := Select(recs, opts.Aspect, opts.TrainSplit, opts.MaxTrain)
	var val []Record
	if opts.ValSplit != "" {
		val = Select(recs, opts.Aspect, opts.ValSplit, opts.MaxVal)
	}
	if len(train) == 0 {
		return nil, fmt.Errorf("train-predictor: no training records of aspect %q and split %q in %s", opts.Aspect, opts.TrainSplit, opts.Data)
	}
	if opts.Labels != "" {
		t, err := ReadMOS(opts.Labels)
		if err != nil {
			return nil, fmt.Errorf("train-predictor: %w", err)
		}
		if err := JoinMOS(train, t); err != nil {
			return nil, fmt.Errorf("train-predictor: training records: %w", err)
		}
		if err := JoinMOS(val, t); err != nil {
			return nil, fmt.Errorf("train-predictor: validation records: %w", err)
		}
	}
	for _, r := range append(append([]Record(nil), train...), val...) {
		if !r.HasMOS {
			return nil, fmt.Errorf("train-predictor: %s line %d (%s): %w", opts.Data, r.Line, r.Image, errNoMOS)
		}
	}
	kind := gotch.Float
	if opts.DType == "bf16" {
		kind = gotch.BFloat16
	}
	dev, _ := torch.ParseDevice(opts.Device) // checked by validate
	m, err := mllm.Load(opts.Model, mllm.LoadOptions{DType: kind, Device: dev})
	if err != nil {
		return nil, fmt.Errorf("train-predictor: %w", err)
	}
	if m.Tokenizer == nil {
		return nil, fmt.Errorf("train-predictor: model %s has no tokenizer.json", opts.Model)
	}
	b := &featureBuilder{m: m, images: opts.Images, cacheDir: opts.Cache, maxLen: opts.MaxLen, genTokens: opts.GenMaxTokens}
	if b.modelHash, err = dirHash(opts.Model); err != nil {
		return nil, fmt.Errorf("train-predictor: %w", err)
	}
	if id, ok := m.Tokenizer.TokenID("<end_of_utterance>"); ok {
		b.stops = append(b.stops, id)
	}
	b.stops = append(b.stops, m.Generation.EOSTokenIDs...)
	if opts.Adapter != "" {
		if b.adaptHash, err = dirHash(opts.Adapter); err != nil {
			return nil, fmt.Errorf("train-predictor: %w", err)
		}
		ad, err := attachAdapter(m, opts.Adapter, defaultLoRA(), 0)
		if err != nil {
			return nil, fmt.Errorf("train-predictor: %w", err)
		}
		defer ad.set.Detach()
		ad.set.SetTraining(false)
		for _, p := range ad.a.Parameters() {
			p.MustRequiresGrad_(false)
		}
	}
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

	cfg := xlstm.DefaultConfig(m.Config.Text.VocabSize)
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
	p, err := xlstm.New(cfg, opts.Seed, m.Device)
	if err != nil {
		return res, fmt.Errorf("train-predictor: %w", err)
	}
	var params []namedParam
	for _, q := range p.Parameters() {
		params = append(params, namedParam{q.Name, q.Tensor})
	}
	opt := newAdamW(params, opts.WeightDecay)
	fp := predictorFingerprint(opts, cfg, trainItems, valItems)
	st := predictorState{BestSRCC: noSRCC, Fingerprint: fp}
	statePath := filepath.Join(opts.Out, "train_state.safetensors")
	if opts.Resume {
		if _, err := os.Stat(statePath); err == nil {
			prev, err := loadPredictorState(statePath, params, opt)
			if err != nil {
				return res, fmt.Errorf("train-predictor: resume: %w", err)
			}
			if prev.Fingerprint != fp {
				return res, fmt.Errorf("train-predictor: resume: %s was made with other data or settings; start a new --out", statePath)
			}
			st = prev
		}
	}
	res.Epochs, res.BestSRCC, res.BestEpoch = st.Epoch, reportSRCC(st.BestSRCC), st.BestEpoch
	log, err := openJSONL(filepath.Join(opts.Out, "metrics.jsonl"))
	if err != nil {
		return res, fmt.Errorf("train-predictor: %w", err)
	}
	defer log.Close()
	lmW := m.Linears()["lm_head"].W
	prog := newProgress(stderr, "train-predictor epoch", st.Epoch, opts.Epochs)
	for epoch := st.Epoch; epoch < opts.Epochs; epoch++ {
		t0 := time.Now()
		p.SetTraining(true)
		perm := rand.New(rand.NewSource(opts.Seed + int64(epoch)*104729 + 7)).Perm(len(trainItems))
		sum := 0.0
		for _, i := range perm {
			if err := ctx.Err(); err != nil {
				return res, fmt.Errorf("train-predictor: stopped in epoch %d (resume with --resume continues after epoch %d): %w", epoch+1, epoch, err)
			}
			it := trainItems[i]
			h, err := loadHidden(it.path, p.Device())
			if err != nil {
				return res, fmt.Errorf("train-predictor: %w", err)
			}
			opt.zeroGrad()
			err = withGrad(true, func() error {
				y, err := p.ForwardHidden(h, lmW, nil)
				if err != nil {
					return err
				}
				setGradEnabled(true) // see finetuner.forward
				loss := y.MustSubScalar(ts.FloatScalar(it.rec.MOS), true).MustSquare(true).MustMean(gotch.Float, true)
				if err := loss.Backward(); err != nil {
					return fmt.Errorf("backward: %w", err)
				}
				sum += scalar(loss)
				return nil
			})
			if err != nil {
				return res, fmt.Errorf("train-predictor: %s: %w", it.rec.Image, err)
			}
			opt.stepLR(opts.LR)
		}
		trainLoss := sum / float64(len(trainItems))
		p.SetTraining(false)
		preds, mos, err := predictItems(ctx, p, lmW, valItems)
		if err != nil {
			return res, fmt.Errorf("train-predictor: validation: %w", err)
		}
		srcc, vloss := math.NaN(), math.NaN()
		if len(preds) > 0 {
			srcc, vloss = SRCC(preds, mos), mse(preds, mos)
		}
		st.Epoch, st.Steps = epoch+1, opt.step
		better := !math.IsNaN(srcc) && srcc > st.BestSRCC
		if len(valItems) == 0 || (math.IsNaN(srcc) && st.BestEpoch == 0) {
			better = true // no usable validation (yet): keep the last
		}
		if better {
			st.BestEpoch = epoch + 1
			if !math.IsNaN(srcc) {
				st.BestSRCC = srcc
			}
			if err := savePredictor(p, res.Best); err != nil {
				return res, fmt.Errorf("train-predictor: %w", err)
			}
		}
		if err := savePredictor(p, filepath.Join(opts.Out, "last.safetensors")); err != nil {
			return res, fmt.Errorf("train-predictor: %w", err)
		}
		if err := savePredictorState(statePath, params, opt, st); err != nil {
			return res, fmt.Errorf("train-predictor: %w", err)
		}
		res.Epochs, res.BestSRCC, res.BestEpoch = st.Epoch, reportSRCC(st.BestSRCC), st.BestEpoch
		res.TrainLoss = append(res.TrainLoss, trainLoss)
		res.ValSRCC = append(res.ValSRCC, srcc)
		if err := log.write(map[string]any{"epoch": epoch + 1, "train_loss": trainLoss, "val_loss": jsonNum(vloss), "val_srcc": jsonNum(srcc),
			"best_srcc": jsonNum(reportSRCC(st.BestSRCC)), "best_epoch": st.BestEpoch, "seconds": time.Since(t0).Seconds()}); err != nil {
			return res, err
		}
		prog.update(epoch+1, len(trainItems), true, fmt.Sprintf("train mse %.4f val mse %.4f srcc %.4f (best %.4f @%d)", trainLoss, vloss, srcc, reportSRCC(st.BestSRCC), st.BestEpoch))
		if opts.onEpoch != nil {
			opts.onEpoch(epoch + 1)
		}
	}
	return res, nil
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
		mos = append(mos, it.rec.MOS)
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

// SRCC is Spearman's rank correlation of a and b (average ranks for ties);
// NaN when either is constant or shorter than 2.
func SRCC(a, b []float64) float64 {
	if len(a) != len(b) || len(a) < 2 {
		return math.NaN()
	}
	return pearson(ranks(a), ranks(b))
}

func ranks(v []float64) []float64 {
	idx := make([]int, len(v))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(x, y int) bool { return v[idx[x]] < v[idx[y]] })
	r := make([]float64, len(v))
	for i := 0; i < len(idx); {
		j := i
		for j+1 < len(idx) && v[idx[j+1]] == v[idx[i]] {
			j++
		}
		avg := float64(i+j)/2 + 1
		for k := i; k <= j; k++ {
			r[idx[k]] = avg
		}
		i = j + 1
	}
	return r
}

func pearson(a, b []float64) float64 {
	n := float64(len(a))
	ma, mb := 0.0, 0.0
	for i := range a {
		ma += a[i]
		mb += b[i]
	}
	ma, mb = ma/n, mb/n
	var sab, saa, sbb float64
	for i := range a {
		da, db := a[i]-ma, b[i]-mb
		sab += da * db
		saa += da * da
		sbb += db * db
	}
	if saa == 0 || sbb == 0 {
		return math.NaN()
	}
	return sab / math.Sqrt(saa*sbb)
}
