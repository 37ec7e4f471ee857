package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/m3gate/m3gate/plugin/comfyui"
	"github.com/schollz/progressbar/v3"
)

// runner is the state of one Run.
type runner struct {
	cfg    Config
	seeds  []SeedInput
	ranges []SeedRange
	prompt string
	out    *writer

	mu       sync.Mutex
	rng      *rand.Rand
	used     map[uint64]bool
	sum      Summary
	tries    int
	bar      *progressbar.ProgressBar
	fatal    error
	lastDown error
	reserved int // accepted-image slots taken (≤ Count)
	cancel   context.CancelFunc
	sched    *scheduler
}

// errServerDown marks a server that stayed unreachable past RetryTimeout.
var errServerDown = errors.New("server down")

// serverDown records that a server's workers stopped.
func (r *runner) serverDown(cl *comfyui.Client, err error) {
	r.mu.Lock()
	r.lastDown = err
	r.mu.Unlock()
	r.cfg.Log.Error("giving up on comfyui server", "server", cl.URL(), "err", err)
}

// Run executes a run: Count jobs spread over the servers, each rerolled
// with new seeds until an image passes the gate or MaxTries prompts have
// run. It returns the summary (also on error, with what was done). An
// incomplete run (jobs exhausted) is not an error: check
// Summary.Complete.
func Run(ctx context.Context, cfg Config) (*Summary, error) {
	r, err := newRunner(cfg)
	if err != nil {
		return nil, err
	}
	defer r.out.close()
	lastJob, err := r.resume()
	if err != nil {
		return nil, err
	}
	r.startProgress()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r.cancel = cancel
	r.ranges = r.seedRanges(ctx)
	r.sched = newScheduler(ctx, lastJob+1, cfg.Count-r.reserved, r.full)
	if err := r.runServers(ctx); err != nil {
		return nil, err
	}
	return r.finish(ctx)
}

// newRunner checks cfg and prepares a run: the workflow's seed inputs, the
// prompt text, the seed generator and the output folder.
func newRunner(cfg Config) (*runner, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	seeds, err := SeedInputs(cfg.Workflow, cfg.SeedNodes)
	if err != nil {
		return nil, fmt.Errorf("run: %w", err)
	}
	r := &runner{cfg: cfg, seeds: seeds, prompt: cfg.Prompt, used: map[uint64]bool{}}
	if r.prompt == "" {
		r.prompt = PromptText(cfg.Workflow)
	}
	if r.prompt == "" {
		cfg.Log.Warn("no prompt text found in the workflow (no text encoder feeds a sampler's positive input); scoring without one, give --prompt to set it")
	}
	seed := cfg.RandSeed
	if seed == 0 {
		seed = rand.Uint64()
	}
	r.rng = rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for _, s := range seeds {
		r.used[s.Value] = true // never "reroll" to the seed the workflow has
	}
	if r.out, err = newWriter(cfg.OutDir, cfg.KeepRejected); err != nil {
		return nil, err
	}
	return r, nil
}

// resume reads the results of an earlier run into the same folder (when
// Config.Resume): its seeds are not used again and its accepted images that
// are still on disk count. It returns the highest job number seen.
func (r *runner) resume() (lastJob int, err error) {
	if !r.cfg.Resume {
		return 0, nil
	}
	prev, err := readResults(filepath.Join(r.cfg.OutDir, ResultsFile))
	if err != nil {
		return 0, err
	}
	for _, p := range prev {
		lastJob = max(lastJob, p.Job)
		for _, sd := range p.Seeds {
			r.used[sd] = true
		}
		if !p.Accepted || r.reserved >= r.cfg.Count {
			continue
		}
		if _, err := os.Stat(p.File); err != nil {
			continue // the image is gone: make it again
		}
		r.reserved++
		r.sum.Accepted = append(r.sum.Accepted, p.File)
		r.sum.Resumed++
	}
	return lastJob, nil
}

// startProgress shows the progress bar on Config.Progress, if set.
func (r *runner) startProgress() {
	if r.cfg.Progress == nil {
		return
	}
	r.bar = progressbar.NewOptions(r.cfg.Count,
		progressbar.OptionSetWriter(r.cfg.Progress),
		progressbar.OptionSetDescription("accepted"),
		progressbar.OptionShowCount(),
		progressbar.OptionSetPredictTime(false),
		progressbar.OptionSetElapsedTime(true),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionSetRenderBlankState(true),
	)
	if r.reserved > 0 {
		_ = r.bar.Set(r.reserved)
	}
}

// runServers runs Parallel workers on every server until the scheduler has
// no jobs left, and waits for them.
func (r *runner) runServers(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, url := range r.cfg.Servers {
		opts := append([]comfyui.Option{comfyui.WithDownTimeout(r.cfg.RetryTimeout)}, r.cfg.ClientOptions...)
		cl, err := comfyui.New(url, opts...)
		if err != nil {
			return fmt.Errorf("run: %w", err)
		}
		defer cl.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.serve(ctx, cl)
		}()
	}
	wg.Wait()
	return nil
}

// serve connects to one server and runs Parallel workers on it; a server
// that stays unreachable hands its jobs to the others.
func (r *runner) serve(ctx context.Context, cl *comfyui.Client) {
	if err := r.connect(ctx, cl); err != nil {
		if ctx.Err() == nil {
			r.serverDown(cl, err)
		}
		return
	}
	var wg sync.WaitGroup
	for p := 0; p < r.cfg.Parallel; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.worker(ctx, cl)
		}()
	}
	wg.Wait()
}

// worker takes jobs from the scheduler and runs them on cl until none is
// left or the server goes down.
func (r *runner) worker(ctx context.Context, cl *comfyui.Client) {
	for {
		j := r.sched.next()
		if j == nil {
			return
		}
		err := r.work(ctx, cl, j)
		if errors.Is(err, errServerDown) {
			// Hand the job to the other servers; this try did not
			// happen.
			j.tries--
			r.sched.done(j, true)
			r.serverDown(cl, err)
			return
		}
		r.sched.done(j, false)
	}
}

// finish closes the progress bar and returns the summary with the run's
// error: the first fatal one, jobs left with no server reachable, or ctx
// ending before Count images were accepted.
func (r *runner) finish(ctx context.Context) (*Summary, error) {
	if left := r.sched.left(); left > 0 && ctx.Err() == nil && !r.full() {
		r.fail(fmt.Errorf("run: %d jobs left and no ComfyUI server reachable (last error: %v)", left, r.lastDown))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.bar != nil {
		r.bar.Describe(r.describe())
		_ = r.bar.RenderBlank()
		fmt.Fprintln(r.cfg.Progress)
	}
	sum := r.sum
	if r.fatal != nil {
		return &sum, r.fatal
	}
	if err := ctx.Err(); err != nil && len(sum.Accepted) < r.cfg.Count {
		return &sum, fmt.Errorf("run: %w", err)
	}
	return &sum, nil
}

// fail records the first fatal error and stops the run.
func (r *runner) fail(err error) {
	r.mu.Lock()
	if r.fatal == nil {
		r.fatal = err
	}
	r.mu.Unlock()
	r.cancel()
}

func (r *runner) describe() string {
	return fmt.Sprintf("accepted (tries %d, rejected %d, exhausted %d)", r.tries, r.sum.Rejected, r.sum.Exhausted)
}

func (r *runner) progress(accepted bool) {
	if r.bar == nil {
		return
	}
	r.bar.Describe(r.describe())
	if accepted {
		_ = r.bar.Add(1)
	}
}

// newSeeds draws a fresh seed for every seed input, within the input's
// range and never one used before in this run.
func (r *runner) newSeeds() ([]uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]uint64, len(r.seeds))
	for i := range out {
		found := false
		for n := 0; n < 1000 && !found; n++ {
			s := r.ranges[i].draw(r.rng)
			if !r.used[s] {
				r.used[s] = true
				out[i], found = s, true
			}
		}
		if !found {
			in := r.seeds[i]
			return nil, fmt.Errorf("run: no unused seed left for node %s input %s (range %d..%d)", in.Node, in.Input, r.ranges[i].Min, r.ranges[i].Max)
		}
	}
	return out, nil
}

// seedRanges asks the servers' /object_info for the range of every seed
// input (custom samplers may accept less than 2^64−1); without an answer,
// KSampler-style classes get the full range and others 0..2^32−1.
func (r *runner) seedRanges(ctx context.Context) []SeedRange {
	byClass := map[string]json.RawMessage{}
	out := make([]SeedRange, len(r.seeds))
	for i, in := range r.seeds {
		class := r.cfg.Workflow[in.Node].ClassType
		info, ok := byClass[class]
		if !ok {
			for _, url := range r.cfg.Servers {
				cl, err := comfyui.New(url, r.cfg.ClientOptions...)
				if err != nil {
					continue
				}
				qctx, cancel := context.WithTimeout(ctx, min(3*time.Second, r.cfg.RetryTimeout))
				m, err := cl.ObjectInfo(qctx, class)
				cancel()
				if err == nil {
					info = m[class]
					break
				}
			}
			byClass[class] = info
		}
		rg, ok := SeedRangeFromObjectInfo(info, in.Input)
		switch {
		case ok:
		case class == "KSampler" || class == "KSamplerAdvanced":
			rg = FullSeedRange
		default:
			rg = conservativeSeedRange
		}
		out[i] = rg
	}
	return out
}

// connect opens the client's websocket, retrying until RetryTimeout.
func (r *runner) connect(ctx context.Context, cl *comfyui.Client) error {
	return retry(ctx, retryPolicy{
		timeout: r.cfg.RetryTimeout,
		delay:   retryDelay,
		giveUp: func(err error) error {
			return fmt.Errorf("run: comfyui %s unreachable for %v: %w", cl.URL(), r.cfg.RetryTimeout, err)
		},
		onRetry: func(err error) { r.cfg.Log.Warn("comfyui unreachable, retrying", "server", cl.URL(), "err", err) },
	}, func(int) error { return cl.Connect(ctx) })
}

// attempt is one try of a job.
type attempt struct {
	job      int
	try      int
	seeds    []uint64
	server   string
	promptID string
}

// work runs a job's tries on one server until an image is accepted or the
// tries are spent. It returns an error wrapping errServerDown when the
// server stayed unreachable (the job should go elsewhere); other failures
// stop the run through r.fail.
func (r *runner) work(ctx context.Context, cl *comfyui.Client, j *job) error {
	for j.tries < r.cfg.MaxTries {
		if ctx.Err() != nil {
			return nil
		}
		j.tries++
		r.mu.Lock()
		r.tries++
		r.mu.Unlock()
		seeds, err := r.newSeeds()
		if err != nil {
			r.fail(err)
			return nil
		}
		a := &attempt{job: j.index, try: j.tries, seeds: seeds, server: cl.URL()}
		wf := ApplySeeds(r.cfg.Workflow, r.seeds, a.seeds)
		res, err := r.runPrompt(ctx, cl, wf, a)
		if err == nil {
			var images []Image
			images, err = r.fetch(ctx, cl, res)
			if errors.Is(err, comfyui.ErrNotFound) {
				// The outputs vanished (the server lost its files): this
				// try does not count.
				j.tries--
				r.mu.Lock()
				r.sum.Resubmitted++
				r.mu.Unlock()
				continue
			}
			if err == nil {
				var scores []Scores
				if scores, err = r.score(ctx, images); err == nil {
					var accepted bool
					if accepted, err = r.decide(a, images, scores); err == nil && accepted {
						return nil
					}
				}
			}
		}
		if err == nil {
			continue
		}
		if ctx.Err() != nil {
			return nil
		}
		var ee *comfyui.ExecutionError
		var ie *comfyui.InterruptedError
		switch {
		case errors.Is(err, errServerDown):
			return err
		case errors.As(err, &ee) || errors.As(err, &ie):
			r.mu.Lock()
			r.sum.Failed++
			r.mu.Unlock()
			if werr := r.out.result(r.resultFor(a, nil, nil, err)); werr != nil {
				r.fail(werr)
				return nil
			}
			r.cfg.Log.Warn("prompt failed, rerolling", "job", j.index, "try", j.tries, "err", err)
		default:
			r.fail(err)
			return nil
		}
	}
	r.mu.Lock()
	r.sum.Exhausted++
	r.progress(false)
	r.mu.Unlock()
	r.cfg.Log.Warn("job exhausted its tries", "job", j.index, "tries", j.tries)
	return nil
}

// runPrompt queues a workflow and waits for it, queueing it again when the
// server loses it and retrying while the server is unreachable.
func (r *runner) runPrompt(ctx context.Context, cl *comfyui.Client, wf comfyui.Workflow, a *attempt) (*comfyui.PromptResult, error) {
	for {
		pr, err := r.queue(ctx, cl, wf, a)
		if err != nil {
			return nil, err
		}
		a.promptID = pr.PromptID
		res, err := cl.WaitPrompt(ctx, pr.PromptID)
		if errors.Is(err, comfyui.ErrPromptLost) {
			r.mu.Lock()
			r.sum.Resubmitted++
			r.mu.Unlock()
			r.cfg.Log.Info("prompt lost by the server, queueing it again", "server", cl.URL(), "prompt", pr.PromptID)
			continue
		}
		if errors.Is(err, comfyui.ErrServerDown) {
			return nil, fmt.Errorf("run: %w: %w", errServerDown, err)
		}
		if err == nil {
			r.mu.Lock()
			r.sum.Prompts++
			r.mu.Unlock()
		}
		return res, err
	}
}

// queue queues the attempt's workflow, retrying while the server is
// unreachable; a workflow the server rejects is not retried.
func (r *runner) queue(ctx context.Context, cl *comfyui.Client, wf comfyui.Workflow, a *attempt) (*comfyui.PromptResponse, error) {
	extra := map[string]any{"extra_pnginfo": map[string]any{"m3gate_run": map[string]any{"job": a.job, "attempt": a.try}}}
	var pr *comfyui.PromptResponse
	err := retry(ctx, retryPolicy{
		timeout: r.cfg.RetryTimeout,
		delay:   retryDelay,
		giveUp: func(err error) error {
			return fmt.Errorf("run: comfyui %s unreachable for %v: %w: %w", cl.URL(), r.cfg.RetryTimeout, errServerDown, err)
		},
		onRetry: func(err error) { r.cfg.Log.Debug("queue prompt failed, retrying", "server", cl.URL(), "err", err) },
	}, func(int) error {
		var err error
		pr, err = cl.QueuePrompt(ctx, comfyui.PromptRequest{Prompt: wf, ExtraData: extra})
		var pe *comfyui.PromptError
		if errors.As(err, &pe) {
			return permanent(fmt.Errorf("run: %s rejected the workflow: %w", cl.URL(), pe))
		}
		return err
	})
	return pr, err
}

// fetch downloads the prompt's images: saved outputs, or temp previews
// when the workflow saves nothing.
func (r *runner) fetch(ctx context.Context, cl *comfyui.Client, res *comfyui.PromptResult) ([]Image, error) {
	all := res.Images()
	var refs []comfyui.NodeImage
	for _, im := range all {
		if im.Type == "output" {
			refs = append(refs, im)
		}
	}
	if len(refs) == 0 {
		refs = all
	}
	if len(refs) == 0 {
		return nil, fmt.Errorf("run: prompt %s produced no images (does the workflow end in SaveImage or PreviewImage?)", res.PromptID)
	}
	images := make([]Image, 0, len(refs))
	for _, ref := range refs {
		err := retry(ctx, retryPolicy{
			timeout: r.cfg.RetryTimeout,
			delay:   retryDelay,
			giveUp: func(err error) error {
				return fmt.Errorf("run: fetch image from %s: %w: %w", cl.URL(), errServerDown, err)
			},
		}, func(int) error {
			data, err := cl.View(ctx, ref.ImageRef)
			if errors.Is(err, comfyui.ErrNotFound) {
				return permanent(err)
			}
			if err == nil {
				images = append(images, Image{Data: data, Ref: ref.ImageRef, Node: ref.Node, Index: ref.Index})
			}
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	return images, nil
}

// score calls the scorer. While the scorer is unreachable, busy or
// restarting its model (transientScoreError) it is retried until
// RetryTimeout has passed since the first failure; other failures are
// retried a few times.
func (r *runner) score(ctx context.Context, images []Image) ([]Scores, error) {
	const maxOtherFailures = 4
	var scores []Scores
	others := 0
	err := retry(ctx, retryPolicy{
		timeout: r.cfg.RetryTimeout,
		delay:   scoreRetryDelay,
		giveUp: func(err error) error {
			return fmt.Errorf("run: score images: scorer unavailable for %v: %w", r.cfg.RetryTimeout, err)
		},
		onRetry: func(err error) { r.cfg.Log.Warn("scoring failed, retrying", "err", err) },
	}, func(int) error {
		var err error
		scores, err = r.cfg.Scorer.Score(ctx, images, r.prompt, r.cfg.Aspects)
		switch {
		case err == nil:
			if len(scores) != len(images) {
				return permanent(fmt.Errorf("run: scorer returned %d results for %d images", len(scores), len(images)))
			}
			return nil
		case ctx.Err() != nil || transientScoreError(err):
			return err
		}
		if others++; others >= maxOtherFailures {
			return permanent(fmt.Errorf("run: score images: %w", err))
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return scores, nil
}

// decide gates the images of one try. Every passing image fills one of the
// Count slots while slots are free (a batch may fill several); it is on
// disk before it counts. Passing images beyond Count are recorded as
// surplus. It reports whether the try accepted at least one image.
func (r *runner) decide(a *attempt, images []Image, scores []Scores) (bool, error) {
	accepted := false
	for i, img := range images {
		passed := r.cfg.Gate.Pass(scores[i])
		res := r.resultFor(a, &img, &scores[i], nil)
		res.Passed = passed
		md := r.metadataFor(a, &img, &scores[i], passed)
		slot := passed && r.reserve()
		switch {
		case slot:
			file, err := r.out.image(false, a, &img, md)
			if err != nil {
				return false, err
			}
			res.Accepted, res.File = true, file
		case passed:
			res.Note = "surplus: the run already has its images"
		default:
			if r.cfg.KeepRejected {
				file, err := r.out.image(true, a, &img, md)
				if err != nil {
					return false, err
				}
				res.File = file
			}
		}
		if err := r.out.result(res); err != nil {
			return false, err
		}
		r.mu.Lock()
		if res.Accepted {
			accepted = true
			r.sum.Accepted = append(r.sum.Accepted, res.File)
			r.progress(true)
		} else if !passed {
			r.sum.Rejected++
			r.progress(false)
		}
		r.mu.Unlock()
	}
	return accepted, nil
}

// reserve takes one of the Count slots, if one is free.
func (r *runner) reserve() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.reserved >= r.cfg.Count {
		return false
	}
	r.reserved++
	return true
}

// full reports whether every slot is taken.
func (r *runner) full() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reserved >= r.cfg.Count
}

func (r *runner) seedMap(seeds []uint64) map[string]uint64 {
	m := make(map[string]uint64, len(seeds))
	for i, in := range r.seeds {
		key := in.Node
		if _, dup := m[key]; dup {
			key = in.Node + "." + in.Input
		}
		m[key] = seeds[i]
	}
	return m
}

func (r *runner) resultFor(a *attempt, img *Image, s *Scores, err error) Result {
	res := Result{Time: time.Now().UTC(), Job: a.job, Attempt: a.try, Server: a.server, PromptID: a.promptID,
		Prompt: r.prompt, Seed: a.seeds[0], Seeds: r.seedMap(a.seeds)}
	if img != nil {
		res.Node, res.Index, res.Source = img.Node, img.Index, img.Ref
	}
	if s != nil {
		res.Scores, res.Error = s.Aspects, s.Error
	}
	if err != nil {
		res.Error = err.Error()
	}
	return res
}

func (r *runner) metadataFor(a *attempt, img *Image, s *Scores, passed bool) Metadata {
	return Metadata{Scores: s.Aspects, Passed: passed, Seed: a.seeds[0], Seeds: r.seedMap(a.seeds), Attempt: a.try,
		Job: a.job, PromptID: a.promptID, Server: a.server, Node: img.Node, Prompt: r.prompt, Gate: r.cfg.Gate}
}
