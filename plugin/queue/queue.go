// Package queue spreads scoring over many machines through a durable work
// queue. Producers (`m3gate serve`, `m3gate run`) publish one score job per
// image; workers (`m3gate worker`), each with its own model process, pull
// jobs in batches, score them and record one result per job id; producers
// wait for those results. The queue is NATS JetStream (jetstream.go): a
// work-queue stream of job messages, an object store of image bytes and a
// key-value bucket of results. Without a queue setting nothing of this runs.
package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/m3gate/m3gate/schemas"
)

// Job is one image to score, as published on the job stream. The image
// bytes travel through the object store under the name Image.
type Job struct {
	// ID is unique per job; it is the publish's Nats-Msg-Id (dedupe), the
	// result's key and the image object's name.
	ID string `json:"id"`
	// Image names the image object; ImageSize is its length in bytes.
	Image     string `json:"image"`
	ImageSize int    `json:"image_size"`
	// Prompt is the generation prompt the image is scored against.
	Prompt string `json:"prompt,omitempty"`
	// Aspects are the aspects to score (empty: the worker's default).
	Aspects []string `json:"aspects,omitempty"`
	// MaxNewTokens bounds the description (0: the worker's default).
	MaxNewTokens int `json:"max_new_tokens,omitempty"`
	// Thresholds are the gate's minimum MOS per aspect; with them the
	// result says whether the image passed.
	Thresholds map[string]float64 `json:"thresholds,omitempty"`
	// Mode is how thresholds combine: "all" (default) or "any".
	Mode string `json:"mode,omitempty"`
	// Producer names who published the job.
	Producer string `json:"producer,omitempty"`
	// Submitted is when the job was published.
	Submitted time.Time `json:"submitted"`
}

// Validate checks a job as a worker receives it.
func (j Job) Validate() error {
	switch {
	case j.ID == "" || !validKey(j.ID):
		return fmt.Errorf("job id %q is empty or has characters other than A-Z a-z 0-9 - _ . =", j.ID)
	case j.Image == "":
		return fmt.Errorf("job %s names no image", j.ID)
	case j.Mode != "" && j.Mode != "all" && j.Mode != "any":
		return fmt.Errorf("job %s: gate mode %q: want all or any", j.ID, j.Mode)
	}
	return nil
}

// Result is the outcome of one job, recorded once per job id.
type Result struct {
	// ID is the job's id.
	ID string `json:"id"`
	// Error is set when the image could not be scored (corrupt image,
	// missing object, a job that kept killing the model process).
	Error string `json:"error,omitempty"`
	// Aspects are the scores by aspect.
	Aspects map[string]schemas.AspectResult `json:"aspects,omitempty"`
	// Passed says whether the scores met the job's thresholds (nil without
	// thresholds).
	Passed *bool `json:"passed,omitempty"`
	// Worker names the worker that recorded the result.
	Worker string `json:"worker"`
	// Deliveries is how often the job had been delivered when it ended.
	Deliveries int `json:"deliveries"`
	// Scored is when the result was recorded.
	Scored time.Time `json:"scored"`
}

// Item converts r to the item result of a score request at index i.
func (r Result) Item(i int) schemas.ItemResult {
	return schemas.ItemResult{Index: i, Error: r.Error, Aspects: r.Aspects}
}

// Gate evaluates thresholds on scores like pipeline.Gate: every threshold
// must be met ("all") or one is enough ("any"); an aspect that was not
// scored fails. It returns nil without thresholds.
func Gate(thresholds map[string]float64, mode string, aspects map[string]schemas.AspectResult, scoreErr string) *bool {
	if len(thresholds) == 0 {
		return nil
	}
	pass := scoreErr == ""
	if pass {
		anyPass := false
		for a, min := range thresholds {
			s, ok := aspects[a]
			ok = ok && s.MOS >= min
			anyPass = anyPass || ok
			if !ok && mode != "any" {
				pass = false
			}
		}
		pass = pass && anyPass
	}
	return &pass
}

// Scorer scores a batch of images; *supervisor.Supervisor implements it.
// A worker scores through one.
type Scorer interface {
	Score(ctx context.Context, req schemas.ScoreRequest) ([]schemas.ItemResult, error)
}

// Settings are the queue's names and limits, shared by producers and
// workers (config section queue).
type Settings struct {
	// Stream, Consumer, Images and Results name the job stream, the
	// workers' durable consumer, the image object store and the result
	// bucket. Defaults: M3GATE_JOBS, m3gate-workers, m3gate-images,
	// m3gate-results.
	Stream, Consumer, Images, Results string
	// AckWait is how long a worker may hold a job without acking or
	// signalling progress before it is redelivered. Default 30 s.
	AckWait time.Duration
	// MaxAckPending bounds the jobs held by all workers together. Default 1000.
	MaxAckPending int
	// MaxDeliver is how often a job is delivered before it ends with an
	// error result. Default 5.
	MaxDeliver int
	// NakDelay is how long a job a worker could not score (its model
	// process restarting) waits before it is delivered again. Default 5 s.
	NakDelay time.Duration
	// MaxJobs bounds the jobs waiting in the stream; publishing more fails
	// with "queue full". Default 100000.
	MaxJobs int64
	// MaxBytes bounds the image object store. Default 8 GiB.
	MaxBytes int64
	// ResultTTL is how long results and left-over images are kept.
	// Default 24 h.
	ResultTTL time.Duration
	// Replicas is the number of copies of every stream (3 in a
	// three-node cluster). Default 1.
	Replicas int
	// Duplicates is the window in which a job id is published only once.
	// Default 10 minutes.
	Duplicates time.Duration
}

// WithDefaults returns s with the defaults filled in.
func (s Settings) WithDefaults() Settings {
	s.defaults()
	return s
}

func (s *Settings) defaults() {
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	def(&s.Stream, "M3GATE_JOBS")
	def(&s.Consumer, "m3gate-workers")
	def(&s.Images, "m3gate-images")
	def(&s.Results, "m3gate-results")
	if s.AckWait <= 0 {
		s.AckWait = 30 * time.Second
	}
	if s.MaxAckPending <= 0 {
		s.MaxAckPending = 1000
	}
	if s.MaxDeliver <= 0 {
		s.MaxDeliver = 5
	}
	if s.NakDelay <= 0 {
		s.NakDelay = 5 * time.Second
	}
	if s.MaxJobs <= 0 {
		s.MaxJobs = 100000
	}
	if s.MaxBytes <= 0 {
		s.MaxBytes = 8 << 30
	}
	if s.ResultTTL <= 0 {
		s.ResultTTL = 24 * time.Hour
	}
	if s.Replicas <= 0 {
		s.Replicas = 1
	}
	if s.Duplicates <= 0 {
		s.Duplicates = 10 * time.Minute
	}
}

// Subject is the subject of job messages in stream s.
func (s Settings) Subject() string { return strings.ToLower(s.Stream) + ".score" }

// ErrQueueFull fails a publish when the job stream holds MaxJobs jobs.
var ErrQueueFull = errors.New("score queue full")

// validKey reports whether k is a valid key-value and object name: the
// characters A-Z a-z 0-9 - _ . = and no empty dot-separated token.
func validKey(k string) bool {
	if k == "" || strings.HasPrefix(k, ".") || strings.HasSuffix(k, ".") || strings.Contains(k, "..") {
		return false
	}
	for _, c := range k {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.', c == '=':
		default:
			return false
		}
	}
	return true
}
