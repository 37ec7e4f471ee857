package metrics

import (
	"encoding/json"
	"errors"
	"math"
	"os"
	"testing"

	"github.com/m3gate/m3gate/schemas/iqa"
)

type refCase struct {
	Name       string    `json:"name"`
	X          []float64 `json:"x"`
	Y          []float64 `json:"y"`
	SRCC       float64   `json:"srcc"`
	PLCC       float64   `json:"plcc"`
	KRCC       float64   `json:"krcc"`
	RMSE       float64   `json:"rmse"`
	Logistic   []float64 `json:"logistic"`
	PLCCFitted *float64  `json:"plcc_fitted"`
	SSEFitted  float64   `json:"sse_fitted"`
}

func loadRef(t *testing.T) []refCase {
	t.Helper()
	b, err := os.ReadFile("testdata/ref_metrics.json")
	if err != nil {
		t.Fatal(err)
	}
	var ref struct{ Cases []refCase }
	if err := json.Unmarshal(b, &ref); err != nil {
		t.Fatal(err)
	}
	if len(ref.Cases) == 0 {
		t.Fatal("no reference cases")
	}
	return ref.Cases
}

// TestAgainstScipy compares with scipy.stats values computed by
// testdata/ref_metrics.py on fixed vectors with ties.
func TestAgainstScipy(t *testing.T) {
	for _, c := range loadRef(t) {
		t.Run(c.Name, func(t *testing.T) {
			for _, m := range []struct {
				name string
				fn   func(x, y []float64) (float64, error)
				want float64
			}{{"srcc", iqa.SRCC, c.SRCC}, {"plcc", iqa.PLCC, c.PLCC}, {"krcc", iqa.KRCC, c.KRCC}, {"rmse", iqa.RMSE, c.RMSE}} {
				got, err := m.fn(c.X, c.Y)
				if err != nil {
					t.Fatalf("%s: %v", m.name, err)
				}
				if math.Abs(got-m.want) > 1e-9 {
					t.Errorf("%s = %.15g, scipy %.15g", m.name, got, m.want)
				}
			}
			if c.PLCCFitted == nil {
				return
			}
			got, b, err := FittedPLCC(c.X, c.Y)
			if err != nil {
				t.Fatal(err)
			}
			if math.Abs(got-*c.PLCCFitted) > 1e-4 {
				t.Errorf("fitted plcc = %.10g, scipy %.10g (params %v vs %v)", got, *c.PLCCFitted, b, c.Logistic)
			}
			// Where the optimum is well defined the parameters agree too
			// (sigmoid_pred's optimum lies at infinity along a valley).
			if c.Name == "other_scale" {
				for i := range b {
					if math.Abs(b[i]-c.Logistic[i]) > 1e-5*math.Max(1, math.Abs(c.Logistic[i])) {
						t.Errorf("params %v, scipy %v", b, c.Logistic)
						break
					}
				}
			}
			// Our least-squares optimum is as good as scipy's (within 1e-5
			// relative: sigmoid_pred's optimum lies at infinity, and the
			// fit stops once progress along the valley stalls).
			if sse := sseOf(b, c.X, c.Y); sse > c.SSEFitted*(1+1e-5) {
				t.Errorf("sse %.10g > scipy %.10g", sse, c.SSEFitted)
			}
		})
	}
}

func TestLogisticRecoversParameters(t *testing.T) {
	want := Logistic{4, 1.5, 0.3, 0.2, 2}
	var x, y []float64
	for i := 0; i < 60; i++ {
		v := -3 + 6*float64(i)/59
		x = append(x, v)
		y = append(y, want.Apply(v))
	}
	got, err := FitLogistic(x, y)
	if err != nil {
		t.Fatal(err)
	}
	for i := range want {
		if math.Abs(got[i]-want[i]) > 1e-6 {
			t.Fatalf("FitLogistic = %v, want %v", got, want)
		}
	}
}

func TestBadInput(t *testing.T) {
	for _, tc := range []struct {
		name string
		x, y []float64
	}{
		{"length", []float64{1, 2, 3}, []float64{1, 2}},
		{"short", []float64{1}, []float64{1}},
		{"nan", []float64{1, math.NaN(), 3}, []float64{1, 2, 3}},
	} {
		for _, fn := range []func(x, y []float64) (float64, error){iqa.SRCC, iqa.PLCC, iqa.KRCC, iqa.RMSE} {
			if _, err := fn(tc.x, tc.y); err == nil {
				t.Errorf("%s: no error", tc.name)
			}
		}
	}
	if _, err := iqa.SRCC([]float64{1, 1, 1}, []float64{1, 2, 3}); !errors.Is(err, iqa.ErrConstant) {
		t.Errorf("constant srcc err = %v", err)
	}
	if _, err := iqa.KRCC([]float64{1, 1, 1}, []float64{1, 2, 3}); !errors.Is(err, iqa.ErrConstant) {
		t.Errorf("constant krcc err = %v", err)
	}
	if _, err := FitLogistic([]float64{1, 2, 3}, []float64{1, 2, 3}); err == nil {
		t.Error("fit on 3 points: no error")
	}
}

func BenchmarkFitLogistic(b *testing.B) {
	c := make([]float64, 3000)
	d := make([]float64, 3000)
	for i := range c {
		c[i] = float64(i%500) / 100
		d[i] = 5*sigm(-(c[i]-2.5)) + 0.1*math.Sin(float64(i))
	}
	for b.Loop() {
		FitLogistic(c, d)
	}
}
