package nodes

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/m3gate/m3gate/schemas/api"
)

const rerollPrompt = `{
 "3": {"class_type": "KSampler", "inputs": {"seed": 18446744073709551615, "steps": 20, "model": ["4", 0]}},
 "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
 "5": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["6", 0]}},
 "6": {"class_type": "RandomNoise", "inputs": {"noise_seed": 7}},
 "7": {"class_type": "KSampler", "inputs": {"seed": ["9", 0], "steps": 4}},
 "9": {"class_type": "PrimitiveInt", "inputs": {"value": 42}},
 "12": {"class_type": "M3Reroll", "inputs": {"passed_count": ["11", 2], "attempt": 1, "max_tries": 3}, "_meta": {"title": "Reroll"}}
}`

func rerollReq() api.RerollRequest {
	return api.RerollRequest{Prompt: json.RawMessage(rerollPrompt), NodeID: "12", Attempt: 1, MaxTries: 3,
		ExtraPNGInfo: json.RawMessage(`{"workflow": {"nodes": []}, "m3gate": {"attempt": 1}, "m3gate_reroll": {}}`)}
}

type planNode struct {
	ClassType string                     `json:"class_type"`
	Inputs    map[string]json.RawMessage `json:"inputs"`
	Meta      json.RawMessage            `json:"_meta"`
}

func decodePlan(t *testing.T, p RerollPlan) map[string]planNode {
	t.Helper()
	var nodes map[string]planNode
	if err := decodeExact(p.Prompt, &nodes); err != nil {
		t.Fatal(err)
	}
	return nodes
}

func TestPlanRerollChangesEverySeed(t *testing.T) {
	plan, err := PlanReroll(rerollReq(), nil)
	if err != nil {
		t.Fatal(err)
	}
	got := decodePlan(t, plan)
	for key, old := range map[string]string{"3.seed": "18446744073709551615", "6.noise_seed": "7", "9.value": "42"} {
		id, name, _ := strings.Cut(key, ".")
		seed, ok := plan.Seeds[key]
		if !ok {
			t.Errorf("no new seed for %s in %v", key, plan.Seeds)
			continue
		}
		if s := string(got[id].Inputs[name]); s == old || s != jsonUint(seed) {
			t.Errorf("%s = %s, old %s, planned %d", key, s, old, seed)
		}
	}
	if len(plan.Seeds) != 3 {
		t.Errorf("seeds %v, want 3", plan.Seeds)
	}
	if s := string(got["7"].Inputs["seed"]); s != `["9",0]` {
		t.Errorf("linked seed rewritten to %s", s)
	}
	if s := string(got["12"].Inputs["attempt"]); s != "2" || plan.Attempt != 2 {
		t.Errorf("attempt input %s, plan attempt %d, want 2", s, plan.Attempt)
	}
	if string(got["12"].Meta) != `{"title":"Reroll"}` || string(got["4"].Inputs["ckpt_name"]) != `"a.safetensors"` {
		t.Errorf("untouched content changed: %s %s", got["12"].Meta, got["4"].Inputs["ckpt_name"])
	}
	if string(plan.ExtraPNGInfo) != `{"workflow":{"nodes":[]}}` {
		t.Errorf("extra_pnginfo %s, want only the workflow", plan.ExtraPNGInfo)
	}
	// Reproducible: the same request plans the same seeds.
	again, _ := PlanReroll(rerollReq(), nil)
	for k, v := range plan.Seeds {
		if again.Seeds[k] != v {
			t.Errorf("seed %s differs between two plans: %d, %d", k, v, again.Seeds[k])
		}
	}
	// The next attempt gets other seeds again.
	req := rerollReq()
	req.Prompt, req.Attempt = plan.Prompt, 2
	third, err := PlanReroll(req, nil)
	if err != nil {
		t.Fatal(err)
	}
	if third.Seeds["3.seed"] == plan.Seeds["3.seed"] || third.Attempt != 3 {
		t.Errorf("third attempt seeds %v after %v", third.Seeds, plan.Seeds)
	}
}

func jsonUint(v uint64) string { b, _ := json.Marshal(v); return string(b) }

func TestPlanRerollNamedNodesOnly(t *testing.T) {
	req := rerollReq()
	req.SeedNodes = []string{"6"}
	plan, err := PlanReroll(req, func(id, input string, old uint64, attempt int) uint64 { return old + 100 })
	if err != nil {
		t.Fatal(err)
	}
	got := decodePlan(t, plan)
	if s := string(got["6"].Inputs["noise_seed"]); s != "107" {
		t.Errorf("noise_seed = %s, want 107", s)
	}
	if s := string(got["3"].Inputs["seed"]); s != "18446744073709551615" {
		t.Errorf("unnamed node 3 seed changed to %s", s)
	}
	if len(plan.Seeds) != 1 {
		t.Errorf("seeds %v, want only 6.noise_seed", plan.Seeds)
	}
}

func TestPlanRerollErrors(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*api.RerollRequest)
		want   string
	}{
		{"max tries reached", func(r *api.RerollRequest) { r.Attempt = 3 }, "already reached max_tries"},
		{"zero attempt", func(r *api.RerollRequest) { r.Attempt = 0 }, "at least 1"},
		{"not an object", func(r *api.RerollRequest) { r.Prompt = json.RawMessage(`[1]`) }, "not an API-format prompt"},
		{"unknown reroll node", func(r *api.RerollRequest) { r.NodeID = "99" }, `node_id "99"`},
		{"unknown seed node", func(r *api.RerollRequest) { r.SeedNodes = []string{"3", "98"} }, "seed node 98 is not in the prompt"},
		{"seed node without seed", func(r *api.RerollRequest) { r.SeedNodes = []string{"4"} }, "seed node 4 has no seed"},
		{"no seeds at all", func(r *api.RerollRequest) {
			r.Prompt = json.RawMessage(`{"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}}, "12": {"class_type": "M3Reroll", "inputs": {}}}`)
		}, "no seed or noise_seed input"},
		{"seed not an integer", func(r *api.RerollRequest) {
			r.Prompt = json.RawMessage(`{"3": {"class_type": "KSampler", "inputs": {"seed": -1}}, "12": {"class_type": "M3Reroll", "inputs": {}}}`)
		}, "not a seed"},
		{"bad extra_pnginfo", func(r *api.RerollRequest) { r.ExtraPNGInfo = json.RawMessage(`"x"`) }, "extra_pnginfo is not an object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := rerollReq()
			tt.mutate(&req)
			_, err := PlanReroll(req, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("PlanReroll = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestParseSeedNodes(t *testing.T) {
	tests := []struct{ in, want string }{{"", ""}, {"3", "3"}, {"3, 12", "3|12"}, {" 3;12 ,7 ", "3|12|7"}}
	for _, tt := range tests {
		if got := strings.Join(ParseSeedNodes(tt.in), "|"); got != tt.want {
			t.Errorf("ParseSeedNodes(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
