package comfyui

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fixtureLine is one line of a recorded transcript (testdata/*.jsonl, copied
// from the shared fixtures).
type fixtureLine struct {
	T    float64         `json:"t"`
	Kind string          `json:"kind"`
	V    json.RawMessage `json:"v"`
}

func readFixtures(t testing.TB) map[string][]fixtureLine {
	t.Helper()
	files, err := filepath.Glob("testdata/transcript-*.jsonl")
	if err != nil || len(files) == 0 {
		t.Fatalf("no transcripts in testdata: %v", err)
	}
	out := map[string][]fixtureLine{}
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(fh)
		sc.Buffer(nil, 1<<22)
		for sc.Scan() {
			var l fixtureLine
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			out[filepath.Base(f)] = append(out[filepath.Base(f)], l)
		}
		fh.Close()
	}
	return out
}

func isWSText(kind string) bool {
	switch kind {
	case "ws_text", "ws2_first", "ws2_feature_flags_reply", "A", "B":
		return true
	}
	return false
}

// TestDecodeFixtureMessages decodes every JSON websocket message of every
// transcript into its typed event and checks the fields against a generic
// decode of the same message.
func TestDecodeFixtureMessages(t *testing.T) {
	known := map[string]bool{TypeStatus: true, TypeExecutionStart: true, TypeExecutionCached: true,
		TypeExecuting: true, TypeProgress: true, TypeProgressState: true, TypeExecuted: true,
		TypeExecutionSuccess: true, TypeExecutionError: true, TypeExecutionInterrupted: true, TypeFeatureFlags: true}
	seen := map[string]int{}
	for file, lines := range readFixtures(t) {
		for i, l := range lines {
			if !isWSText(l.Kind) {
				continue
			}
			ev, err := DecodeMessage(l.V)
			if err != nil {
				t.Errorf("%s:%d: %v", file, i+1, err)
				continue
			}
			var generic struct {
				Type string         `json:"type"`
				Data map[string]any `json:"data"`
			}
			if err := json.Unmarshal(l.V, &generic); err != nil {
				t.Fatal(err)
			}
			if got, want := ev.EventType(), generic.Type; got != want {
				t.Errorf("%s:%d: type %q, want %q", file, i+1, got, want)
			}
			seen[generic.Type]++
			if _, unknown := ev.(*UnknownEvent); unknown == known[generic.Type] {
				t.Errorf("%s:%d: %s decoded as %T", file, i+1, generic.Type, ev)
			}
			if pe, ok := ev.(PromptEvent); ok {
				want, _ := generic.Data["prompt_id"].(string)
				if pe.Prompt() != want {
					t.Errorf("%s:%d: prompt %q, want %q", file, i+1, pe.Prompt(), want)
				}
			}
			switch e := ev.(type) {
			case *StatusEvent:
				st := generic.Data["status"].(map[string]any)["exec_info"].(map[string]any)
				if got, want := e.QueueRemaining(), int(st["queue_remaining"].(float64)); got != want {
					t.Errorf("%s:%d: queue_remaining %d, want %d", file, i+1, got, want)
				}
				sid, _ := generic.Data["sid"].(string)
				if e.SID != sid {
					t.Errorf("%s:%d: sid %q, want %q", file, i+1, e.SID, sid)
				}
			case *ExecutingEvent:
				node, isStr := generic.Data["node"].(string)
				if e.Done() == isStr {
					t.Errorf("%s:%d: Done()=%v for node %v", file, i+1, e.Done(), generic.Data["node"])
				}
				if isStr && *e.Node != node {
					t.Errorf("%s:%d: node %q, want %q", file, i+1, *e.Node, node)
				}
			case *ExecutionCachedEvent:
				if got, want := len(e.Nodes), len(generic.Data["nodes"].([]any)); got != want {
					t.Errorf("%s:%d: %d cached nodes, want %d", file, i+1, got, want)
				}
			case *ExecutedEvent:
				if e.Node != generic.Data["node"].(string) || len(e.Output) != len(generic.Data["output"].(map[string]any)) {
					t.Errorf("%s:%d: executed decoded as %+v", file, i+1, e)
				}
				if imgs, ok := generic.Data["output"].(map[string]any)["images"].([]any); ok && len(e.Output.Images()) != len(imgs) {
					t.Errorf("%s:%d: %d images, want %d", file, i+1, len(e.Output.Images()), len(imgs))
				}
			case *ProgressEvent:
				if e.Max != generic.Data["max"].(float64) || e.Value != generic.Data["value"].(float64) || e.Node != generic.Data["node"] {
					t.Errorf("%s:%d: progress decoded as %+v", file, i+1, e)
				}
			case *ProgressStateEvent:
				nodes := generic.Data["nodes"].(map[string]any)
				if len(e.Nodes) != len(nodes) {
					t.Errorf("%s:%d: %d nodes, want %d", file, i+1, len(e.Nodes), len(nodes))
				}
				for id, n := range e.Nodes {
					g := nodes[id].(map[string]any)
					if n.NodeID != id || n.State != g["state"] || n.Max != g["max"].(float64) || n.ParentNodeID != nil {
						t.Errorf("%s:%d: node %s decoded as %+v", file, i+1, id, n)
					}
				}
			case *ExecutionErrorEvent:
				if e.NodeID == "" || e.ExceptionType != "ValueError" || len(e.Traceback) == 0 {
					t.Errorf("%s:%d: error decoded as %+v", file, i+1, e)
				}
			case *ExecutionInterruptedEvent:
				if e.NodeID != "2" || len(e.Executed) != 1 {
					t.Errorf("%s:%d: interrupted decoded as %+v", file, i+1, e)
				}
			case *FeatureFlagsEvent:
				if !e.SupportsPreviewMetadata || e.MaxUploadSize != 104857600 {
					t.Errorf("%s:%d: feature flags decoded as %+v", file, i+1, e)
				}
			case *UnknownEvent:
				if !json.Valid(e.Data) || len(e.Data) == 0 {
					t.Errorf("%s:%d: raw data lost", file, i+1)
				}
			}
		}
	}
	for typ := range known {
		if seen[typ] == 0 {
			t.Errorf("no %s message in the fixtures", typ)
		}
	}
}

// binarySummary is how transcripts record binary frames.
type binarySummary struct {
	Len       int              `json:"len"`
	Event     uint32           `json:"event"`
	ImageType int              `json:"image_type"`
	Magic     string           `json:"magic"`
	NodeID    string           `json:"node_id"`
	Text      string           `json:"text"`
	Metadata  *PreviewMetadata `json:"metadata"`
}

// TestDecodeFixtureBinary rebuilds every recorded binary frame from its
// summary (event, header, length) and decodes it.
func TestDecodeFixtureBinary(t *testing.T) {
	n := 0
	for file, lines := range readFixtures(t) {
		for i, l := range lines {
			if l.Kind != "ws_binary" && !strings.HasSuffix(l.Kind, "_bin") {
				continue
			}
			n++
			var s binarySummary
			if err := json.Unmarshal(l.V, &s); err != nil {
				t.Fatal(err)
			}
			magic, _ := hex.DecodeString(s.Magic)
			var frame []byte
			switch s.Event {
			case BinaryPreviewImage:
				img := append(magic, bytes.Repeat([]byte{0}, s.Len-8-len(magic))...)
				frame = EncodePreviewFrame(s.ImageType, img)
			case BinaryText:
				frame = EncodeTextFrame(s.NodeID, s.Text)
			case BinaryPreviewWithMetadata:
				var err error
				frame, err = EncodePreviewMetadataFrame(*s.Metadata, magic)
				if err != nil {
					t.Fatal(err)
				}
				// The recorded length includes the full image: pad it.
				frame = append(frame, bytes.Repeat([]byte{0}, max(0, s.Len-len(frame)))...)
			default:
				t.Fatalf("%s:%d: unexpected event %d", file, i+1, s.Event)
			}
			if len(frame) != s.Len {
				t.Errorf("%s:%d: rebuilt frame has %d bytes, recorded %d", file, i+1, len(frame), s.Len)
			}
			ev, err := DecodeBinary(frame)
			if err != nil {
				t.Errorf("%s:%d: %v", file, i+1, err)
				continue
			}
			switch e := ev.(type) {
			case *PreviewImageEvent:
				if e.Format != s.ImageType || !bytes.HasPrefix(e.Data, magic) {
					t.Errorf("%s:%d: preview %d %x", file, i+1, e.Format, e.Data[:4])
				}
			case *TextEvent:
				if e.NodeID != s.NodeID || e.Text != s.Text {
					t.Errorf("%s:%d: text %q %q", file, i+1, e.NodeID, e.Text)
				}
			case *PreviewWithMetadataEvent:
				if e.Metadata != *s.Metadata || !bytes.HasPrefix(e.Data, magic) || e.Prompt() == "" {
					t.Errorf("%s:%d: preview metadata %+v", file, i+1, e.Metadata)
				}
			default:
				t.Errorf("%s:%d: decoded as %T", file, i+1, ev)
			}
		}
	}
	if n == 0 {
		t.Fatal("no binary frames in fixtures")
	}
}

func TestDecodeBinaryErrors(t *testing.T) {
	tests := []struct {
		name  string
		frame []byte
	}{
		{"short", []byte{0, 0, 1}},
		{"preview without format", []byte{0, 0, 0, 1, 0, 0}},
		{"preview bad format", []byte{0, 0, 0, 1, 0, 0, 0, 9}},
		{"text overrun", []byte{0, 0, 0, 3, 0, 0, 0, 9, 'a'}},
		{"metadata overrun", []byte{0, 0, 0, 4, 0, 0, 1, 0, '{'}},
		{"metadata not json", []byte{0, 0, 0, 4, 0, 0, 0, 1, '{'}},
	}
	for _, tt := range tests {
		if _, err := DecodeBinary(tt.frame); err == nil {
			t.Errorf("%s: no error", tt.name)
		}
	}
	ev, err := DecodeBinary([]byte{0, 0, 0, 7, 1, 2})
	if err != nil {
		t.Fatal(err)
	}
	if u, ok := ev.(*UnknownBinary); !ok || u.Event != 7 || !bytes.Equal(u.Data, []byte{1, 2}) {
		t.Errorf("unknown frame decoded as %#v", ev)
	}
}

// TestDecodeFixtureHTTP decodes every recorded HTTP answer the client
// reads: /prompt (200 and 400), /history, /queue.
func TestDecodeFixtureHTTP(t *testing.T) {
	var n400, nHist, nQueue int
	for file, lines := range readFixtures(t) {
		for i, l := range lines {
			var pair []json.RawMessage
			if !strings.HasPrefix(l.Kind, "GET ") && !strings.HasPrefix(l.Kind, "POST ") {
				continue
			}
			if json.Unmarshal(l.V, &pair) != nil || len(pair) != 2 {
				continue
			}
			var code int
			_ = json.Unmarshal(pair[0], &code)
			body := pair[1]
			switch {
			case strings.HasPrefix(l.Kind, "POST /prompt") && code == 400:
				n400++
				pe := &PromptError{StatusCode: code}
				if err := json.Unmarshal(body, pe); err != nil || pe.Err.Type == "" || pe.Err.Message == "" {
					t.Errorf("%s:%d: prompt error %v %+v", file, i+1, err, pe)
				}
				if strings.Contains(l.Kind, "invalid_value") {
					ne, ok := pe.NodeErrors["1"]
					if !ok || ne.ClassType != "EmptyImage" || len(ne.Errors) != 1 || ne.Errors[0].Details != "width" ||
						len(ne.DependentOutputs) != 1 {
						t.Errorf("%s:%d: node errors %+v", file, i+1, pe.NodeErrors)
					}
					if !strings.Contains(pe.Error(), "node 1 (EmptyImage): Value 0 smaller than min of 1") {
						t.Errorf("error text %q", pe.Error())
					}
				}
			case strings.HasPrefix(l.Kind, "POST /prompt"), l.Kind == "POST noclient", strings.HasPrefix(l.Kind, "POST A"):
				var pr PromptResponse
				if err := json.Unmarshal(body, &pr); err != nil || pr.PromptID == "" {
					t.Errorf("%s:%d: prompt answer %v %+v", file, i+1, err, pr)
				}
			case strings.HasPrefix(l.Kind, "GET /history"):
				nHist++
				var m map[string]HistoryEntry
				if err := decodeExact(body, &m); err != nil || len(m) == 0 {
					t.Fatalf("%s:%d: history %v", file, i+1, err)
				}
				for id, h := range m {
					if h.Prompt.PromptID != id || len(h.Prompt.Prompt) == 0 || len(h.Status.Messages) == 0 {
						t.Errorf("%s:%d: history entry %s: %+v", file, i+1, id, h.Prompt)
					}
					if h.Prompt.ExtraData["client_id"] == nil {
						t.Errorf("%s:%d: no client_id in extra_data", file, i+1)
					}
					res, err := resultFromHistory(id, &h)
					switch h.Status.StatusStr {
					case "success":
						if err != nil || (strings.Contains(l.Kind, "first") && len(res.Images()) != 3) {
							t.Errorf("%s:%d: success entry: %v, %d images", file, i+1, err, len(res.Images()))
						}
					case "error":
						if err == nil {
							t.Errorf("%s:%d: error entry decoded without error", file, i+1)
						}
					}
				}
			case strings.HasPrefix(l.Kind, "GET /queue"):
				nQueue++
				var q QueueState
				if err := decodeExact(body, &q); err != nil {
					t.Errorf("%s:%d: queue %v", file, i+1, err)
				}
				for _, it := range append(q.Running, q.Pending...) {
					if !q.Has(it.PromptID) || len(it.OutputsToExecute) == 0 {
						t.Errorf("%s:%d: queue item %+v", file, i+1, it)
					}
				}
			}
		}
	}
	if n400 == 0 || nHist == 0 || nQueue == 0 {
		t.Errorf("fixtures lacked answers: %d 400s, %d histories, %d queues", n400, nHist, nQueue)
	}
}

// BenchmarkDecodeMessage decodes every recorded JSON message once per
// iteration (progress_state dominates a real stream).
func BenchmarkDecodeMessage(b *testing.B) {
	var msgs [][]byte
	for _, lines := range readFixtures(b) {
		for _, l := range lines {
			if isWSText(l.Kind) {
				msgs = append(msgs, l.V)
			}
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, m := range msgs {
			if _, err := DecodeMessage(m); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(len(msgs)), "msgs/op")
}

func TestDecodeMessageErrors(t *testing.T) {
	tests := []struct{ name, msg, want string }{
		{"not json", `{"type":`, "decode message"},
		{"no type", `{"data":{}}`, "no type"},
		{"null data", `{"type":"executing","data":null}`, "no data"},
		{"wrong shape", `{"type":"execution_cached","data":{"nodes":"1"}}`, "decode execution_cached"},
	}
	for _, tt := range tests {
		_, err := DecodeMessage([]byte(tt.msg))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want %q", tt.name, err, tt.want)
		}
	}
	ev, err := DecodeMessage([]byte(`{"type":"executing","data":{"node":"7"}}`)) // sent on reconnection
	if e, ok := ev.(*ExecutingEvent); err != nil || !ok || e.Done() || *e.Node != "7" || e.Prompt() != "" {
		t.Errorf("reconnection executing: %#v %v", ev, err)
	}
	msg, err := EncodeMessage(TypeFeatureFlags, map[string]any{"supports_preview_metadata": true})
	if err != nil || string(msg) != `{"type":"feature_flags","data":{"supports_preview_metadata":true}}` {
		t.Errorf("feature flags message %s %v", msg, err)
	}
}
