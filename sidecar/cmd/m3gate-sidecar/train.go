package main

import (
	"context"
	"io"
	"os"

	"github.com/m3gate/m3gate/sidecar/train"
)

// init registers the training jobs: `m3gate-sidecar finetune ...` and
// `m3gate-sidecar train-predictor ...` (flags: --help). Progress lines go to
// stderr, the summary to stdout.
func init() {
	subcommands["finetune"] = func(ctx context.Context, args []string, stdout io.Writer) error {
		return train.RunFinetune(ctx, args, stdout, os.Stderr)
	}
	subcommands["train-predictor"] = func(ctx context.Context, args []string, stdout io.Writer) error {
		return train.RunTrainPredictor(ctx, args, stdout, os.Stderr)
	}
}
