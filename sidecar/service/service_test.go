package service

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/m3gate/m3gate/schemas"
	"github.com/m3gate/m3gate/schemas/iqa"
)

// brightnessEngine is a small real engine for tests: it decodes each image
// and scores its mean brightness onto 0..5. gate, when set, holds every
// Score call until it is closed or the call's ctx ends.
type brightnessEngine struct {
	mu      sync.Mutex
	calls   [][]schemas.ScoreItem
	gate    chan struct{}
	entered chan struct{} // receives once per Score call, when set
	loadErr error
	loaded  bool
}

func (e *brightnessEngine) Load(ctx context.Context, req schemas.LoadRequest, progress func(schemas.LoadProgress)) error {
	for i := int64(1); i <= 3; i++ {
		progress(schemas.LoadProgress{Stage: "weights", DoneBytes: i * 100, TotalBytes: 300})
	}
	if e.loadErr != nil {
		return e.loadErr
	}
	e.loaded = true
	return nil
}

func (e *brightnessEngine) Score(ctx context.Context, items []schemas.ScoreItem, opts schemas.ScoreOptions) ([]schemas.ItemResult, error) {
	e.mu.Lock()
	e.calls = append(e.calls, items)
	gate, entered := e.gate, e.entered
	e.mu.Unlock()
	if entered != nil {
		entered <- struct{}{}
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	out := make([]schemas.ItemResult, len(items))
	for i, it := range items {
		out[i].Index = i
		img, _, err := image.Decode(bytes.NewReader(it.Data))
		if err != nil {
			out[i].Error = fmt.Sprintf("decode image: %v", err)
			continue
		}
		var sum float64
		b := img.Bounds()
		for y := b.Min.Y; y < b.Max.Y; y++ {
			for x := b.Min.X; x < b.Max.X; x++ {
				sum += float64(color.GrayModel.Convert(img.At(x, y)).(color.Gray).Y)
			}
		}
		mos := 5 * sum / float64(b.Dx()*b.Dy()) / 255
		out[i].Aspects = map[string]schemas.AspectResult{}
		for _, a := range opts.Aspects {
			out[i].Aspects[a] = schemas.AspectResult{MOS: mos, Rating: iqa.RatingWord(mos), Description: it.Prompt, Source: schemas.SourceWordProbs}
		}
	}
	return out, nil
}

func (e *brightnessEngine) Unload(ctx context.Context) error { e.loaded = false; return nil }

func (e *brightnessEngine) Info() schemas.ModelInfo { return schemas.ModelInfo{Family: "brightness"} }

func (e *brightnessEngine) callSizes() []int {
	e.mu.Lock()
	defer e.mu.Unlock()
	var n []int
	for _, c := range e.calls {
		n = append(n, len(c))
	}
	return n
}

func grayPNG(t testing.TB, level uint8) []byte {
	t.Helper()
	img := image.NewGray(image.Rect(0, 0, 8, 8))
	for i := range img.Pix {
		img.Pix[i] = level
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func newLoaded(t *testing.T, e *brightnessEngine, maxBatch int) *Service {
	t.Helper()
	s := New(e, Config{MaxBatch: maxBatch})
	t.Cleanup(s.Close)
	if err := s.Load(context.Background(), schemas.LoadRequest{ModelDir: "/m", Family: "brightness"}, nil); err != nil {
		t.Fatal(err)
	}
	return s
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestLoadProgressAndStatus(t *testing.T) {
	e := &brightnessEngine{}
	s := New(e, Config{})
	defer s.Close()
	ctx := context.Background()
	st, _ := s.Status(ctx)
	if st.State != schemas.StateIdle {
		t.Errorf("initial state: got %q, want idle", st.State)
	}
	var steps []schemas.LoadProgress
	if err := s.Load(ctx, schemas.LoadRequest{ModelDir: "/m", Family: "brightness"}, func(p schemas.LoadProgress) { steps = append(steps, p) }); err != nil {
		t.Fatal(err)
	}
	want := []schemas.LoadProgress{
		{Stage: "weights", DoneBytes: 100, TotalBytes: 300}, {Stage: "weights", DoneBytes: 200, TotalBytes: 300},
		{Stage: "weights", DoneBytes: 300, TotalBytes: 300}, {Stage: schemas.StageDone, DoneBytes: 300, TotalBytes: 300},
	}
	if fmt.Sprint(steps) != fmt.Sprint(want) {
		t.Errorf("progress: got %v, want %v", steps, want)
	}
	st, _ = s.Status(ctx)
	if st.State != schemas.StateReady || st.Model.Family != "brightness" || st.Memory.RSSBytes <= 0 {
		t.Errorf("status after load: got %+v", st)
	}
	if err := s.Unload(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Score(ctx, schemas.ScoreRequest{Items: []schemas.ScoreItem{{Data: grayPNG(t, 1)}}, Options: schemas.ScoreOptions{Aspects: []string{"quality"}}}); !errors.Is(err, schemas.ErrNotLoaded) {
		t.Errorf("score after unload: got %v, want ErrNotLoaded", err)
	}
}

func TestLoadFailureIsReported(t *testing.T) {
	e := &brightnessEngine{loadErr: fmt.Errorf("open /m/model.safetensors: %w", os.ErrNotExist)}
	s := New(e, Config{})
	defer s.Close()
	ctx := context.Background()
	err := s.Load(ctx, schemas.LoadRequest{ModelDir: "/m", Family: "brightness"}, nil)
	if err == nil || !strings.Contains(err.Error(), "model.safetensors") {
		t.Fatalf("load: got %v", err)
	}
	st, _ := s.Status(ctx)
	if st.State != schemas.StateError || !strings.Contains(st.Error, "model.safetensors") {
		t.Errorf("status: got %+v", st)
	}
	_, err = s.Score(ctx, schemas.ScoreRequest{Items: []schemas.ScoreItem{{Data: grayPNG(t, 1)}}, Options: schemas.ScoreOptions{Aspects: []string{"quality"}}})
	if !errors.Is(err, schemas.ErrNotLoaded) || !strings.Contains(err.Error(), "model.safetensors") {
		t.Errorf("score: got %v, want ErrNotLoaded naming the load failure", err)
	}
	if err := s.Load(ctx, schemas.LoadRequest{Family: "x"}, nil); !errors.Is(err, schemas.ErrInvalid) {
		t.Errorf("load without model_dir: got %v", err)
	}
}

func TestScoreResultsPathsAndErrors(t *testing.T) {
	e := &brightnessEngine{}
	s := newLoaded(t, e, 8)
	dir := t.TempDir()
	white := filepath.Join(dir, "white.png")
	if err := os.WriteFile(white, grayPNG(t, 255), 0o644); err != nil {
		t.Fatal(err)
	}
	req := schemas.ScoreRequest{
		Prompt: "default prompt",
		Items: []schemas.ScoreItem{
			{Data: grayPNG(t, 0), Prompt: "own prompt"},
			{Path: filepath.Join(dir, "missing.png")},
			{Path: white},
			{Data: []byte("not an image")},
		},
		Options: schemas.ScoreOptions{Aspects: []string{"quality", "authenticity"}},
	}
	rs, err := s.Score(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 4 {
		t.Fatalf("got %d results, want 4", len(rs))
	}
	for i, r := range rs {
		if r.Index != i {
			t.Errorf("result %d has index %d", i, r.Index)
		}
	}
	if got := rs[0].Aspects["quality"]; got.MOS != 0 || got.Description != "own prompt" {
		t.Errorf("black image: got %+v", got)
	}
	if !strings.Contains(rs[1].Error, "missing.png") {
		t.Errorf("missing file: got error %q", rs[1].Error)
	}
	if got := rs[2].Aspects["authenticity"]; got.MOS != 5 || got.Rating != "excellent" || got.Description != "default prompt" {
		t.Errorf("white image by path: got %+v", got)
	}
	if !strings.Contains(rs[3].Error, "decode image") {
		t.Errorf("garbage: got error %q", rs[3].Error)
	}
	if got := e.callSizes(); len(got) != 1 || got[0] != 3 {
		t.Errorf("engine calls: got %v, want one call of 3 images (the missing file never reaches it)", got)
	}
}

func TestBatchesCompatibleRequests(t *testing.T) {
	e := &brightnessEngine{gate: make(chan struct{}), entered: make(chan struct{}, 16)}
	s := newLoaded(t, e, 4)
	ctx := context.Background()
	q := schemas.ScoreOptions{Aspects: []string{"quality"}}
	c := schemas.ScoreOptions{Aspects: []string{"correspondence"}}
	img := grayPNG(t, 128)
	one := func(o schemas.ScoreOptions, n int) schemas.ScoreRequest {
		r := schemas.ScoreRequest{Options: o}
		for range n {
			r.Items = append(r.Items, schemas.ScoreItem{Data: img})
		}
		return r
	}

	var wg sync.WaitGroup
	errs := make(chan error, 16)
	submit := func(r schemas.ScoreRequest) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rs, err := s.Score(ctx, r)
			if err == nil && len(rs) != len(r.Items) {
				err = fmt.Errorf("got %d results for %d images", len(rs), len(r.Items))
			}
			if err == nil && rs[0].Aspects[r.Options.Aspects[0]].Rating != "fair" {
				err = fmt.Errorf("wrong result %+v", rs[0])
			}
			errs <- err
		}()
	}
	submit(one(q, 1)) // runs alone, holds the worker
	<-e.entered
	// Queue: q×2, c×1, q×1, q×2, c×2, q×1. With MaxBatch 4 the worker then
	// merges q×2+q×1 (the next q×2 would make 5; q×1 after it fits: 4),
	// then c×1+c×2, then the q×2 left over.
	for _, r := range []schemas.ScoreRequest{one(q, 2), one(c, 1), one(q, 1), one(q, 2), one(c, 2), one(q, 1)} {
		want := s.QueueDepth() + 1 // before submit: the goroutine may enqueue at once
		submit(r)
		waitFor(t, "enqueue", func() bool { return s.QueueDepth() == want })
	}
	close(e.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if got, want := fmt.Sprint(e.callSizes()), fmt.Sprint([]int{1, 4, 3, 2}); got != want {
		t.Errorf("engine batch sizes: got %s, want %s", got, want)
	}
}

func TestCancelledRequestLeavesQueueAtOnce(t *testing.T) {
	e := &brightnessEngine{gate: make(chan struct{}), entered: make(chan struct{}, 16)}
	s := newLoaded(t, e, 8)
	opts := schemas.ScoreOptions{Aspects: []string{"quality"}}
	img := grayPNG(t, 10)

	firstDone := make(chan error, 1)
	firstCtx, cancelFirst := context.WithCancel(context.Background())
	go func() {
		_, err := s.Score(firstCtx, schemas.ScoreRequest{Items: []schemas.ScoreItem{{Data: img}}, Options: opts})
		firstDone <- err
	}()
	<-e.entered

	ctx, cancel := context.WithCancel(context.Background())
	queuedDone := make(chan error, 1)
	go func() {
		_, err := s.Score(ctx, schemas.ScoreRequest{Items: []schemas.ScoreItem{{Data: img}, {Data: img}}, Options: opts})
		queuedDone <- err
	}()
	waitFor(t, "queued", func() bool { return s.QueueDepth() == 1 })
	cancel()
	select {
	case err := <-queuedDone:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled request: got %v, want context.Canceled", err)
		}
	case <-time.After(time.Second):
		t.Fatal("cancelled request still waiting")
	}
	if d := s.QueueDepth(); d != 0 {
		t.Errorf("queue depth after cancel: got %d, want 0", d)
	}

	// Cancelling the running request's only caller stops the engine call.
	cancelFirst()
	if err := <-firstDone; !errors.Is(err, context.Canceled) {
		t.Errorf("running request: got %v", err)
	}
	// The worker is free again: a new request completes.
	close(e.gate)
	if _, err := s.Score(context.Background(), schemas.ScoreRequest{Items: []schemas.ScoreItem{{Data: img}}, Options: opts}); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(e.callSizes()); got != "[1 1]" {
		t.Errorf("engine calls: got %s, want [1 1] (the cancelled request never ran)", got)
	}
}

func TestCloseFailsQueuedWork(t *testing.T) {
	e := &brightnessEngine{}
	s := New(e, Config{})
	s.Close()
	if err := s.Load(context.Background(), schemas.LoadRequest{ModelDir: "/m", Family: "b"}, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("load after close: got %v", err)
	}
}

// stepEngine returns a brightnessEngine whose Score calls each wait for one
// value on gate (or its ctx) and announce themselves on entered.
func stepEngine() *brightnessEngine {
	return &brightnessEngine{gate: make(chan struct{}), entered: make(chan struct{}, 16)}
}

func TestLargeRequestTakesTurns(t *testing.T) {
	e := stepEngine()
	s := newLoaded(t, e, 4)
	opts := schemas.ScoreOptions{Aspects: []string{"quality"}}
	img := grayPNG(t, 200)
	many := func(n int) schemas.ScoreRequest {
		r := schemas.ScoreRequest{Options: opts}
		for range n {
			r.Items = append(r.Items, schemas.ScoreItem{Data: img})
		}
		return r
	}
	bigDone := make(chan error, 1)
	go func() {
		rs, err := s.Score(context.Background(), many(10))
		if err == nil && len(rs) != 10 {
			err = fmt.Errorf("big: %d results", len(rs))
		}
		for i, r := range rs {
			if err == nil && (r.Index != i || r.Aspects["quality"].Rating != "good") {
				err = fmt.Errorf("big: result %d: %+v", i, r)
			}
		}
		bigDone <- err
	}()
	<-e.entered // the big request's first chunk runs
	smallDone := make(chan error, 1)
	go func() {
		_, err := s.Score(context.Background(), many(1))
		smallDone <- err
	}()
	waitFor(t, "small request queued", func() bool { return s.QueueDepth() == 1 })
	e.gate <- struct{}{} // first chunk done
	<-e.entered          // second call: the small request + 3 of the big one
	e.gate <- struct{}{}
	select {
	case err := <-smallDone:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the small request waits behind the whole large one")
	}
	<-e.entered
	e.gate <- struct{}{}
	if err := <-bigDone; err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprint(e.callSizes()), "[4 4 3]"; got != want {
		t.Errorf("engine batch sizes: got %s, want %s", got, want)
	}
}

func TestStatusReportsBusy(t *testing.T) {
	e := stepEngine()
	s := newLoaded(t, e, 4)
	ctx := context.Background()
	if st, _ := s.Status(ctx); st.Busy != 0 {
		t.Errorf("idle: busy %s", st.Busy)
	}
	done := make(chan error, 1)
	go func() {
		_, err := s.Score(ctx, schemas.ScoreRequest{Items: []schemas.ScoreItem{{Data: grayPNG(t, 1)}}, Options: schemas.ScoreOptions{Aspects: []string{"quality"}}})
		done <- err
	}()
	<-e.entered
	time.Sleep(30 * time.Millisecond)
	if st, _ := s.Status(ctx); st.Busy < 30*time.Millisecond {
		t.Errorf("running: busy %s, want at least 30ms", st.Busy)
	}
	close(e.gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if st, _ := s.Status(ctx); st.Busy != 0 {
		t.Errorf("after the work: busy %s", st.Busy)
	}
}

// checkingEngine refuses prompts longer than 10 bytes.
type checkingEngine struct{ *brightnessEngine }

func (checkingEngine) CheckPrompts(items []schemas.ScoreItem, opts schemas.ScoreOptions) error {
	for i, it := range items {
		if len(it.Prompt) > 10 {
			return fmt.Errorf("%w: image %d: prompt too long", schemas.ErrInvalid, i)
		}
	}
	return nil
}

func TestPromptCheckerRefusesRequest(t *testing.T) {
	e := checkingEngine{&brightnessEngine{}}
	s := New(e, Config{MaxBatch: 2})
	t.Cleanup(s.Close)
	ctx := context.Background()
	if err := s.Load(ctx, schemas.LoadRequest{ModelDir: "/m", Family: "b"}, nil); err != nil {
		t.Fatal(err)
	}
	img := grayPNG(t, 1)
	_, err := s.Score(ctx, schemas.ScoreRequest{Prompt: "short", Items: []schemas.ScoreItem{{Data: img}, {Data: img}, {Data: img, Prompt: "far too long a prompt"}}, Options: schemas.ScoreOptions{Aspects: []string{"quality"}}})
	if !errors.Is(err, schemas.ErrInvalid) || !strings.Contains(err.Error(), "prompt too long") {
		t.Errorf("got %v, want ErrInvalid naming the prompt", err)
	}
	if n := len(e.callSizes()); n != 0 {
		t.Errorf("the engine ran %d times for a refused request", n)
	}
	if _, err := s.Score(ctx, schemas.ScoreRequest{Prompt: "short", Items: []schemas.ScoreItem{{Data: img}}, Options: schemas.ScoreOptions{Aspects: []string{"quality"}}}); err != nil {
		t.Errorf("next request: %v", err)
	}
}
