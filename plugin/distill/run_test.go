package distill

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/m3gate/m3gate/plugin/dataset"
	"github.com/m3gate/m3gate/plugin/distill/distillfake"
	"github.com/m3gate/m3gate/schemas/iqa"
	"github.com/m3gate/m3gate/schemas/labels"
)

const testKey = "sk-test-SECRET-4242"

// makeItems writes n small distinct "images" and returns items for them.
func makeItems(t *testing.T, n int) []Item {
	t.Helper()
	dir := t.TempDir()
	var items []Item
	for i := 0; i < n; i++ {
		p := filepath.Join(dir, fmt.Sprintf("gen_normal_%03d.jpg", i))
		if err := os.WriteFile(p, []byte(fmt.Sprintf("\xff\xd8\xff fake jpeg %d", i)), 0o644); err != nil {
			t.Fatal(err)
		}
		items = append(items, Item{
			Name: filepath.Base(p), Path: p, Prompt: fmt.Sprintf("a red fox number %c", 'a'+i), Split: "train",
			MOS: map[string]float64{iqa.Quality: float64(i%5) + 0.5, iqa.Correspondence: 4.2},
		})
	}
	return items
}

func shaOf(t *testing.T, path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func newFake(format Format) *distillfake.Server {
	if format == FormatGemini {
		return distillfake.NewGemini()
	}
	return distillfake.NewOpenAI()
}

func baseConfig(t *testing.T, f *distillfake.Server, format Format) Config {
	dir := t.TempDir()
	t.Setenv("M3GATE_TEST_TEACHER_KEY", testKey)
	f.SetKey(testKey)
	return Config{
		Format: format, Endpoint: f.Endpoint(), Model: "teacher-1", KeyEnv: "M3GATE_TEST_TEACHER_KEY",
		Concurrency: 3, JSONMode: true, MaxAttempts: 3, BaseBackoff: time.Millisecond, MaxBackoff: 10 * time.Second,
		PricePromptPer1K: 0.5, PriceCompletionPer1K: 2,
		CachePath: filepath.Join(dir, "cache.jsonl"), OutPath: filepath.Join(dir, "conversations.jsonl"),
		Sleep: func(ctx context.Context, d time.Duration) error { return ctx.Err() },
	}
}

func TestRunBothFormats(t *testing.T) {
	for _, format := range []Format{FormatOpenAI, FormatGemini} {
		t.Run(string(format), func(t *testing.T) {
			f := newFake(format)
			defer f.Close()
			items := makeItems(t, 6)
			cfg := baseConfig(t, f, format)
			sum, err := Run(context.Background(), cfg, items)
			if err != nil {
				t.Fatal(err)
			}
			if sum.Fetched != 6 || sum.Calls != 6 || f.Calls() != 6 || sum.Failed != 0 || sum.Errors != 0 {
				t.Fatalf("summary %+v, fake calls %d", sum, f.Calls())
			}
			if sum.PromptTokens != 6000 || sum.CompletionTokens != 900 || math.Abs(sum.Cost-(6*0.5+0.9*2)) > 1e-9 {
				t.Errorf("tokens %d+%d cost %v", sum.PromptTokens, sum.CompletionTokens, sum.Cost)
			}
			for _, r := range f.Requests() {
				if !r.JSONMode || r.Model != "teacher-1" || r.MIME != "image/jpeg" || len(r.Aspects) != 2 {
					t.Errorf("request %+v", r)
				}
				if !strings.Contains(r.Text, `"a red fox number`) || !strings.Contains(r.Text, "4.20 out of 5") {
					t.Errorf("teacher prompt lacks prompt or MOS:\n%s", r.Text)
				}
			}
			rep := &labels.Report{}
			convs, err := labels.ReadConversations(cfg.OutPath, rep)
			if err != nil || len(rep.Problems) != 0 || len(convs) != 12 || sum.Conversations != 12 {
				t.Fatalf("conversations: %v %v %d", err, rep.Problems, len(convs))
			}
			good := distillfake.GoodAnswer([]string{iqa.Quality, iqa.Correspondence})
			for i, c := range convs {
				it := items[i/2]
				r1, r2 := dataset.Prompts(c.Aspect, "")
				if c.Image != it.Name || c.Round1 != dataset.FillRound1(r1, it.Prompt) || c.Round2 != r2 || c.Split != "train" {
					t.Errorf("conversation %d: %+v", i, c)
				}
				if c.RatingWord != iqa.RatingWord(it.MOS[c.Aspect]) || !strings.Contains(good, c.TeacherDescription) {
					t.Errorf("conversation %d: word %q description %q", i, c.RatingWord, c.TeacherDescription)
				}
			}
			// A rerun pays nothing, and still reports what the answers cost.
			sum2, err := Run(context.Background(), cfg, items)
			if err != nil || sum2.Cached != 6 || sum2.Calls != 0 || f.Calls() != 6 || sum2.Conversations != 12 {
				t.Errorf("rerun: %v %+v calls %d", err, sum2, f.Calls())
			}
			if sum2.Cost != 0 || sum2.TotalPromptTokens != 6000 || sum2.TotalCompletionTokens != 900 || math.Abs(sum2.TotalCost-sum.Cost) > 1e-9 {
				t.Errorf("rerun cost %v total %d+%d %v", sum2.Cost, sum2.TotalPromptTokens, sum2.TotalCompletionTokens, sum2.TotalCost)
			}
		})
	}
}

// TestResumeAfterKill cancels a run halfway (the remaining answers are
// slow), damages the cache's last line as a kill during a write would, and
// reruns: every image is answered exactly once over both runs. "Answered"
// is counted where the answer lands, in the runs' summaries: the fake's
// own count also includes a request the first run abandoned, which
// net/http may still deliver after Run returned (it then gets the second
// run's quick answer that nobody reads).
func TestResumeAfterKill(t *testing.T) {
	for _, format := range []Format{FormatOpenAI, FormatGemini} {
		t.Run(string(format), func(t *testing.T) {
			f := newFake(format)
			defer f.Close()
			items := makeItems(t, 12)
			cfg := baseConfig(t, f, format)
			cfg.Concurrency = 2
			f.SetScript(func(n, k int, r *distillfake.Request) distillfake.Reply {
				if n >= 5 {
					return distillfake.Reply{Delay: 20 * time.Second}
				}
				return distillfake.Reply{}
			})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			cfg.Progress = func(done, total int) {
				if done == 5 {
					cancel()
				}
			}
			sum1, err := Run(ctx, cfg, items)
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("first run err = %v", err)
			}
			if sum1.Fetched != 5 {
				t.Errorf("first run fetched %d, want 5", sum1.Fetched)
			}
			if _, err := os.Stat(cfg.OutPath); !os.IsNotExist(err) {
				t.Errorf("interrupted run wrote %s", cfg.OutPath)
			}
			// A kill in the middle of an append leaves half a line.
			fh, _ := os.OpenFile(cfg.CachePath, os.O_APPEND|os.O_WRONLY, 0)
			fh.WriteString(`{"key":"abc","status":"ok","ima`)
			fh.Close()

			f.SetScript(nil)
			cfg.Progress = nil
			sum, err := Run(context.Background(), cfg, items)
			if err != nil {
				t.Fatal(err)
			}
			if sum.Cached != 5 || sum.Fetched != 7 || sum.Calls != 7 || sum.TornCacheLines != 1 || sum.Conversations != 24 {
				t.Errorf("second run %+v", sum)
			}
			good := f.GoodAnswers()
			for _, it := range items {
				if good[shaOf(t, it.Path)] == 0 {
					t.Errorf("%s never answered", it.Name)
				}
			}
			// The cache stays readable after the repair.
			c, err := OpenCache(cfg.CachePath)
			if err != nil || c.Len() != 12 || c.Torn != 1 {
				t.Errorf("cache after resume: %v len %d torn %d", err, c.Len(), c.Torn)
			}
			c.Close()
		})
	}
}

func TestRateLimitAndServerErrors(t *testing.T) {
	f := distillfake.NewOpenAI()
	defer f.Close()
	items := makeItems(t, 4)
	cfg := baseConfig(t, f, FormatOpenAI)
	cfg.MaxAttempts = 4
	var mu sync.Mutex
	var sleeps []time.Duration
	cfg.Sleep = func(ctx context.Context, d time.Duration) error {
		mu.Lock()
		sleeps = append(sleeps, d)
		mu.Unlock()
		return nil
	}
	f.SetScript(func(n, k int, r *distillfake.Request) distillfake.Reply {
		switch k {
		case 0:
			return distillfake.Reply{Status: http.StatusTooManyRequests, RetryAfter: "7"}
		case 1:
			return distillfake.Reply{Status: http.StatusServiceUnavailable}
		}
		return distillfake.Reply{}
	})
	sum, err := Run(context.Background(), cfg, items)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Fetched != 4 || sum.RateLimited != 4 || sum.Retries != 8 || sum.Calls != 12 || f.Calls() != 12 {
		t.Errorf("summary %+v", sum)
	}
	sevens := 0
	for _, d := range sleeps {
		if d == 7*time.Second {
			sevens++
		} else if d > 10*time.Millisecond {
			t.Errorf("backoff %v after a 503 with base 1ms", d)
		}
	}
	if sevens != 4 {
		t.Errorf("Retry-After honoured %d times, want 4 (sleeps %v)", sevens, sleeps)
	}

	// Always unavailable: gives up after MaxAttempts, caches nothing, so a
	// rerun asks again.
	f.SetScript(func(n, k int, r *distillfake.Request) distillfake.Reply {
		return distillfake.Reply{Status: http.StatusInternalServerError}
	})
	cfg.CachePath = filepath.Join(t.TempDir(), "cache2.jsonl")
	before := f.Calls()
	sum, err = Run(context.Background(), cfg, items[:2])
	if err != nil || sum.Errors != 2 || sum.Fetched != 0 || f.Calls()-before != 8 {
		t.Errorf("unavailable: %v %+v calls %d", err, sum, f.Calls()-before)
	}
	f.SetScript(nil)
	sum, err = Run(context.Background(), cfg, items[:2])
	if err != nil || sum.Fetched != 2 {
		t.Errorf("rerun after outage: %v %+v", err, sum)
	}
}

func TestTimeoutRetried(t *testing.T) {
	f := distillfake.NewGemini()
	defer f.Close()
	items := makeItems(t, 2)
	cfg := baseConfig(t, f, FormatGemini)
	cfg.Timeout = 100 * time.Millisecond
	f.SetScript(func(n, k int, r *distillfake.Request) distillfake.Reply {
		if k == 0 {
			return distillfake.Reply{Delay: 5 * time.Second}
		}
		return distillfake.Reply{}
	})
	sum, err := Run(context.Background(), cfg, items)
	if err != nil || sum.Fetched != 2 || sum.Retries != 2 {
		t.Errorf("%v %+v", err, sum)
	}
}

func TestGarbageAnswers(t *testing.T) {
	f := distillfake.NewOpenAI()
	defer f.Close()
	items := makeItems(t, 5)
	cfg := baseConfig(t, f, FormatOpenAI)
	byImage := map[string]int{}
	for i, it := range items {
		byImage[shaOf(t, it.Path)] = i
	}
	f.SetScript(func(n, k int, r *distillfake.Request) distillfake.Reply {
		switch byImage[r.ImageSHA] {
		case 0: // never JSON
			return distillfake.Reply{Text: distillfake.Text("Sure! The image looks nice.")}
		case 1: // digits first, then fine
			if k == 0 {
				return distillfake.Reply{Text: distillfake.Text(`{"quality":"I rate it 4 of 5","correspondence":"fine"}`)}
			}
		case 2: // a body that is not a chat completion, then fine
			if k == 0 {
				return distillfake.Reply{Raw: "<html>oops</html>"}
			}
		case 3: // always missing an aspect
			return distillfake.Reply{Text: distillfake.Text(`{"quality":"clean and sharp"}`)}
		}
		return distillfake.Reply{}
	})
	sum, err := Run(context.Background(), cfg, items)
	if err != nil {
		t.Fatal(err)
	}
	// 0 and 3: 3 attempts each; 1 and 2: 2 each; 4: 1.
	if sum.Fetched != 3 || sum.Failed != 2 || sum.Malformed != 8 || sum.Calls != 11 || sum.Conversations != 6 {
		t.Errorf("summary %+v", sum)
	}
	if len(sum.Problems) != 2 || !strings.Contains(strings.Join(sum.Problems, "\n"), `no "correspondence" key`) {
		t.Errorf("problems %v", sum.Problems)
	}
	// Failed answers are recorded and not paid for again.
	sum, err = Run(context.Background(), cfg, items)
	if err != nil || sum.Calls != 0 || sum.Failed != 2 || sum.Cached != 5 {
		t.Errorf("rerun %v %+v", err, sum)
	}
	c, _ := OpenCache(cfg.CachePath)
	defer c.Close()
	k, _, _ := (&runner{cfg: cfg, teacher: mustTeacher(t)}).keyOf(items[0])
	if e, ok := c.Get(k); !ok || e.Status != StatusFailed || e.Attempts != 3 || !strings.Contains(e.Answer, "Sure!") {
		t.Errorf("failed entry %+v", e)
	}
}

func mustTeacher(t *testing.T) *Teacher {
	tt, err := NewTeacher("")
	if err != nil {
		t.Fatal(err)
	}
	return tt
}

// TestKeyNeverLeaks has the server echo the key in its error messages and
// checks that logs, errors, the summary, the cache and the output are free
// of it.
func TestKeyNeverLeaks(t *testing.T) {
	f := distillfake.NewOpenAI()
	defer f.Close()
	items := makeItems(t, 3)
	cfg := baseConfig(t, f, FormatOpenAI)
	var logs bytes.Buffer
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.MaxAttempts = 2
	f.SetScript(func(n, k int, r *distillfake.Request) distillfake.Reply {
		echo := "bad request from " + r.Header.Get("Authorization")
		switch n % 3 {
		case 0:
			return distillfake.Reply{Status: http.StatusInternalServerError, Message: echo}
		case 1:
			return distillfake.Reply{Status: http.StatusBadRequest, Message: echo}
		}
		return distillfake.Reply{Text: distillfake.Text("not json " + echo)}
	})
	sum, err := Run(context.Background(), cfg, items)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Errors+sum.Failed == 0 {
		t.Fatalf("nothing failed: %+v", sum)
	}
	cache, _ := os.ReadFile(cfg.CachePath)
	out, _ := os.ReadFile(cfg.OutPath)
	all := logs.String() + fmt.Sprint(sum) + strings.Join(sum.Problems, "\n") + string(cache) + string(out)
	if !strings.Contains(all, "Bearer [REDACTED]") {
		t.Errorf("echoed key not seen redacted; logs:\n%s", logs.String())
	}
	if strings.Contains(all, testKey) {
		t.Errorf("key leaked:\n%s", all)
	}

	// A rejected key stops the run with an error that does not hold it.
	f.SetScript(nil)
	f.SetKey("another-key")
	cfg.CachePath = filepath.Join(t.TempDir(), "c.jsonl")
	_, err = Run(context.Background(), cfg, items)
	if !errors.Is(err, ErrAuth) || strings.Contains(err.Error(), testKey) {
		t.Errorf("auth err = %v", err)
	}
	// An unset variable is named, not guessed.
	t.Setenv("M3GATE_TEST_TEACHER_KEY", "")
	_, err = Run(context.Background(), cfg, items)
	if err == nil || !strings.Contains(err.Error(), "M3GATE_TEST_TEACHER_KEY") {
		t.Errorf("unset key err = %v", err)
	}
}

func TestParseAnswer(t *testing.T) {
	aspects := []string{"quality", "correspondence"}
	for _, tc := range []struct {
		in   string
		want string // "" = ok, else error substring
	}{
		{`{"quality":"sharp","correspondence":"matches"}`, ""},
		{"```json\n{\"quality\":\"sharp\",\"correspondence\":\"matches\",\"extra\":1}\n```", ""},
		{`{"quality":"sharp"}`, `no "correspondence" key`},
		{`{"quality":"sharp","correspondence":""}`, "non-empty string"},
		{`{"quality":"sharp","correspondence":3}`, "non-empty string"},
		{`{"quality":"a 10/10 image","correspondence":"ok"}`, "contains digits"},
		{`["quality"]`, "not a JSON object"},
		{`I think it is good`, "not a JSON object"},
	} {
		_, err := ParseAnswer(tc.in, aspects)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q: %v", tc.in, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrMalformed)):
			t.Errorf("%q: err %v, want %q", tc.in, err, tc.want)
		}
	}
}

func TestRetryAfterParsing(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"3", 3 * time.Second, true},
		{"0.5", 500 * time.Millisecond, true},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second, true},
		{"", 0, false},
		{"soon", 0, false},
	} {
		got, ok := retryAfter(tc.in, now)
		if got != tc.want || ok != tc.ok {
			t.Errorf("retryAfter(%q) = %v %v, want %v %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestItemsFromManifest(t *testing.T) {
	m := &dataset.Manifest{Path: "/data/m.jsonl", Records: []dataset.Record{
		{Image: "img/a.jpg", Prompt: "p", MOS: map[string]float64{"quality": 1, "correspondence": 2}},
		{Image: "img/b.jpg", Prompt: "q"},
		{Image: "/abs/c.jpg", Name: "c.jpg", Prompt: "r", MOS: map[string]float64{"correspondence": 2}},
	}}
	items, skipped := ItemsFromManifest(m, []string{"quality"})
	if skipped != 2 || len(items) != 1 || items[0].Path != "/data/img/a.jpg" || items[0].Name != "a.jpg" || len(items[0].MOS) != 1 {
		t.Errorf("items %+v skipped %d", items, skipped)
	}
}

func TestJSONModeFallback(t *testing.T) {
	for _, format := range []Format{FormatOpenAI, FormatGemini} {
		f := newFake(format)
		defer f.Close()
		f.RejectJSONMode(true)
		items := makeItems(t, 4)
		cfg := baseConfig(t, f, format)
		cfg.Concurrency = 1
		sum, err := Run(context.Background(), cfg, items)
		if err != nil || sum.Fetched != 4 || sum.Errors != 0 || f.Calls() != 5 {
			t.Errorf("%s: %v %+v calls %d", format, err, sum, f.Calls())
		}
		for _, r := range f.Requests() {
			if r.JSONMode {
				t.Errorf("%s: JSON mode still asked for", format)
			}
		}
	}
}
