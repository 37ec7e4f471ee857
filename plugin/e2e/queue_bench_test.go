package e2e

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"sync"
	"testing"
	"time"

	"github.com/m3gate/m3gate/plugin/dataset"
	"github.com/m3gate/m3gate/plugin/queue"
	"github.com/m3gate/m3gate/plugin/supervisor"
	"github.com/m3gate/m3gate/schemas"
)

// benchOptions are the score options of the benchmark: quality with its
// default conversation prompts, 2-token descriptions.
func benchOptions(b *testing.B) schemas.ScoreOptions {
	pp, err := dataset.LookupPrompts("quality", "")
	if err != nil {
		b.Fatal(err)
	}
	return schemas.ScoreOptions{Aspects: []string{"quality"}, MaxNewTokens: 2,
		Prompts: map[string]schemas.AspectPrompt{"quality": {Round1: pp.Round1, Round2: pp.Round2}}}
}

// startModel starts a real model process on the tiny model, one libtorch
// thread, batches up to batch, and waits until it is ready.
func startModel(b *testing.B, batch int) *supervisor.Supervisor {
	_, sidecar, model := binaries(b)
	sup, err := supervisor.Start(supervisor.Config{
		Path: sidecar, Args: []string{"--max-batch", fmt.Sprint(batch)},
		Load: schemas.LoadRequest{ModelDir: model, Family: "idefics3", Device: "cpu", DType: "f32", Threads: 1},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		sup.Close(ctx)
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := sup.WaitReady(ctx); err != nil {
		b.Fatal(err)
	}
	return sup
}

func benchPNG(b *testing.B, n int) []byte {
	img := image.NewNRGBA(image.Rect(0, 0, 16, 16))
	for y := range 16 {
		for x := range 16 {
			img.SetNRGBA(x, y, color.NRGBA{uint8(n*37 + x*9), uint8(n*11 + y*13), uint8(n * 3), 255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		b.Fatal(err)
	}
	return buf.Bytes()
}

// BenchmarkQueueTinyModel measures jobs/s on the tiny model (16×16 images,
// 2-token descriptions, batches of 4, one libtorch thread per model
// process): "local" scores through one model process directly, as
// `m3gate serve` does without a queue; "workers=N" publishes every image
// as a job to an embedded JetStream server and N workers, each with its
// own model process, score them.
//
//	M3GATE_SIDECAR=$PWD/bin/m3gate-sidecar go test ./plugin/e2e -run XXX -bench QueueTinyModel -benchtime 200x -count 5
func BenchmarkQueueTinyModel(b *testing.B) {
	const batch = 4
	b.Run("local", func(b *testing.B) {
		sup := startModel(b, batch)
		opts := benchOptions(b)
		imgs := make([][]byte, b.N)
		for i := range imgs {
			imgs[i] = benchPNG(b, i)
		}
		b.ResetTimer()
		start := time.Now()
		for i := 0; i < b.N; i += batch {
			req := schemas.ScoreRequest{Prompt: "a fox", Options: opts}
			for _, im := range imgs[i:min(i+batch, b.N)] {
				req.Items = append(req.Items, schemas.ScoreItem{Data: im})
			}
			if _, err := sup.Score(context.Background(), req); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "jobs/s")
	})
	for _, n := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("workers=%d", n), func(b *testing.B) {
			e, err := queue.StartEmbedded(queue.EmbeddedConfig{Dir: b.TempDir(), Listen: "127.0.0.1:0"})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(e.Shutdown)
			ctx := context.Background()
			opts := benchOptions(b)
			var wg sync.WaitGroup
			wctx, cancel := context.WithCancel(ctx)
			for i := range n {
				c, err := queue.Connect(ctx, queue.ClientConfig{URL: e.URL()})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { c.Close() })
				w, err := queue.NewWorker(ctx, c, queue.WorkerConfig{Name: fmt.Sprint("w", i), Scorer: startModel(b, batch), Defaults: opts, BatchSize: batch})
				if err != nil {
					b.Fatal(err)
				}
				wg.Add(1)
				go func() { defer wg.Done(); w.Run(wctx) }()
			}
			b.Cleanup(func() { cancel(); wg.Wait() })
			pc, err := queue.Connect(ctx, queue.ClientConfig{URL: e.URL()})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { pc.Close() })
			p, err := queue.NewProducer(ctx, pc, queue.ProducerConfig{})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(p.Close)
			imgs := make([][]byte, b.N)
			for i := range imgs {
				imgs[i] = benchPNG(b, i)
			}
			b.ResetTimer()
			start := time.Now()
			subs := make([]*queue.Submitted, b.N)
			for i, im := range imgs {
				if subs[i], err = p.Submit(ctx, queue.Job{Prompt: "a fox"}, im); err != nil {
					b.Fatal(err)
				}
			}
			for _, s := range subs {
				if r, err := p.Wait(ctx, s); err != nil || r.Error != "" {
					b.Fatalf("job %s: %v %s", s.ID, err, r.Error)
				}
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "jobs/s")
		})
	}
}
