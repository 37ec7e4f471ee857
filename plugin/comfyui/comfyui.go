// Package comfyui is a client of a ComfyUI server: its websocket event stream
// (typed JSON messages and binary preview/text frames, with reconnection) and
// its HTTP API (/prompt, /history, /view, /upload/image, /object_info,
// /queue, /interrupt). The protocol is the one of ComfyUI v0.3.x as recorded
// in the project's fixtures.
package comfyui

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
)

// Workflow is an API-format ComfyUI prompt: node id → node. Node ids are
// strings; numeric inputs are json.Number so that seeds up to 2^64−1 keep
// every digit.
type Workflow map[string]Node

// Node is one node of an API-format workflow.
type Node struct {
	// ClassType names the node class ("KSampler", "SaveImage", …).
	ClassType string `json:"class_type"`
	// Inputs holds literal values (json.Number, string, bool, …) and links
	// ([source node id, output index]).
	Inputs map[string]any `json:"inputs"`
	// Meta is the optional "_meta" object ({"title": …}) kept verbatim.
	Meta json.RawMessage `json:"_meta,omitempty"`
}

// Link is a reference from a node input to the output of another node.
type Link struct {
	// Node is the source node id.
	Node string
	// Output is the index of the source node's output.
	Output int
}

// ParseWorkflow decodes an API-format workflow, keeping numbers exact. It
// rejects the UI-format ("nodes"/"links" arrays) with a clear error.
func ParseWorkflow(data []byte) (Workflow, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var raw map[string]json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("parse workflow: %w", err)
	}
	if _, ok := raw["nodes"]; ok {
		if _, ok := raw["links"]; ok {
			return nil, fmt.Errorf("parse workflow: this is a UI-format workflow; export it with \"Save (API Format)\"")
		}
	}
	// A wrapper {"prompt": {...}} (the body of POST /prompt) is accepted too.
	if p, ok := raw["prompt"]; ok && len(raw) <= 4 {
		if w, err := ParseWorkflow(p); err == nil {
			return w, nil
		}
	}
	w := make(Workflow, len(raw))
	for id, r := range raw {
		var n Node
		d := json.NewDecoder(bytes.NewReader(r))
		d.UseNumber()
		if err := d.Decode(&n); err != nil {
			return nil, fmt.Errorf("parse workflow: node %s: %w", id, err)
		}
		if n.ClassType == "" {
			return nil, fmt.Errorf("parse workflow: node %s has no class_type", id)
		}
		if n.Inputs == nil {
			n.Inputs = map[string]any{}
		}
		w[id] = n
	}
	if len(w) == 0 {
		return nil, fmt.Errorf("parse workflow: no nodes")
	}
	return w, nil
}

// Clone returns a deep copy of w (inputs are copied one level deep; links
// are copied as new slices).
func (w Workflow) Clone() Workflow {
	out := make(Workflow, len(w))
	for id, n := range w {
		in := make(map[string]any, len(n.Inputs))
		for k, v := range n.Inputs {
			if s, ok := v.([]any); ok {
				v = append([]any(nil), s...)
			}
			in[k] = v
		}
		n.Inputs = in
		out[id] = n
	}
	return out
}

// IDs returns the node ids in a stable order: numeric ids by value, then
// the others lexically.
func (w Workflow) IDs() []string {
	ids := make([]string, 0, len(w))
	for id := range w {
		ids = append(ids, id)
	}
	SortIDs(ids)
	return ids
}

// SortIDs sorts node ids numerically where they are numbers ("2" < "10"),
// lexically otherwise.
func SortIDs(ids []string) {
	sort.Slice(ids, func(i, j int) bool {
		a, ea := strconv.ParseInt(ids[i], 10, 64)
		b, eb := strconv.ParseInt(ids[j], 10, 64)
		switch {
		case ea == nil && eb == nil:
			return a < b
		case ea == nil:
			return true
		case eb == nil:
			return false
		}
		return ids[i] < ids[j]
	})
}

// AsLink reports whether an input value is a link and returns it.
func AsLink(v any) (Link, bool) {
	s, ok := v.([]any)
	if !ok || len(s) != 2 {
		return Link{}, false
	}
	var l Link
	switch id := s[0].(type) {
	case string:
		l.Node = id
	case json.Number:
		l.Node = id.String()
	default:
		return Link{}, false
	}
	switch o := s[1].(type) {
	case json.Number:
		n, err := strconv.Atoi(o.String())
		if err != nil {
			return Link{}, false
		}
		l.Output = n
	case float64:
		l.Output = int(o)
	case int:
		l.Output = o
	default:
		return Link{}, false
	}
	return l, true
}

// AsUint64 reads a literal integer input exactly (json.Number, or a Go
// integer type). Floats are accepted only when they are whole and small
// enough to be exact.
func AsUint64(v any) (uint64, bool) {
	switch n := v.(type) {
	case json.Number:
		u, err := strconv.ParseUint(n.String(), 10, 64)
		return u, err == nil
	case uint64:
		return n, true
	case int:
		return uint64(n), n >= 0
	case int64:
		return uint64(n), n >= 0
	case float64:
		if n >= 0 && n <= 1<<53 && n == float64(uint64(n)) {
			return uint64(n), true
		}
	}
	return 0, false
}

// Uint64Input returns a json.Number holding u exactly, for use as an input
// value.
func Uint64Input(u uint64) json.Number {
	return json.Number(strconv.FormatUint(u, 10))
}

// ImageRef names a file on the server, as found in "executed" outputs,
// history outputs and upload answers.
type ImageRef struct {
	Filename  string `json:"filename"`
	Subfolder string `json:"subfolder"`
	Type      string `json:"type"`
}

// NodeOutput is the ui dict of one node ("images", "text", custom keys),
// kept raw per key.
type NodeOutput map[string]json.RawMessage

// Images decodes the "images" entry of a node output; a node without images
// yields none. Entries that are not file references (e.g. animated flags) are
// skipped.
func (o NodeOutput) Images() []ImageRef {
	raw, ok := o["images"]
	if !ok {
		return nil
	}
	var items []json.RawMessage
	if json.Unmarshal(raw, &items) != nil {
		return nil
	}
	var out []ImageRef
	for _, it := range items {
		var r ImageRef
		if json.Unmarshal(it, &r) == nil && r.Filename != "" {
			out = append(out, r)
		}
	}
	return out
}

// QueueItem is a prompt as the server lists it in /queue and /history:
// the JSON array [number, prompt_id, prompt, extra_data, outputs_to_execute].
type QueueItem struct {
	Number           int64
	PromptID         string
	Prompt           Workflow
	ExtraData        map[string]any
	OutputsToExecute []string
}

// UnmarshalJSON decodes the array form.
func (q *QueueItem) UnmarshalJSON(b []byte) error {
	var parts []json.RawMessage
	if err := json.Unmarshal(b, &parts); err != nil {
		return fmt.Errorf("queue item: %w", err)
	}
	if len(parts) < 3 {
		return fmt.Errorf("queue item: %d fields, want at least 3", len(parts))
	}
	if err := json.Unmarshal(parts[0], &q.Number); err != nil {
		return fmt.Errorf("queue item number: %w", err)
	}
	if err := json.Unmarshal(parts[1], &q.PromptID); err != nil {
		return fmt.Errorf("queue item id: %w", err)
	}
	w, err := ParseWorkflow(parts[2])
	if err != nil {
		return fmt.Errorf("queue item %s: %w", q.PromptID, err)
	}
	q.Prompt = w
	if len(parts) > 3 {
		d := json.NewDecoder(bytes.NewReader(parts[3]))
		d.UseNumber()
		if err := d.Decode(&q.ExtraData); err != nil {
			return fmt.Errorf("queue item %s extra_data: %w", q.PromptID, err)
		}
	}
	if len(parts) > 4 {
		if err := json.Unmarshal(parts[4], &q.OutputsToExecute); err != nil {
			return fmt.Errorf("queue item %s outputs: %w", q.PromptID, err)
		}
	}
	return nil
}

// MarshalJSON encodes the array form.
func (q QueueItem) MarshalJSON() ([]byte, error) {
	extra := q.ExtraData
	if extra == nil {
		extra = map[string]any{}
	}
	outs := q.OutputsToExecute
	if outs == nil {
		outs = []string{}
	}
	return json.Marshal([]any{q.Number, q.PromptID, q.Prompt, extra, outs})
}

// QueueState is the answer of GET /queue.
type QueueState struct {
	Running []QueueItem `json:"queue_running"`
	Pending []QueueItem `json:"queue_pending"`
}

// Has reports whether the prompt is running or pending.
func (q QueueState) Has(promptID string) bool {
	for _, it := range q.Running {
		if it.PromptID == promptID {
			return true
		}
	}
	for _, it := range q.Pending {
		if it.PromptID == promptID {
			return true
		}
	}
	return false
}

// HistoryStatus is the "status" of a history entry.
type HistoryStatus struct {
	StatusStr string `json:"status_str"`
	Completed bool   `json:"completed"`
	// Messages are [type, data] pairs (execution_start, execution_cached,
	// execution_success / execution_error / execution_interrupted).
	Messages []HistoryMessage `json:"messages"`
}

// HistoryMessage is one [type, data] pair of a history status.
type HistoryMessage struct {
	Type string
	Data json.RawMessage
}

// UnmarshalJSON decodes the pair.
func (m *HistoryMessage) UnmarshalJSON(b []byte) error {
	var parts []json.RawMessage
	if err := json.Unmarshal(b, &parts); err != nil {
		return err
	}
	if len(parts) != 2 {
		return fmt.Errorf("history message: %d fields, want 2", len(parts))
	}
	if err := json.Unmarshal(parts[0], &m.Type); err != nil {
		return err
	}
	m.Data = parts[1]
	return nil
}

// MarshalJSON encodes the pair.
func (m HistoryMessage) MarshalJSON() ([]byte, error) {
	data := m.Data
	if data == nil {
		data = json.RawMessage("{}")
	}
	return json.Marshal([]any{m.Type, data})
}

// HistoryEntry is one prompt in GET /history.
type HistoryEntry struct {
	Prompt  QueueItem                  `json:"prompt"`
	Outputs map[string]NodeOutput      `json:"outputs"`
	Status  HistoryStatus              `json:"status"`
	Meta    map[string]json.RawMessage `json:"meta,omitempty"`
}

// Images lists every image of every output node, nodes in id order.
func (h HistoryEntry) Images() []NodeImage {
	return outputImages(h.Outputs)
}

// NodeImage is an output image with the node that produced it.
type NodeImage struct {
	Node  string
	Index int
	ImageRef
}

func outputImages(outs map[string]NodeOutput) []NodeImage {
	ids := make([]string, 0, len(outs))
	for id := range outs {
		ids = append(ids, id)
	}
	SortIDs(ids)
	var res []NodeImage
	for _, id := range ids {
		for i, r := range outs[id].Images() {
			res = append(res, NodeImage{Node: id, Index: i, ImageRef: r})
		}
	}
	return res
}

// PromptRequest is the body of POST /prompt. ClientID is filled in by the
// client; PromptID is generated when empty.
type PromptRequest struct {
	Prompt    Workflow       `json:"prompt"`
	ClientID  string         `json:"client_id,omitempty"`
	PromptID  string         `json:"prompt_id,omitempty"`
	Front     bool           `json:"front,omitempty"`
	Number    *float64       `json:"number,omitempty"`
	ExtraData map[string]any `json:"extra_data,omitempty"`
}

// PromptResponse is the 200 answer of POST /prompt.
type PromptResponse struct {
	PromptID   string               `json:"prompt_id"`
	Number     int64                `json:"number"`
	NodeErrors map[string]NodeError `json:"node_errors"`
}

// ErrorInfo is the "error" object of a 400 answer.
type ErrorInfo struct {
	Type      string          `json:"type"`
	Message   string          `json:"message"`
	Details   string          `json:"details"`
	ExtraInfo json.RawMessage `json:"extra_info,omitempty"`
}

// NodeError lists the validation errors of one node.
type NodeError struct {
	Errors           []ErrorInfo `json:"errors"`
	DependentOutputs []string    `json:"dependent_outputs"`
	ClassType        string      `json:"class_type"`
}

// PromptError is a rejected POST /prompt (HTTP 400): the server's error and
// the per-node validation errors.
type PromptError struct {
	StatusCode int                  `json:"-"`
	Err        ErrorInfo            `json:"error"`
	NodeErrors map[string]NodeError `json:"node_errors"`
}

// Error implements error, naming the failing nodes and inputs.
func (e *PromptError) Error() string {
	msg := fmt.Sprintf("comfyui rejected prompt (%d %s): %s", e.StatusCode, e.Err.Type, e.Err.Message)
	if e.Err.Details != "" && e.Err.Details != e.Err.Message {
		msg += " (" + e.Err.Details + ")"
	}
	ids := make([]string, 0, len(e.NodeErrors))
	for id := range e.NodeErrors {
		ids = append(ids, id)
	}
	SortIDs(ids)
	for _, id := range ids {
		ne := e.NodeErrors[id]
		for _, x := range ne.Errors {
			msg += fmt.Sprintf("; node %s (%s): %s", id, ne.ClassType, x.Message)
			if x.Details != "" {
				msg += " [" + x.Details + "]"
			}
		}
	}
	return msg
}
