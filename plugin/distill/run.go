package distill

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/m3gate/m3gate/plugin/dataset"
	"github.com/m3gate/m3gate/schemas/iqa"
	"github.com/m3gate/m3gate/schemas/labels"
)

// Item is one image to distill.
type Item struct {
	// Name is the image's name in the conversations output.
	Name string
	// Path is the image file.
	Path   string
	Prompt string
	// MOS per aspect on 0–5; the teacher is asked about the aspects
	// present (restricted to Config.Aspects when set).
	MOS    map[string]float64
	Split  string
	Source string
}

func (it Item) aspects() []string {
	var out []string
	for _, a := range iqa.Aspects {
		if _, ok := it.MOS[a]; ok {
			out = append(out, a)
		}
	}
	return out
}

// ItemsFromManifest turns manifest records into items. Records without
// any MOS (e.g. unlabelled validation images) are skipped and counted;
// aspects, when non-empty, restricts the aspects asked about.
func ItemsFromManifest(m *dataset.Manifest, aspects []string) (items []Item, skipped int) {
	for _, r := range m.Records {
		mos := map[string]float64{}
		for a, v := range r.MOS {
			if len(aspects) == 0 || contains(aspects, a) {
				mos[a] = v
			}
		}
		if len(mos) == 0 {
			skipped++
			continue
		}
		name := r.Name
		if name == "" {
			name = filepath.Base(r.Image)
		}
		items = append(items, Item{Name: name, Path: m.ImagePath(r), Prompt: r.Prompt, MOS: mos, Split: r.Split, Source: r.Source})
	}
	return items, skipped
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// Config configures a distillation run.
type Config struct {
	Format   Format
	Endpoint string // base URL; empty: DefaultEndpoint(Format)
	Model    string
	// KeyEnv names the environment variable holding the API key. Empty: no
	// key is sent (local servers). The key never appears in logs, errors
	// or files.
	KeyEnv string
	// Getenv looks up KeyEnv (default os.Getenv).
	Getenv func(string) string
	// Template is the teacher prompt template (empty: DefaultTemplate).
	Template string
	// PromptStyle selects the conversation wording (dataset.Prompts).
	PromptStyle string
	Concurrency int           // parallel requests (default 4)
	MaxAttempts int           // attempts per item, per failure kind (default 5)
	Timeout     time.Duration // per request (default 2 minutes)
	BaseBackoff time.Duration // first backoff (default 1 s)
	MaxBackoff  time.Duration // backoff cap, also caps Retry-After (default 60 s)
	// JSONMode asks for a JSON response (response_format /
	// responseMimeType). A server that answers 400 naming that field makes
	// the run drop it for the remaining calls.
	JSONMode    bool
	Temperature float64
	// Prices per 1,000 prompt and completion tokens, for the cost estimate.
	PricePromptPer1K, PriceCompletionPer1K float64
	// CachePath is the JSONL cache (required); OutPath the conversations
	// JSONL written at the end (optional).
	CachePath, OutPath string
	Logger             *slog.Logger
	HTTPClient         *http.Client
	// Progress, when set, is called after each item finishes.
	Progress func(done, total int)
	// Sleep waits between attempts (default: a timer honouring ctx); tests
	// replace it.
	Sleep func(ctx context.Context, d time.Duration) error
}

func (c *Config) defaults() {
	if c.Endpoint == "" {
		c.Endpoint = DefaultEndpoint(c.Format)
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 4
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 5
	}
	if c.Timeout <= 0 {
		c.Timeout = 2 * time.Minute
	}
	if c.BaseBackoff <= 0 {
		c.BaseBackoff = time.Second
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{}
	}
	if c.Sleep == nil {
		c.Sleep = sleepCtx
	}
	if c.Getenv == nil {
		c.Getenv = os.Getenv
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Summary reports a run.
type Summary struct {
	Items   int `json:"items"`
	Cached  int `json:"cached"`  // answered in an earlier run
	Fetched int `json:"fetched"` // answered well in this run
	// Failed counts items whose teacher never answered in the required
	// form (recorded in the cache as failed, not asked again).
	Failed int `json:"failed"`
	// Errors counts items that hit transport errors (429/5xx/timeouts
	// beyond MaxAttempts, other 4xx); they are not cached and a rerun
	// tries them again.
	Errors           int     `json:"errors"`
	Calls            int     `json:"calls"`
	Retries          int     `json:"retries"`
	RateLimited      int     `json:"rate_limited"`
	Malformed        int     `json:"malformed"`
	PromptTokens     int64   `json:"prompt_tokens"`
	CompletionTokens int64   `json:"completion_tokens"`
	Cost             float64 `json:"cost"`
	OffLength        int     `json:"off_length"` // descriptions outside 40–60 words
	// TotalPromptTokens, TotalCompletionTokens and TotalCost cover every
	// answer of these items in the cache, earlier runs included.
	TotalPromptTokens     int64    `json:"total_prompt_tokens"`
	TotalCompletionTokens int64    `json:"total_completion_tokens"`
	TotalCost             float64  `json:"total_cost"`
	Conversations         int      `json:"conversations"`
	TornCacheLines        int      `json:"torn_cache_lines"`
	Problems              []string `json:"problems,omitempty"`
}

// String is a one-paragraph summary.
func (s *Summary) String() string {
	return fmt.Sprintf("%d items: %d cached, %d fetched, %d failed (malformed answers), %d errors; %d calls, %d retries (%d rate limited, %d malformed); this run %d prompt + %d completion tokens, estimated cost %.4f (all runs: %d + %d tokens, %.4f); %d descriptions outside 40–60 words; %d conversations written",
		s.Items, s.Cached, s.Fetched, s.Failed, s.Errors, s.Calls, s.Retries, s.RateLimited, s.Malformed,
		s.PromptTokens, s.CompletionTokens, s.Cost, s.TotalPromptTokens, s.TotalCompletionTokens, s.TotalCost, s.OffLength, s.Conversations)
}

// ErrAuth is returned when the service rejects the key (401/403).
var ErrAuth = errors.New("teacher rejected the credentials")

type job struct {
	item   Item
	key    string
	prompt string
}

type runner struct {
	noJSON  atomic.Bool // the server rejected JSON mode
	cfg     Config
	key     string
	teacher *Teacher
	cache   *Cache
	mu      sync.Mutex
	sum     *Summary
	done    int
}

// redact removes the API key from s.
func (r *runner) redact(s string) string {
	if r.key == "" {
		return s
	}
	return strings.ReplaceAll(s, r.key, "[REDACTED]")
}

// Run asks the teacher about every item that the cache does not answer
// yet, then writes the conversations file (when OutPath is set and the run
// was not cancelled). Cancelling ctx stops the run; everything answered so
// far is in the cache and a rerun continues from there.
func Run(ctx context.Context, cfg Config, items []Item) (*Summary, error) {
	cfg.defaults()
	if cfg.Format != FormatOpenAI && cfg.Format != FormatGemini {
		return nil, fmt.Errorf("distill: unknown format %q", cfg.Format)
	}
	if cfg.Model == "" {
		return nil, errors.New("distill: no model")
	}
	if cfg.CachePath == "" {
		return nil, errors.New("distill: no cache path")
	}
	r := &runner{cfg: cfg, sum: &Summary{Items: len(items)}}
	if cfg.KeyEnv != "" {
		r.key = cfg.Getenv(cfg.KeyEnv)
		if r.key == "" {
			return nil, fmt.Errorf("distill: environment variable %s is empty or unset", cfg.KeyEnv)
		}
	}
	var err error
	if r.teacher, err = NewTeacher(cfg.Template); err != nil {
		return nil, err
	}
	for _, a := range iqa.Aspects {
		if _, err := dataset.LookupPrompts(a, cfg.PromptStyle); err != nil {
			return nil, fmt.Errorf("distill: %w", err)
		}
	}
	if r.cache, err = OpenCache(cfg.CachePath); err != nil {
		return nil, err
	}
	defer r.cache.Close()
	r.sum.TornCacheLines = r.cache.Torn

	// Keys first: cached items cost nothing.
	var jobs []job
	keys := make([]string, len(items))
	for i, it := range items {
		k, prompt, err := r.keyOf(it)
		if err != nil {
			r.sum.Errors++
			r.sum.Problems = append(r.sum.Problems, err.Error())
			continue
		}
		keys[i] = k
		if e, ok := r.cache.Get(k); ok {
			r.sum.Cached++
			if e.Status == StatusFailed {
				r.sum.Failed++
			}
			continue
		}
		jobs = append(jobs, job{item: it, key: k, prompt: prompt})
	}
	r.done = len(items) - len(jobs)
	cfg.Logger.Info("distill start", "items", len(items), "cached", r.sum.Cached, "to_fetch", len(jobs), "format", string(cfg.Format), "model", cfg.Model, "concurrency", cfg.Concurrency)

	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	ch := make(chan job)
	var wg sync.WaitGroup
	for w := 0; w < cfg.Concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range ch {
				if err := r.do(wctx, j); err != nil {
					cancel(err)
				}
			}
		}()
	}
feed:
	for _, j := range jobs {
		select {
		case ch <- j:
		case <-wctx.Done():
			break feed
		}
	}
	close(ch)
	wg.Wait()
	if err := context.Cause(wctx); err != nil {
		if ctx.Err() != nil {
			return r.sum, fmt.Errorf("distill interrupted: %w", ctx.Err())
		}
		return r.sum, fmt.Errorf("distill: %w", err) // redacted where it was made
	}
	price := func(p, c int64) float64 {
		return float64(p)/1000*cfg.PricePromptPer1K + float64(c)/1000*cfg.PriceCompletionPer1K
	}
	r.sum.Cost = price(r.sum.PromptTokens, r.sum.CompletionTokens)
	seen := map[string]bool{}
	for _, k := range keys {
		if e, ok := r.cache.Get(k); ok && k != "" && !seen[k] {
			seen[k] = true
			r.sum.TotalPromptTokens += e.Usage.PromptTokens
			r.sum.TotalCompletionTokens += e.Usage.CompletionTokens
		}
	}
	r.sum.TotalCost = price(r.sum.TotalPromptTokens, r.sum.TotalCompletionTokens)
	if cfg.OutPath != "" {
		n, err := r.writeConversations(items, keys)
		if err != nil {
			return r.sum, err
		}
		r.sum.Conversations = n
	}
	cfg.Logger.Info("distill done", "summary", r.sum.String())
	return r.sum, nil
}

func (r *runner) keyOf(it Item) (key, prompt string, err error) {
	b, err := os.ReadFile(it.Path)
	if err != nil {
		return "", "", fmt.Errorf("item %s: %w", it.Name, err)
	}
	sum := sha256.Sum256(b)
	prompt, err = r.teacher.Render(it)
	if err != nil {
		return "", "", err
	}
	return CacheKey(hex.EncodeToString(sum[:]), r.cfg.Model, r.teacher.Hash, prompt), prompt, nil
}

func mimeOf(path string, b []byte) string {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".jpg", ".jpeg":
		return "image/jpeg"
	case ".png":
		return "image/png"
	case ".webp":
		return "image/webp"
	}
	return http.DetectContentType(b)
}

func (r *runner) finish(delta func(s *Summary)) {
	r.mu.Lock()
	delta(r.sum)
	r.done++
	done, total := r.done, r.sum.Items
	r.mu.Unlock()
	if r.cfg.Progress != nil {
		r.cfg.Progress(done, total)
	}
}

func (r *runner) count(delta func(s *Summary)) {
	r.mu.Lock()
	delta(r.sum)
	r.mu.Unlock()
}

// backoff returns the wait before retry n (1-based): base·2^(n−1) capped,
// with jitter in [d/2, d].
func (r *runner) backoff(n int) time.Duration {
	d := r.cfg.BaseBackoff << min(n-1, 30)
	if d > r.cfg.MaxBackoff || d <= 0 {
		d = r.cfg.MaxBackoff
	}
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

// retryAfter parses a Retry-After header (seconds or HTTP date).
func retryAfter(h string, now time.Time) (time.Duration, bool) {
	h = strings.TrimSpace(h)
	if h == "" {
		return 0, false
	}
	if s, err := strconv.ParseFloat(h, 64); err == nil && s >= 0 {
		return time.Duration(s * float64(time.Second)), true
	}
	if t, err := http.ParseTime(h); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}

// do handles one item; a non-nil error aborts the whole run (bad key).
func (r *runner) do(ctx context.Context, j job) error {
	log := r.cfg.Logger.With("image", j.item.Name)
	img, err := os.ReadFile(j.item.Path)
	if err != nil {
		r.finish(func(s *Summary) { s.Errors++; s.Problems = append(s.Problems, fmt.Sprintf("%s: %v", j.item.Name, err)) })
		return nil
	}
	req := request{Text: j.prompt, Image: img, MIME: mimeOf(j.item.Path, img), Model: r.cfg.Model, JSONMode: r.cfg.JSONMode, Temp: r.cfg.Temperature}
	aspects := j.item.aspects()
	transient, malformed, attempts := 0, 0, 0
	var usage Usage
	var lastErr error
	var lastAnswer string
	for {
		if ctx.Err() != nil {
			return nil
		}
		attempts++
		req.JSONMode = r.cfg.JSONMode && !r.noJSON.Load()
		text, u, err := r.call(ctx, req)
		usage.PromptTokens += u.PromptTokens
		usage.CompletionTokens += u.CompletionTokens
		r.count(func(s *Summary) {
			s.Calls++
			s.PromptTokens += u.PromptTokens
			s.CompletionTokens += u.CompletionTokens
		})
		if err != nil && ctx.Err() != nil {
			return nil // cancelled: nothing recorded, a rerun asks again
		}
		var wait time.Duration
		if err == nil {
			desc, perr := ParseAnswer(text, aspects)
			if perr == nil {
				off := 0
				for _, d := range desc {
					if n := WordCount(d); n < 40 || n > 60 {
						off++
					}
				}
				e := Entry{Key: j.key, Status: StatusOK, Image: j.item.Name, Model: r.cfg.Model, TemplateHash: r.teacher.Hash, Descriptions: desc, Attempts: attempts, Usage: usage}
				if err := r.cache.Put(e); err != nil {
					return err
				}
				r.finish(func(s *Summary) { s.Fetched++; s.OffLength += off })
				return nil
			}
			err = perr
			lastAnswer = text
		}
		lastErr = err
		var he *httpError
		switch {
		case errors.Is(err, ErrMalformed):
			malformed++
			r.count(func(s *Summary) { s.Malformed++ })
			if malformed >= r.cfg.MaxAttempts {
				if len(lastAnswer) > 500 {
					lastAnswer = lastAnswer[:500]
				}
				e := Entry{Key: j.key, Status: StatusFailed, Image: j.item.Name, Model: r.cfg.Model, TemplateHash: r.teacher.Hash,
					Error: r.redact(err.Error()), Answer: r.redact(lastAnswer), Attempts: attempts, Usage: usage}
				if err := r.cache.Put(e); err != nil {
					return err
				}
				log.Warn("teacher answer malformed, recorded as failed", "attempts", attempts, "error", r.redact(err.Error()))
				r.finish(func(s *Summary) {
					s.Failed++
					s.Problems = append(s.Problems, fmt.Sprintf("%s: failed after %d attempts: %s", j.item.Name, attempts, r.redact(err.Error())))
				})
				return nil
			}
		case errors.As(err, &he) && (he.Status == http.StatusUnauthorized || he.Status == http.StatusForbidden):
			return fmt.Errorf("%w (http %d): %s", ErrAuth, he.Status, r.redact(he.Body))
		case errors.As(err, &he) && he.Status == http.StatusTooManyRequests:
			transient++
			r.count(func(s *Summary) { s.RateLimited++ })
			if d, ok := retryAfter(he.RetryAfter, time.Now()); ok {
				wait = min(d, r.cfg.MaxBackoff)
			}
		case errors.As(err, &he) && he.Status == http.StatusBadRequest && req.JSONMode && mentionsJSONMode(he.Body):
			if !r.noJSON.Swap(true) {
				log.Warn("teacher rejects JSON mode; asking without it", "error", r.redact(err.Error()))
			}
			wait = time.Nanosecond // retry at once; not counted as a failure
		case errors.As(err, &he) && he.Status < 500 && he.Status != http.StatusRequestTimeout:
			log.Warn("teacher refused the request", "status", he.Status, "error", r.redact(err.Error()))
			r.finish(func(s *Summary) {
				s.Errors++
				s.Problems = append(s.Problems, fmt.Sprintf("%s: %s", j.item.Name, r.redact(err.Error())))
			})
			return nil
		default: // 5xx, 408, timeouts, connection errors
			transient++
		}
		if transient >= r.cfg.MaxAttempts {
			log.Warn("teacher unavailable, giving up on item for this run", "attempts", attempts, "error", r.redact(lastErr.Error()))
			r.finish(func(s *Summary) {
				s.Errors++
				s.Problems = append(s.Problems, fmt.Sprintf("%s: gave up after %d attempts: %s", j.item.Name, attempts, r.redact(lastErr.Error())))
			})
			return nil
		}
		if wait == 0 {
			wait = r.backoff(transient + malformed)
		}
		r.count(func(s *Summary) { s.Retries++ })
		log.Info("retrying teacher call", "attempt", attempts, "wait", wait, "error", r.redact(lastErr.Error()))
		if err := r.cfg.Sleep(ctx, wait); err != nil {
			return nil
		}
	}
}

// mentionsJSONMode reports whether a 400 body is about the JSON response
// format option.
func mentionsJSONMode(body string) bool {
	b := strings.ToLower(body)
	for _, s := range []string{"response_format", "responsemimetype", "response_mime_type", "json_object"} {
		if strings.Contains(b, s) {
			return true
		}
	}
	return false
}

// call makes one HTTP request.
func (r *runner) call(ctx context.Context, req request) (string, Usage, error) {
	cctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	defer cancel()
	hreq, err := buildRequest(cctx, r.cfg.Format, r.cfg.Endpoint, r.key, req)
	if err != nil {
		return "", Usage{}, err
	}
	resp, err := r.cfg.HTTPClient.Do(hreq)
	if err != nil {
		return "", Usage{}, errors.New(r.redact(err.Error()))
	}
	defer resp.Body.Close()
	body, err := readBody(resp.Body, 8<<20)
	if err != nil {
		return "", Usage{}, fmt.Errorf("read response: %s", r.redact(err.Error()))
	}
	if resp.StatusCode/100 != 2 {
		b := string(body)
		if len(b) > 300 {
			b = b[:300]
		}
		return "", Usage{}, &httpError{Status: resp.StatusCode, RetryAfter: resp.Header.Get("Retry-After"), Body: r.redact(strings.TrimSpace(b))}
	}
	return parseResponse(r.cfg.Format, body)
}

// writeConversations writes the conversations of every item with an ok
// cache entry, in item order, atomically.
func (r *runner) writeConversations(items []Item, keys []string) (int, error) {
	dir := filepath.Dir(r.cfg.OutPath)
	tmp, err := os.CreateTemp(dir, ".conversations-*.jsonl")
	if err != nil {
		return 0, fmt.Errorf("write conversations: %w", err)
	}
	defer os.Remove(tmp.Name())
	n := 0
	for i, it := range items {
		e, ok := r.cache.Get(keys[i])
		if keys[i] == "" || !ok || e.Status != StatusOK {
			continue
		}
		for _, a := range it.aspects() {
			r1, r2 := dataset.Prompts(a, r.cfg.PromptStyle)
			c := labels.Conversation{
				Image: it.Name, Prompt: it.Prompt, Aspect: a, Split: it.Split,
				Round1: dataset.FillRound1(r1, it.Prompt), TeacherDescription: e.Descriptions[a],
				Round2: r2, RatingWord: iqa.RatingWord(it.MOS[a]),
			}
			if err := labels.WriteConversation(tmp, c); err != nil {
				tmp.Close()
				return 0, err
			}
			n++
		}
	}
	if err := tmp.Close(); err != nil {
		return 0, fmt.Errorf("write conversations: %w", err)
	}
	if err := os.Rename(tmp.Name(), r.cfg.OutPath); err != nil {
		return 0, fmt.Errorf("write conversations: %w", err)
	}
	return n, nil
}
