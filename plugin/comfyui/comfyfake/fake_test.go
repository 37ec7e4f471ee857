package comfyfake

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"mime/multipart"
	"net/http"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/m3gate/m3gate/plugin/comfyui"
)

type fixtureLine struct {
	Kind string          `json:"kind"`
	V    json.RawMessage `json:"v"`
}

func readFixture(t *testing.T, name string) []fixtureLine {
	t.Helper()
	f, err := os.Open("../testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []fixtureLine
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<22)
	for sc.Scan() {
		var l fixtureLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatal(err)
		}
		out = append(out, l)
	}
	return out
}

// step is a normalised websocket message: type plus the node it is about.
type step string

func normText(b []byte) (step, string) {
	var m struct {
		Type string         `json:"type"`
		Data map[string]any `json:"data"`
	}
	_ = json.Unmarshal(b, &m)
	pid, _ := m.Data["prompt_id"].(string)
	switch m.Type {
	case "executing":
		if m.Data["node"] == nil {
			return "executing:null", pid
		}
		return step(fmt.Sprintf("executing:%v", m.Data["node"])), pid
	case "executed":
		return step(fmt.Sprintf("executed:%v", m.Data["node"])), pid
	case "progress":
		return step(fmt.Sprintf("progress:%v:%v/%v", m.Data["node"], m.Data["value"], m.Data["max"])), pid
	case "status":
		q := m.Data["status"].(map[string]any)["exec_info"].(map[string]any)["queue_remaining"]
		return step(fmt.Sprintf("status:%v", q)), pid
	case "execution_cached":
		return step(fmt.Sprintf("execution_cached:%v", m.Data["nodes"])), pid
	case "progress_state":
		var parts []string
		nodes := m.Data["nodes"].(map[string]any)
		ids := make([]string, 0, len(nodes))
		for id := range nodes {
			ids = append(ids, id)
		}
		comfyui.SortIDs(ids)
		for _, id := range ids {
			n := nodes[id].(map[string]any)
			parts = append(parts, fmt.Sprintf("%s=%v/%v:%v", id, n["value"], n["max"], n["state"]))
		}
		return step("progress_state:" + strings.Join(parts, ",")), pid
	}
	return step(m.Type), pid
}

// scenario returns the messages the recording client saw for one scenario:
// from the line after the previous "done"/HTTP line up to "done NAME".
func scenario(t *testing.T, lines []fixtureLine, name string) []step {
	t.Helper()
	end := -1
	for i, l := range lines {
		if l.Kind == "done "+name {
			end = i
			break
		}
	}
	if end < 0 {
		t.Fatalf("no scenario %s", name)
	}
	start := end - 1
	for start >= 0 && (strings.HasPrefix(lines[start].Kind, "ws_") || strings.HasPrefix(lines[start].Kind, "POST /prompt "+name)) {
		start--
	}
	var out []step
	for _, l := range lines[start+1 : end] {
		switch l.Kind {
		case "ws_text":
			s, _ := normText(l.V)
			out = append(out, s)
		case "ws_binary":
			var b struct {
				Event int `json:"event"`
			}
			_ = json.Unmarshal(l.V, &b)
			out = append(out, step(fmt.Sprintf("binary:%d", b.Event)))
		}
	}
	return out
}

// wsRecorder reads every frame of one socket.
type wsRecorder struct {
	conn   *websocket.Conn
	frames chan []any // [isBinary bool, data []byte]
}

func dialWS(t *testing.T, base, id string) *wsRecorder {
	t.Helper()
	u := strings.Replace(base, "http://", "ws://", 1) + "/ws?clientId=" + id
	conn, _, err := websocket.DefaultDialer.Dial(u, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := &wsRecorder{conn: conn, frames: make(chan []any, 1000)}
	go func() {
		for {
			typ, data, err := conn.ReadMessage()
			if err != nil {
				close(r.frames)
				return
			}
			r.frames <- []any{typ == websocket.BinaryMessage, data}
		}
	}()
	t.Cleanup(func() { conn.Close() })
	return r
}

// until collects normalised steps until executing:null of the prompt.
func (r *wsRecorder) until(t *testing.T, promptID string) []step {
	t.Helper()
	var out []step
	timeout := time.After(10 * time.Second)
	for {
		select {
		case f, ok := <-r.frames:
			if !ok {
				t.Fatalf("socket closed; got %v", out)
			}
			if f[0].(bool) {
				ev := binary.BigEndian.Uint32(f[1].([]byte))
				out = append(out, step(fmt.Sprintf("binary:%d", ev)))
				continue
			}
			s, pid := normText(f[1].([]byte))
			out = append(out, s)
			if s == "executing:null" && pid == promptID {
				return out
			}
		case <-timeout:
			t.Fatalf("timeout; got %v", out)
		}
	}
}

func (r *wsRecorder) next(t *testing.T) []byte {
	t.Helper()
	select {
	case f := <-r.frames:
		return f[1].([]byte)
	case <-time.After(5 * time.Second):
		t.Fatal("no frame")
	}
	return nil
}

func startFake(t *testing.T, opts ...Option) *Server {
	t.Helper()
	s := New(opts...)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func postJSON(t *testing.T, url string, body any) (int, []byte) {
	t.Helper()
	b, _ := json.Marshal(body)
	resp, err := http.Post(url, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	buf.ReadFrom(resp.Body)
	return resp.StatusCode, buf.Bytes()
}

func promptFromFixture(t *testing.T, lines []fixtureLine, historyKind string) map[string]any {
	t.Helper()
	for _, l := range lines {
		if l.Kind != historyKind {
			continue
		}
		var pair []json.RawMessage
		_ = json.Unmarshal(l.V, &pair)
		var m map[string]struct {
			Prompt []json.RawMessage `json:"prompt"`
		}
		if err := json.Unmarshal(pair[1], &m); err != nil {
			t.Fatal(err)
		}
		for _, h := range m {
			var p map[string]any
			_ = json.Unmarshal(h.Prompt[2], &p)
			return p
		}
	}
	t.Fatalf("no %s", historyKind)
	return nil
}

// TestFixtureSequenceWSImages replays the ws_images scenario (EmptyImage →
// SaveImageWebsocket) and checks the submitter sees exactly the recorded
// message sequence, progress_state contents and binary frames included.
func TestFixtureSequenceWSImages(t *testing.T) {
	lines := readFixture(t, "transcript-basic.jsonl")
	want := scenario(t, lines, "ws_images")
	if len(want) != 19 || want[0] != "status:1" || want[len(want)-1] != "executing:null" {
		t.Fatalf("recorded scenario: %v", want)
	}
	prompt := promptFromFixture(t, lines, "GET /history/{id} ws_images")

	s := startFake(t)
	ws := dialWS(t, s.URL(), "sidecar-test")
	if got := string(ws.next(t)); !strings.Contains(got, `"sid":"sidecar-test"`) {
		t.Fatalf("first message %s", got)
	}
	code, body := postJSON(t, s.URL()+"/prompt", map[string]any{"prompt": prompt, "client_id": "sidecar-test", "prompt_id": "p-1"})
	if code != 200 {
		t.Fatalf("POST /prompt: %d %s", code, body)
	}
	got := ws.until(t, "p-1")
	if !reflect.DeepEqual(got, want) {
		t.Errorf("sequence differs\n got: %v\nwant: %v", got, want)
	}
}

// TestFixtureSequenceCached checks an identical re-queue: execution_cached
// lists every node, output nodes replay their cached ui (same files), and
// no node executes.
func TestFixtureSequenceCached(t *testing.T) {
	s := startFake(t)
	ws := dialWS(t, s.URL(), "c1")
	ws.next(t)
	prompt := map[string]any{
		"4": map[string]any{"class_type": "EmptyImage", "inputs": map[string]any{"width": 8, "height": 8, "batch_size": 2, "color": 255}},
		"5": map[string]any{"class_type": "PreviewImage", "inputs": map[string]any{"images": []any{"4", 0}}},
		"6": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"images": []any{"4", 0}, "filename_prefix": "probe/q"}},
	}
	postJSON(t, s.URL()+"/prompt", map[string]any{"prompt": prompt, "client_id": "c1", "prompt_id": "first"})
	first := ws.until(t, "first")
	postJSON(t, s.URL()+"/prompt", map[string]any{"prompt": prompt, "client_id": "c1", "prompt_id": "second"})
	second := ws.until(t, "second")
	wantSecond := []step{"status:1", "status:1", "execution_start", "execution_cached:[4 5 6]", "executed:5", "progress_state:5=1/1:finished",
		"executed:6", "progress_state:5=1/1:finished,6=1/1:finished",
		"execution_success", "status:0", "executing:null"}
	if !reflect.DeepEqual(second, wantSecond) {
		t.Errorf("re-queue\n got: %v\nwant: %v", second, wantSecond)
	}
	if first[3] != "execution_cached:[]" || !contains(stepsStr(first), "executing:4") {
		t.Errorf("first run %v", first)
	}
	var h1, h2 map[string]historyEntry
	getJSON(t, s.URL()+"/history/first", &h1)
	getJSON(t, s.URL()+"/history/second", &h2)
	if !reflect.DeepEqual(h1["first"].Outputs, h2["second"].Outputs) || len(h1["first"].Outputs) != 2 {
		t.Errorf("cached outputs differ: %v vs %v", h1["first"].Outputs, h2["second"].Outputs)
	}
	if s.PromptsExecuted() != 2 {
		t.Errorf("prompts %d", s.PromptsExecuted())
	}
}

func stepsStr(s []step) []string {
	out := make([]string, len(s))
	for i, x := range s {
		out[i] = string(x)
	}
	return out
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}

// TestFixtureValidationErrors posts the recorded invalid prompts and
// compares the 400 bodies with the recorded ones.
func TestFixtureValidationErrors(t *testing.T) {
	lines := readFixture(t, "transcript-basic.jsonl")
	s := startFake(t)
	bodies := map[string]map[string]any{
		"invalid_value": {"prompt": map[string]any{
			"1": map[string]any{"class_type": "EmptyImage", "inputs": map[string]any{"width": 0, "height": 8, "batch_size": 1, "color": 0}},
			"2": map[string]any{"class_type": "PreviewImage", "inputs": map[string]any{"images": []any{"1", 0}}}}},
		"unknown_class": {"prompt": map[string]any{"1": map[string]any{"class_type": "NoSuchNode", "inputs": map[string]any{}}}},
		"no_outputs": {"prompt": map[string]any{
			"1": map[string]any{"class_type": "EmptyImage", "inputs": map[string]any{"width": 8, "height": 8, "batch_size": 1, "color": 0}}}},
		"no prompt": {"client_id": "x"},
	}
	for name, body := range bodies {
		var want any
		for _, l := range lines {
			if l.Kind == "POST /prompt "+name {
				var pair []json.RawMessage
				_ = json.Unmarshal(l.V, &pair)
				_ = json.Unmarshal(pair[1], &want)
			}
		}
		code, got := postJSON(t, s.URL()+"/prompt", body)
		var gotV any
		_ = json.Unmarshal(got, &gotV)
		if code != 400 || !reflect.DeepEqual(gotV, want) {
			t.Errorf("%s: %d\n got: %s\nwant: %v", name, code, got, want)
		}
	}
}

// TestWhoReceivesWhat follows transcript-two-clients: a prompt's events go
// only to its client; status goes to all; a prompt without client_id sends
// progress to everyone and no executing/executed messages.
func TestWhoReceivesWhat(t *testing.T) {
	s := startFake(t, WithPreviews(true))
	a := dialWS(t, s.URL(), "submitter")
	b := dialWS(t, s.URL(), "observer")
	a.next(t)
	b.next(t)
	if err := a.conn.WriteMessage(websocket.TextMessage, []byte(`{"type":"feature_flags","data":{"supports_preview_metadata":true}}`)); err != nil {
		t.Fatal(err)
	}
	if got := string(a.next(t)); !strings.Contains(got, `"max_upload_size":104857600`) {
		t.Fatalf("feature flags reply %s", got)
	}
	prompt := map[string]any{
		"1": map[string]any{"class_type": "EmptyLatentImage", "inputs": map[string]any{"width": 64, "height": 64, "batch_size": 1}},
		"2": map[string]any{"class_type": "KSampler", "inputs": map[string]any{"seed": 7, "steps": 2, "cfg": 7, "sampler_name": "euler",
			"scheduler": "normal", "denoise": 1, "latent_image": []any{"1", 0}, "model": []any{"1", 0}, "positive": []any{"1", 0}, "negative": []any{"1", 0}}},
		"3": map[string]any{"class_type": "VAEDecode", "inputs": map[string]any{"samples": []any{"2", 0}, "vae": []any{"1", 0}}},
		"4": map[string]any{"class_type": "SaveImage", "inputs": map[string]any{"images": []any{"3", 0}, "filename_prefix": "t"}},
	}
	postJSON(t, s.URL()+"/prompt", map[string]any{"prompt": prompt, "client_id": "submitter", "prompt_id": "pa"})
	ga := a.until(t, "pa")
	if !contains(stepsStr(ga), "binary:4") || contains(stepsStr(ga), "binary:1") || !contains(stepsStr(ga), "executed:4") {
		t.Errorf("submitter saw %v", ga)
	}
	// The observer saw only status messages meanwhile.
	time.Sleep(50 * time.Millisecond)
	for len(b.frames) > 0 {
		f := <-b.frames
		if st, _ := normText(f[1].([]byte)); !strings.HasPrefix(string(st), "status:") {
			t.Errorf("observer got %s", st)
		}
	}
	// No client id: progress to everyone, no executing.
	prompt["2"].(map[string]any)["inputs"].(map[string]any)["seed"] = 8
	postJSON(t, s.URL()+"/prompt", map[string]any{"prompt": prompt, "prompt_id": "pn"})
	deadline := time.After(5 * time.Second)
	var gb []string
	for !contains(gb, "status:0") || !contains(gb, "binary:1") {
		select {
		case f := <-b.frames:
			if f[0].(bool) {
				gb = append(gb, "binary:1")
				continue
			}
			st, _ := normText(f[1].([]byte))
			gb = append(gb, string(st))
		case <-deadline:
			t.Fatalf("observer saw %v", gb)
		}
	}
	for _, x := range gb {
		if strings.HasPrefix(x, "executing") || strings.HasPrefix(x, "executed") || strings.HasPrefix(x, "execution_") {
			t.Errorf("observer got %s for a prompt without client", x)
		}
	}
	if !contains(gb, "progress:2:1/2") {
		t.Errorf("observer saw no progress: %v", gb)
	}
}

// TestFixtureSequencesProbe replays the scenarios of the transcript recorded
// with the probe pack (first run, identical re-queue, changed threshold,
// runtime error) on the fake with the QualityProbe node and checks the
// submitter sees the recorded message sequence, message for message.
func TestFixtureSequencesProbe(t *testing.T) {
	lines := readFixture(t, "transcript-custom-base.jsonl")
	s := startFake(t, WithQualityProbe())
	img := image.NewRGBA(image.Rect(0, 0, 64, 48))
	for i := range img.Pix {
		img.Pix[i] = 117
	}
	var pngBuf, body bytes.Buffer
	png.Encode(&pngBuf, img)
	mw := multipart.NewWriter(&body)
	fw, _ := mw.CreateFormFile("image", "probe.png")
	fw.Write(pngBuf.Bytes())
	mw.Close()
	resp, err := http.Post(s.URL()+"/upload/image", mw.FormDataContentType(), &body)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	ws := dialWS(t, s.URL(), "sidecar-1960e908")
	ws.next(t)
	for _, name := range []string{"first", "second_same", "reroll_threshold", "runtime_error"} {
		want := scenario(t, lines, name)
		if len(want) < 8 || want[len(want)-1] != "executing:null" {
			t.Fatalf("%s: recorded scenario too short: %v", name, want)
		}
		prompt := promptFromFixture(t, lines, "GET /history/{id} "+name)
		code, b := postJSON(t, s.URL()+"/prompt", map[string]any{"prompt": prompt, "client_id": "sidecar-1960e908", "prompt_id": name})
		if code != 200 {
			t.Fatalf("%s: %d %s", name, code, b)
		}
		got := ws.until(t, name)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: sequence differs\n got: %v\nwant: %v", name, got, want)
		}
	}
	// The runtime error's history says so, like the recorded one.
	var h map[string]historyEntry
	getJSON(t, s.URL()+"/history/runtime_error", &h)
	if st := h["runtime_error"].Status; st.StatusStr != "error" || st.Completed || len(st.Messages) != 3 || st.Messages[2][0] != "execution_error" {
		t.Errorf("history status %+v", st)
	}
}
