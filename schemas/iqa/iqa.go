// Package iqa is the image-quality-assessment vocabulary that the daemon
// and the model process share: the M3-AGIQA aspects, the five rating words
// and the mapping of a mean opinion score (MOS, 0–5) onto them, and the
// statistics that measure how well predicted scores agree with labelled ones
// (SRCC, PLCC, KRCC, RMSE).
//
// It is pure Go and imports no other m3gate package, so both sides of the
// plugin/sidecar wall may import it.
package iqa

import (
	"fmt"
	"strings"
)

// Aspect names, the keys of every per-aspect map in m3gate.
const (
	Quality        = "quality"
	Correspondence = "correspondence"
	Authenticity   = "authenticity"
)

// Aspects lists the aspects in their canonical (display) order.
var Aspects = []string{Quality, Correspondence, Authenticity}

// IsAspect reports whether name is one of Aspects.
func IsAspect(name string) bool {
	for _, a := range Aspects {
		if a == name {
			return true
		}
	}
	return false
}

// CheckAspect returns nil for a known aspect and otherwise the one error
// every command and reader gives for an unknown one:
// unknown aspect "x" (known: quality, correspondence, authenticity).
func CheckAspect(name string) error {
	if IsAspect(name) {
		return nil
	}
	return fmt.Errorf("unknown aspect %q (known: %s)", name, strings.Join(Aspects, ", "))
}

// MaxMOS is the top of the MOS scale: scores lie in [0, MaxMOS].
const MaxMOS = 5.0

// RatingWords are the five rating words from low to high, as the round-2
// question lists them.
var RatingWords = [5]string{"bad", "poor", "fair", "good", "excellent"}

// RatingWord maps a MOS on 0–5 to its rating word: below 1 bad, below 2
// poor, below 3 fair, below 4 good, else excellent.
func RatingWord(mos float64) string {
	switch {
	case mos < 1:
		return RatingWords[0]
	case mos < 2:
		return RatingWords[1]
	case mos < 3:
		return RatingWords[2]
	case mos < 4:
		return RatingWords[3]
	default:
		return RatingWords[4]
	}
}

// RatingIndex returns the position of word in RatingWords (case and
// surrounding space ignored), or -1.
func RatingIndex(word string) int {
	w := strings.ToLower(strings.TrimSpace(word))
	for i, r := range RatingWords {
		if r == w {
			return i
		}
	}
	return -1
}
