package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/m3gate/m3gate/plugin/hub"
)

// newModelFetchCmd builds `m3gate model fetch NAME|REPO [--revision R] [--dir D]`.
func newModelFetchCmd(app *App) *cobra.Command {
	var revision, dir string
	cmd := &cobra.Command{
		Use:   "fetch NAME|REPO [--revision R] [--dir D]",
		Short: "Download a model directory from the Hugging Face Hub",
		Long: `Download the files a model needs (config, tokenizer, processor, chat template,
safetensors weights) from the Hugging Face Hub into a directory, by default
models/NAME. Known names: smolvlm-256m, smolvlm-500m, smolvlm-2.2b; any
other argument is a Hub repository owner/name.

m3-agiqa fetches the paper's released setup into models/m3-agiqa: the base
model MiniCPM-Llama3-V-2.5 (base/, about 34 GB), the LoRA adapters for
quality, correspondence and authenticity (adapters/ASPECT/) and the xLSTM
predictor checkpoints the reference pairs with them (predictors/), and
writes models/m3-agiqa/config.yaml, a profile that wires each aspect to its
adapter, predictor and settings. m3gate then reads that profile instead of
./config.yaml (unless --config or M3GATE_CONFIG says otherwise).

The download resumes where it stopped when run again (.part files), and every
file is checked against the Hub's size and checksum (SHA-256 for LFS files,
the git blob SHA-1 for small files). HF_TOKEN (or the token saved by
'huggingface-cli login') is sent for private or gated models; HF_ENDPOINT
selects a mirror.`,
		Example: `  m3gate model fetch smolvlm-256m
  m3gate model fetch HuggingFaceTB/SmolVLM-500M-Instruct --revision main --dir /data/models/smolvlm-500m
  m3gate model fetch m3-agiqa`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if b, ok := hub.KnownBundles[strings.ToLower(args[0])]; ok {
				return fetchBundle(cmd, app, strings.ToLower(args[0]), b, revision, dir)
			}
			repo, dirName, err := hub.ResolveRepo(args[0])
			if err != nil {
				return &UsageError{Err: fmt.Errorf("model fetch: %w", err)}
			}
			if dir == "" {
				dir = filepath.Join("models", dirName)
			}
			c := hub.NewClient(app.Env)
			c.Progress = app.Stderr
			res, err := c.Download(cmd.Context(), repo, revision, dir, nil)
			if err != nil {
				return fmt.Errorf("model fetch: %w", err)
			}
			var total int64
			for _, f := range res.Files {
				total += f.Size
				fmt.Fprintf(app.Stdout, "%-10s %s\n", f.Status, f.Name)
			}
			fmt.Fprintf(app.Stdout, "fetched %s@%s into %s (%d files, %.1f MB)\n",
				res.Repo, res.Commit, res.Dir, len(res.Files), float64(total)/1e6)
			if abs(dir) != abs(app.Config.Model.Dir) {
				fmt.Fprintf(app.Stdout, "to use it, set model.dir: %s in config.yaml (or M3GATE_MODEL_DIR=%s)\n", dir, dir)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&revision, "revision", "main", "branch, tag or commit to download")
	cmd.Flags().StringVar(&dir, "dir", "", "target directory (default models/NAME)")
	return cmd
}

func abs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	return a
}

// fetchBundle downloads a known bundle and writes its profile.
func fetchBundle(cmd *cobra.Command, app *App, name string, b hub.Bundle, revision, dir string) error {
	if revision != "main" && revision != "" {
		return &UsageError{Err: fmt.Errorf("model fetch %s: --revision does not apply to a bundle", name)}
	}
	if dir == "" {
		dir = filepath.Join("models", name)
	}
	c := hub.NewClient(app.Env)
	c.Progress = app.Stderr
	res, err := c.FetchBundle(cmd.Context(), b, dir, app.Stderr)
	if err != nil {
		return fmt.Errorf("model fetch %s: %w (run the same command again to resume)", name, err)
	}
	var files int
	var total int64
	for _, r := range res.Results {
		for _, f := range r.Files {
			files++
			total += f.Size
		}
	}
	profile := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(profile, []byte(b.Profile(res)), 0o644); err != nil {
		return fmt.Errorf("model fetch %s: write profile: %w", name, err)
	}
	fmt.Fprintf(app.Stdout, "fetched %s into %s (%d files, %.1f MB)\n", name, dir, files, float64(total)/1e6)
	fmt.Fprintf(app.Stdout, "wrote the profile %s: m3gate uses it when no --config or M3GATE_CONFIG is given", profile)
	if abs(dir) != abs(filepath.Join("models", name)) {
		fmt.Fprintf(app.Stdout, " and it is at %s (here: --config %s)", ProfileFile, profile)
	}
	fmt.Fprintln(app.Stdout)
	return nil
}
