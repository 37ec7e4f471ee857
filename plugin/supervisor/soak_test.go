package supervisor

import (
	"bytes"
	"context"
	"image"
	"image/png"
	"os"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/m3gate/m3gate/internal/testenv"
	"github.com/m3gate/m3gate/schemas"
)

// BenchmarkSidecarSoakRSS sends b.N identical one-image requests to the real
// sidecar on the tiny model and samples the sidecar's resident set size
// (VmRSS, as Status reports it) along the way. It reports the RSS after a
// warm-up (the first 10% of the requests, at least 50), at the end, and the
// growth per request over the rest as the least-squares slope of the
// samples; a leak shows as a steady positive slope. Run the 5,000-request
// soak with
//
//	go test ./plugin/supervisor -run '^$' -bench SidecarSoakRSS -benchtime 5000x
//
// M3GATE_SOAK_ENV adds one KEY=value to the sidecar's environment (to
// compare allocator settings, e.g. MALLOC_ARENA_MAX=2); M3GATE_SOAK_LOG
// names a file for the supervisor's and the sidecar's log.
func BenchmarkSidecarSoakRSS(b *testing.B) {
	bin := realSidecar(b)
	modelDir := testenv.TinyModel(b, bin)
	cfg := Config{Path: bin, Load: schemas.LoadRequest{ModelDir: modelDir, Family: "idefics3", Device: "cpu", DType: "f32", Threads: 1}}
	if e := os.Getenv("M3GATE_SOAK_ENV"); e != "" {
		cfg.Env = append(cfg.Env, e)
	}
	if f := os.Getenv("M3GATE_SOAK_LOG"); f != "" { // the sidecar's stderr (e.g. GODEBUG=gctrace=1)
		w, err := os.Create(f)
		if err != nil {
			b.Fatal(err)
		}
		defer w.Close()
		cfg.Logger = hclog.New(&hclog.LoggerOptions{Output: w, Level: hclog.Debug})
	}
	sup, err := Start(cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer sup.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Hour)
	defer cancel()
	if err := sup.WaitReady(ctx); err != nil {
		b.Fatal(err)
	}
	img := image.NewNRGBA(image.Rect(0, 0, 64, 64))
	for i := range img.Pix {
		img.Pix[i] = byte(i * 7)
	}
	var buf bytes.Buffer
	png.Encode(&buf, img)
	req := schemas.ScoreRequest{
		Prompt:  "a red apple on a table",
		Items:   []schemas.ScoreItem{{Data: buf.Bytes()}},
		Options: schemas.ScoreOptions{Aspects: []string{"quality"}, MaxNewTokens: 8, Prompts: map[string]schemas.AspectPrompt{"quality": {Round1: "Describe {prompt}.", Round2: "Rate it."}}},
	}
	rss := func() float64 {
		st, err := sup.Status(ctx)
		if err != nil {
			b.Fatal(err)
		}
		return float64(st.Memory.RSSBytes)
	}
	warm := max(b.N/10, 50)
	every := max(b.N/50, 1)
	var xs, ys []float64
	var lat []time.Duration
	start := 0.0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		rs, err := sup.Score(ctx, req)
		if err != nil {
			b.Fatalf("request %d: %v", i, err)
		}
		lat = append(lat, time.Since(t0))
		if rs[0].Error != "" {
			b.Fatalf("request %d: %s", i, rs[0].Error)
		}
		if i+1 == warm {
			start = rss()
		}
		if i+1 >= warm && (i+1-warm)%every == 0 {
			xs, ys = append(xs, float64(i+1)), append(ys, rss())
		}
	}
	b.StopTimer()
	end := rss()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1e3, "median-ms/req")
	if len(xs) < 3 {
		b.Logf("too few requests (%d) for a slope; use -benchtime 5000x", b.N)
		return
	}
	b.ReportMetric(start/(1<<20), "rss-warm-MB")
	b.ReportMetric(end/(1<<20), "rss-end-MB")
	b.ReportMetric(slope(xs, ys)/1024, "growth-KB/req")
	for i := range xs {
		b.Logf("after %6.0f requests: RSS %s MB", xs[i], strconv.FormatFloat(ys[i]/(1<<20), 'f', 1, 64))
	}
}

// slope is the least-squares slope of ys over xs.
func slope(xs, ys []float64) float64 {
	var mx, my float64
	for i := range xs {
		mx += xs[i]
		my += ys[i]
	}
	n := float64(len(xs))
	mx, my = mx/n, my/n
	var num, den float64
	for i := range xs {
		num += (xs[i] - mx) * (ys[i] - my)
		den += (xs[i] - mx) * (xs[i] - mx)
	}
	if den == 0 {
		return 0
	}
	return num / den
}
