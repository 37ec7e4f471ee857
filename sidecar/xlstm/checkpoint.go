package xlstm

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/m3gate/m3gate/sidecar/tensorio"
	"github.com/sugarme/gotch"
	ts "github.com/sugarme/gotch/ts"
)

// Metadata keys written by Save.
const (
	metaFormat = "format"
	metaConfig = "m3gate.xlstm.config"
	formatName = "m3gate-xlstm-predictor"
)

// Save writes the predictor to a safetensors file in the reference layout
// (model.W.*, model.xlstm_pooler.xlstm_stack.blocks.{i}.*, model.fc.*; the
// sLSTM kernel and bias in the cuda-backend layout) with its Config in the
// metadata.
func (p *Predictor) Save(path string) error {
	cfgJSON, err := json.Marshal(p.cfg)
	if err != nil {
		return fmt.Errorf("save predictor %s: %w", path, err)
	}
	named := p.StateDict()
	meta := map[string]string{metaFormat: formatName, metaConfig: string(cfgJSON)}
	if err := tensorio.Write(path, named, meta); err != nil {
		return fmt.Errorf("save predictor: %w", err)
	}
	return nil
}

// StateDict returns detached CPU float32 copies of the parameters under their
// checkpoint names, in checkpoint order.
func (p *Predictor) StateDict() []tensorio.Named {
	out := make([]tensorio.Named, 0, len(p.names))
	for _, n := range p.names {
		t := p.params[n].MustDetach(false).MustTo(gotch.CPU, true).MustContiguous(true)
		out = append(out, tensorio.Named{Name: n, Tensor: t})
	}
	return out
}

// Load reads a predictor from a safetensors checkpoint (a .safetensors file,
// an index or a directory) or a PyTorch .pt/.pth/.ckpt file (a plain state
// dict, or a Lightning checkpoint whose "state_dict" holds it). Keys outside
// the predictor (for example the frozen MLLM's) are ignored. Sizes come from
// the metadata written by Save, or are inferred from the tensor shapes;
// inferred checkpoints get ContextLength 0 (no limit).
func Load(path string, device gotch.Device) (*Predictor, error) {
	sd, meta, err := readStateDict(path)
	if err != nil {
		return nil, fmt.Errorf("load predictor %s: %w", path, err)
	}
	var cfg *Config
	if s, ok := meta[metaConfig]; ok {
		var c Config
		if err := json.Unmarshal([]byte(s), &c); err != nil {
			return nil, fmt.Errorf("load predictor %s: config metadata: %w", path, err)
		}
		cfg = &c
	}
	p, err := fromStateDict(sd, cfg, device)
	if err != nil {
		return nil, fmt.Errorf("load predictor %s: %w", path, err)
	}
	return p, nil
}

// FromStateDict builds a predictor from tensors in the reference layout,
// inferring its Config from the shapes (ContextLength 0).
func FromStateDict(sd map[string]*ts.Tensor, device gotch.Device) (*Predictor, error) {
	return fromStateDict(sd, nil, device)
}

func readStateDict(path string) (map[string]*ts.Tensor, map[string]string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, nil, err
	}
	ext := strings.ToLower(filepath.Ext(path))
	if !st.IsDir() && (ext == ".pt" || ext == ".pth" || ext == ".ckpt" || ext == ".bin") {
		sd, err := tensorio.LoadPT(path)
		return sd, nil, err
	}
	ck, err := tensorio.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer ck.Close()
	sd := map[string]*ts.Tensor{}
	for _, n := range ck.Names() {
		if !strings.Contains(n, "W.") && !strings.Contains(n, "xlstm_pooler.") && !strings.Contains(n, "fc.") {
			continue // not the predictor's; do not read it
		}
		t, err := ck.TensorAs(n, gotch.Float)
		if err != nil {
			return nil, nil, err
		}
		sd[n] = t // tensorio copies out of the mapping
	}
	return sd, ck.Metadata(), nil
}

var blockRe = regexp.MustCompile(`^xlstm_pooler\.xlstm_stack\.blocks\.(\d+)\.`)

// fromStateDict strips the key prefix, infers or checks the config,
// converts a vanilla-backend sLSTM layout, checks every shape and builds.
func fromStateDict(raw map[string]*ts.Tensor, cfg *Config, device gotch.Device) (*Predictor, error) {
	prefix := ""
	const anchor = "xlstm_pooler.xlstm_stack.post_blocks_norm.weight"
	found := false
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	// Several stacks may be present (e.g. gradients or EMA copies under
	// other prefixes); the shortest prefix wins ("model." in Lightning
	// checkpoints of the reference).
	for _, k := range keys {
		if strings.HasSuffix(k, anchor) {
			cand := strings.TrimSuffix(k, anchor)
			if !found || len(cand) < len(prefix) {
				prefix = cand
			}
			found = true
		}
	}
	if !found {
		return nil, fmt.Errorf("no %s: not an xLSTM predictor checkpoint", "model."+anchor)
	}
	sd := map[string]*ts.Tensor{}
	for _, k := range keys {
		if !strings.HasPrefix(k, prefix) {
			continue
		}
		rest := strings.TrimPrefix(k, prefix)
		if strings.HasPrefix(rest, "W.") || strings.HasPrefix(rest, "xlstm_pooler.") || strings.HasPrefix(rest, "fc.") {
			sd[rest] = raw[k]
		}
	}
	shape := func(k string) ([]int64, error) {
		t, ok := sd[k]
		if !ok {
			return nil, fmt.Errorf("missing tensor %s%s", prefix, k)
		}
		return t.Size()
	}
	var c Config
	if cfg != nil {
		c = cfg.normalized()
	} else {
		inf, err := inferConfig(sd, shape)
		if err != nil {
			return nil, err
		}
		c = inf
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	// Vanilla-backend sLSTM kernels are [NH, 4·DH, DH] with the bias in
	// [gate, head, d] order; convert them to the cuda layout used here.
	for i := 0; i < c.NumBlocks; i++ {
		if !c.IsSLSTM(i) {
			continue
		}
		rk := strings.TrimPrefix(blockKey(i, "xlstm.slstm_cell._recurrent_kernel_"), "model.")
		bk := strings.TrimPrefix(blockKey(i, "xlstm.slstm_cell._bias_"), "model.")
		rs, err := shape(rk)
		if err != nil {
			return nil, err
		}
		NH := int64(c.SLSTMHeads)
		DH := int64(c.EmbeddingDim) / NH
		if len(rs) == 3 && rs[0] == NH && rs[1] == 4*DH && rs[2] == DH {
			sd[rk] = sd[rk].MustTranspose(1, 2, false).MustContiguous(true)
			if b, ok := sd[bk]; ok && b.Numel() == uint(4*NH*DH) {
				sd[bk] = b.MustReshape([]int64{4, NH, DH}, false).MustPermute([]int64{1, 0, 2}, true).MustReshape([]int64{4 * NH * DH}, true)
			}
		}
		if b, ok := sd[bk]; ok && b.Dim() == 3 && b.Numel() == uint(4*NH*DH) {
			// [NH, 4, DH] (the external view) flattens to the same order.
			sd[bk] = b.MustReshape([]int64{4 * NH * DH}, false)
		}
	}
	vals := map[string]*ts.Tensor{}
	want := map[string]bool{}
	for _, sp := range c.specs() {
		k := strings.TrimPrefix(sp.name, "model.")
		want[k] = true
		got, err := shape(k)
		if err != nil {
			return nil, err
		}
		if !slices.Equal(got, sp.shape) {
			return nil, fmt.Errorf("tensor %s%s has shape %v, want %v", prefix, k, got, sp.shape)
		}
		t := sd[k]
		if !isFloat(t.DType()) {
			return nil, fmt.Errorf("tensor %s%s has dtype %v, want a float type", prefix, k, t.DType())
		}
		vals[sp.name] = t
	}
	var extra []string
	for k := range sd {
		if !want[k] {
			extra = append(extra, prefix+k)
		}
	}
	if len(extra) > 0 {
		sort.Strings(extra)
		return nil, fmt.Errorf("unexpected predictor tensors %v (layout differs from xlstm 1.0.6)", extra)
	}
	return build(c, vals, device)
}

func inferConfig(sd map[string]*ts.Tensor, shape func(string) ([]int64, error)) (Config, error) {
	c := Config{}
	ws, err := shape("W.weight")
	if err != nil {
		return c, err
	}
	if len(ws) != 2 {
		return c, fmt.Errorf("W.weight has shape %v, want [embedding, input]", ws)
	}
	c.EmbeddingDim, c.InputDim = int(ws[0]), int(ws[1])
	E := ws[0]
	nb := -1
	for k := range sd {
		if m := blockRe.FindStringSubmatch(k); m != nil {
			i, _ := strconv.Atoi(m[1])
			if i > nb {
				nb = i
			}
		}
	}
	if nb < 0 {
		return c, fmt.Errorf("no xlstm_pooler.xlstm_stack.blocks.* tensors")
	}
	c.NumBlocks = nb + 1
	bk := func(i int, rest string) string { return strings.TrimPrefix(blockKey(i, rest), "model.") }
	c.ConvKernel, c.QKVBlockSize = 4, 4
	c.ProjFactor, c.FFNProjFactor = 2, 1.3
	c.NumHeads, c.SLSTMHeads = 4, 4
	for i := 0; i < c.NumBlocks; i++ {
		if _, ok := sd[bk(i, "xlstm.slstm_cell._recurrent_kernel_")]; ok {
			c.SLSTMAt = append(c.SLSTMAt, i)
			rs, _ := shape(bk(i, "xlstm.slstm_cell._recurrent_kernel_"))
			if len(rs) != 3 {
				return c, fmt.Errorf("%s has shape %v, want [heads, dh, 4·dh]", bk(i, "xlstm.slstm_cell._recurrent_kernel_"), rs)
			}
			c.SLSTMHeads = int(rs[0])
			fs, err := shape(bk(i, "ffn.proj_down.weight"))
			if err != nil {
				return c, err
			}
			if len(fs) != 2 {
				return c, fmt.Errorf("%s has shape %v", bk(i, "ffn.proj_down.weight"), fs)
			}
			c.FFNProjFactor = float64(fs[1]) / float64(E)
		} else {
			us, err := shape(bk(i, "xlstm.proj_up.weight"))
			if err != nil {
				return c, fmt.Errorf("block %d is neither an sLSTM nor an mLSTM block: %w", i, err)
			}
			c.ProjFactor = float64(us[0]/2) / float64(E)
			gs, err := shape(bk(i, "xlstm.mlstm_cell.igate.weight"))
			if err != nil {
				return c, err
			}
			c.NumHeads = int(gs[0])
			qs, err := shape(bk(i, "xlstm.q_proj.weight"))
			if err != nil {
				return c, err
			}
			if len(qs) != 3 {
				return c, fmt.Errorf("%s has shape %v, want [blocks, bs, bs]", bk(i, "xlstm.q_proj.weight"), qs)
			}
			c.QKVBlockSize = int(qs[2])
		}
		cs, err := shape(bk(i, "xlstm.conv1d.conv.weight"))
		if err != nil {
			return c, err
		}
		if len(cs) != 3 {
			return c, fmt.Errorf("%s has shape %v, want [features, 1, kernel]", bk(i, "xlstm.conv1d.conv.weight"), cs)
		}
		c.ConvKernel = int(cs[2])
	}
	hs, err := shape("fc.0.weight")
	if err != nil {
		return c, err
	}
	c.HeadHidden = int(hs[0])
	return c, nil
}

func isFloat(d gotch.DType) bool {
	return d == gotch.Float || d == gotch.Double || d == gotch.Half || d == gotch.BFloat16
}
