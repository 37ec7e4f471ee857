package cli

import (
	"fmt"
	"path/filepath"

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

The download resumes where it stopped when run again (.part files), and every
file is checked against the Hub's size and checksum (SHA-256 for LFS files,
the git blob SHA-1 for small files). HF_TOKEN (or the token saved by
'huggingface-cli login') is sent for private or gated models; HF_ENDPOINT
selects a mirror.`,
		Example: `  m3gate model fetch smolvlm-256m
  m3gate model fetch HuggingFaceTB/SmolVLM-500M-Instruct --revision main --dir /data/models/smolvlm-500m`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
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
