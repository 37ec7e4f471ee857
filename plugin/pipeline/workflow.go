package pipeline

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"math/rand/v2"
	"sort"
	"strings"

	"github.com/m3gate/m3gate/plugin/comfyui"
)

// SeedInput is one sampler seed input of a workflow.
type SeedInput struct {
	// Node is the id of the node holding the literal seed (the sampler, or
	// the primitive node a sampler's seed is linked to).
	Node string
	// Input is the input name ("seed", "noise_seed", or the primitive's
	// value input).
	Input string
	// Value is the seed the workflow has now.
	Value uint64
}

// seedInputNames are the inputs that hold sampler seeds.
var seedInputNames = []string{"seed", "noise_seed"}

// primitiveValueNames are the inputs of primitive nodes ("Seed",
// "PrimitiveInt", …) that a linked seed can come from.
var primitiveValueNames = []string{"seed", "noise_seed", "value", "int", "number"}

// SeedInputs finds the seed inputs to reroll: every "seed"/"noise_seed"
// input of the workflow (following a link to a primitive node), or, when
// nodes is not empty, those of the named nodes only (each must have one).
func SeedInputs(w comfyui.Workflow, nodes []string) ([]SeedInput, error) {
	ids := nodes
	if len(ids) == 0 {
		ids = w.IDs()
	}
	seen := map[string]bool{}
	var out []SeedInput
	for _, id := range ids {
		n, ok := w[id]
		if !ok {
			return nil, fmt.Errorf("seed node %s: no such node in the workflow", id)
		}
		found := false
		for _, name := range seedInputNames {
			v, ok := n.Inputs[name]
			if !ok {
				continue
			}
			si, err := resolveSeed(w, id, name, v)
			if err != nil {
				return nil, err
			}
			found = true
			key := si.Node + "\x00" + si.Input
			if !seen[key] {
				seen[key] = true
				out = append(out, si)
			}
		}
		if !found && len(nodes) > 0 {
			return nil, fmt.Errorf("seed node %s (%s) has no seed or noise_seed input", id, n.ClassType)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("workflow has no sampler seed input (seed/noise_seed); name the seed nodes explicitly")
	}
	return out, nil
}

func resolveSeed(w comfyui.Workflow, id, name string, v any) (SeedInput, error) {
	if u, ok := comfyui.AsUint64(v); ok {
		return SeedInput{Node: id, Input: name, Value: u}, nil
	}
	if l, ok := comfyui.AsLink(v); ok {
		src, ok := w[l.Node]
		if !ok {
			return SeedInput{}, fmt.Errorf("node %s input %s links to missing node %s", id, name, l.Node)
		}
		for _, pn := range primitiveValueNames {
			if pv, ok := src.Inputs[pn]; ok {
				if u, ok := comfyui.AsUint64(pv); ok {
					return SeedInput{Node: l.Node, Input: pn, Value: u}, nil
				}
			}
		}
		return SeedInput{}, fmt.Errorf("node %s input %s comes from node %s (%s), which has no literal seed value", id, name, l.Node, src.ClassType)
	}
	return SeedInput{}, fmt.Errorf("node %s input %s is not an unsigned integer: %v", id, name, v)
}

// ApplySeeds returns a copy of w with the seed inputs set to seeds
// (parallel to inputs).
func ApplySeeds(w comfyui.Workflow, inputs []SeedInput, seeds []uint64) comfyui.Workflow {
	out := w.Clone()
	for i, in := range inputs {
		out[in.Node].Inputs[in.Input] = comfyui.Uint64Input(seeds[i])
	}
	return out
}

// textInputNames are the string inputs of text encoders, in order of
// preference.
var textInputNames = []string{"text", "text_g", "text_l", "prompt", "string", "value"}

// PromptText extracts the generation prompt for scoring: the text of the
// encoder feeding a sampler's "positive" input (following links through
// conditioning nodes and string primitives). Several samplers with
// different prompts yield the first one in node order. "" when none is
// found.
func PromptText(w comfyui.Workflow) string {
	for _, id := range w.IDs() {
		n := w[id]
		v, ok := n.Inputs["positive"]
		if !ok {
			continue
		}
		l, ok := comfyui.AsLink(v)
		if !ok {
			continue
		}
		if t := textFrom(w, l.Node, map[string]bool{}); t != "" {
			return t
		}
	}
	return ""
}

func textFrom(w comfyui.Workflow, id string, seen map[string]bool) string {
	if seen[id] {
		return ""
	}
	seen[id] = true
	n, ok := w[id]
	if !ok {
		return ""
	}
	for _, name := range textInputNames {
		v, ok := n.Inputs[name]
		if !ok {
			continue
		}
		if s, ok := v.(string); ok && strings.TrimSpace(s) != "" {
			return s
		}
		if l, ok := comfyui.AsLink(v); ok {
			if t := textFrom(w, l.Node, seen); t != "" {
				return t
			}
		}
	}
	// Conditioning combiners and the like: follow their links in name order.
	keys := make([]string, 0, len(n.Inputs))
	for k := range n.Inputs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if l, ok := comfyui.AsLink(n.Inputs[k]); ok {
			if t := textFrom(w, l.Node, seen); t != "" {
				return t
			}
		}
	}
	return ""
}

// SeedRange is the inclusive range a seed input accepts.
type SeedRange struct{ Min, Max uint64 }

// FullSeedRange is the range of KSampler's seed (0 … 2^64−1).
var FullSeedRange = SeedRange{0, math.MaxUint64}

// conservativeSeedRange is used for unknown classes when the server's
// /object_info cannot be read.
var conservativeSeedRange = SeedRange{0, math.MaxUint32}

// SeedRangeFromObjectInfo reads the min/max of an INT input from a class's
// /object_info entry ({"input":{"required":{name:["INT",{min,max}]}}}).
// Negative minimums clamp to 0; a missing max means 2^64−1.
func SeedRangeFromObjectInfo(info json.RawMessage, input string) (SeedRange, bool) {
	var def struct {
		Input map[string]map[string][]json.RawMessage `json:"input"`
	}
	d := json.NewDecoder(bytes.NewReader(info))
	d.UseNumber()
	if d.Decode(&def) != nil {
		return SeedRange{}, false
	}
	for _, group := range []string{"required", "optional"} {
		spec, ok := def.Input[group][input]
		if !ok || len(spec) == 0 {
			continue
		}
		var typ string
		if json.Unmarshal(spec[0], &typ) != nil || typ != "INT" {
			return SeedRange{}, false
		}
		r := FullSeedRange
		if len(spec) > 1 {
			var opts map[string]any
			dd := json.NewDecoder(bytes.NewReader(spec[1]))
			dd.UseNumber()
			if dd.Decode(&opts) == nil {
				if m, ok := opts["min"].(json.Number); ok {
					if bf, ok := new(big.Float).SetString(m.String()); ok && bf.Sign() > 0 {
						r.Min, _ = bf.Uint64()
					}
				}
				if m, ok := opts["max"].(json.Number); ok {
					if bf, ok := new(big.Float).SetString(m.String()); ok {
						if bf.Sign() < 0 {
							return SeedRange{}, false
						}
						r.Max, _ = bf.Uint64() // saturates at 2^64−1
					}
				}
			}
		}
		if r.Max < r.Min {
			return SeedRange{}, false
		}
		return r, true
	}
	return SeedRange{}, false
}

// draw returns a seed in r from rng.
func (r SeedRange) draw(rng *rand.Rand) uint64 {
	if r.Min == 0 && r.Max == math.MaxUint64 {
		return rng.Uint64()
	}
	return r.Min + rng.Uint64N(r.Max-r.Min+1)
}
