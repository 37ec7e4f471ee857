package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
)

// Requeuer queues a workflow on ComfyUI (POST /prompt). The daemon wires it
// to the plugin/comfyui client.
type Requeuer interface {
	// Requeue queues workflow (ComfyUI API format: node id -> {class_type,
	// inputs}) for the websocket client clientID and returns its prompt id.
	Requeue(ctx context.Context, workflow json.RawMessage, clientID string) (promptID string, err error)
}

// RerollRequest is the body of POST /v1/reroll.
type RerollRequest struct {
	Prompt    json.RawMessage `json:"prompt"`
	SeedNodes []string        `json:"seed_nodes"`
	Attempt   int             `json:"attempt"`
	MaxTries  int             `json:"max_tries"`
	ClientID  string          `json:"client_id"`
}

// RerollResponse is the answer of POST /v1/reroll. Seeds are decimal
// strings: ComfyUI seeds reach 2^64-1.
type RerollResponse struct {
	PromptID string            `json:"prompt_id"`
	Seeds    map[string]string `json:"seeds"`
}

// seedInputs are the sampler inputs that hold a seed, in order of preference.
var seedInputs = []string{"seed", "noise_seed"}

func (s *Server) reroll(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Requeuer == nil {
		writeError(w, http.StatusNotImplemented, errors.New("reroll: no ComfyUI connection configured"))
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 16<<20)
	var in RerollRequest
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("reroll: decode body: %w", err))
		return
	}
	switch {
	case in.MaxTries <= 0:
		writeError(w, http.StatusBadRequest, fmt.Errorf("reroll: max_tries %d must be positive", in.MaxTries))
		return
	case in.Attempt < 0:
		writeError(w, http.StatusBadRequest, fmt.Errorf("reroll: attempt %d is negative", in.Attempt))
		return
	case in.Attempt >= in.MaxTries:
		writeError(w, http.StatusConflict, fmt.Errorf("reroll: attempt %d reached max_tries %d; not re-queued", in.Attempt, in.MaxTries))
		return
	}
	workflow, seeds, err := reseed(in.Prompt, in.SeedNodes, randomSeed)
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("reroll: %w", err))
		return
	}
	id, err := s.cfg.Requeuer.Requeue(r.Context(), workflow, in.ClientID)
	if err != nil {
		writeError(w, http.StatusBadGateway, fmt.Errorf("reroll: queue on ComfyUI: %w", err))
		return
	}
	writeJSON(w, http.StatusOK, RerollResponse{PromptID: id, Seeds: seeds})
}

func randomSeed() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return binary.LittleEndian.Uint64(b[:])
}

// reseed returns workflow with a new seed from next in each seed node's seed
// input (seed or noise_seed). Everything else stays byte for byte as it was.
func reseed(workflow json.RawMessage, nodes []string, next func() uint64) (json.RawMessage, map[string]string, error) {
	if len(nodes) == 0 {
		return nil, nil, errors.New("no seed_nodes")
	}
	var graph map[string]json.RawMessage
	if err := json.Unmarshal(workflow, &graph); err != nil || graph == nil {
		return nil, nil, fmt.Errorf("prompt is not an API-format workflow object: %v", err)
	}
	seeds := make(map[string]string, len(nodes))
	for _, id := range nodes {
		raw, ok := graph[id]
		if !ok {
			return nil, nil, fmt.Errorf("seed node %q is not in the workflow", id)
		}
		var node map[string]json.RawMessage
		if err := json.Unmarshal(raw, &node); err != nil {
			return nil, nil, fmt.Errorf("node %q: %v", id, err)
		}
		var inputs map[string]json.RawMessage
		if err := json.Unmarshal(node["inputs"], &inputs); err != nil || inputs == nil {
			return nil, nil, fmt.Errorf("node %q has no inputs object", id)
		}
		name := ""
		for _, n := range seedInputs {
			if _, ok := inputs[n]; ok {
				name = n
				break
			}
		}
		if name == "" {
			return nil, nil, fmt.Errorf("node %q has no seed or noise_seed input", id)
		}
		if v := bytes.TrimSpace(inputs[name]); len(v) > 0 && v[0] == '[' {
			return nil, nil, fmt.Errorf("node %q input %s is a link to another node; name that node in seed_nodes", id, name)
		}
		seed := strconv.FormatUint(next(), 10)
		inputs[name] = json.RawMessage(seed)
		seeds[id] = seed
		var err error
		if node["inputs"], err = json.Marshal(inputs); err != nil {
			return nil, nil, err
		}
		if graph[id], err = json.Marshal(node); err != nil {
			return nil, nil, err
		}
	}
	out, err := json.Marshal(graph)
	return out, seeds, err
}
