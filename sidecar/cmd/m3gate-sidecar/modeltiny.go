package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/sugarme/gotch"

	"github.com/m3gate/m3gate/sidecar/m3"
	"github.com/m3gate/m3gate/sidecar/mllm"
	"github.com/m3gate/m3gate/sidecar/mllm/minicpmv"
)

// modelTiny implements `m3gate-sidecar model tiny --family idefics3 --out DIR
// --size tiny|256m [--dtype f32|bf16]`: it writes a randomly initialised model of the family's
// architecture (safetensors + config.json + tokenizer.json) for tests and
// demos.
func modelTiny(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("model tiny", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	family := fs.String("family", "idefics3", "model family")
	out := fs.String("out", "", "output directory")
	size := fs.String("size", "tiny", "tiny or 256m")
	seed := fs.Int64("seed", 0, "random seed")
	dtype := fs.String("dtype", "f32", "weights dtype of the idefics3 family: f32 or bf16 (as Hugging Face ships SmolVLM)")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("model tiny: %w", err)
	}
	if *out == "" {
		return errors.New("model tiny: --out is required")
	}
	if *size != "tiny" && *size != "256m" {
		return fmt.Errorf("model tiny: --size %q: want tiny or 256m", *size)
	}
	if *family == m3.FamilyMiniCPMV25 {
		if *size != "tiny" {
			return fmt.Errorf("model tiny: --size %q: family %s has only tiny", *size, *family)
		}
		if err := minicpmv.WriteTinyBundle(*out, minicpmv.TinyOptions{Seed: *seed}); err != nil {
			return fmt.Errorf("model tiny: %w", err)
		}
		base, _, _ := minicpmv.BundleLayout(*out, "")
		fmt.Fprintf(stdout, "wrote a tiny %s bundle with random weights to %s: the model in %s, an adapter (M3-AGIQA's PEFT layout) in adapters/ASPECT and a predictor (Lightning .ckpt) in predictors/ASPECT.ckpt for %s\n",
			*family, *out, base, strings.Join(minicpmv.BundleAspects, ", "))
		return nil
	}
	if *family != "idefics3" {
		return fmt.Errorf("model tiny: unknown family %q (known: %s)", *family, strings.Join(append(mllm.Families(), m3.FamilyMiniCPMV25), ", "))
	}
	opts := mllm.TinyOptions{Size: *size, Seed: *seed}
	switch *dtype {
	case "f32":
	case "bf16":
		opts.DType = gotch.BFloat16
	default:
		return fmt.Errorf("model tiny: --dtype %q: want f32 or bf16", *dtype)
	}
	if err := mllm.WriteTinyWith(*out, opts); err != nil {
		return fmt.Errorf("model tiny: %w", err)
	}
	fmt.Fprintf(stdout, "wrote a %s %s model (%s) with random weights to %s\n", *size, *family, *dtype, *out)
	return nil
}
