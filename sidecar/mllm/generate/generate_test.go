package generate

import (
	"math/rand"
	"testing"
)

func TestPickTokenTopP(t *testing.T) {
	logits := []float32{0, 5, 4.9, -3}
	rng := rand.New(rand.NewSource(1))
	seen := map[int64]bool{}
	for i := 0; i < 200; i++ {
		seen[pickToken(logits, 1, 0.5, rng)] = true
	}
	if len(seen) != 1 || !seen[1] {
		t.Errorf("top-p 0.5 sampled %v, want only the top token 1", seen)
	}
	seen = map[int64]bool{}
	for i := 0; i < 500; i++ {
		seen[pickToken(logits, 1, 0.9, rng)] = true
	}
	if !seen[1] || !seen[2] || seen[3] {
		t.Errorf("top-p 0.9 sampled %v, want 1 and 2 but never 3", seen)
	}
	if got := pickToken(logits, 0, 1, rng); got != 1 {
		t.Errorf("greedy picked %d", got)
	}
}
