package m3

import (
	"context"
	"regexp"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/torch"
)

// liveTensorNames is the set of gotch tensors not yet freed (gotch names
// them tensor_N or after the op that made them).
func liveTensorNames() map[string]bool {
	_, list, _ := strings.Cut(ts.CheckCMemLeak(), "Tensors not been released: ")
	list, _, _ = strings.Cut(list, "\n")
	out := map[string]bool{}
	for _, n := range regexp.MustCompile(`"[^"]*"`).FindAllString(list, -1) {
		out[n] = true
	}
	return out
}

// liveTensors counts the gotch tensors not yet freed.
func liveTensors() int { return len(liveTensorNames()) }

// TestScoreFreesItsTensors: with the collector paused, so that nothing is
// freed by gotch's finalizers, a Score call (vision, prefill, generation,
// extension, rating, predictor) leaves no tensor behind: every pass frees
// what it made, whatever the options.
func TestScoreFreesItsTensors(t *testing.T) {
	m := loadTiny(t)
	s, err := New(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	aspects := []Aspect{
		{Name: "quality", Prompts: testPrompts, Predictor: tinyPredictor(t, m)},
		{Name: "correspondence", Prompts: corrPrompts},
	}
	items := []Item{{Pixels: randomPixels(m, 1), Prompt: "a cat"}, {Pixels: randomPixels(m, 2), Prompt: "a dog in the rain"}}
	ctx := context.Background()
	for _, opts := range []Options{{MaxNewTokens: 8}, {MaxNewTokens: 8, Uncached: true, Literal: true}, {SkipDescription: true}} {
		// once first: a predictor caches its fused W·lm_head on first use
		if _, err := s.Score(ctx, items, aspects, opts); err != nil {
			t.Fatal(err)
		}
		prev := debug.SetGCPercent(-1)
		before, rawBefore := liveTensorNames(), torch.LiveRaw()
		_, err := s.Score(ctx, items, aspects, opts)
		after, rawAfter := liveTensorNames(), torch.LiveRaw()
		debug.SetGCPercent(prev)
		if err != nil {
			t.Fatal(err)
		}
		if rawAfter != rawBefore {
			t.Errorf("%+v: Score left %d raw libtorch handles unfreed", opts, rawAfter-rawBefore)
		}
		var left []string
		for n := range after {
			if !before[n] {
				left = append(left, n)
			}
		}
		if len(left) > 0 {
			t.Errorf("%+v: Score left %d tensors allocated: %v", opts, len(left), left)
		}
	}
}
