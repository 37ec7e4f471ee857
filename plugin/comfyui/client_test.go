package comfyui_test

import (
	"bytes"
	"compress/zlib"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"image"
	"image/png"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/m3gate/m3gate/plugin/comfyui"
	"github.com/m3gate/m3gate/plugin/comfyui/comfyfake"
)

// sdWorkflow is a text-to-image API workflow like ComfyUI's default graph.
func sdWorkflow(seed string) []byte {
	return []byte(`{
 "3": {"class_type": "KSampler", "inputs": {"seed": ` + seed + `, "steps": 20, "cfg": 8, "sampler_name": "euler", "scheduler": "normal",
       "denoise": 1, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
 "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "fake.safetensors"}},
 "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
 "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox in snow", "clip": ["4", 1]}},
 "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
 "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
 "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}}
}`)
}

func startFake(t *testing.T, opts ...comfyfake.Option) *comfyfake.Server {
	t.Helper()
	s := comfyfake.New(opts...)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func connect(t *testing.T, url string, opts ...comfyui.Option) *comfyui.Client {
	t.Helper()
	opts = append([]comfyui.Option{comfyui.WithBackoff(10*time.Millisecond, 50*time.Millisecond)}, opts...)
	c, err := comfyui.New(url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func mustWorkflow(t *testing.T, b []byte) comfyui.Workflow {
	t.Helper()
	w, err := comfyui.ParseWorkflow(b)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func brightness(img image.Image) uint8 {
	r, _, _, _ := img.At(1, 0).RGBA()
	return uint8(r >> 8)
}

func TestClientRunPromptExactSeed(t *testing.T) {
	s := startFake(t)
	c := connect(t, s.URL())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const maxSeed = "18446744073709551615"
	w := mustWorkflow(t, sdWorkflow(maxSeed))
	res, err := c.RunPrompt(ctx, comfyui.PromptRequest{Prompt: w, ExtraData: map[string]any{"extra_pnginfo": map[string]any{"m3": "x"}}})
	if err != nil {
		t.Fatal(err)
	}
	imgs := res.Images()
	if len(imgs) != 1 || imgs[0].Node != "9" || imgs[0].Type != "output" || !res.FromHistory {
		t.Fatalf("images %+v", imgs)
	}
	data, err := c.View(ctx, imgs[0].ImageRef)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := brightness(img), uint8(uint64(18446744073709551615)%256); got != want {
		t.Errorf("brightness %d, want %d (image not made from the exact seed)", got, want)
	}
	chunks, err := comfyui.PNGText(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(chunks) != 2 || chunks[0].Key != "prompt" || !strings.Contains(chunks[0].Text, `"seed":`+maxSeed) || chunks[1].Key != "m3" {
		t.Errorf("png text %+v", chunks)
	}
	h, err := c.History(ctx, res.PromptID)
	if err != nil {
		t.Fatal(err)
	}
	if got := h.Prompt.Prompt["3"].Inputs["seed"]; got != json.Number(maxSeed) {
		t.Errorf("history seed %v (%T), want %s", got, got, maxSeed)
	}
	if h.Prompt.ExtraData["client_id"] != c.ID() {
		t.Errorf("client id %v", h.Prompt.ExtraData["client_id"])
	}
	if _, err := c.View(ctx, comfyui.ImageRef{Filename: "nope.png", Type: "output"}); !errors.Is(err, comfyui.ErrNotFound) {
		t.Errorf("view missing: %v", err)
	}
}

func TestClientIdenticalRequeueIsCached(t *testing.T) {
	s := startFake(t)
	c := connect(t, s.URL())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w := mustWorkflow(t, sdWorkflow("42"))
	first, err := c.RunPrompt(ctx, comfyui.PromptRequest{Prompt: w})
	if err != nil {
		t.Fatal(err)
	}
	second, err := c.RunPrompt(ctx, comfyui.PromptRequest{Prompt: w.Clone()})
	if err != nil {
		t.Fatal(err)
	}
	if len(first.Cached) != 0 || len(second.Cached) != 7 {
		t.Errorf("cached %v then %v", first.Cached, second.Cached)
	}
	if first.Images()[0] != second.Images()[0] {
		t.Errorf("re-queue made new images: %v vs %v", first.Images(), second.Images())
	}
	w2 := w.Clone()
	w2["3"].Inputs["seed"] = comfyui.Uint64Input(43)
	third, err := c.RunPrompt(ctx, comfyui.PromptRequest{Prompt: w2})
	if err != nil {
		t.Fatal(err)
	}
	if third.Images()[0] == first.Images()[0] || len(third.Cached) == 7 {
		t.Errorf("new seed was cached: %v", third.Cached)
	}
}

func TestClientPromptError(t *testing.T) {
	s := startFake(t)
	c := connect(t, s.URL())
	w := mustWorkflow(t, sdWorkflow("1"))
	w["5"].Inputs["width"] = json.Number("0")
	w["3"].Inputs["sampler_name"] = "nope"
	_, err := c.QueuePrompt(context.Background(), comfyui.PromptRequest{Prompt: w})
	var pe *comfyui.PromptError
	if !errors.As(err, &pe) {
		t.Fatalf("error %v (%T)", err, err)
	}
	if pe.Err.Type != "prompt_outputs_failed_validation" || len(pe.NodeErrors) != 2 {
		t.Fatalf("prompt error %+v", pe)
	}
	if ne := pe.NodeErrors["5"]; ne.ClassType != "EmptyLatentImage" || ne.Errors[0].Type != "value_smaller_than_min" ||
		len(ne.DependentOutputs) != 1 || ne.DependentOutputs[0] != "9" {
		t.Errorf("node 5 errors %+v", ne)
	}
	if !strings.Contains(err.Error(), "node 3 (KSampler): Value not in list") {
		t.Errorf("message %q", err)
	}
	w = mustWorkflow(t, sdWorkflow("18446744073709551616"))
	if _, err := c.QueuePrompt(context.Background(), comfyui.PromptRequest{Prompt: w}); !errors.As(err, &pe) ||
		pe.NodeErrors["3"].Errors[0].Type != "value_bigger_than_max" {
		t.Errorf("seed 2^64: %v", err)
	}
}

func TestClientUploadObjectInfo(t *testing.T) {
	s := startFake(t)
	c := connect(t, s.URL())
	ctx := context.Background()
	img := image.NewRGBA(image.Rect(0, 0, 4, 4))
	for i := range img.Pix {
		img.Pix[i] = 200
	}
	var buf bytes.Buffer
	png.Encode(&buf, img)
	ref, err := c.UploadImage(ctx, "probe.png", bytes.NewReader(buf.Bytes()), comfyui.UploadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ref != (comfyui.ImageRef{Filename: "probe.png", Type: "input"}) {
		t.Errorf("upload ref %+v", ref)
	}
	w := mustWorkflow(t, []byte(`{"1":{"class_type":"LoadImage","inputs":{"image":"probe.png"}},
		"2":{"class_type":"PreviewImage","inputs":{"images":["1",0]}}}`))
	res, err := c.RunPrompt(ctx, comfyui.PromptRequest{Prompt: w})
	if err != nil {
		t.Fatal(err)
	}
	data, err := c.View(ctx, res.Images()[0].ImageRef)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := png.Decode(bytes.NewReader(data))
	if brightness(got) != 200 || res.Images()[0].Type != "temp" {
		t.Errorf("preview of upload: %d %+v", brightness(got), res.Images())
	}
	info, err := c.ObjectInfo(ctx, "KSampler")
	if err != nil || !strings.Contains(string(info["KSampler"]), "18446744073709551615") {
		t.Errorf("object info: %v", err)
	}
	all, err := c.ObjectInfo(ctx, "")
	if err != nil || len(all) < 10 {
		t.Errorf("all object info: %d %v", len(all), err)
	}
	if _, err := c.ObjectInfo(ctx, "NoSuchNode"); !errors.Is(err, comfyui.ErrNotFound) {
		t.Errorf("unknown class: %v", err)
	}
}

func TestClientQueueInterrupt(t *testing.T) {
	s := startFake(t, comfyfake.WithStepDelay(100*time.Millisecond), comfyfake.WithMaxSteps(20))
	c := connect(t, s.URL())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, err := c.QueuePrompt(ctx, comfyui.PromptRequest{Prompt: mustWorkflow(t, sdWorkflow("1"))})
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.QueuePrompt(ctx, comfyui.PromptRequest{Prompt: mustWorkflow(t, sdWorkflow("2"))})
	if err != nil {
		t.Fatal(err)
	}
	front, err := c.QueuePrompt(ctx, comfyui.PromptRequest{Prompt: mustWorkflow(t, sdWorkflow("3")), Front: true})
	if err != nil {
		t.Fatal(err)
	}
	if front.Number >= 0 {
		t.Errorf("front number %d", front.Number)
	}
	q, err := c.Queue(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(q.Running) != 1 || q.Running[0].PromptID != a.PromptID || len(q.Pending) != 2 || q.Pending[0].PromptID != front.PromptID {
		t.Fatalf("queue %+v", q)
	}
	if err := c.DeleteQueued(ctx, b.PromptID); err != nil {
		t.Fatal(err)
	}
	if err := c.Interrupt(ctx, ""); err != nil {
		t.Fatal(err)
	}
	_, err = c.WaitPrompt(ctx, a.PromptID)
	var ie *comfyui.InterruptedError
	if !errors.As(err, &ie) || ie.Event.NodeID != "3" {
		t.Errorf("interrupted prompt: %v", err)
	}
	if _, err := c.WaitPrompt(ctx, b.PromptID); !errors.Is(err, comfyui.ErrPromptLost) {
		t.Errorf("deleted prompt: %v", err)
	}
	if err := c.ClearQueue(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Interrupt(ctx, front.PromptID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitPrompt(ctx, front.PromptID); !errors.As(err, &ie) {
		t.Errorf("front prompt: %v", err)
	}
}

func TestClientExecutionError(t *testing.T) {
	s := startFake(t, comfyfake.WithFailSeed(func(seed uint64) bool { return seed == 13 }))
	c := connect(t, s.URL())
	_, err := c.RunPrompt(context.Background(), comfyui.PromptRequest{Prompt: mustWorkflow(t, sdWorkflow("13"))})
	var ee *comfyui.ExecutionError
	if !errors.As(err, &ee) || ee.Event.NodeID != "3" || ee.Event.NodeType != "KSampler" {
		t.Errorf("error %v", err)
	}
}

// TestClientEventsAndReconnect: typed events stream in order; killing the
// server drops the socket; the client redials with the same id; a prompt
// lost in the restart is reported as lost; new prompts flow again.
func TestClientEventsAndReconnect(t *testing.T) {
	s := startFake(t, comfyfake.WithStepDelay(50*time.Millisecond), comfyfake.WithMaxSteps(10))
	c := connect(t, s.URL())
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	sub := c.Subscribe()
	defer sub.Close()
	pr, err := c.QueuePrompt(ctx, comfyui.PromptRequest{Prompt: mustWorkflow(t, sdWorkflow("5"))})
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for len(types) < 6 {
		ev, err := sub.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if pe, ok := ev.(comfyui.PromptEvent); ok && pe.Prompt() == pr.PromptID {
			types = append(types, ev.EventType())
		}
		if p, ok := ev.(*comfyui.ProgressEvent); ok && p.Value >= 2 {
			break
		}
	}
	if types[0] != "execution_start" || types[1] != "execution_cached" {
		t.Errorf("first events %v", types)
	}
	waitErr := make(chan error, 1)
	go func() {
		_, err := c.WaitPrompt(ctx, pr.PromptID)
		waitErr <- err
	}()
	s.Stop()
	var sawDown, sawUp bool
	restarted := false
	for !sawUp {
		ev, err := sub.Next(ctx)
		if err != nil {
			t.Fatalf("waiting for reconnect: %v", err)
		}
		switch ev.(type) {
		case *comfyui.Disconnected:
			sawDown = true
			if !restarted {
				time.Sleep(100 * time.Millisecond) // let a few redials fail
				if err := s.Start(); err != nil {
					t.Fatal(err)
				}
				restarted = true
			}
		case *comfyui.Reconnected:
			sawUp = true
		}
	}
	if !sawDown {
		t.Error("no Disconnected event")
	}
	if err := <-waitErr; !errors.Is(err, comfyui.ErrPromptLost) {
		t.Errorf("prompt across restart: %v", err)
	}
	found := false
	for deadline := time.Now().Add(2 * time.Second); !found && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		for _, id := range s.Clients() { // the server registers the socket just after the handshake
			found = found || id == c.ID()
		}
	}
	if !found {
		t.Errorf("client %s not reconnected under its id: %v", c.ID(), s.Clients())
	}
	res, err := c.RunPrompt(ctx, comfyui.PromptRequest{Prompt: mustWorkflow(t, sdWorkflow("6"))})
	if err != nil || len(res.Images()) != 1 {
		t.Fatalf("after restart: %v", err)
	}
}

// TestClientPongDeadline: a server that never reads (so never answers
// pings) is declared dead after the pong wait; one that does stays up.
func TestClientPongDeadline(t *testing.T) {
	up := websocket.Upgrader{}
	deaf := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer conn.Close()
		conn.WriteMessage(websocket.TextMessage, []byte(`{"type":"status","data":{"status":{"exec_info":{"queue_remaining":0}},"sid":"x"}}`))
		time.Sleep(2 * time.Second) // reads nothing: pings go unanswered
	}))
	defer deaf.Close()
	c := connect(t, deaf.URL, comfyui.WithPing(20*time.Millisecond, 150*time.Millisecond))
	sub := c.Subscribe()
	defer sub.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	for {
		ev, err := sub.Next(ctx)
		if err != nil {
			t.Fatalf("no disconnect from a deaf server: %v", err)
		}
		if _, ok := ev.(*comfyui.Disconnected); ok {
			break
		}
	}
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Errorf("dead connection noticed after %v", d)
	}

	s := startFake(t)
	c2 := connect(t, s.URL(), comfyui.WithPing(20*time.Millisecond, 150*time.Millisecond))
	sub2 := c2.Subscribe()
	defer sub2.Close()
	wctx, wcancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer wcancel()
	for {
		ev, err := sub2.Next(wctx)
		if err != nil {
			break // quiet for 500 ms with pings every 20 ms: still up
		}
		if _, ok := ev.(*comfyui.Disconnected); ok {
			t.Fatal("live server declared dead")
		}
	}
	if !c2.Connected() {
		t.Error("not connected")
	}
}

func TestParseWorkflowErrors(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"not json", `{`, "parse workflow"},
		{"ui format", `{"nodes":[],"links":[]}`, "API Format"},
		{"no class", `{"1":{"inputs":{}}}`, "no class_type"},
		{"empty", `{}`, "no nodes"},
	}
	for _, tt := range tests {
		_, err := comfyui.ParseWorkflow([]byte(tt.in))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want %q", tt.name, err, tt.want)
		}
	}
	w, err := comfyui.ParseWorkflow([]byte(`{"prompt":{"1":{"class_type":"KSampler","inputs":{"seed":18446744073709551615,"model":["4",0]}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if s, ok := comfyui.AsUint64(w["1"].Inputs["seed"]); !ok || s != 18446744073709551615 {
		t.Errorf("seed %v", w["1"].Inputs["seed"])
	}
	if l, ok := comfyui.AsLink(w["1"].Inputs["model"]); !ok || l != (comfyui.Link{Node: "4", Output: 0}) {
		t.Errorf("link %v", l)
	}
	b, _ := json.Marshal(w)
	if !strings.Contains(string(b), "18446744073709551615") {
		t.Errorf("re-encoded %s", b)
	}
}

func TestPNGTextRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	png.Encode(&buf, image.NewGray(image.Rect(0, 0, 3, 3)))
	out, err := comfyui.AddPNGText(buf.Bytes(), comfyui.TextChunk{Key: "m3gate", Text: `{"a":1}`}, comfyui.TextChunk{Key: "k2", Text: "ü"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := png.Decode(bytes.NewReader(out)); err != nil {
		t.Fatalf("image/png rejects the result: %v", err)
	}
	got, err := comfyui.PNGText(out)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint([]comfyui.TextChunk{{Key: "m3gate", Text: `{"a":1}`}, {Key: "k2", Text: "ü"}}) {
		t.Errorf("chunks %v", got)
	}
	bad := append([]byte{}, out...)
	bad[len(bad)-20] ^= 0xff // inside the last tEXt chunk
	if _, err := comfyui.PNGText(bad); err == nil {
		t.Error("corrupt chunk accepted")
	}
	if _, err := comfyui.AddPNGText([]byte("GIF89a"), comfyui.TextChunk{Key: "a", Text: "b"}); err == nil {
		t.Error("non-PNG accepted")
	}
	if _, err := comfyui.AddPNGText(buf.Bytes(), comfyui.TextChunk{Key: "", Text: "b"}); err == nil {
		t.Error("empty key accepted")
	}
}

// TestPNGTextInternational: UTF-8 text round-trips through an iTXt chunk
// and Pillow reads it back unchanged; tEXt refuses what Latin-1 cannot hold.
func TestPNGTextInternational(t *testing.T) {
	var buf bytes.Buffer
	png.Encode(&buf, image.NewGray(image.Rect(0, 0, 3, 3)))
	const prompt = `{"prompt":"statue café 雕像"}`
	out, err := comfyui.AddPNGText(buf.Bytes(), comfyui.TextChunk{Key: "m3gate", Text: prompt, International: true})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(out, []byte("iTXtm3gate\x00")) {
		t.Error("no iTXt chunk written")
	}
	got, err := comfyui.PNGText(out)
	if err != nil || len(got) != 1 || got[0] != (comfyui.TextChunk{Key: "m3gate", Text: prompt, International: true}) {
		t.Fatalf("read back %+v, %v", got, err)
	}
	if _, err := comfyui.AddPNGText(buf.Bytes(), comfyui.TextChunk{Key: "m3gate", Text: prompt}); err == nil ||
		!strings.Contains(err.Error(), "not Latin-1") {
		t.Errorf("CJK text in a tEXt chunk: err %v, want a refusal naming Latin-1", err)
	}
	// Pillow, the reader of every ComfyUI user, decodes it to the same string.
	if _, err := os.Stat("/usr/bin/python3"); err == nil {
		f := filepath.Join(t.TempDir(), "i.png")
		if err := os.WriteFile(f, out, 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("/usr/bin/python3", "-c", "import sys; from PIL import Image; im = Image.open(sys.argv[1]); im.load(); sys.stdout.buffer.write(im.text['m3gate'].encode('utf-8'))", f)
		if b, err := cmd.Output(); err != nil {
			t.Logf("skipping the Pillow check: %v", err)
		} else if string(b) != prompt {
			t.Errorf("Pillow reads %q, want %q", b, prompt)
		}
	}
}

// TestPNGTextReadsEveryKind: the chunks Pillow writes (tEXt in Latin-1,
// zTXt, iTXt plain and compressed) and the UTF-8 tEXt chunks older m3gate
// versions wrote all read back as the text that was stored.
func TestPNGTextReadsEveryKind(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("testdata", "pillow-text.png"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := comfyui.PNGText(data)
	if err != nil {
		t.Fatal(err)
	}
	want := []comfyui.TextChunk{
		{Key: "latin", Text: "café"},
		{Key: "ztxt", Text: strings.Repeat("crème ", 20)},
		{Key: "m3gate", Text: `{"prompt": "statue café 雕像"}`, International: true},
		{Key: "zitxt", Text: strings.Repeat("雕像 ", 30), International: true},
		{Key: "auto", Text: "雕像", International: true},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("chunks\n got %+v\nwant %+v", got, want)
	}
	// An old m3gate file: UTF-8 bytes in a tEXt chunk.
	var buf bytes.Buffer
	png.Encode(&buf, image.NewGray(image.Rect(0, 0, 1, 1)))
	old := rawChunk("tEXt", []byte("m3gate\x00{\"prompt\":\"statue café 雕像\"}"))
	b := buf.Bytes()
	iend := bytes.Index(b, []byte("IEND")) - 4
	oldPNG := append(append(append([]byte{}, b[:iend]...), old...), b[iend:]...)
	got, err = comfyui.PNGText(oldPNG)
	if err != nil || len(got) != 1 || got[0].Text != `{"prompt":"statue café 雕像"}` || got[0].International {
		t.Errorf("old UTF-8 tEXt chunk read as %+v, %v", got, err)
	}
	// A zTXt chunk that inflates past the bound is refused, not read.
	var z bytes.Buffer
	zw := zlib.NewWriter(&z)
	zw.Write(make([]byte, comfyui.MaxPNGTextBytes+10))
	zw.Close()
	bomb := rawChunk("zTXt", append([]byte("k\x00\x00"), z.Bytes()...))
	bombPNG := append(append(append([]byte{}, b[:iend]...), bomb...), b[iend:]...)
	if _, err := comfyui.PNGText(bombPNG); err == nil || !strings.Contains(err.Error(), "inflated text over") {
		t.Errorf("zTXt bomb: err %v", err)
	}
}

func rawChunk(typ string, data []byte) []byte {
	out := binary.BigEndian.AppendUint32(nil, uint32(len(data)))
	out = append(out, typ...)
	out = append(out, data...)
	return binary.BigEndian.AppendUint32(out, crc32.ChecksumIEEE(append([]byte(typ), data...)))
}

// TestWaitPromptPollsHistory: the prompt's events go to another socket, so
// WaitPrompt only learns of the end by polling /history.
func TestWaitPromptPollsHistory(t *testing.T) {
	s := startFake(t, comfyfake.WithStepDelay(20*time.Millisecond))
	c := connect(t, s.URL(), comfyui.WithHistoryPoll(100*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pr, err := c.QueuePrompt(ctx, comfyui.PromptRequest{Prompt: mustWorkflow(t, sdWorkflow("9")), ClientID: "someone-else"})
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.WaitPrompt(ctx, pr.PromptID)
	if err != nil || len(res.Images()) != 1 || !res.FromHistory {
		t.Fatalf("result %+v, %v", res, err)
	}
}
