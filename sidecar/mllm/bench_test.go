package mllm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/internal/testenv"
	"github.com/m3gate/m3gate/sidecar/torch"
)

// The 256M benchmarks write a SmolVLM-256M-shaped model (random f32
// weights, about 1 GB) once per test binary; they run only when -bench
// selects them:
//
//	go test ./sidecar/mllm -run '^$' -bench 256M -benchtime 5x

var (
	bigOnce  sync.Once
	bigModel *Model
	bigErr   error
)

// load256M loads the 256M-shaped model from $MLLM_BENCH_256M_DIR when it
// holds one (a directory written by WriteTiny(dir, "256m", 1)), otherwise
// writes it to a temporary directory in a child process so that the
// writer's memory does not count in this process's peak RSS.
func load256M(b *testing.B) *Model {
	b.Helper()
	bigOnce.Do(func() {
		dir := os.Getenv("MLLM_BENCH_256M_DIR")
		if _, err := os.Stat(filepath.Join(dir, "model.safetensors")); dir == "" || err != nil {
			dir = filepath.Join(testRoot, "256m")
			cmd := exec.Command(os.Args[0], "-test.run=^TestWrite256MHelper$")
			cmd.Env = append(os.Environ(), "MLLM_WRITE_256M="+dir)
			if out, err := cmd.CombinedOutput(); err != nil {
				bigErr = fmt.Errorf("write 256m model: %v\n%s", err, out)
				return
			}
			defer os.RemoveAll(dir)
		}
		// MLLM_BENCH_DTYPE=mixed: bf16 products (model.dtype: mixed).
		bigModel, bigErr = Load(dir, LoadOptions{BF16Products: os.Getenv("MLLM_BENCH_DTYPE") == "mixed"})
		// The sidecar's thread setting (one intra-op thread per core;
		// libtorch's default here is one thread).
		if bigErr == nil {
			bigErr = torch.SetThreads(0)
		}
		// and its memory settings
		if bigErr == nil {
			bigErr = torch.SetMemory()
		}
	})
	if bigErr != nil {
		b.Fatal(bigErr)
	}
	return bigModel
}

// TestWrite256MHelper is the child process of load256M; it does nothing
// unless MLLM_WRITE_256M names a directory.
func TestWrite256MHelper(t *testing.T) {
	dir := os.Getenv("MLLM_WRITE_256M")
	if dir == "" {
		t.Skip("helper process for the 256M benchmarks")
	}
	if err := WriteTiny(dir, "256m", 1); err != nil {
		t.Fatal(err)
	}
}

// peakRSSMB is VmHWM of this process in MB.
func peakRSSMB() float64 {
	kb, _ := testenv.ProcStatusKB(0, "VmHWM")
	return float64(kb) / 1024
}

// benchPrompt is a 64-image-token + 150-text-token prompt.
func benchPrompt(b *testing.B, m *Model, f *ImageFeatures) Sequence {
	b.Helper()
	seq, err := m.EncodeChat([]Message{UserMessage("Please closely examine this AI-generated image", true)}, true, []*ImageFeatures{f})
	if err != nil {
		b.Fatal(err)
	}
	words, err := m.Tokenizer.Encode(strings.Repeat(" the image shows a cat with good detail and fair colors.", 40))
	if err != nil {
		b.Fatal(err)
	}
	n := 150 - (len(seq.Tokens) - f.NumTokens())
	seq.Tokens = append(seq.Tokens[:len(seq.Tokens)-3:len(seq.Tokens)-3], append(words[:n], seq.Tokens[len(seq.Tokens)-3:]...)...)
	return seq
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s[len(s)/2]
}

func BenchmarkVisionEncode256M(b *testing.B) {
	m := load256M(b)
	px := testPixels(1, m.Config.Vision.ImageSize)
	// One untimed pass first (as the reference does): the first pass
	// after loading grows the C heap and builds oneDNN's kernels.
	if _, err := m.EncodeImage(px); err != nil {
		b.Fatal(err)
	}
	var ds []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, err := m.EncodeImage(px); err != nil {
			b.Fatal(err)
		}
		ds = append(ds, time.Since(t0))
	}
	b.ReportMetric(median(ds).Seconds(), "median-s")
	b.ReportMetric(peakRSSMB(), "peak-RSS-MB")
}

func BenchmarkPrefill256M(b *testing.B) {
	m := load256M(b)
	f, err := m.EncodeImage(testPixels(1, m.Config.Vision.ImageSize))
	if err != nil {
		b.Fatal(err)
	}
	benchPrefill(b, m, []Sequence{benchPrompt(b, m, f)})
	b.ReportMetric(peakRSSMB(), "peak-RSS-MB")
}

// BenchmarkPrefillRagged3256M prefills a batch of three text sequences of
// 74, 50 and 91 tokens: the lengths of the three aspects' round-1
// questions after their shared start, a batch whose padding is a fifth
// of its slots.
func BenchmarkPrefillRagged3256M(b *testing.B) {
	m := load256M(b)
	words, err := m.Tokenizer.Encode(strings.Repeat(" the image shows a cat with good detail and fair colors.", 40))
	if err != nil {
		b.Fatal(err)
	}
	var seqs []Sequence
	for _, n := range []int{74, 50, 91} {
		seqs = append(seqs, Sequence{Tokens: words[:n]})
	}
	benchPrefill(b, m, seqs)
}

// benchPrefill times prefills of seqs after one untimed pass (as above)
// and reports their median and the batch's tokens.
func benchPrefill(b *testing.B, m *Model, seqs []Sequence) {
	if _, _, err := m.Prefill(seqs, ForwardOptions{}); err != nil {
		b.Fatal(err)
	}
	var ds []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, _, err := m.Prefill(seqs, ForwardOptions{}); err != nil {
			b.Fatal(err)
		}
		ds = append(ds, time.Since(t0))
	}
	tokens := 0
	for _, s := range seqs {
		tokens += len(s.Tokens)
	}
	b.ReportMetric(float64(tokens), "tokens")
	b.ReportMetric(median(ds).Seconds(), "median-s")
}

func benchDecode(b *testing.B, batch int) {
	m := load256M(b)
	f, err := m.EncodeImage(testPixels(1, m.Config.Vision.ImageSize))
	if err != nil {
		b.Fatal(err)
	}
	seq := benchPrompt(b, m, f)
	seqs := make([]Sequence, batch)
	for i := range seqs {
		seqs[i] = seq
	}
	out, cache, err := m.Prefill(seqs, ForwardOptions{})
	if err != nil {
		b.Fatal(err)
	}
	const steps = 32
	var ds []time.Duration
	made := ts.TensorCount // gotch's count of tensor handles made
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		g, err := m.Generate(context.Background(), cache, out.Logits, GenerateOptions{MaxTokens: steps})
		if err != nil {
			b.Fatal(err)
		}
		if len(g.Tokens[0]) != steps {
			b.Fatalf("generated %d tokens", len(g.Tokens[0]))
		}
		ds = append(ds, time.Since(t0))
	}
	per := median(ds) / (steps - 1) // steps-1 forward passes
	b.ReportMetric(per.Seconds()*1000, "median-ms/step")
	// Each handle costs ~15 µs of Go-side bookkeeping in gotch (a 100 KB
	// allocation among it), whatever the op: the count is the overhead.
	b.ReportMetric(float64(ts.TensorCount-made)/float64(b.N*(steps-1)), "handles/step")
	b.ReportMetric(float64(batch)/per.Seconds(), "tokens/s")
	b.ReportMetric(peakRSSMB(), "peak-RSS-MB")
}

func BenchmarkDecode256M(b *testing.B)       { benchDecode(b, 1) }
func BenchmarkDecodeBatch3256M(b *testing.B) { benchDecode(b, 3) }
