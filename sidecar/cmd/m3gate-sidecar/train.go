package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"strings"

	"github.com/m3gate/m3gate/schemas/iqa"
	"github.com/m3gate/m3gate/sidecar/train"
)

// finetune runs `m3gate-sidecar finetune` with command-line arguments:
// flags as listed by --help. Progress goes to stderr; a summary line to
// stdout.
func finetune(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o := train.DefaultFinetuneOptions()
	fs := flag.NewFlagSet("finetune", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.Model, "model", "", "MLLM directory (config.json, model.safetensors, tokenizer.json) (required)")
	fs.StringVar(&o.Data, "data", "", "conversations JSONL (required)")
	fs.StringVar(&o.Images, "images", "", "image folder (default: DATA's folder/images)")
	fs.StringVar(&o.Out, "out", "", "output folder: final PEFT adapter, checkpoint-N/, metrics.jsonl (required)")
	fs.StringVar(&o.Adapter, "adapter", "", "PEFT LoRA adapter to start from (default: a fresh one)")
	fs.StringVar(&o.Aspect, "aspect", "", "train on this aspect only: "+strings.Join(iqa.Aspects, ", ")+" (default: all)")
	fs.StringVar(&o.TrainSplit, "train-split", o.TrainSplit, "split of the training records")
	fs.StringVar(&o.ValSplit, "val-split", o.ValSplit, `split of the validation records ("" for none)`)
	fs.IntVar(&o.MaxTrain, "max-train", 0, "use at most this many training records (0: all)")
	fs.IntVar(&o.MaxVal, "max-val", 0, "use at most this many validation records (0: all)")
	fs.IntVar(&o.Epochs, "epochs", o.Epochs, "passes over the training data")
	fs.IntVar(&o.MaxSteps, "max-steps", 0, "optimiser steps (0: from --epochs)")
	fs.IntVar(&o.BatchSize, "batch-size", o.BatchSize, "conversations per forward pass")
	fs.IntVar(&o.GradAccum, "grad-accum", o.GradAccum, "forward passes per optimiser step")
	fs.Float64Var(&o.LR, "lr", o.LR, "peak learning rate (AdamW)")
	fs.Float64Var(&o.WarmupRatio, "warmup-ratio", o.WarmupRatio, "fraction of steps of linear warmup before the cosine decay")
	fs.Float64Var(&o.WeightDecay, "weight-decay", o.WeightDecay, "AdamW weight decay")
	fs.Float64Var(&o.MaxGradNorm, "max-grad-norm", o.MaxGradNorm, "clip the global gradient norm to this (0: no clipping)")
	fs.IntVar(&o.LoRA.R, "lora-r", o.LoRA.R, "LoRA rank")
	fs.Float64Var(&o.LoRA.LoraAlpha, "lora-alpha", o.LoRA.LoraAlpha, "LoRA alpha (scale alpha/r)")
	fs.Float64Var(&o.LoRA.LoraDropout, "lora-dropout", o.LoRA.LoraDropout, "LoRA dropout")
	targets := fs.String("lora-targets", "q_proj,k_proj,v_proj,o_proj", "adapted projections of the text model's self-attention")
	fs.StringVar(&o.DType, "dtype", o.DType, "base weights dtype: f32 or bf16 (LoRA weights stay f32)")
	fs.StringVar(&o.Device, "device", "cpu", "where the model trains: cpu, cuda or cuda:N (needs a CUDA libtorch build, see README 'GPU build')")
	fs.Int64Var(&o.Seed, "seed", o.Seed, "seed of the LoRA init, data order and dropout")
	fs.IntVar(&o.SaveEvery, "save-every", o.SaveEvery, "checkpoint every N steps (0: only at the end)")
	fs.IntVar(&o.EvalEvery, "eval-every", 0, "validate every N steps (0: only at the end)")
	fs.IntVar(&o.Keep, "keep", o.Keep, "checkpoints kept (0: all)")
	fs.BoolVar(&o.Resume, "resume", false, "continue from the latest checkpoint in --out")
	fs.IntVar(&o.Threads, "threads", 0, "libtorch intra-op threads (0: default)")
	fs.BoolVar(&o.CacheImages, "cache-images", o.CacheImages, "keep vision features in memory (the vision tower is frozen)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("finetune: %w", err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("finetune: unexpected arguments %q", fs.Args())
	}
	mods := trimFlagList(*targets)
	if len(mods) == 0 {
		return errors.New("finetune: --lora-targets is empty")
	}
	o.LoRA.TargetModules = train.TextAttention(mods)
	res, err := train.Finetune(ctx, o, stderr)
	if err != nil {
		return err
	}
	last := math.NaN()
	if n := len(res.Losses); n > 0 {
		last = res.Losses[n-1]
	}
	fmt.Fprintf(stdout, "finetune: %d/%d steps, last loss %.4f, val loss %.4f, rating accuracy %.3f; adapter in %s\n",
		res.Steps, res.TotalSteps, last, res.ValLoss, res.ValAcc, res.AdapterDir)
	return nil
}

// trainPredictor runs `m3gate-sidecar train-predictor` with command-line
// arguments: flags as listed by --help. Progress goes to stderr; a summary
// line to stdout.
func trainPredictor(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o := train.DefaultPredictorOptions()
	fs := flag.NewFlagSet("train-predictor", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.Model, "model", "", "MLLM directory (required)")
	fs.StringVar(&o.Adapter, "adapter", "", "PEFT LoRA adapter of the aspect (from finetune)")
	fs.StringVar(&o.Data, "data", "", "conversations JSONL (required)")
	fs.StringVar(&o.Images, "images", "", "image folder (default: DATA's folder/images)")
	fs.StringVar(&o.Labels, "labels", "", "MOS labels: AGIQA-3K data.csv or an m3gate manifest JSONL (default: the records' mos field)")
	fs.StringVar(&o.Out, "out", "", "output folder: best.safetensors, last.safetensors, metrics.jsonl (required)")
	fs.StringVar(&o.Cache, "cache", "", "feature cache folder (default: OUT/features)")
	fs.StringVar(&o.Aspect, "aspect", "", "aspect to train: "+strings.Join(iqa.Aspects, ", ")+" (default: all records)")
	fs.StringVar(&o.TrainSplit, "train-split", o.TrainSplit, "split of the training records")
	fs.StringVar(&o.ValSplit, "val-split", o.ValSplit, `split of the validation records ("" for none)`)
	fs.IntVar(&o.MaxTrain, "max-train", 0, "use at most this many training records (0: all)")
	fs.IntVar(&o.MaxVal, "max-val", 0, "use at most this many validation records (0: all)")
	fs.StringVar(&o.ValDescription, "val-description", o.ValDescription, "description in validation inputs: generated (the model's own, as the paper), teacher or student")
	fs.IntVar(&o.GenMaxTokens, "gen-max-tokens", o.GenMaxTokens, "bound on generated descriptions")
	fs.IntVar(&o.MaxLen, "max-len", o.MaxLen, "predictor input length S, truncated on the right (768 for AIGIQA-20K)")
	fs.IntVar(&o.Epochs, "epochs", o.Epochs, "epochs")
	fs.Float64Var(&o.LR, "lr", o.LR, "AdamW learning rate")
	fs.Float64Var(&o.WeightDecay, "weight-decay", o.WeightDecay, "AdamW weight decay")
	fs.Int64Var(&o.Seed, "seed", o.Seed, "seed of the predictor init and data order")
	fs.IntVar(&o.EmbeddingDim, "embedding-dim", 0, "xLSTM width (0: 512)")
	fs.IntVar(&o.Blocks, "blocks", 0, "xLSTM blocks (0: 4, sLSTM at index 1)")
	fs.IntVar(&o.Heads, "heads", 0, "xLSTM heads (0: 4)")
	fs.IntVar(&o.HeadHidden, "head-hidden", 0, "regression head width (0: 128)")
	fs.StringVar(&o.DType, "dtype", o.DType, "MLLM dtype: f32 or bf16")
	fs.StringVar(&o.Device, "device", "cpu", "where the MLLM and the predictor run: cpu, cuda or cuda:N (needs a CUDA libtorch build, see README 'GPU build')")
	fs.BoolVar(&o.Resume, "resume", false, "continue after the last finished epoch in --out")
	fs.IntVar(&o.Threads, "threads", 0, "libtorch intra-op threads (0: default)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("train-predictor: %w", err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("train-predictor: unexpected arguments %q", fs.Args())
	}
	res, err := train.TrainPredictor(ctx, o, stderr)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "train-predictor: %d epochs, best validation SRCC %.4f at epoch %d; predictor in %s\n",
		res.Epochs, res.BestSRCC, res.BestEpoch, res.Best)
	return nil
}

// trimFlagList splits a comma-separated flag value.
func trimFlagList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
