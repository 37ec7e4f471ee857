package iqa

import (
	"strings"
	"testing"
)

func TestRatingWord(t *testing.T) {
	for _, tc := range []struct {
		mos  float64
		want string
	}{{0, "bad"}, {0.99, "bad"}, {1, "poor"}, {2.5, "fair"}, {3, "good"}, {3.999, "good"}, {4, "excellent"}, {5, "excellent"}} {
		if got := RatingWord(tc.mos); got != tc.want {
			t.Errorf("RatingWord(%v) = %q, want %q", tc.mos, got, tc.want)
		}
	}
}

func TestRatingIndex(t *testing.T) {
	for _, tc := range []struct {
		word string
		want int
	}{{"bad", 0}, {" Good ", 3}, {"EXCELLENT", 4}, {"great", -1}, {"", -1}} {
		if got := RatingIndex(tc.word); got != tc.want {
			t.Errorf("RatingIndex(%q) = %d, want %d", tc.word, got, tc.want)
		}
	}
	for i, w := range RatingWords {
		if RatingWord(float64(i)+0.5) != w {
			t.Errorf("RatingWord(%v) = %q, want %q (word %d)", float64(i)+0.5, RatingWord(float64(i)+0.5), w, i)
		}
	}
}

func TestCheckAspect(t *testing.T) {
	for _, a := range Aspects {
		if err := CheckAspect(a); err != nil || !IsAspect(a) {
			t.Errorf("CheckAspect(%q) = %v", a, err)
		}
	}
	err := CheckAspect("beauty")
	want := `unknown aspect "beauty" (known: quality, correspondence, authenticity)`
	if err == nil || err.Error() != want {
		t.Errorf("CheckAspect(beauty) = %v, want %s", err, want)
	}
	if IsAspect("Quality") || !strings.Contains(CheckAspect("").Error(), `""`) {
		t.Error("aspect names are case-sensitive and an empty name is unknown")
	}
}
