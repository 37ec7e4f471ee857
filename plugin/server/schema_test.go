package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/m3gate/m3gate/nodes"
	"github.com/m3gate/m3gate/plugin/supervisor"
	"github.com/m3gate/m3gate/schemas"
)

// validate checks v (decoded with UseNumber) against the subset of JSON
// Schema that schemas/daemon_api.schema.json uses: $ref to #/$defs, type,
// const, enum, required, properties, additionalProperties (false or a
// schema), items, anyOf, minimum, maximum.
func validate(root, s map[string]any, v any, path string) error {
	if ref, ok := s["$ref"].(string); ok {
		name, ok := strings.CutPrefix(ref, "#/$defs/")
		def, _ := root["$defs"].(map[string]any)[name].(map[string]any)
		if !ok || def == nil {
			return fmt.Errorf("%s: bad $ref %s", path, ref)
		}
		if err := validate(root, def, v, path); err != nil {
			return err
		}
	}
	if alts, ok := s["anyOf"].([]any); ok {
		var errs []string
		for _, alt := range alts {
			err := validate(root, alt.(map[string]any), v, path)
			if err == nil {
				errs = nil
				break
			}
			errs = append(errs, err.Error())
		}
		if errs != nil {
			return fmt.Errorf("%s: matches no alternative: %s", path, strings.Join(errs, "; "))
		}
	}
	if t, ok := s["type"].(string); ok {
		good := false
		switch x := v.(type) {
		case map[string]any:
			good = t == "object"
		case []any:
			good = t == "array"
		case string:
			good = t == "string"
		case json.Number:
			_, err := x.Int64()
			good = t == "number" || (t == "integer" && (err == nil || !strings.ContainsAny(x.String(), ".eE")))
		case bool:
			good = t == "boolean"
		}
		if !good {
			return fmt.Errorf("%s: %v is not of type %s", path, v, t)
		}
	}
	if c, ok := s["const"]; ok && fmt.Sprint(c) != fmt.Sprint(v) {
		return fmt.Errorf("%s: %v is not %v", path, v, c)
	}
	if e, ok := s["enum"].([]any); ok {
		found := false
		for _, x := range e {
			found = found || fmt.Sprint(x) == fmt.Sprint(v)
		}
		if !found {
			return fmt.Errorf("%s: %v is not one of %v", path, v, e)
		}
	}
	if n, ok := v.(json.Number); ok {
		f, _ := n.Float64()
		if m, ok := s["minimum"].(json.Number); ok {
			if lo, _ := m.Float64(); f < lo {
				return fmt.Errorf("%s: %v < minimum %v", path, f, lo)
			}
		}
		if m, ok := s["maximum"].(json.Number); ok {
			if hi, _ := m.Float64(); f > hi {
				return fmt.Errorf("%s: %v > maximum %v", path, f, hi)
			}
		}
	}
	if arr, ok := v.([]any); ok {
		if items, ok := s["items"].(map[string]any); ok {
			for i, x := range arr {
				if err := validate(root, items, x, fmt.Sprintf("%s[%d]", path, i)); err != nil {
					return err
				}
			}
		}
	}
	if obj, ok := v.(map[string]any); ok {
		for _, r := range asSlice(s["required"]) {
			if _, ok := obj[r.(string)]; !ok {
				return fmt.Errorf("%s: missing required %q", path, r)
			}
		}
		props, _ := s["properties"].(map[string]any)
		for k, x := range obj {
			if p, ok := props[k].(map[string]any); ok {
				if err := validate(root, p, x, path+"."+k); err != nil {
					return err
				}
				continue
			}
			switch ap := s["additionalProperties"].(type) {
			case bool:
				if !ap {
					return fmt.Errorf("%s: unexpected property %q", path, k)
				}
			case map[string]any:
				if err := validate(root, ap, x, path+"."+k); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func asSlice(v any) []any { s, _ := v.([]any); return s }

func decodeNumbers(t *testing.T, b []byte) any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

func loadSchema(t *testing.T) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "schemas", "daemon_api.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	return decodeNumbers(t, b).(map[string]any)
}

// TestMessagesMatchSchema records what the daemon really sends (every
// event type and a score answer) and checks it against
// schemas/daemon_api.schema.json; a broken message must fail.
func TestMessagesMatchSchema(t *testing.T) {
	root := loadSchema(t)
	rq := &fakeRequeuer{}
	s, ts := newTestServer(t, &fakeScorer{}, func(c *Config) { c.Requeuer = rq })
	conn, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(ts.URL, "http")+"/v1/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))

	s.PublishState(schemas.StateRestarting, supervisor.ErrProcessDied)
	_, scoreBody := postJSON(t, ts.URL+"/v1/score", map[string]any{
		"images": []map[string]string{{"data": b64("img-33")}, {"data": b64("junk")}}, "prompt": "p", "aspects": []string{"quality", "authenticity"},
	})
	workflow, _ := os.ReadFile(filepath.Join("testdata", "workflow_api.json"))
	if resp, b := postJSON(t, ts.URL+"/v1/reroll", nodes.RerollRequest{Prompt: workflow, NodeID: "40", SeedNodes: []string{"20"}, Attempt: 1, MaxTries: 2}); resp.StatusCode != 200 {
		t.Fatalf("reroll: %s", b)
	}

	if err := validate(root, root["$defs"].(map[string]any)["score_response"].(map[string]any), decodeNumbers(t, scoreBody), "score_response"); err != nil {
		t.Errorf("score answer: %v\n%s", err, scoreBody)
	}
	types := map[string]bool{}
	for range 4 { // initial state, state, score, reroll
		_, msg, err := conn.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		v := decodeNumbers(t, msg)
		types[v.(map[string]any)["type"].(string)] = true
		if err := validate(root, root, v, "event"); err != nil {
			t.Errorf("event: %v\n%s", err, msg)
		}
	}
	if len(types) != 3 {
		t.Errorf("saw event types %v, want state, score, reroll", types)
	}

	for _, bad := range []string{
		`{"type":"state","data":{"state":"sleeping"}}`,
		`{"type":"score","data":{"request_id":"1","prompt":"p","results":[{"index":0,"error":"","aspects":{"quality":{"mos":3,"rating":"great","source":"predictor"}}}]}}`,
		`{"type":"score","data":{"request_id":"1","prompt":"p","results":[{"index":0,"error":"","aspects":{"quality":{"mos":7,"rating":"good","source":"predictor"}}}]}}`,
		`{"type":"reroll","data":{"prompt_id":"x","attempt":2,"max_tries":3}}`,
		`{"type":"other","data":{}}`,
	} {
		if err := validate(root, root, decodeNumbers(t, []byte(bad)), "event"); err == nil {
			t.Errorf("schema accepts a broken event: %s", bad)
		}
	}
}
