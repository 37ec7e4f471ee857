package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/m3gate/m3gate/plugin/review"
)

// newReportCmd builds `m3gate report`: the review page as one static file.
func newReportCmd(app *App) *cobra.Command {
	var out, title string
	var thumb int
	var noThumbs bool
	cmd := &cobra.Command{
		Use:   "report RESULTS.jsonl|OUTDIR --out report.html",
		Short: "Write the review page of finished results as one self-contained HTML file",
		Long: `report writes the review page of m3gate serve for finished results as one
self-contained HTML file: every scored image as a card (thumbnail, MOS bars per
aspect, rating word, pass/reject badge, the model's descriptions, prompt, seed,
attempt), filters, sorting, a histogram per aspect and what-if thresholds that
show how many images would pass and the config lines that set that gate.

The input is an output folder of m3gate run (or its results.jsonl) or the
output of m3gate score --json saved to a file. Thumbnails are scaled down and
embedded as data: URLs from the image files the lines name (looked up as
written, then in the results file's folder and its rejected/ folder); the file
makes no network request when opened. The what-if sliders start at the gate
the run used (read from its images), else at scoring.thresholds and
scoring.gate of the configuration.`,
		Example: `  m3gate run workflow.json --count 20 --out out/
  m3gate report out/ --out out/report.html
  m3gate score shots/*.png --prompt "a red fox" --json > scores.jsonl
  m3gate report scores.jsonl --out scores.html`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return &UsageError{Err: errors.New("report: --out FILE.html is required")}
			}
			if thumb < 16 || thumb > 1024 {
				return &UsageError{Err: fmt.Errorf("report: --thumb-size %d: want 16..1024 pixels", thumb)}
			}
			loaded, err := review.Load(args[0], review.LoadOptions{ThumbSide: thumb, NoThumbs: noThumbs})
			if err != nil {
				return fmt.Errorf("report: %w", err)
			}
			gate := review.Gate{Thresholds: app.Config.Scoring.Thresholds, Mode: app.Config.Scoring.Gate}
			if loaded.Gate != nil {
				gate = *loaded.Gate
			}
			if title == "" {
				title = "m3gate report: " + filepath.Base(filepath.Clean(args[0]))
			}
			v := review.View{Title: title, Source: args[0], Generated: time.Now().UTC(), Gate: gate, Items: loaded.Items}
			if err := writeReportFile(out, v); err != nil {
				return err
			}
			fmt.Fprintf(app.Stdout, "wrote %s (%d images", out, len(loaded.Items))
			if loaded.Missing > 0 {
				fmt.Fprintf(app.Stdout, ", %d without a thumbnail: their files were not found", loaded.Missing)
			}
			fmt.Fprintln(app.Stdout, ")")
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "HTML file to write (required)")
	cmd.Flags().StringVar(&title, "title", "", "page title (default: m3gate report: INPUT)")
	cmd.Flags().IntVar(&thumb, "thumb-size", 192, "longest thumbnail side in pixels")
	cmd.Flags().BoolVar(&noThumbs, "no-thumbs", false, "leave the thumbnails out (a smaller file)")
	return cmd
}

// writeReportFile writes the report next to path and renames it into place,
// so a failed write never leaves half a file.
func writeReportFile(path string, v review.View) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".m3gate-report-*.tmp")
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	werr := review.WriteReport(tmp, v)
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("report: write %s: %w", path, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("report: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("report: write %s: %w", path, err)
	}
	return nil
}
