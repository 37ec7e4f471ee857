package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/m3gate/m3gate/plugin/dataset"
	"github.com/m3gate/m3gate/plugin/supervisor"
	"github.com/m3gate/m3gate/schemas"
	"github.com/m3gate/m3gate/schemas/iqa"
)

// scoreFlags are the command-line options of `m3gate score`. Flags left at
// their zero value fall back to the configuration (see resolve).
type scoreFlags struct {
	prompt       string
	promptsFile  string
	promptStyle  string
	aspects      []string
	json         bool
	output       string
	resume       bool
	maxNewTokens int
	model        string
	device       string
	threads      int
	adapters     []string // aspect=DIR, repeatable
	predictors   []string // aspect=FILE, repeatable

	// set records which flags were given on the command line.
	set map[string]bool
}

// scoreImage is one image named on the command line (or in the prompts
// file) with what is sent for it, or the local error that kept it from
// being sent.
type scoreImage struct {
	// Name is the image as the user named it (shown in the output).
	Name string
	// Path is its absolute file path; "" for stdin.
	Path string
	// Prompt is the generation prompt used for it ("" when none).
	Prompt string
	// Err is set when the image cannot be sent (missing file, no prompt).
	Err error
	// req is the index of the image in the request's Items, -1 when not sent.
	req int
	// data holds the bytes of an image read from stdin.
	data []byte
}

// scoreJob is everything `m3gate score` sends to the model process.
type scoreJob struct {
	Images  []scoreImage
	Load    schemas.LoadRequest
	Request schemas.ScoreRequest
}

// newScoreCmd builds `m3gate score`: score images on the selected aspects.
func newScoreCmd(app *App) *cobra.Command { return scoreCommand(app, runScore) }

// scoreRunner runs a built score job; tests swap it to inspect the job.
type scoreRunner func(ctx context.Context, app *App, f *scoreFlags, job *scoreJob) error

// scoreCommand builds `m3gate score` with run as the step after the flags,
// arguments and configuration were turned into a job.
func scoreCommand(app *App, run scoreRunner) *cobra.Command {
	f := &scoreFlags{}
	cmd := &cobra.Command{
		Use:   "score IMAGE... [--prompt P | --prompts-file F.jsonl] [--aspects quality,correspondence] [--json]",
		Short: "Score images with M3-AGIQA on the configured aspects",
		Long: `Score images with M3-AGIQA: for every aspect the local multimodal model
describes the image (round 1), then rates it with one word (round 2); the
score (MOS, 0-5) comes from the aspect's xLSTM predictor when one is
configured, else from the probabilities of the five rating words.

The model runs in the m3gate-sidecar process, which this command starts,
loads (model.* in config.yaml; the flags below override it) and stops again.
An IMAGE may be a file, a directory (its .jpg, .jpeg, .png, .webp, .bmp and
.gif files) or - for one image read from stdin.

The generation prompt of each image (needed for correspondence) comes from
--prompts-file, a JSONL file with one {"image": PATH, "prompt": TEXT} object
per line (a dataset manifest works; relative paths are relative to the file),
else from --prompt. Without IMAGE arguments every image of the prompts file is
scored.

Output: a table (image, aspect, MOS, rating word, score source, start of the
description), or with --json one JSON object per image per line, on stdout
or in --output FILE. Each image's result is written as soon as it is scored
(in batches of scoring.batch_size); on a terminal stderr shows a progress
bar with rate and time left. Ctrl-C (or SIGTERM) keeps what was written and
says how many images are left; --resume continues a cut --json --output run.
The exit status is 1 when any image failed; each failure is reported with
its file.`,
		Example: `  m3gate score photo.png --prompt "a red fox in the snow"
  m3gate score --prompts-file examples/prompts.jsonl --aspects quality --json
  m3gate score data/test/ --prompts-file data/test.jsonl --json -o scores.jsonl --resume
  m3gate score out/*.png --prompt "statue of a man" --model models/smolvlm-256m \
      --adapter quality=adapters/agiqa3k-quality --predictor quality=predictors/q.safetensors`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			f.set = map[string]bool{}
			cmd.Flags().Visit(func(fl *pflag.Flag) { f.set[fl.Name] = true })
			job, err := buildScoreJob(app, f, args)
			if err != nil {
				return err
			}
			return run(cmd.Context(), app, f, job)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.prompt, "prompt", "", "generation prompt of the images (for images without one in --prompts-file)")
	fl.StringVar(&f.promptsFile, "prompts-file", "", `JSONL file of {"image": PATH, "prompt": TEXT} lines`)
	fl.StringVar(&f.promptStyle, "prompt-style", "", promptStyleHelp())
	fl.StringSliceVar(&f.aspects, "aspects", nil, "aspects to score, comma-separated: "+strings.Join(iqa.Aspects, ", ")+" (default scoring.aspects)")
	fl.BoolVar(&f.json, "json", false, "print one JSON object per image per line instead of a table")
	fl.StringVarP(&f.output, "output", "o", "", "write the results to FILE instead of stdout (each image as soon as it is scored)")
	fl.BoolVar(&f.resume, "resume", false, "continue a cut run: skip the images already scored in --output FILE (needs --json) and append the rest")
	fl.IntVar(&f.maxNewTokens, "max-new-tokens", 0, "longest generated description in tokens (default model.max_new_tokens)")
	fl.StringVar(&f.model, "model", "", "model directory (default model.dir)")
	fl.StringVar(&f.device, "device", "", "cpu, cuda or cuda:N (default model.device)")
	fl.IntVar(&f.threads, "threads", 0, "libtorch intra-op threads, 0 = one per core (default model.threads)")
	fl.StringArrayVar(&f.adapters, "adapter", nil, "LoRA adapter directory of an aspect, aspect=DIR (repeatable; overrides model.adapters; aspect= drops it)")
	fl.StringArrayVar(&f.predictors, "predictor", nil, "xLSTM predictor checkpoint of an aspect, aspect=FILE (repeatable; overrides model.predictors; aspect= drops it)")
	return cmd
}

// buildScoreJob turns the flags, arguments and configuration into the load
// request and the score request. Bad flags are *UsageError; a missing model
// directory, adapter or predictor is a plain error that says what to do.
func buildScoreJob(app *App, f *scoreFlags, args []string) (*scoreJob, error) {
	cfg := app.Config
	aspects := cfg.Scoring.Aspects
	if f.set["aspects"] {
		aspects = f.aspects
	}
	if f.resume && (f.output == "" || !f.json) {
		return nil, &UsageError{Err: errors.New("score: --resume needs --json --output FILE (it skips the images already in FILE)")}
	}
	aspects, err := checkAspects(aspects)
	if err != nil {
		return nil, &UsageError{Err: fmt.Errorf("score: --aspects: %w", err)}
	}
	maxNew := cfg.Model.MaxNewTokens
	if f.set["max-new-tokens"] {
		if f.maxNewTokens < 1 {
			return nil, &UsageError{Err: fmt.Errorf("score: --max-new-tokens %d: want at least 1", f.maxNewTokens)}
		}
		maxNew = f.maxNewTokens
	}
	if f.set["threads"] && f.threads < 0 {
		return nil, &UsageError{Err: fmt.Errorf("score: --threads %d: want 0 (one per core) or more", f.threads)}
	}
	adapters, err := overridePaths(cfg.Model.Adapters, f.adapters, "--adapter")
	if err != nil {
		return nil, err
	}
	predictors, err := overridePaths(cfg.Model.Predictors, f.predictors, "--predictor")
	if err != nil {
		return nil, err
	}
	prompts := make(map[string]schemas.AspectPrompt, len(aspects))
	for _, a := range aspects {
		pp, err := dataset.LookupPrompts(a, f.promptStyle)
		if err != nil {
			return nil, &UsageError{Err: fmt.Errorf("score: --prompt-style: %w", err)}
		}
		prompts[a] = schemas.AspectPrompt{Round1: pp.Round1, Round2: pp.Round2}
	}
	images, err := collectImages(args, f.promptsFile, f.prompt, app.Stdin)
	if err != nil {
		return nil, err
	}

	load, err := buildLoadRequest(app, f, aspects, adapters, predictors)
	if err != nil {
		return nil, err
	}

	job := &scoreJob{
		Images: images,
		Load:   load,
		Request: schemas.ScoreRequest{
			Prompt: f.prompt,
			Options: schemas.ScoreOptions{
				Aspects:      aspects,
				Prompts:      prompts,
				MaxNewTokens: maxNew,
			},
		},
	}
	needPrompt := slices.Contains(aspects, iqa.Correspondence)
	if needPrompt && !slices.ContainsFunc(job.Images, func(im scoreImage) bool { return strings.TrimSpace(im.Prompt) != "" }) {
		return nil, &UsageError{Err: errors.New("score: correspondence needs the generation prompt of each image: pass --prompt TEXT or --prompts-file F.jsonl, or score other aspects (--aspects quality)")}
	}
	for i := range job.Images {
		im := &job.Images[i]
		im.req = -1
		if im.Err == nil && needPrompt && strings.TrimSpace(im.Prompt) == "" {
			im.Err = errors.New("no generation prompt, which correspondence needs: pass --prompt TEXT or list the image in --prompts-file")
		}
		if im.Err != nil {
			continue
		}
		item := schemas.ScoreItem{Path: im.Path}
		if im.Path == "" { // stdin
			item.Data = im.data
		}
		if im.Prompt != f.prompt {
			item.Prompt = im.Prompt
		}
		im.req = len(job.Request.Items)
		job.Request.Items = append(job.Request.Items, item)
	}
	return job, nil
}

// promptStyleHelp describes --prompt-style with the known styles.
func promptStyleHelp() string {
	styles := dataset.PromptStyles()
	if len(styles) == 1 {
		return "dataset style of the conversation prompts (only " + styles[0] + " so far)"
	}
	return "dataset style of the conversation prompts (known: " + strings.Join(styles, ", ") + "; default " + dataset.DefaultPromptStyle() + ")"
}

// checkAspects validates aspect names (known, not repeated, at least one).
func checkAspects(in []string) ([]string, error) {
	var out []string
	for _, a := range in {
		a = strings.ToLower(strings.TrimSpace(a))
		if a == "" {
			continue
		}
		if err := iqa.CheckAspect(a); err != nil {
			return nil, err
		}
		if slices.Contains(out, a) {
			return nil, fmt.Errorf("aspect %q given twice", a)
		}
		out = append(out, a)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no aspect (known: %s)", strings.Join(iqa.Aspects, ", "))
	}
	return out, nil
}

// overridePaths applies aspect=PATH flags over the configured map; an empty
// PATH removes the aspect's entry.
func overridePaths(configured map[string]string, flags []string, flag string) (map[string]string, error) {
	out := make(map[string]string, len(configured))
	for k, v := range configured {
		out[k] = v
	}
	for _, kv := range flags {
		aspect, path, ok := strings.Cut(kv, "=")
		aspect = strings.ToLower(strings.TrimSpace(aspect))
		if !ok || aspect == "" {
			return nil, &UsageError{Err: fmt.Errorf("score: %s %q: want aspect=PATH", flag, kv)}
		}
		if err := iqa.CheckAspect(aspect); err != nil {
			return nil, &UsageError{Err: fmt.Errorf("score: %s %q: %w", flag, kv, err)}
		}
		if path == "" {
			delete(out, aspect)
		} else {
			out[aspect] = path
		}
	}
	return out, nil
}

// buildLoadRequest checks that the model directory and the adapters and
// predictors of the scored aspects exist, and makes their paths absolute
// (the sidecar does not share our idea of relative paths).
func buildLoadRequest(app *App, f *scoreFlags, aspects []string, adapters, predictors map[string]string) (schemas.LoadRequest, error) {
	m := app.Config.Model
	dir, from := m.Dir, "model.dir of the built-in defaults"
	switch {
	case f.set["model"]:
		dir, from = f.model, "--model"
	case app.Getenv("M3GATE_MODEL_DIR") != "":
		from = "$M3GATE_MODEL_DIR"
	case app.ConfigPath != "":
		from = "model.dir in " + app.ConfigPath
	}
	if dir == "" {
		return schemas.LoadRequest{}, &UsageError{Err: errors.New("score: no model directory: set model.dir in config.yaml or pass --model DIR")}
	}
	dir = abs(dir)
	if err := checkModelDir(dir); err != nil {
		return schemas.LoadRequest{}, fmt.Errorf("score: model directory %s (from %s) %w\n%s", dir, from, err, modelHelp)
	}
	req := schemas.LoadRequest{
		ModelDir: dir,
		Family:   m.Family,
		Device:   m.Device,
		DType:    m.DType,
		Threads:  m.Threads,
	}
	if f.set["device"] {
		req.Device = f.device
	}
	if f.set["threads"] {
		req.Threads = f.threads
	}
	req.Options = loadOptions(m)
	for _, a := range aspects {
		if p, ok := adapters[a]; ok {
			p = abs(p)
			if st, err := os.Stat(p); err != nil || !st.IsDir() {
				return schemas.LoadRequest{}, fmt.Errorf("score: LoRA adapter of %s: %s is not a directory (want a PEFT adapter directory with adapter_config.json)", a, p)
			}
			if req.Adapters == nil {
				req.Adapters = map[string]string{}
			}
			req.Adapters[a] = p
		}
		if p, ok := predictors[a]; ok {
			p = abs(p)
			if st, err := os.Stat(p); err != nil || st.IsDir() {
				return schemas.LoadRequest{}, fmt.Errorf("score: predictor of %s: %s is not a file (want an xLSTM predictor checkpoint)", a, p)
			}
			if req.Predictors == nil {
				req.Predictors = map[string]string{}
			}
			req.Predictors[a] = p
		}
	}
	return req, nil
}

// modelHelp tells a user without a model directory how to get one.
const modelHelp = `Get a model with one of:
  m3gate model fetch smolvlm-256m                 # SmolVLM-256M-Instruct (about 1 GB) into models/smolvlm-256m, the default model.dir
  m3gate model tiny --out build/demo-model        # random weights for a quick demo (meaningless scores), then pass --model build/demo-model`

// checkModelDir returns an error (worded to follow "model directory X") when
// dir is not a model directory.
func checkModelDir(dir string) error {
	st, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return errors.New("does not exist")
	case err != nil:
		return fmt.Errorf("cannot be read: %w", err)
	case !st.IsDir():
		return errors.New("is not a directory")
	}
	if _, err := os.Stat(filepath.Join(dir, "config.json")); err != nil {
		return errors.New("has no config.json (an incomplete download?)")
	}
	return nil
}

// imageExts are the file name extensions a directory argument expands to.
var imageExts = []string{".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}

// collectImages resolves the IMAGE arguments (files, directories, "-") and
// the prompts file into the images to score, each with its prompt. A missing
// file is a per-image error, not a failure of the whole command.
func collectImages(args []string, promptsFile, prompt string, stdin io.Reader) ([]scoreImage, error) {
	var entries []promptEntry
	if promptsFile != "" {
		var err error
		entries, err = readPromptsFile(promptsFile)
		if err != nil {
			return nil, &UsageError{Err: fmt.Errorf("score: --prompts-file: %w", err)}
		}
	}
	if len(args) == 0 {
		if promptsFile == "" {
			return nil, &UsageError{Err: errors.New("score: no images: name IMAGE files or pass --prompts-file")}
		}
		if len(entries) == 0 {
			return nil, &UsageError{Err: fmt.Errorf("score: --prompts-file %s lists no images", promptsFile)}
		}
		images := make([]scoreImage, len(entries))
		for i, e := range entries {
			images[i] = scoreImage{Name: e.Name, Path: e.Path, Prompt: e.Prompt}
			if e.Prompt == "" {
				images[i].Prompt = prompt
			}
			images[i].Err = checkImageFile(e.Path)
		}
		return images, nil
	}
	var images []scoreImage
	stdinUsed := false
	for _, a := range args {
		if a == "-" {
			if stdinUsed {
				return nil, &UsageError{Err: errors.New("score: - (stdin) named twice")}
			}
			stdinUsed = true
			b, err := io.ReadAll(stdin)
			im := scoreImage{Name: "-", Prompt: prompt, data: b}
			if err != nil {
				im.Err = fmt.Errorf("read stdin: %w", err)
			} else if len(b) == 0 {
				im.Err = errors.New("stdin is empty")
			}
			images = append(images, im)
			continue
		}
		p := abs(a)
		if st, err := os.Stat(p); err == nil && st.IsDir() {
			files, err := imagesInDir(p)
			if err != nil {
				return nil, fmt.Errorf("score: %w", err)
			}
			if len(files) == 0 {
				images = append(images, scoreImage{Name: a, Path: p, Err: fmt.Errorf("directory has no images (%s)", strings.Join(imageExts, " "))})
			}
			for _, name := range files {
				fp := filepath.Join(p, name)
				images = append(images, scoreImage{Name: filepath.Join(a, name), Path: fp, Prompt: promptFor(fp, entries, prompt)})
			}
			continue
		}
		images = append(images, scoreImage{Name: a, Path: p, Prompt: promptFor(p, entries, prompt), Err: checkImageFile(p)})
	}
	return images, nil
}

// checkImageFile reports a missing or unreadable image file.
func checkImageFile(p string) error {
	st, err := os.Stat(p)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return errors.New("no such file")
	case err != nil:
		return err
	case st.IsDir():
		return errors.New("is a directory")
	case st.Size() == 0:
		return errors.New("file is empty")
	}
	return nil
}

// imagesInDir lists the image files of dir by name, sorted.
func imagesInDir(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if !e.IsDir() && slices.Contains(imageExts, strings.ToLower(filepath.Ext(e.Name()))) {
			out = append(out, e.Name())
		}
	}
	return out, nil // ReadDir sorts by name
}

// promptEntry is one line of a prompts file.
type promptEntry struct {
	Name   string // the image as written in the file
	Path   string // absolute
	Prompt string
}

// readPromptsFile reads a JSONL file of {"image": PATH, "prompt": TEXT}
// objects (other fields, e.g. a manifest's, are ignored). Relative image
// paths are relative to the file's directory.
func readPromptsFile(path string) ([]promptEntry, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	base := filepath.Dir(abs(path))
	var out []promptEntry
	sc := bufio.NewScanner(fh)
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" {
			continue
		}
		var rec struct {
			Image  *string `json:"image"`
			Prompt *string `json:"prompt"`
		}
		if err := json.Unmarshal([]byte(text), &rec); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, line, err)
		}
		if rec.Image == nil || *rec.Image == "" {
			return nil, fmt.Errorf("%s:%d: no \"image\"", path, line)
		}
		e := promptEntry{Name: *rec.Image, Path: *rec.Image}
		if rec.Prompt != nil {
			e.Prompt = *rec.Prompt
		}
		if !filepath.IsAbs(e.Path) {
			e.Path = filepath.Join(base, e.Path)
			e.Name = relName(e.Path)
		}
		out = append(out, e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return out, nil
}

// relName shows p relative to the working directory when it lies below it.
func relName(p string) string {
	wd, err := os.Getwd()
	if err != nil {
		return p
	}
	r, err := filepath.Rel(wd, p)
	if err != nil || r == ".." || strings.HasPrefix(r, ".."+string(filepath.Separator)) {
		return p
	}
	return r
}

// promptFor finds the prompt of the image at absolute path p in the prompts
// file: by path, else by file name when exactly one entry has it; else def.
func promptFor(p string, entries []promptEntry, def string) string {
	var byName []promptEntry
	for _, e := range entries {
		if e.Path == p {
			return e.Prompt
		}
		if filepath.Base(e.Path) == filepath.Base(p) {
			byName = append(byName, e)
		}
	}
	if len(byName) == 1 {
		return byName[0].Prompt
	}
	return def
}

// runScore starts the sidecar, loads the model and scores the job in
// batches, writing each image's result as soon as its batch is scored, so
// an interrupted run keeps what it finished. The sidecar is stopped before
// it returns, also when ctx is cancelled.
func runScore(ctx context.Context, app *App, f *scoreFlags, job *scoreJob) (err error) {
	status := newStatusLine(app.Stderr)
	defer status.Clear()
	app.Stderr = status // log lines and messages above the progress bar

	out, err := openScoreOutput(app, f, job, status)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("score: write results: %w", cerr)
		}
	}()
	todo := out.todo
	var sup scorer
	if slices.ContainsFunc(todo, func(i int) bool { return job.Images[i].Err == nil }) {
		var stop func()
		sup, stop, err = startScorer(ctx, app, job)
		if err != nil {
			return err
		}
		defer stop()
	}
	st := &scoreStream{
		job:   job,
		todo:  todo,
		batch: max(1, app.Config.Scoring.BatchSize),
		write: out.write,
		bar:   &scoreBar{line: status, total: len(todo), now: time.Now},
	}
	if sup != nil {
		fmt.Fprintf(app.Stderr, "scoring %d image(s) on %s ...\n", st.sendable(), strings.Join(job.Request.Options.Aspects, ", "))
	}
	start := time.Now()
	err = st.run(ctx, sup)
	status.Clear()
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("score: interrupted: %d of %d images done%s, %d left%s: %w",
				st.written, len(todo), out.where(), len(todo)-st.written, out.resumeHint(), ctx.Err())
		}
		return err
	}
	if sup != nil {
		fmt.Fprintf(app.Stderr, "scored in %.1fs\n", time.Since(start).Seconds())
	}
	return reportFailures(app.Stderr, st.failed, len(todo))
}

// reportFailures reports each failed image on stderr and turns failures
// into exit status 1.
func reportFailures(w io.Writer, failed []scoreRow, total int) error {
	for _, r := range failed {
		fmt.Fprintf(w, "m3gate: score %s: %s\n", r.Image, r.Err)
	}
	if len(failed) > 0 {
		return &ExitCodeError{Code: ExitError, Err: fmt.Errorf("score: %d of %d images failed", len(failed), total)}
	}
	return nil
}

// scorer scores one request; *supervisor.Supervisor is one.
type scorer interface {
	Score(ctx context.Context, req schemas.ScoreRequest) ([]schemas.ItemResult, error)
}

// supervisedScorer is the supervisor of a one-shot command: an error of a
// request whose context was cancelled because the model process died
// reports that death instead of "context canceled".
type supervisedScorer struct {
	sup  *supervisor.Supervisor
	died context.Context // cancelled, with the cause, when the process dies
}

// Score implements scorer.
func (s supervisedScorer) Score(ctx context.Context, req schemas.ScoreRequest) ([]schemas.ItemResult, error) {
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	unwatch := context.AfterFunc(s.died, func() { stop(context.Cause(s.died)) })
	defer unwatch()
	res, err := s.sup.Score(ctx, req)
	if err != nil && s.died.Err() != nil {
		err = context.Cause(s.died)
	}
	return res, err
}

// startScorer starts a supervised m3gate-sidecar, waits until it has loaded
// the model (showing the load progress) and returns it with the function
// that stops it.
func startScorer(ctx context.Context, app *App, job *scoreJob) (scorer, func(), error) {
	bin, err := LocateSidecar(app.Env, app.Config.Sidecar.Path)
	if err != nil {
		return nil, nil, fmt.Errorf("score: %w", err)
	}
	sc := app.Config.Sidecar
	logLevel := sidecarLogLevel(app.Config.Log.Level)
	// A restart means the sidecar crashed or could not start: a one-shot
	// command reports that instead of waiting through the backoff.
	died, cancel := context.WithCancelCause(context.Background())
	prog := newLoadProgress(app.Stderr, job.Load.ModelDir)
	batch := max(1, app.Config.Scoring.BatchSize)
	sup, err := supervisor.Start(supervisor.Config{
		Path:             bin,
		Args:             []string{"--max-batch", strconv.Itoa(batch), "--log-level", logLevel.String()},
		Load:             job.Load,
		StartTimeout:     sc.StartTimeout,
		LoadStallTimeout: sc.LoadStallTimeout,
		// sidecar.busy_timeout is a budget per request of the daemon, which
		// holds one image; a request here holds one batch.
		BusyTimeout: sc.BusyTimeout * time.Duration(batch),
		BackoffMax:  sc.RestartBackoffMax,
		Logger: hclog.New(&hclog.LoggerOptions{
			Name:   "m3gate",
			Level:  logLevel,
			Output: app.Stderr,
		}),
		OnState: func(st schemas.State, err error) {
			if st == schemas.StateRestarting {
				cancel(fmt.Errorf("the model process (%s) died or could not start: %w", bin, err))
			}
		},
	})
	if err != nil {
		cancel(nil)
		return nil, nil, fmt.Errorf("score: %w", err)
	}
	stop := func() {
		cancel(nil)
		cctx, ccancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer ccancel()
		if err := sup.Close(cctx); err != nil {
			fmt.Fprintf(app.Stderr, "m3gate: stop %s: %v\n", filepath.Base(bin), err)
		}
	}
	wctx, wstop := context.WithCancelCause(ctx)
	defer wstop(nil)
	unwatch := context.AfterFunc(died, func() { wstop(context.Cause(died)) })
	defer unwatch()
	if err := waitReady(wctx, sup, prog); err != nil {
		if died.Err() != nil {
			err = context.Cause(died)
		}
		stop()
		if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("score: load model: %w", ctx.Err())
		}
		return nil, nil, fmt.Errorf("score: load model %s: %w", job.Load.ModelDir, err)
	}
	return supervisedScorer{sup: sup, died: died}, stop, nil
}

// scoreStream sends the images of a job to the model process in batches
// and writes the row of every image, in the job's order, as soon as it and
// the images before it are done.
type scoreStream struct {
	job   *scoreJob
	todo  []int // indices into job.Images, in order
	batch int   // images per request
	write func(scoreRow) error
	bar   *scoreBar

	results map[int]schemas.ItemResult // by index into job.Images
	written int                        // rows of todo written so far
	failed  []scoreRow
}

// sendable counts the images of todo that go to the model process.
func (s *scoreStream) sendable() int {
	n := 0
	for _, i := range s.todo {
		if s.job.Images[i].Err == nil {
			n++
		}
	}
	return n
}

// run scores and writes every image of todo; sup may be nil when no image
// is sendable.
func (s *scoreStream) run(ctx context.Context, sup scorer) error {
	s.results = map[int]schemas.ItemResult{}
	s.bar.start = s.bar.now()
	s.bar.update(0)
	var batch []int // positions in todo
	for pos, i := range s.todo {
		if s.job.Images[i].Err != nil {
			if len(batch) == 0 {
				if err := s.flush(pos); err != nil {
					return err
				}
			}
			continue
		}
		batch = append(batch, pos)
		if len(batch) == s.batch {
			if err := s.scoreBatch(ctx, sup, batch); err != nil {
				return err
			}
			batch = batch[:0]
		}
	}
	if len(batch) > 0 {
		if err := s.scoreBatch(ctx, sup, batch); err != nil {
			return err
		}
	}
	return s.flush(len(s.todo) - 1)
}

// scoreBatch scores the images at positions batch of todo and writes the
// rows up to the last of them.
func (s *scoreStream) scoreBatch(ctx context.Context, sup scorer, batch []int) error {
	req := s.job.Request
	req.Items = make([]schemas.ScoreItem, len(batch))
	for k, pos := range batch {
		req.Items[k] = s.job.Request.Items[s.job.Images[s.todo[pos]].req]
	}
	res, err := sup.Score(ctx, req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("score: %w", err)
	}
	if len(res) != len(batch) {
		return fmt.Errorf("score: model process answered %d results for %d images", len(res), len(batch))
	}
	for k, pos := range batch {
		s.results[s.todo[pos]] = res[k]
	}
	return s.flush(batch[len(batch)-1])
}

// flush writes the rows of todo up to position last.
func (s *scoreStream) flush(last int) error {
	for ; s.written <= last; s.written++ {
		i := s.todo[s.written]
		r := rowFor(s.job, i, s.results)
		if err := s.write(r); err != nil {
			return fmt.Errorf("score: write results: %w", err)
		}
		if r.Err != "" {
			s.failed = append(s.failed, r)
		}
		s.bar.update(s.written + 1)
	}
	return nil
}

// sidecarLogLevel maps log.level to the level of the supervisor's and the
// sidecar's logs on stderr: their info lines are noise for a one-shot
// command, so only debug shows them.
func sidecarLogLevel(level string) hclog.Level {
	switch level {
	case "debug":
		return hclog.Debug
	case "error":
		return hclog.Error
	default:
		return hclog.Warn
	}
}

// waitReady waits for the model, showing the load progress.
func waitReady(ctx context.Context, sup *supervisor.Supervisor, prog *loadProgress) error {
	done := make(chan error, 1)
	go func() { done <- sup.WaitReady(ctx) }()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			prog.finish(err == nil)
			return err
		case <-tick.C:
			if sup.State() != schemas.StateLoading {
				continue
			}
			st, err := sup.Status(ctx)
			if err == nil {
				prog.update(st.Progress)
			}
		}
	}
}

// loadProgress prints the model's load progress on stderr: one line per
// stage and per tenth of the bytes.
type loadProgress struct {
	w       io.Writer
	dir     string
	start   time.Time
	stage   string
	tenth   int64
	printed bool
	// last is the last progress with a byte count, shown at 100% when
	// the model is ready (the poll may miss the final update).
	last schemas.LoadProgress
}

func newLoadProgress(w io.Writer, dir string) *loadProgress {
	fmt.Fprintf(w, "loading model %s ...\n", dir)
	return &loadProgress{w: w, dir: dir, start: time.Now(), tenth: -1}
}

func (p *loadProgress) update(lp schemas.LoadProgress) {
	if lp.Stage == "" || lp.Stage == schemas.StageDone {
		return
	}
	tenth := int64(-1)
	if lp.TotalBytes > 0 {
		tenth = 10 * lp.DoneBytes / lp.TotalBytes
	}
	if lp.Stage == p.stage && tenth == p.tenth {
		return
	}
	p.stage, p.tenth, p.printed = lp.Stage, tenth, true
	if lp.TotalBytes > 0 {
		p.last = lp
	}
	p.print(lp)
}

// print writes one progress line.
func (p *loadProgress) print(lp schemas.LoadProgress) {
	line := "  " + lp.Stage
	if lp.TotalBytes > 0 {
		line += fmt.Sprintf(" %3d%% (%.1f of %.1f MB)", 100*lp.DoneBytes/lp.TotalBytes, float64(lp.DoneBytes)/1e6, float64(lp.TotalBytes)/1e6)
	}
	if lp.Message != "" {
		line += " " + lp.Message
	}
	fmt.Fprintln(p.w, line)
}

func (p *loadProgress) finish(ok bool) {
	if ok && p.last.TotalBytes > 0 && p.last.DoneBytes < p.last.TotalBytes {
		lp := p.last
		lp.DoneBytes, lp.Message = lp.TotalBytes, ""
		p.print(lp)
	}
	if ok {
		fmt.Fprintf(p.w, "model ready in %.1fs\n", time.Since(p.start).Seconds())
	}
}

// scoreRow is the outcome for one image, ready to print.
type scoreRow struct {
	Image   string                          `json:"image"`
	Path    string                          `json:"path,omitempty"`
	Prompt  string                          `json:"prompt,omitempty"`
	Err     string                          `json:"error,omitempty"`
	Aspects map[string]schemas.AspectResult `json:"-"`
}

// rowFor pairs image i of the job with its result or error.
func rowFor(job *scoreJob, i int, results map[int]schemas.ItemResult) scoreRow {
	im := job.Images[i]
	r := scoreRow{Image: im.Name, Path: im.Path, Prompt: im.Prompt}
	res, ok := results[i]
	switch {
	case im.Err != nil:
		r.Err = im.Err.Error()
	case !ok:
		r.Err = "no result from the model process"
	case res.Error != "":
		r.Err = res.Error
	default:
		r.Aspects = res.Aspects
		for _, a := range job.Request.Options.Aspects {
			if _, ok := res.Aspects[a]; !ok {
				r.Err = fmt.Sprintf("the model process returned no %s score", a)
			}
		}
	}
	return r
}

// The table shows at most descriptionWords words and descriptionRunes
// characters of a description.
const (
	descriptionWords = 10
	descriptionRunes = 72
)

// shortDescription returns the first words of a description on one line,
// with invalid UTF-8 and unprintable characters (a random-weight model
// generates any token) shown as U+FFFD so they cannot upset a terminal.
func shortDescription(s string) string {
	s = strings.Map(func(r rune) rune {
		switch {
		case unicode.IsSpace(r):
			return ' '
		case !unicode.IsPrint(r):
			return utf8.RuneError
		}
		return r
	}, strings.ToValidUTF8(s, string(utf8.RuneError)))
	words := strings.Fields(s)
	if len(words) == 0 {
		return "-"
	}
	cut := len(words) > descriptionWords
	if cut {
		words = words[:descriptionWords]
	}
	out := strings.Join(words, " ")
	if r := []rune(out); len(r) > descriptionRunes {
		out, cut = strings.TrimSpace(string(r[:descriptionRunes])), true
	}
	if cut {
		out += " …"
	}
	return out
}

// sourceName shows where a MOS came from.
func sourceName(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// oneLine joins the lines of s.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// jsonAspect is one aspect's result in --json output.
type jsonAspect struct {
	MOS         float64            `json:"mos"`
	Rating      string             `json:"rating"`
	Source      string             `json:"source"`
	WordProbs   map[string]float64 `json:"word_probs,omitempty"`
	Description string             `json:"description"`
	TimingsMs   map[string]float64 `json:"timings_ms,omitempty"`
}

// jsonRow is one image in --json output.
type jsonRow struct {
	Image   string                `json:"image"`
	Path    string                `json:"path,omitempty"`
	Prompt  string                `json:"prompt,omitempty"`
	Error   string                `json:"error,omitempty"`
	Aspects map[string]jsonAspect `json:"aspects,omitempty"`
}
