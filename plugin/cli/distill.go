package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/m3gate/m3gate/plugin/dataset"
	"github.com/m3gate/m3gate/plugin/distill"
	"github.com/m3gate/m3gate/schemas/iqa"
)

// newDistillCmd builds `m3gate distill`: teacher descriptions from an online MLLM.
func newDistillCmd(app *App) *cobra.Command {
	var (
		manifest, format, endpoint, model, keyEnv, out, cache, template, style, split, summaryPath string
		aspects                                                                                    []string
		noKey, noJSON                                                                              bool
		concurrency, maxAttempts, limit                                                            int
		timeout                                                                                    time.Duration
		pricePrompt, priceCompletion, temperature                                                  float64
	)
	cmd := &cobra.Command{
		Use:   "distill --manifest M --format openai|gemini --model NAME --out conversations.jsonl",
		Short: "Collect per-aspect descriptions from an online teacher MLLM",
		Long: `Ask an online multimodal LLM (the teacher) to explain each image's human
ratings, as M3-AGIQA does with Gemini: the image, its prompt and its MOS go
in; a JSON object with one explanation per aspect (40–60 words, no numbers)
comes out. The result is the two-round conversations file that 'm3gate
finetune' trains on.

Wire formats: openai (POST {endpoint}/chat/completions, works with vLLM,
Ollama, LM Studio and hosted services) and gemini (POST
{endpoint}/v1beta/models/{model}:generateContent). The API key is read from
the environment variable named by --key-env (default OPENAI_API_KEY or
GEMINI_API_KEY); it is never logged or written. --no-key sends none (local
servers).

Answers are appended to a JSONL cache (default OUT.cache.jsonl) as they
arrive; a rerun (after a crash or Ctrl-C) asks only for what is missing and
never pays twice. Rate limits (429, honouring Retry-After), 5xx and timeouts
are retried with exponential backoff; an answer that is not the required
JSON is retried, then recorded as failed.`,
		Example: `  export GEMINI_API_KEY=...
  m3gate distill --manifest agiqa3k.jsonl --format gemini --model gemini-1.5-pro --out conversations.jsonl
  m3gate distill --manifest agiqa3k.jsonl --format openai --endpoint http://localhost:8000/v1 --model Qwen2-VL-7B --no-key --out conv.jsonl`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := distill.ParseFormat(format)
			if err != nil {
				return &UsageError{Err: fmt.Errorf("distill: %w", err)}
			}
			if manifest == "" || model == "" || out == "" {
				return &UsageError{Err: errors.New("distill: --manifest, --model and --out are required")}
			}
			for _, a := range aspects {
				if err := iqa.CheckAspect(a); err != nil {
					return &UsageError{Err: fmt.Errorf("distill: %w", err)}
				}
			}
			if keyEnv == "" && !noKey {
				keyEnv = "OPENAI_API_KEY"
				if f == distill.FormatGemini {
					keyEnv = "GEMINI_API_KEY"
				}
			}
			if noKey {
				keyEnv = ""
			}
			tmpl := ""
			if template != "" {
				b, err := os.ReadFile(template)
				if err != nil {
					return fmt.Errorf("distill: template: %w", err)
				}
				tmpl = string(b)
			}
			m, rep, err := dataset.ReadManifest(manifest)
			if err != nil {
				return fmt.Errorf("distill: %w", err)
			}
			if len(rep.Problems) > 0 {
				rep.WriteText(app.Stderr)
				return fmt.Errorf("distill: manifest %s has %d problems (run 'm3gate data check')", manifest, len(rep.Problems))
			}
			if split != "" {
				var keep []dataset.Record
				for _, r := range m.Records {
					if r.Split == split {
						keep = append(keep, r)
					}
				}
				m.Records = keep
			}
			items, skipped := distill.ItemsFromManifest(m, aspects)
			if limit > 0 && len(items) > limit {
				items = items[:limit]
			}
			if skipped > 0 {
				fmt.Fprintf(app.Stderr, "distill: %d records without MOS for the chosen aspects are skipped\n", skipped)
			}
			if cache == "" {
				cache = strings.TrimSuffix(out, ".jsonl") + ".cache.jsonl"
			}
			bar := progressbar.NewOptions(len(items),
				progressbar.OptionSetWriter(app.Stderr),
				progressbar.OptionSetDescription("distill"),
				progressbar.OptionShowCount(),
				progressbar.OptionShowIts(),
				progressbar.OptionSetItsString("img"),
				progressbar.OptionSetPredictTime(true),
				progressbar.OptionSetWidth(30),
				progressbar.OptionThrottle(200*time.Millisecond),
				progressbar.OptionOnCompletion(func() { fmt.Fprintln(app.Stderr) }))
			cfg := distill.Config{
				Format: f, Endpoint: endpoint, Model: model, KeyEnv: keyEnv, Getenv: app.Getenv,
				Template: tmpl, PromptStyle: style, Concurrency: concurrency, MaxAttempts: maxAttempts,
				Timeout: timeout, JSONMode: !noJSON, Temperature: temperature,
				PricePromptPer1K: pricePrompt, PriceCompletionPer1K: priceCompletion,
				CachePath: cache, OutPath: out, Logger: app.Logger,
				Progress: func(done, total int) { bar.Set(done) },
			}
			sum, err := distill.Run(cmd.Context(), cfg, items)
			bar.Finish()
			if sum != nil {
				for _, p := range sum.Problems {
					fmt.Fprintln(app.Stderr, "distill:", p)
				}
				fmt.Fprintln(app.Stdout, sum.String())
				if summaryPath != "" {
					b, _ := json.MarshalIndent(sum, "", "  ")
					if werr := os.WriteFile(summaryPath, append(b, '\n'), 0o644); werr != nil && err == nil {
						err = werr
					}
				}
			}
			if err != nil {
				return err
			}
			if sum.Errors > 0 {
				return fmt.Errorf("distill: %d items hit errors and are not in %s; run again to retry them", sum.Errors, out)
			}
			fmt.Fprintf(app.Stdout, "wrote %s (cache %s)\n", out, cache)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&manifest, "manifest", "", "manifest of the images to describe (from 'm3gate data convert')")
	fl.StringVar(&format, "format", "openai", "wire format: openai or gemini")
	fl.StringVar(&endpoint, "endpoint", "", "API base URL (default https://api.openai.com/v1 or https://generativelanguage.googleapis.com)")
	fl.StringVar(&model, "model", "", "teacher model name")
	fl.StringVar(&keyEnv, "key-env", "", "environment variable holding the API key (default OPENAI_API_KEY or GEMINI_API_KEY)")
	fl.BoolVar(&noKey, "no-key", false, "send no API key (local servers)")
	fl.IntVar(&concurrency, "concurrency", 4, "parallel requests")
	fl.StringVar(&out, "out", "", "conversations JSONL to write")
	fl.StringVar(&cache, "cache", "", "answer cache JSONL (default OUT without .jsonl + .cache.jsonl)")
	fl.StringSliceVar(&aspects, "aspects", nil, "aspects to ask about (default: every aspect with a MOS)")
	fl.StringVar(&split, "split", "", "only records of this split")
	fl.IntVar(&limit, "limit", 0, "only the first N images (0: all)")
	fl.StringVar(&template, "template", "", "teacher prompt template file (Go text/template; default built in)")
	fl.StringVar(&style, "prompt-style", "", "conversation wording style (default agiqa-3k)")
	fl.IntVar(&maxAttempts, "max-attempts", 5, "attempts per image for each kind of failure")
	fl.DurationVar(&timeout, "timeout", 2*time.Minute, "timeout of one request")
	fl.Float64Var(&temperature, "temperature", 0, "sampling temperature")
	fl.BoolVar(&noJSON, "no-json-mode", false, "do not ask the API for a JSON response format (servers that reject it)")
	fl.Float64Var(&pricePrompt, "price-prompt", 0, "price per 1,000 prompt tokens, for the cost estimate")
	fl.Float64Var(&priceCompletion, "price-completion", 0, "price per 1,000 completion tokens, for the cost estimate")
	fl.StringVar(&summaryPath, "summary", "", "also write the run summary as JSON to this file")
	return cmd
}
