package hub

import (
	"context"
	"fmt"
	"io"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/m3gate/m3gate/schemas/iqa"
)

// Bundle is a set of Hub repositories that work together: a base model and,
// per aspect, an adapter and a predictor checkpoint, as the paper's authors
// released them. `m3gate model fetch NAME` downloads a bundle into one
// directory: the model in base/, adapters in adapters/ASPECT/, predictors in
// predictors/ (the Hub's folders kept).
type Bundle struct {
	// Base is the base model repository.
	Base string
	// Adapters maps an aspect to its PEFT adapter repository.
	Adapters map[string]string
	// Predictors is the repository of the predictor checkpoints;
	// PredictorFiles maps an aspect to its file in it.
	Predictors     string
	PredictorFiles map[string]string
	// Family is the model family; Options the family options the bundle's
	// adapters were trained with (max_slices, max_length, ...).
	Family  string
	Options map[string]string
}

// KnownBundles are the bundles `m3gate model fetch` knows.
var KnownBundles = map[string]Bundle{
	// The pairing of adapters and predictors that M3-AGIQA's end-to-end
	// script (inference_e2e.py) uses, on MiniCPM-Llama3-V-2.5 (about 34 GB
	// of F32 shards).
	"m3-agiqa": {
		Base: "openbmb/MiniCPM-Llama3-V-2_5",
		Adapters: map[string]string{
			iqa.Quality:        "strawhat/minicpm2.5-agiqa-3k-ft",
			iqa.Correspondence: "strawhat/minicpm2.5-agiqa-3k-corr-ft",
			iqa.Authenticity:   "strawhat/minicpm2.5-aigciqa2023-auth-ft",
		},
		Predictors: "strawhat/m3-agiqa-predictor-checkpoints",
		PredictorFiles: map[string]string{
			iqa.Quality:        "aigciqa-30k/quality/best-epoch=11-val_SRCC=0.89.ckpt",
			iqa.Correspondence: "agiqa-3k/alignment/best-epoch=14-val_SRCC=0.87.ckpt",
			iqa.Authenticity:   "aigciqa2023/authenticity/best-epoch=15-val_SRCC=0.83.ckpt",
		},
		Family:  "minicpmv25",
		Options: map[string]string{"max_slices": "9", "max_length": "512", "num_beams": "3", "repetition_penalty": "1.2"},
	},
}

// BundleResult says where a fetched bundle's parts are.
type BundleResult struct {
	Dir        string
	Base       string
	Adapters   map[string]string // aspect -> directory
	Predictors map[string]string // aspect -> checkpoint file
	Results    []*Result
}

// Aspects returns the bundle's aspects, sorted.
func (b Bundle) Aspects() []string {
	out := make([]string, 0, len(b.Adapters))
	for a := range b.Adapters {
		out = append(out, a)
	}
	sort.Strings(out)
	return out
}

// isAdapterFile reports whether a repository file is part of a PEFT adapter.
func isAdapterFile(name string) bool {
	switch name {
	case "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin":
		return true
	}
	return false
}

// FetchBundle downloads b into dir (resumable and checked, file by file,
// like Download): the base model, then every adapter and predictor.
func (c *Client) FetchBundle(ctx context.Context, b Bundle, dir string, log io.Writer) (*BundleResult, error) {
	res := &BundleResult{Dir: dir, Base: filepath.Join(dir, "base"), Adapters: map[string]string{}, Predictors: map[string]string{}}
	say := func(format string, args ...any) {
		if log != nil {
			fmt.Fprintf(log, format+"\n", args...)
		}
	}
	say("fetching the base model %s", b.Base)
	r, err := c.Download(ctx, b.Base, "", res.Base, nil)
	if err != nil {
		return res, fmt.Errorf("fetch %s: %w", b.Base, err)
	}
	res.Results = append(res.Results, r)
	for _, aspect := range b.Aspects() {
		repo := b.Adapters[aspect]
		adir := filepath.Join(dir, "adapters", aspect)
		say("fetching the %s adapter %s", aspect, repo)
		r, err := c.DownloadFiles(ctx, repo, "", adir, isAdapterFile)
		if err != nil {
			return res, fmt.Errorf("fetch %s adapter %s: %w", aspect, repo, err)
		}
		res.Results = append(res.Results, r)
		res.Adapters[aspect] = adir
	}
	if b.Predictors != "" {
		want := map[string]bool{}
		for _, f := range b.PredictorFiles {
			want[f] = true
		}
		pdir := filepath.Join(dir, "predictors")
		say("fetching %d predictor checkpoints from %s", len(want), b.Predictors)
		r, err := c.DownloadFiles(ctx, b.Predictors, "", pdir, func(name string) bool { return want[name] })
		if err != nil {
			return res, fmt.Errorf("fetch predictors %s: %w", b.Predictors, err)
		}
		got := map[string]bool{}
		for _, f := range r.Files {
			got[f.Name] = true
		}
		for aspect, f := range b.PredictorFiles {
			if !got[f] {
				return res, fmt.Errorf("fetch predictors %s: %s (for %s) is not in the repository", b.Predictors, f, aspect)
			}
			res.Predictors[aspect] = filepath.Join(pdir, filepath.FromSlash(path.Clean(f)))
		}
		res.Results = append(res.Results, r)
	}
	return res, nil
}

// Profile returns the config file (YAML) that wires a fetched bundle: the
// family, the base model, each aspect's adapter, predictor and options, GPU
// settings, and the bundle's aspects as the scored ones. Paths are relative
// to the bundle directory, where the file is written, so the directory can
// move.
func (b Bundle) Profile(res *BundleResult) string {
	rel := func(p string) string {
		r, err := filepath.Rel(res.Dir, p)
		if err != nil {
			return p
		}
		return filepath.ToSlash(r)
	}
	var sb strings.Builder
	sb.WriteString("# m3gate profile written by `m3gate model fetch`: the paper's model, adapters\n")
	sb.WriteString("# and predictors wired per aspect. m3gate reads it instead of ./config.yaml\n")
	sb.WriteString("# when it is present and no --config or M3GATE_CONFIG is given. Edit it like\n")
	sb.WriteString("# config.yaml (every key there may be set here); paths are relative to this file.\n")
	sb.WriteString("model:\n")
	fmt.Fprintf(&sb, "  dir: %s\n  family: %s\n", rel(res.Base), b.Family)
	sb.WriteString("  # A GPU with bf16: the 8B model in f32 needs about 34 GB.\n  dtype: bf16\n  device: cuda\n")
	sb.WriteString("  max_new_tokens: 256\n  adapters:\n")
	for _, a := range b.Aspects() {
		fmt.Fprintf(&sb, "    %s: %s\n", a, rel(res.Adapters[a]))
	}
	sb.WriteString("  predictors:\n")
	for _, a := range b.Aspects() {
		if p, ok := res.Predictors[a]; ok {
			fmt.Fprintf(&sb, "    %s: %q\n", a, rel(p))
		}
	}
	sb.WriteString("  options:\n")
	keys := make([]string, 0, len(b.Options))
	for k := range b.Options {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&sb, "    %s: %q\n", k, b.Options[k])
	}
	sb.WriteString("scoring:\n  aspects: [" + strings.Join(b.Aspects(), ", ") + "]\n")
	return sb.String()
}
