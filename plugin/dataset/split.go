package dataset

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
)

// AssignSplits sets Split on the records that have none: a seeded random
// fraction testFraction of them becomes "test", the rest "train". With
// byPrompt, all images of one prompt land in the same split, so no prompt
// is seen in training and test. Records that already have a split keep it.
// It returns the number of records put in each split.
func AssignSplits(recs []Record, testFraction float64, seed uint64, byPrompt bool) (train, test int, err error) {
	if !(testFraction >= 0 && testFraction <= 1) {
		return 0, 0, fmt.Errorf("assign splits: test fraction %v outside [0, 1]", testFraction)
	}
	groups := map[string][]int{}
	for i, r := range recs {
		if r.Split != "" {
			continue
		}
		key := r.Image
		if byPrompt {
			key = r.Prompt
		}
		groups[key] = append(groups[key], i)
	}
	keys := make([]string, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	rng := rand.New(rand.NewPCG(seed, 0x73706c6974)) // "split"
	rng.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	nTest := int(math.Round(testFraction * float64(len(keys))))
	for gi, k := range keys {
		split := "train"
		if gi < nTest {
			split = "test"
		}
		for _, i := range groups[k] {
			recs[i].Split = split
			if split == "test" {
				test++
			} else {
				train++
			}
		}
	}
	return train, test, nil
}
