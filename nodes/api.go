package nodes

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"

	"github.com/m3gate/m3gate/schemas/api"
)

// The node pack speaks the daemon's HTTP API defined in package
// schemas/api; these are the pack's own names.
const (
	// PNGInfoKey is the PNG text chunk M3 Save Image writes (iTXt, an
	// ImageMetadata) and the extra_pnginfo key M3 Score fills for a plain
	// SaveImage; PNGInfoRerollKey the extra_pnginfo key M3 Reroll fills.
	PNGInfoKey       = "m3gate"
	PNGInfoRerollKey = "m3gate_reroll"
)

// RerollPlan is what the daemon queues for a RerollRequest: POST /prompt
// {"prompt": Prompt, "client_id": req.ClientID,
// "extra_data": {"extra_pnginfo": ExtraPNGInfo}}.
type RerollPlan struct {
	Prompt       json.RawMessage
	ExtraPNGInfo json.RawMessage // always an object, so SaveImage has one to write
	Attempt      int
	Seeds        map[string]uint64
}

// SeedFunc returns the new seed of input name of node id for an attempt.
type SeedFunc func(nodeID, input string, old uint64, attempt int) uint64

// DeriveSeed is the default SeedFunc: a SplitMix64 hash of the old seed, the
// attempt and the node and input, so a reroll is reproducible, and never
// equal to the old seed.
func DeriveSeed(nodeID, input string, old uint64, attempt int) uint64 {
	x := old ^ uint64(attempt)*0x9e3779b97f4a7c15
	for _, c := range []byte(nodeID + "." + input) {
		x = (x ^ uint64(c)) * 0x100000001b3
	}
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	x ^= x >> 31
	if x == old {
		x++
	}
	return x
}

// PlanReroll checks req and builds the prompt to queue next: the seeds of
// the sampler nodes replaced (a seed input linked to another node, such as
// a primitive, changes that node's seed or value input instead), the M3
// Reroll node's attempt input set to Attempt+1, and m3gate's keys dropped
// from extra_pnginfo. Seeds keep their exact 64-bit values; everything else
// in the prompt is copied unchanged. newSeed nil means DeriveSeed.
func PlanReroll(req api.RerollRequest, newSeed SeedFunc) (RerollPlan, error) {
	if newSeed == nil {
		newSeed = DeriveSeed
	}
	if req.Attempt < 1 || req.MaxTries < 1 {
		return RerollPlan{}, fmt.Errorf("reroll: attempt %d and max_tries %d must be at least 1", req.Attempt, req.MaxTries)
	}
	if req.Attempt >= req.MaxTries {
		return RerollPlan{}, fmt.Errorf("reroll: attempt %d already reached max_tries %d", req.Attempt, req.MaxTries)
	}
	prompt := map[string]map[string]json.RawMessage{}
	if err := decodeExact(req.Prompt, &prompt); err != nil || len(prompt) == 0 {
		return RerollPlan{}, fmt.Errorf("reroll: prompt is not an API-format prompt object: %v", err)
	}
	inputsOf := func(id string) (map[string]json.RawMessage, error) {
		in := map[string]json.RawMessage{}
		if raw, ok := prompt[id]["inputs"]; ok {
			if err := decodeExact(raw, &in); err != nil {
				return nil, fmt.Errorf("reroll: inputs of node %s: %w", id, err)
			}
		}
		return in, nil
	}
	setInput := func(id string, in map[string]json.RawMessage, name string, v json.RawMessage) error {
		in[name] = v
		raw, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("reroll: node %s: %w", id, err)
		}
		prompt[id]["inputs"] = raw
		return nil
	}

	if _, ok := prompt[req.NodeID]; !ok {
		return RerollPlan{}, fmt.Errorf("reroll: node_id %q is not in the prompt", req.NodeID)
	}
	targets := req.SeedNodes
	if len(targets) == 0 {
		for id := range prompt {
			targets = append(targets, id)
		}
		sort.Strings(targets)
	}
	next := req.Attempt + 1
	seeds := map[string]uint64{}
	for _, id := range targets {
		if _, ok := prompt[id]; !ok {
			return RerollPlan{}, fmt.Errorf("reroll: seed node %s is not in the prompt", id)
		}
		in, err := inputsOf(id)
		if err != nil {
			return RerollPlan{}, err
		}
		found := false
		for _, name := range SeedInputNames {
			raw, ok := in[name]
			if !ok {
				continue
			}
			found = true
			var link []json.RawMessage
			if json.Unmarshal(raw, &link) == nil {
				// A linked seed: change it where it is set, one node up.
				var src string
				if len(link) != 2 || json.Unmarshal(link[0], &src) != nil {
					return RerollPlan{}, fmt.Errorf("reroll: node %s input %s is neither a seed nor a link", id, name)
				}
				if err := rerollLiteral(prompt, src, inputsOf, setInput, newSeed, next, seeds, linkedSeedNames); err != nil {
					return RerollPlan{}, fmt.Errorf("reroll: node %s input %s links node %s: %w", id, name, src, err)
				}
				continue
			}
			if err := rerollLiteral(prompt, id, inputsOf, setInput, newSeed, next, seeds, []string{name}); err != nil {
				return RerollPlan{}, err
			}
		}
		if !found && len(req.SeedNodes) > 0 {
			return RerollPlan{}, fmt.Errorf("reroll: seed node %s has no seed or noise_seed input", id)
		}
	}
	if len(seeds) == 0 {
		return RerollPlan{}, fmt.Errorf("reroll: no seed or noise_seed input in the prompt; name the sampler nodes in seed_nodes")
	}

	in, err := inputsOf(req.NodeID)
	if err != nil {
		return RerollPlan{}, err
	}
	if err := setInput(req.NodeID, in, "attempt", json.RawMessage(strconv.Itoa(next))); err != nil {
		return RerollPlan{}, err
	}
	out, err := json.Marshal(prompt)
	if err != nil {
		return RerollPlan{}, fmt.Errorf("reroll: %w", err)
	}
	extra := map[string]json.RawMessage{}
	if len(bytes.TrimSpace(req.ExtraPNGInfo)) > 0 && string(bytes.TrimSpace(req.ExtraPNGInfo)) != "null" {
		if err := json.Unmarshal(req.ExtraPNGInfo, &extra); err != nil {
			return RerollPlan{}, fmt.Errorf("reroll: extra_pnginfo is not an object: %w", err)
		}
	}
	delete(extra, PNGInfoKey)
	delete(extra, PNGInfoRerollKey)
	extraJSON, err := json.Marshal(extra)
	if err != nil {
		return RerollPlan{}, fmt.Errorf("reroll: %w", err)
	}
	return RerollPlan{Prompt: out, ExtraPNGInfo: extraJSON, Attempt: next, Seeds: seeds}, nil
}

// linkedSeedNames are the inputs that hold a seed on a node that a sampler's
// seed input links to (a primitive's value, a seed node's seed).
var linkedSeedNames = []string{"seed", "noise_seed", "value"}

// rerollLiteral replaces the first literal integer input among names of
// node id with a new seed.
func rerollLiteral(prompt map[string]map[string]json.RawMessage,
	id string,
	inputsOf func(string) (map[string]json.RawMessage, error),
	setInput func(string, map[string]json.RawMessage, string, json.RawMessage) error,
	newSeed SeedFunc, attempt int, seeds map[string]uint64, names []string) error {
	if _, ok := prompt[id]; !ok {
		return fmt.Errorf("node %s is not in the prompt", id)
	}
	in, err := inputsOf(id)
	if err != nil {
		return err
	}
	for _, name := range names {
		raw, ok := in[name]
		if !ok {
			continue
		}
		old, err := strconv.ParseUint(string(bytes.TrimSpace(raw)), 10, 64)
		if err != nil {
			return fmt.Errorf("node %s input %s = %s is not a seed (an integer 0..2^64-1)", id, name, raw)
		}
		key := id + "." + name
		if _, done := seeds[key]; done {
			return nil // two samplers share one seed node
		}
		seed := newSeed(id, name, old, attempt)
		seeds[key] = seed
		return setInput(id, in, name, json.RawMessage(strconv.FormatUint(seed, 10)))
	}
	return fmt.Errorf("node %s has no literal %v input", id, names)
}

// decodeExact decodes JSON keeping numbers as their literal text.
func decodeExact(raw json.RawMessage, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	return dec.Decode(v)
}
