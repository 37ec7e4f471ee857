package mllm

import (
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

var (
	tinyOnce sync.Once
	tinyDir  string
	tinyErr  error
	testRoot string
)

func TestMain(m *testing.M) {
	var err error
	testRoot, err = os.MkdirTemp("", "mllm-test-")
	if err != nil {
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(testRoot)
	os.Exit(code)
}

const tinySeed = 7

// tinyModelDir writes the seeded tiny model once per test binary.
func tinyModelDir(t testing.TB) string {
	t.Helper()
	tinyOnce.Do(func() {
		tinyDir = filepath.Join(testRoot, "tiny")
		tinyErr = WriteTiny(tinyDir, "tiny", tinySeed)
	})
	if tinyErr != nil {
		t.Fatal(tinyErr)
	}
	return tinyDir
}

func loadTiny(t testing.TB, kind gotch.DType) *Model {
	t.Helper()
	m, err := Load(tinyModelDir(t), LoadOptions{DType: kind})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// testPixels returns a deterministic image for the tiny model.
func testPixels(seed int64, size int) Pixels {
	rng := rand.New(rand.NewSource(seed))
	v := make([]float32, 3*size*size)
	for i := range v {
		v[i] = float32(rng.Float64()*2 - 1)
	}
	return Pixels{Tiles: [][]float32{v}, Size: size}
}

func floats(t *ts.Tensor) []float32 {
	c := t.MustTotype(gotch.Float, false).MustContiguous(true)
	out := make([]float32, c.Numel())
	c.MustCopyData(out, c.Numel())
	return out
}

func maxAbsDiff(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	d := 0.0
	for i := range a {
		d = math.Max(d, math.Abs(float64(a[i]-b[i])))
	}
	return d
}

func newTestRand() *rand.Rand { return rand.New(rand.NewSource(1)) }

func tensorOf(v []float32, shape ...int64) *ts.Tensor {
	return ts.MustOfSlice(v).MustView(shape, true)
}

func randTensor(seed int64, shape ...int64) *ts.Tensor {
	rng := newTestRand()
	rng.Seed(seed)
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(rng.NormFloat64())
	}
	return tensorOf(v, shape...)
}
