package comfyfake

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/big"
	"sort"

	"github.com/m3gate/m3gate/plugin/comfyui"
)

// inputSpec is one input of a node class, from object_info.
type inputSpec struct {
	name     string
	typ      string   // "INT", "FLOAT", "STRING", "IMAGE", … or "COMBO"
	choices  []string // COMBO values (empty: anything goes)
	min, max json.Number
	required bool
	raw      json.RawMessage // the spec as object_info lists it
}

type classInfo struct {
	name       string
	inputs     []inputSpec
	outputNode bool
}

func parseClasses(raw map[string]json.RawMessage) map[string]classInfo {
	out := map[string]classInfo{}
	for name, r := range raw {
		var def struct {
			Input      map[string]map[string]json.RawMessage `json:"input"`
			InputOrder map[string][]string                   `json:"input_order"`
			OutputNode bool                                  `json:"output_node"`
		}
		d := json.NewDecoder(bytes.NewReader(r))
		d.UseNumber()
		if d.Decode(&def) != nil {
			continue
		}
		ci := classInfo{name: name, outputNode: def.OutputNode}
		for _, group := range []string{"required", "optional"} {
			for _, in := range def.InputOrder[group] {
				spec := inputSpec{name: in, required: group == "required", raw: def.Input[group][in]}
				var parts []json.RawMessage
				if json.Unmarshal(def.Input[group][in], &parts) == nil && len(parts) > 0 {
					var typ string
					if json.Unmarshal(parts[0], &typ) == nil {
						spec.typ = typ
					} else {
						spec.typ = "COMBO"
						_ = json.Unmarshal(parts[0], &spec.choices)
					}
					if len(parts) > 1 {
						var o map[string]any
						dd := json.NewDecoder(bytes.NewReader(parts[1]))
						dd.UseNumber()
						if dd.Decode(&o) == nil {
							spec.min, _ = o["min"].(json.Number)
							spec.max, _ = o["max"].(json.Number)
						}
					}
				}
				ci.inputs = append(ci.inputs, spec)
			}
		}
		out[name] = ci
	}
	return out
}

// apiError is the JSON "error" object of a 400 answer.
type apiError struct {
	Type      string         `json:"type"`
	Message   string         `json:"message"`
	Details   string         `json:"details"`
	ExtraInfo map[string]any `json:"extra_info"`
}

type nodeErrors struct {
	Errors           []apiError `json:"errors"`
	DependentOutputs []string   `json:"dependent_outputs"`
	ClassType        string     `json:"class_type"`
}

type validationFailure struct {
	Error      apiError              `json:"error"`
	NodeErrors map[string]nodeErrors `json:"node_errors"`
}

func invalidPrompt(msg, details string) *validationFailure {
	return &validationFailure{Error: apiError{Type: "invalid_prompt", Message: msg, Details: details, ExtraInfo: map[string]any{}},
		NodeErrors: map[string]nodeErrors{}}
}

// validate checks a prompt like ComfyUI's validate_prompt and returns the
// output node ids, or the failure to answer with 400.
func (s *Server) validate(w comfyui.Workflow) ([]string, *validationFailure) {
	ids := w.IDs()
	for _, id := range ids {
		n := w[id]
		if n.ClassType == "" {
			return nil, invalidPrompt("Cannot execute because a node is missing the class_type property.", fmt.Sprintf("Node ID '#%s'", id))
		}
		if _, ok := s.classes[n.ClassType]; !ok {
			return nil, invalidPrompt(fmt.Sprintf("Cannot execute because node %s does not exist.", n.ClassType), fmt.Sprintf("Node ID '#%s'", id))
		}
	}
	var outputs []string
	for _, id := range ids {
		if s.classes[w[id].ClassType].outputNode {
			outputs = append(outputs, id)
		}
	}
	if len(outputs) == 0 {
		return nil, &validationFailure{Error: apiError{Type: "prompt_no_outputs", Message: "Prompt has no outputs", ExtraInfo: map[string]any{}},
			NodeErrors: map[string]nodeErrors{}}
	}
	errs := map[string]nodeErrors{}
	var good []string
	for _, out := range outputs {
		ok := true
		for _, id := range upstream(w, out) {
			e := s.validateNode(w, id)
			if len(e) == 0 {
				continue
			}
			ok = false
			ne := errs[id]
			if ne.Errors == nil {
				ne.Errors, ne.ClassType = e, w[id].ClassType
			}
			ne.DependentOutputs = append(ne.DependentOutputs, out)
			errs[id] = ne
		}
		if ok {
			good = append(good, out)
		}
	}
	if len(good) == 0 || len(errs) > 0 {
		return nil, &validationFailure{Error: apiError{Type: "prompt_outputs_failed_validation", Message: "Prompt outputs failed validation",
			ExtraInfo: map[string]any{}}, NodeErrors: errs}
	}
	return outputs, nil
}

// upstream lists node id and every node it depends on (links), each once.
func upstream(w comfyui.Workflow, id string) []string {
	seen := map[string]bool{}
	var out []string
	var visit func(string)
	visit = func(id string) {
		if seen[id] {
			return
		}
		seen[id] = true
		out = append(out, id)
		n, ok := w[id]
		if !ok {
			return
		}
		for _, k := range sortedKeys(n.Inputs) {
			if l, ok := comfyui.AsLink(n.Inputs[k]); ok {
				visit(l.Node)
			}
		}
	}
	visit(id)
	return out
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func (s *Server) validateNode(w comfyui.Workflow, id string) []apiError {
	n := w[id]
	ci := s.classes[n.ClassType]
	var errs []apiError
	for _, in := range ci.inputs {
		v, present := n.Inputs[in.name]
		if !present {
			if in.required {
				errs = append(errs, apiError{Type: "required_input_missing", Message: "Required input is missing",
					Details: in.name, ExtraInfo: map[string]any{"input_name": in.name}})
			}
			continue
		}
		if l, ok := comfyui.AsLink(v); ok {
			if _, exists := w[l.Node]; !exists {
				errs = append(errs, apiError{Type: "bad_linked_input", Message: "Bad linked input, must be a length-2 list of [string, int]",
					Details: fmt.Sprintf("%s, [%q, %d]", in.name, l.Node, l.Output), ExtraInfo: map[string]any{"input_name": in.name}})
			}
			continue
		}
		extra := map[string]any{"input_name": in.name, "input_config": in.raw, "received_value": v}
		switch in.typ {
		case "INT", "FLOAT":
			num, ok := v.(json.Number)
			if !ok {
				errs = append(errs, apiError{Type: "invalid_input_type", Message: fmt.Sprintf("Failed to convert an input value to a %s value", in.typ),
					Details: fmt.Sprintf("%s, %v", in.name, v), ExtraInfo: extra})
				continue
			}
			val, okv := new(big.Float).SetPrec(256).SetString(num.String())
			if in.typ == "INT" {
				if _, okInt := new(big.Int).SetString(num.String(), 10); !okInt {
					okv = false
				}
			}
			if !okv {
				errs = append(errs, apiError{Type: "invalid_input_type", Message: fmt.Sprintf("Failed to convert an input value to a %s value", in.typ),
					Details: fmt.Sprintf("%s, %s", in.name, num), ExtraInfo: extra})
				continue
			}
			if in.min != "" {
				if m, ok := new(big.Float).SetPrec(256).SetString(in.min.String()); ok && val.Cmp(m) < 0 {
					errs = append(errs, apiError{Type: "value_smaller_than_min", Message: fmt.Sprintf("Value %s smaller than min of %s", num, in.min),
						Details: in.name, ExtraInfo: extra})
				}
			}
			if in.max != "" {
				if m, ok := new(big.Float).SetPrec(256).SetString(in.max.String()); ok && val.Cmp(m) > 0 {
					errs = append(errs, apiError{Type: "value_bigger_than_max", Message: fmt.Sprintf("Value %s bigger than max of %s", num, in.max),
						Details: in.name, ExtraInfo: extra})
				}
			}
		case "COMBO":
			str, _ := v.(string)
			// LoadImage validates its image itself (VALIDATE_INPUTS), so
			// ComfyUI skips the list check; see below.
			skip := n.ClassType == "LoadImage" && in.name == "image"
			if len(in.choices) > 0 && !skip && !contains(in.choices, str) {
				errs = append(errs, apiError{Type: "value_not_in_list", Message: "Value not in list",
					Details: fmt.Sprintf("%s: '%v' not in %v", in.name, v, in.choices), ExtraInfo: extra})
			}
		}
	}
	if n.ClassType == "LoadImage" {
		name, _ := n.Inputs["image"].(string)
		s.mu.Lock()
		_, ok := s.files[fileKey{"input", "", name}]
		s.mu.Unlock()
		if !ok {
			errs = append(errs, apiError{Type: "custom_validation_failed", Message: "Custom validation failed for node",
				Details: fmt.Sprintf("image - Invalid image file: %s", name), ExtraInfo: map[string]any{"input_name": "image"}})
		}
	}
	return errs
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
