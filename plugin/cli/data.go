package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/m3gate/m3gate/plugin/dataset"
	"github.com/m3gate/m3gate/schemas/labels"
)

// newDataCmd builds `m3gate data` and its subcommands.
func newDataCmd(app *App) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "data",
		Short: "Dataset tools",
	}
	cmd.AddCommand(newDataConvertCmd(app), newDataCheckCmd(app))
	return cmd
}

// newDataConvertCmd builds `m3gate data convert`.
func newDataConvertCmd(app *App) *cobra.Command {
	var (
		format, images, out, split, reportPath string
		inputs                                 []string
		allowMissing, allowProblems, byPrompt  bool
		testFraction                           float64
		seed                                   uint64
	)
	cmd := &cobra.Command{
		Use:   "convert --format FORMAT --in FILE [--in FILE] [--images DIR] --out manifest.jsonl",
		Short: "Convert a dataset's labels into m3gate's manifest",
		Long: `Convert the label files of an image-quality dataset into m3gate's manifest
(JSONL, one image per line: image path, prompt, MOS per aspect on 0–5, split,
source, original scale; see 'go doc github.com/m3gate/m3gate/plugin/dataset').

Formats: agiqa-3k (data.csv), aigciqa2023 (MOS 0–100, scaled to 0–5),
agiqa-1k, aigiqa-20k (info_train.csv / info_val.csv, no header; give both with
two --in flags), conversations (the reference's conversations JSONL).

Every problem (unparsable row, MOS out of range, duplicate, missing image) is
listed with file and line, and the row is left out. The command fails when
there is any problem, unless --allow-missing (only missing images) or
--allow-problems (any) is given; the manifest is then written without those
rows.

Sources without a split (AIGCIQA2023, AGIQA-1K) get one with --test-fraction:
a seeded random share of the prompts (or images, --split-by-prompt=false)
becomes test, the rest train.`,
		Example: `  m3gate data convert --format agiqa-3k --in data/agiqa-3k/data.csv --images data/agiqa-3k/images --out agiqa3k.jsonl
  m3gate data convert --format aigiqa-20k --in info_train.csv --in info_val.csv --out aigiqa20k.jsonl
  m3gate data convert --format aigciqa2023 --in aigciqa2023.csv --images AIGCIQA2023/ --out a2023.jsonl --test-fraction 0.2 --seed 1`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := dataset.ParseFormat(format)
			if err != nil {
				return &UsageError{Err: fmt.Errorf("data convert: %w", err)}
			}
			if len(inputs) == 0 || out == "" {
				return &UsageError{Err: errors.New("data convert: --in and --out are required")}
			}
			recs, rep, err := dataset.Convert(f, inputs, dataset.Options{ImagesDir: images, BaseDir: filepath.Dir(out), Split: split})
			if err != nil {
				return fmt.Errorf("data convert: %w", err)
			}
			if err := rep.WriteText(app.Stderr); err != nil {
				return err
			}
			if reportPath != "" {
				b, _ := json.MarshalIndent(rep, "", "  ")
				if err := os.WriteFile(reportPath, append(b, '\n'), 0o644); err != nil {
					return fmt.Errorf("data convert: write report: %w", err)
				}
			}
			allowed := len(rep.Problems) == 0 || allowProblems || (allowMissing && rep.OnlyKinds(labels.KindMissingImage))
			if !allowed {
				return fmt.Errorf("data convert: %d problems in the input (listed above); fix them, or pass --allow-missing (missing images only) or --allow-problems to write the manifest without those rows", len(rep.Problems))
			}
			if len(recs) == 0 {
				return errors.New("data convert: no records to write")
			}
			if testFraction > 0 {
				train, test, err := dataset.AssignSplits(recs, testFraction, seed, byPrompt)
				if err != nil {
					return &UsageError{Err: fmt.Errorf("data convert: %w", err)}
				}
				fmt.Fprintf(app.Stdout, "assigned splits to records without one: %d train, %d test\n", train, test)
			}
			if err := dataset.WriteManifestFile(out, recs); err != nil {
				return fmt.Errorf("data convert: %w", err)
			}
			fmt.Fprintf(app.Stdout, "wrote %d records to %s\n", len(recs), out)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&format, "format", "", "source format: agiqa-3k, aigciqa2023, agiqa-1k, aigiqa-20k, conversations")
	fl.StringArrayVar(&inputs, "in", nil, "input label file (repeatable)")
	fl.StringVar(&images, "images", "", "image folder; when set, image paths point there and missing images are problems")
	fl.StringVar(&out, "out", "", "manifest to write (JSONL)")
	fl.StringVar(&split, "split", "", "set this split on every record (default: from the source)")
	fl.StringVar(&reportPath, "report", "", "also write the problem report as JSON to this file")
	fl.Float64Var(&testFraction, "test-fraction", 0, "put this seeded random fraction of records without a split into test, the rest into train")
	fl.Uint64Var(&seed, "seed", 1, "seed of --test-fraction")
	fl.BoolVar(&byPrompt, "split-by-prompt", true, "with --test-fraction, keep all images of a prompt in one split")
	fl.BoolVar(&allowMissing, "allow-missing", false, "succeed when the only problems are missing images")
	fl.BoolVar(&allowProblems, "allow-problems", false, "succeed whatever the problems (they are still listed)")
	return cmd
}

// newDataCheckCmd builds `m3gate data check MANIFEST`.
func newDataCheckCmd(app *App) *cobra.Command {
	var images bool
	return func() *cobra.Command {
		cmd := &cobra.Command{
			Use:   "check MANIFEST",
			Short: "Validate a manifest (fields, MOS range, duplicates, optionally image files)",
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				m, rep, err := dataset.ReadManifest(args[0])
				if err != nil {
					return fmt.Errorf("data check: %w", err)
				}
				if images {
					for _, r := range m.Records {
						if _, err := os.Stat(m.ImagePath(r)); err != nil {
							rep.Problems = append(rep.Problems, labels.Problem{File: args[0], Kind: labels.KindMissingImage, Msg: fmt.Sprintf("%s (origin %s): %v", r.Image, r.Origin, err)})
						}
					}
				}
				if err := rep.WriteText(app.Stderr); err != nil {
					return err
				}
				if len(rep.Problems) > 0 {
					return fmt.Errorf("data check: %d problems", len(rep.Problems))
				}
				fmt.Fprintf(app.Stdout, "%s: %d records, no problems\n", args[0], len(m.Records))
				return nil
			},
		}
		cmd.Flags().BoolVar(&images, "images", false, "also check that every image file exists")
		return cmd
	}()
}
