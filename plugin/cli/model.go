package cli

import (
	"fmt"
	"strconv"

	"github.com/spf13/cobra"
)

// Model families and tiny-model sizes that `m3gate model tiny` accepts.
var (
	tinyFamilies = []string{"idefics3", "minicpmv25"}
	tinySizes    = []string{"tiny", "256m"}
)

// newModelCmd builds `m3gate model` with tiny and fetch.
func newModelCmd(app *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "model",
		Short: "Model tools: generate tiny test models, fetch models from the Hugging Face Hub",
	}
	cmd.AddCommand(newModelTinyCmd(app), newModelFetchCmd(app))
	return cmd
}

// newModelTinyCmd builds `m3gate model tiny`, which the sidecar binary runs.
func newModelTinyCmd(app *App) *cobra.Command {
	var family, out, size string
	var seed int64
	cmd := &cobra.Command{
		Use:   "tiny --out DIR [--family idefics3|minicpmv25] [--size tiny|256m]",
		Short: "Write a model directory with random weights in the real tensor layout",
		Long: `Write a complete model directory (config.json, model.safetensors,
tokenizer.json, ...) with random weights in the real tensor layout of the
family. --size tiny is small enough for unit tests; --size 256m has exactly
SmolVLM-256M's shapes, for benchmarks. --family minicpmv25 (tiny only)
writes a bundle: the model in DIR/base, an adapter in M3-AGIQA's PEFT
layout in DIR/adapters/ASPECT and a Lightning predictor checkpoint in
DIR/predictors/ASPECT.ckpt for quality, correspondence and authenticity.
Runs in the m3gate-sidecar binary.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !contains(tinyFamilies, family) {
				return &UsageError{Err: fmt.Errorf("model tiny: unknown --family %q (want one of %v)", family, tinyFamilies)}
			}
			if !contains(tinySizes, size) {
				return &UsageError{Err: fmt.Errorf("model tiny: unknown --size %q (want one of %v)", size, tinySizes)}
			}
			if out == "" {
				return &UsageError{Err: fmt.Errorf("model tiny: --out DIR is required")}
			}
			args := []string{"model", "tiny", "--family", family, "--out", out, "--size", size}
			if cmd.Flags().Changed("seed") {
				args = append(args, "--seed", strconv.FormatInt(seed, 10))
			}
			return RunSidecar(cmd.Context(), app, args...)
		},
	}
	cmd.Flags().StringVar(&family, "family", "idefics3", "model family (idefics3 or minicpmv25)")
	cmd.Flags().StringVar(&out, "out", "", "output directory (required)")
	cmd.Flags().StringVar(&size, "size", "tiny", "tiny (unit tests) or 256m (SmolVLM-256M shapes)")
	cmd.Flags().Int64Var(&seed, "seed", 0, "random seed of the weights")
	return cmd
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
