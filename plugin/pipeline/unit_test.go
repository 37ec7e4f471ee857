package pipeline

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/m3gate/m3gate/plugin/comfyui"
	"github.com/m3gate/m3gate/schemas/api"
)

func TestGatePass(t *testing.T) {
	sc := func(q, c float64) Scores {
		return Scores{Aspects: map[string]AspectScore{"quality": {MOS: q}, "correspondence": {MOS: c}}}
	}
	th := map[string]float64{"quality": 3.5, "correspondence": 3}
	tests := []struct {
		name string
		gate Gate
		s    Scores
		want bool
	}{
		{"all met", Gate{Thresholds: th}, sc(3.5, 3), true},
		{"all one short", Gate{Thresholds: th}, sc(3.4, 4), false},
		{"any one met", Gate{Thresholds: th, Mode: ModeAny}, sc(3.4, 4), true},
		{"any none met", Gate{Thresholds: th, Mode: ModeAny}, sc(1, 1), false},
		{"missing aspect", Gate{Thresholds: map[string]float64{"authenticity": 1}}, sc(5, 5), false},
		{"scoring error", Gate{}, Scores{Error: "boom"}, false},
		{"no thresholds", Gate{}, sc(0, 0), true},
	}
	for _, tt := range tests {
		if got := tt.gate.Pass(tt.s); got != tt.want {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestParseThresholdsAndMode(t *testing.T) {
	got, err := ParseThresholds([]string{"quality=3.5", "correspondence=3, authenticity=2.5"})
	want := map[string]float64{"quality": 3.5, "correspondence": 3, "authenticity": 2.5}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("got %v %v, want %v", got, err, want)
	}
	for _, bad := range []string{"quality", "=3", "quality=x", "quality=7"} {
		if _, err := ParseThresholds([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if m, err := ParseMode("ANY"); err != nil || m != ModeAny {
		t.Errorf("mode %v %v", m, err)
	}
	if m, err := ParseMode(""); err != nil || m != ModeAll {
		t.Errorf("mode %v %v", m, err)
	}
	if _, err := ParseMode("most"); err == nil {
		t.Error("bad mode accepted")
	}
}

func TestSeedInputs(t *testing.T) {
	w, err := comfyui.ParseWorkflow([]byte(`{
	 "1": {"class_type": "KSampler", "inputs": {"seed": 18446744073709551615, "positive": ["4", 0]}},
	 "2": {"class_type": "KSamplerAdvanced", "inputs": {"noise_seed": ["3", 0], "positive": ["5", 0]}},
	 "3": {"class_type": "PrimitiveInt", "inputs": {"value": 77}},
	 "4": {"class_type": "CLIPTextEncode", "inputs": {"text": ["6", 0]}},
	 "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "second"}},
	 "6": {"class_type": "PrimitiveString", "inputs": {"value": "from a primitive"}},
	 "7": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}
	}`))
	if err != nil {
		t.Fatal(err)
	}
	got, err := SeedInputs(w, nil)
	want := []SeedInput{{Node: "1", Input: "seed", Value: 18446744073709551615}, {Node: "3", Input: "value", Value: 77}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("all seeds: %v %v, want %v", got, err, want)
	}
	got, err = SeedInputs(w, []string{"2"})
	if err != nil || !reflect.DeepEqual(got, want[1:]) {
		t.Errorf("named: %v %v", got, err)
	}
	for _, nodes := range [][]string{{"9"}, {"7"}} {
		if _, err := SeedInputs(w, nodes); err == nil {
			t.Errorf("%v accepted", nodes)
		}
	}
	applied := ApplySeeds(w, want, []uint64{5, 6})
	if applied["1"].Inputs["seed"] != json.Number("5") || applied["3"].Inputs["value"] != json.Number("6") {
		t.Errorf("applied %v %v", applied["1"].Inputs, applied["3"].Inputs)
	}
	if w["1"].Inputs["seed"] != json.Number("18446744073709551615") {
		t.Error("ApplySeeds changed the original")
	}
	if got := PromptText(w); got != "from a primitive" {
		t.Errorf("prompt text %q", got)
	}
	none, _ := comfyui.ParseWorkflow([]byte(`{"1":{"class_type":"EmptyImage","inputs":{"width":8}}}`))
	if _, err := SeedInputs(none, nil); err == nil || !strings.Contains(err.Error(), "no sampler seed") {
		t.Errorf("no seeds: %v", err)
	}
	if got := PromptText(none); got != "" {
		t.Errorf("prompt text %q", got)
	}
}

func TestDaemonScorer(t *testing.T) {
	var gotRaw map[string]any
	var gotReq api.ScoreRequest
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/score" || r.Method != http.MethodPost {
			http.NotFound(w, r)
			return
		}
		if r.Header.Get("Authorization") != "Bearer s3cret" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		body, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(body, &gotReq); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		_ = json.Unmarshal(body, &gotRaw)
		if gotReq.Prompt == "fail" {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte(`{"error":"sidecar not ready"}`))
			return
		}
		// Answer out of order, with a per-image error on the second.
		w.Write([]byte(`{"results":[
		 {"index":1,"error":"bad image","aspects":{}},
		 {"index":0,"error":"","aspects":{"quality":{"mos":3.1,"rating":"good","word_probs":{"bad":0.1,"good":0.9},"description":"crisp","source":"predictor"}}}]}`))
	}))
	defer srv.Close()
	d := &DaemonScorer{URL: srv.URL + "/", Token: "s3cret"}
	imgs := []Image{{Data: []byte("png-bytes-1")}, {Data: []byte("png-bytes-2")}}
	got, err := d.Score(context.Background(), imgs, "a fox", []string{"quality"})
	if err != nil {
		t.Fatal(err)
	}
	wire := gotRaw["images"].([]any)[1].(map[string]any)["data"]
	if raw, _ := base64.StdEncoding.DecodeString(wire.(string)); string(raw) != "png-bytes-2" || gotReq.Prompt != "a fox" ||
		!reflect.DeepEqual(gotReq.Aspects, []string{"quality"}) {
		t.Errorf("request %s", gotRaw)
	}
	q := got[0].Aspects["quality"]
	if q.MOS != 3.1 || q.Rating != "good" || q.WordProbs["good"] != 0.9 || q.Source != "predictor" || got[0].Error != "" {
		t.Errorf("result 0 %+v", got[0])
	}
	if got[1].Error != "bad image" || (Gate{Thresholds: map[string]float64{"quality": 0}}).Pass(got[1]) {
		t.Errorf("result 1 %+v", got[1])
	}
	if _, err := d.Score(context.Background(), imgs, "fail", nil); err == nil || !strings.Contains(err.Error(), "sidecar not ready") || !transientScoreError(err) {
		t.Errorf("503: %v (transient %v)", err, transientScoreError(err))
	}
	if _, err := d.Score(context.Background(), imgs[:1], "x", nil); err == nil || !strings.Contains(err.Error(), "out of range") || transientScoreError(err) {
		t.Errorf("index out of range: %v (transient %v)", err, transientScoreError(err))
	}
	down := &DaemonScorer{URL: "http://127.0.0.1:1"}
	if _, err := down.Score(context.Background(), imgs, "x", nil); err == nil || !strings.Contains(err.Error(), "m3gate serve") || !transientScoreError(err) {
		t.Errorf("daemon down: %v (transient %v)", err, transientScoreError(err))
	}
	if err := down.Ping(context.Background(), 0); err == nil || !strings.Contains(err.Error(), "m3gate serve") {
		t.Errorf("ping a daemon that is down: %v", err)
	}
	health := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
		}
	}))
	defer health.Close()
	if err := (&DaemonScorer{URL: health.URL}).Ping(context.Background(), 0); err != nil {
		t.Errorf("ping: %v", err)
	}
	if err := (&DaemonScorer{URL: health.URL + "/sub"}).Ping(context.Background(), 0); err == nil || !strings.Contains(err.Error(), "HTTP 404") {
		t.Errorf("ping a server that is no daemon: %v", err)
	}
	for code, want := range map[int]bool{400: false, 404: false, 500: false, 429: true, 502: true, 503: true, 504: true} {
		if got := transientScoreError(fmt.Errorf("x: %w", &DaemonError{StatusCode: code})); got != want {
			t.Errorf("HTTP %d transient %v, want %v", code, got, want)
		}
	}
}
