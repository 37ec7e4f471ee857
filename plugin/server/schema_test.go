package server

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"errors"
	"github.com/m3gate/m3gate/plugin/supervisor"
	"github.com/m3gate/m3gate/schemas"
	"github.com/m3gate/m3gate/schemas/api"
	"github.com/m3gate/m3gate/schemas/jsonschema"
)

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
	s, ts := newTestServer(t, &fakeScorer{}, func(c *Config) { c.Requeuer, c.ComfyUIServers = rq, []string{"http://127.0.0.1:8188"} })
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
	if resp, b := postJSON(t, ts.URL+"/v1/reroll", api.RerollRequest{Prompt: workflow, NodeID: "40", SeedNodes: []string{"20"}, Attempt: 1, MaxTries: 2}); resp.StatusCode != 200 {
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

// validate checks v against the schema part s of root (schemas/jsonschema).
func validate(root, s map[string]any, v any, path string) error {
	if errs := jsonschema.New(root).ValidateAt(s, v, path); len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}
