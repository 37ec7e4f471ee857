// Package pipeline is the engine of `m3gate run`: it queues an API-format
// ComfyUI workflow on one or more servers with fresh sampler seeds, waits
// for the outputs over the websocket, scores every image, writes accepted
// images (PNG with the scores in an iTXt chunk) and a results.jsonl line per
// image, and rerolls rejected jobs with new seeds up to a maximum number of
// tries. It survives a server restart: prompts the server lost are queued
// again, and an accepted image is on disk before it counts.
package pipeline

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/m3gate/m3gate/plugin/comfyui"

	"github.com/m3gate/m3gate/schemas/iqa"
)

// Image is one generated image handed to a Scorer.
type Image struct {
	// Data is the file as the server sent it (PNG for SaveImage).
	Data []byte
	// Ref is where the server stores it.
	Ref comfyui.ImageRef
	// Node is the output node that produced it; Index its place in the
	// node's batch.
	Node  string
	Index int
}

// AspectScore is the score of one aspect of one image.
type AspectScore struct {
	// MOS is the predicted mean opinion score (0–5).
	MOS float64 `json:"mos"`
	// Rating is the rating word (bad, poor, fair, good, excellent).
	Rating string `json:"rating,omitempty"`
	// WordProbs are the rating-word probabilities, when known.
	WordProbs map[string]float64 `json:"word_probs,omitempty"`
	// Description is the model's analysis, when generated.
	Description string `json:"description,omitempty"`
	// Source names what produced the score ("predictor", "words", …).
	Source string `json:"source,omitempty"`
}

// Scores are the scores of one image, by aspect. Error is set when this
// image could not be scored (it is then rejected).
type Scores struct {
	Aspects map[string]AspectScore `json:"aspects"`
	Error   string                 `json:"error,omitempty"`
}

// Scorer scores images against their generation prompt; it returns one
// Scores per image, in order.
type Scorer interface {
	Score(ctx context.Context, images []Image, prompt string, aspects []string) ([]Scores, error)
}

// Mode says how per-aspect thresholds combine.
type Mode string

// Gate modes.
const (
	ModeAll Mode = "all" // every threshold must be met
	ModeAny Mode = "any" // one threshold met is enough
)

// Gate accepts or rejects an image by its scores.
type Gate struct {
	// Thresholds are minimum MOS values per aspect.
	Thresholds map[string]float64 `json:"thresholds"`
	// Mode is ModeAll (default) or ModeAny.
	Mode Mode `json:"mode"`
}

// Pass reports whether scores meet the gate. An image with a scoring
// error, or missing a thresholded aspect (for that aspect), fails.
func (g Gate) Pass(s Scores) bool {
	if s.Error != "" {
		return false
	}
	if len(g.Thresholds) == 0 {
		return true
	}
	anyPass := false
	for aspect, min := range g.Thresholds {
		a, ok := s.Aspects[aspect]
		ok = ok && a.MOS >= min
		if !ok && g.Mode != ModeAny {
			return false
		}
		anyPass = anyPass || ok
	}
	return anyPass
}

// Aspects returns the thresholded aspects, sorted.
func (g Gate) Aspects() []string {
	out := make([]string, 0, len(g.Thresholds))
	for a := range g.Thresholds {
		out = append(out, a)
	}
	sort.Strings(out)
	return out
}

// ParseThresholds parses "aspect=value" flags ("quality=3.5") into a map.
func ParseThresholds(specs []string) (map[string]float64, error) {
	out := map[string]float64{}
	for _, spec := range specs {
		for _, part := range strings.Split(spec, ",") {
			part = strings.TrimSpace(part)
			if part == "" {
				continue
			}
			k, v, ok := strings.Cut(part, "=")
			k = strings.TrimSpace(k)
			if !ok || k == "" {
				return nil, fmt.Errorf("threshold %q: want aspect=value, e.g. quality=3.5", part)
			}
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return nil, fmt.Errorf("threshold %q: %w", part, err)
			}
			if f < 0 || f > 5 {
				return nil, fmt.Errorf("threshold %q: MOS thresholds lie in 0..5", part)
			}
			out[k] = f
		}
	}
	return out, nil
}

// ParseMode parses "all" or "any" ("" means all).
func ParseMode(s string) (Mode, error) {
	switch Mode(strings.ToLower(strings.TrimSpace(s))) {
	case "", ModeAll:
		return ModeAll, nil
	case ModeAny:
		return ModeAny, nil
	}
	return "", fmt.Errorf("gate mode %q: want all or any", s)
}

// Config is one `m3gate run`.
type Config struct {
	// Workflow is the API-format workflow to run.
	Workflow comfyui.Workflow
	// Servers are ComfyUI base URLs ("http://host:8188"); jobs spread over
	// them.
	Servers []string
	// Count is the number of accepted images wanted. Up to Count jobs run;
	// a job ends when one of its tries yields an accepted image (a batch
	// may fill several slots at once).
	Count int
	// MaxTries is the number of prompts a job may run before it gives up
	// (prompts a server lost in a restart do not count).
	MaxTries int
	// Gate decides acceptance.
	Gate Gate
	// Aspects to score (default: the gate's aspects, or "quality").
	Aspects []string
	// SeedNodes restricts rerolling to these node ids (default: every seed
	// input).
	SeedNodes []string
	// Prompt is the text to score against (default: extracted from the
	// workflow).
	Prompt string
	// OutDir receives accepted images and results.jsonl.
	OutDir string
	// KeepRejected also writes rejected images, under OutDir/rejected.
	KeepRejected bool
	// Resume counts the images accepted by earlier runs into OutDir (as
	// listed in its results.jsonl, files present) toward Count, and never
	// reuses their seeds.
	Resume bool
	// Scorer scores images.
	Scorer Scorer
	// Progress receives a progress bar (nil: none).
	Progress io.Writer
	// Parallel is the number of prompts in flight per server (default 2).
	Parallel int
	// RandSeed seeds the seed generator (0: random).
	RandSeed uint64
	// RetryTimeout is how long a server or the scorer may stay unreachable
	// before the run fails (default 10 minutes).
	RetryTimeout time.Duration
	// ClientOptions are passed to every comfyui.Client.
	ClientOptions []comfyui.Option
	// Log receives progress details (default: discard).
	Log *slog.Logger
}

// Summary is the outcome of a run.
type Summary struct {
	// Accepted lists the written image files, in acceptance order.
	Accepted []string
	// Rejected counts images that failed the gate (or could not be scored).
	Rejected int
	// Exhausted counts jobs that reached MaxTries without an accepted
	// image.
	Exhausted int
	// Prompts counts prompts that ran to the end; Resubmitted those queued
	// again after a server lost them.
	Prompts, Resubmitted int
	// Failed counts prompts that ended with an execution error.
	Failed int
	// Resumed counts accepted images taken over from an earlier run
	// (Config.Resume); they are included in Accepted.
	Resumed int
}

// Complete reports whether every job got its image.
func (s *Summary) Complete(count int) bool { return len(s.Accepted) >= count }

func (c *Config) check() error {
	switch {
	case len(c.Workflow) == 0:
		return fmt.Errorf("run: no workflow")
	case len(c.Servers) == 0:
		return fmt.Errorf("run: no ComfyUI server (give --server URL)")
	case c.Count < 1:
		return fmt.Errorf("run: count must be at least 1, got %d", c.Count)
	case c.MaxTries < 1:
		return fmt.Errorf("run: max tries must be at least 1, got %d", c.MaxTries)
	case c.Scorer == nil:
		return fmt.Errorf("run: no scorer")
	case c.OutDir == "":
		return fmt.Errorf("run: no output folder")
	}
	if c.Gate.Mode == "" {
		c.Gate.Mode = ModeAll
	}
	if c.Gate.Mode != ModeAll && c.Gate.Mode != ModeAny {
		return fmt.Errorf("run: gate mode %q: want all or any", c.Gate.Mode)
	}
	if len(c.Aspects) == 0 {
		c.Aspects = c.Gate.Aspects()
	}
	if len(c.Aspects) == 0 {
		c.Aspects = []string{iqa.Quality}
	}
	for _, a := range c.Gate.Aspects() {
		found := false
		for _, b := range c.Aspects {
			found = found || a == b
		}
		if !found {
			return fmt.Errorf("run: threshold on aspect %q, which is not scored (aspects %v)", a, c.Aspects)
		}
	}
	if c.Parallel < 1 {
		c.Parallel = 2
	}
	if c.RetryTimeout <= 0 {
		c.RetryTimeout = 10 * time.Minute
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return nil
}
