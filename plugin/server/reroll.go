package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/m3gate/m3gate/nodes"
)

// Requeuer queues a prompt on ComfyUI (POST /prompt). The daemon wires it
// to the plugin/comfyui client.
type Requeuer interface {
	// Requeue queues prompt (API format: node id -> {class_type, inputs})
	// with extra_data.extra_pnginfo = extraPNGInfo (a JSON object) for the
	// websocket client clientID, and returns ComfyUI's prompt id.
	Requeue(ctx context.Context, prompt, extraPNGInfo json.RawMessage, clientID string) (promptID string, err error)
}

// reroll serves POST /v1/reroll with the node pack's contract
// (nodes.RerollRequest → nodes.RerollResponse): it plans the next attempt
// with nodes.PlanReroll (new seeds, attempt bumped) and queues it through
// the Requeuer. An attempt that reached max_tries is refused with 409.
func (s *Server) reroll(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Requeuer == nil {
		writeError(w, http.StatusNotImplemented, errors.New("reroll: no ComfyUI connection configured"))
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 16<<20)
	var in nodes.RerollRequest
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("reroll: decode body: %w", err))
		return
	}
	if in.Attempt >= in.MaxTries && in.MaxTries > 0 {
		writeError(w, http.StatusConflict, fmt.Errorf("reroll: attempt %d already reached max_tries %d; not re-queued", in.Attempt, in.MaxTries))
		return
	}
	plan, err := nodes.PlanReroll(in, s.cfg.SeedFunc)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	id, err := s.cfg.Requeuer.Requeue(r.Context(), plan.Prompt, plan.ExtraPNGInfo, in.ClientID)
	if err != nil {
		writeError(w, http.StatusBadGateway, fmt.Errorf("reroll: queue on ComfyUI: %w", err))
		return
	}
	s.log.Info("rerolled", "prompt_id", id, "attempt", plan.Attempt, "seeds", fmt.Sprint(plan.Seeds))
	s.hub.publish(Event{Type: "reroll", Data: RerollEvent{PromptID: id, Attempt: plan.Attempt, MaxTries: in.MaxTries, Seeds: plan.Seeds}})
	writeJSON(w, http.StatusOK, nodes.RerollResponse{Queued: true, PromptID: id, Attempt: plan.Attempt, Seeds: plan.Seeds})
}

// RerollEvent is the data of a "reroll" event.
type RerollEvent struct {
	PromptID string            `json:"prompt_id"`
	Attempt  int               `json:"attempt"`
	MaxTries int               `json:"max_tries"`
	Seeds    map[string]uint64 `json:"seeds"`
}
