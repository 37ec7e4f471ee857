package cli

import (
	"errors"
	"fmt"
	"path/filepath"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/m3gate/m3gate/plugin/dataset"
	"github.com/m3gate/m3gate/plugin/metrics"
)

// newEvalCmd builds `m3gate eval`: SRCC/PLCC/KRCC/RMSE of predictions
// against MOS, per aspect, with bootstrap confidence intervals.
func newEvalCmd(app *App) *cobra.Command {
	var (
		predictions, out, manifest string
		predCol, mosCol            string
		bootstrap                  int
		seed                       uint64
		level                      float64
	)
	cmd := &cobra.Command{
		Use:   "eval --predictions FILE [--out DIR]",
		Short: "Evaluate scores against a dataset's MOS (SRCC, PLCC, KRCC, RMSE)",
		Long: `Evaluate predicted scores against ground-truth MOS, per aspect: SRCC, PLCC
(raw and after the 5-parameter logistic mapping), KRCC (tau-b) and RMSE, with
seeded percentile-bootstrap confidence intervals.

The predictions file is JSONL (objects with image, aspect, predicted, mos and
optionally source) or CSV (.csv, header naming those columns; common other
names such as pred or gt are accepted, --pred-col and --mos-col name others). With
--manifest, lines without mos (or source) take them from the manifest, and
the JSON lines of 'm3gate score --json' are read as they are (one
prediction per scored aspect), so scores can be evaluated directly. The output
folder receives report.json, predictions.csv (with the logistic-mapped
prediction) and scatter_<aspect>.png (predicted vs MOS, one colour per
source).`,
		Example: `  m3gate eval --predictions preds.jsonl --out eval/ --bootstrap 1000 --seed 1
  m3gate score --prompts-file test.jsonl --json > scores.jsonl
  m3gate eval --predictions scores.jsonl --manifest test.jsonl --out eval/`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if predictions == "" {
				return &UsageError{Err: errors.New("eval: --predictions is required")}
			}
			if bootstrap < 0 || level <= 0 || level >= 1 {
				return &UsageError{Err: errors.New("eval: --bootstrap must be >= 0 and --level in (0, 1)")}
			}
			var lookup metrics.Lookup
			if manifest != "" {
				if lookup, err = manifestLookup(manifest); err != nil {
					return fmt.Errorf("eval: %w", err)
				}
			}
			preds, err := metrics.ReadPredictionsColumns(predictions, lookup, metrics.Columns{Predicted: predCol, MOS: mosCol})
			if err != nil {
				return fmt.Errorf("eval: %w", err)
			}
			rep, err := metrics.Evaluate(preds, metrics.EvalOptions{Bootstrap: bootstrap, Seed: seed, Level: level})
			if err != nil {
				return fmt.Errorf("eval: %w", err)
			}
			files, err := rep.WriteOutputs(out, preds)
			if err != nil {
				return fmt.Errorf("eval: %w", err)
			}
			tw := tabwriter.NewWriter(app.Stdout, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "aspect\tn\tSRCC\tPLCC\tPLCC(fit)\tKRCC\tRMSE")
			for _, r := range rep.Results {
				fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\n", r.Aspect, r.N,
					withCI(r.SRCC, r.CI, "srcc"), withCI(r.PLCC, r.CI, "plcc"), withCI(r.PLCCFitted, r.CI, "plcc_fitted"),
					withCI(r.KRCC, r.CI, "krcc"), withCI(r.RMSE, r.CI, "rmse"))
			}
			tw.Flush()
			for _, r := range rep.Results {
				if r.FitError != "" {
					fmt.Fprintf(app.Stderr, "m3gate: eval: %s: PLCC(fit) is NaN: %s (the 5-parameter logistic needs at least 5 images)\n", r.Aspect, r.FitError)
				}
			}
			for _, f := range files {
				fmt.Fprintf(app.Stdout, "wrote %s\n", f)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&predictions, "predictions", "", "predictions file (JSONL or .csv)")
	fl.StringVar(&out, "out", "eval", "output folder")
	fl.StringVar(&predCol, "pred-col", "", "CSV column of the predicted score (default predicted, or pred, prediction, score, predicted_mos, pred_mos)")
	fl.StringVar(&mosCol, "mos-col", "", "CSV column of the ground-truth MOS (default mos, or gt, gt_mos, mos_gt, label, target)")
	fl.StringVar(&manifest, "manifest", "", "manifest supplying mos and source for predictions that lack them (matched by image name or path)")
	fl.IntVar(&bootstrap, "bootstrap", 1000, "bootstrap resamples for confidence intervals (0: none)")
	fl.Uint64Var(&seed, "seed", 1, "bootstrap seed")
	fl.Float64Var(&level, "level", 0.95, "confidence level")
	return cmd
}

// manifestLookup indexes a manifest by image name, path and base name.
func manifestLookup(path string) (metrics.Lookup, error) {
	m, rep, err := dataset.ReadManifest(path)
	if err != nil {
		return nil, err
	}
	if len(rep.Problems) > 0 {
		return nil, fmt.Errorf("manifest %s has %d problems (run 'm3gate data check')", path, len(rep.Problems))
	}
	byName := map[string]dataset.Record{}
	for _, r := range m.Records {
		for _, k := range []string{r.Image, filepath.Base(r.Image), r.Name} {
			if k != "" {
				byName[k] = r
			}
		}
	}
	return func(image, aspect string) (float64, string, bool) {
		r, ok := byName[image]
		if !ok {
			r, ok = byName[filepath.Base(image)]
		}
		if !ok {
			return 0, "", false
		}
		mos, ok := r.MOS[aspect]
		return mos, r.Source, ok
	}, nil
}

func withCI(v float64, ci map[string]metrics.Interval, name string) string {
	s := fmt.Sprintf("%.4f", v)
	if iv, ok := ci[name]; ok {
		s += fmt.Sprintf(" [%.4f, %.4f]", iv.Lo, iv.Hi)
	}
	return s
}
