package comfyfake

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"image"
	"image/color"
	"image/png"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf16"

	"github.com/m3gate/m3gate/plugin/comfyui"
)

// generation is what a server process holds in memory: clients, queue,
// history and cache. A restart replaces it.
type generation struct {
	s         *Server
	ctx       context.Context
	cancel    context.CancelFunc
	clients   map[string]*wsClient
	pending   []*job
	running   *job
	lastNode  string
	history   map[string]historyEntry
	order     []string // history ids, oldest first
	number    int64
	cache     map[string]cached // node signature → outputs of the last prompt
	interrupt bool
	tempTag   string
	wake      chan struct{}
	wg        sync.WaitGroup
}

type cached struct {
	ui   map[string]any // nil for nodes without ui output
	imgs []image.Image  // IMAGE output, for downstream nodes
}

type job struct {
	number   int64
	id       string
	prompt   comfyui.Workflow
	extra    map[string]any
	outputs  []string
	clientID string
}

type historyEntry struct {
	Prompt  comfyui.QueueItem         `json:"prompt"`
	Outputs map[string]map[string]any `json:"outputs"`
	Status  historyStatus             `json:"status"`
	Meta    map[string]any            `json:"meta"`
}

type historyStatus struct {
	StatusStr string  `json:"status_str"`
	Completed bool    `json:"completed"`
	Messages  [][]any `json:"messages"`
}

func newGeneration(s *Server) *generation {
	ctx, cancel := context.WithCancel(context.Background())
	g := &generation{s: s, ctx: ctx, cancel: cancel, clients: map[string]*wsClient{}, history: map[string]historyEntry{},
		cache: map[string]cached{}, wake: make(chan struct{}, 1)}
	const letters = "abcdefghijklmnopqrstuvwxyz"
	b := []byte(randomHex(5))
	for i := range b {
		b[i] = letters[int(b[i])%len(letters)]
	}
	g.tempTag = string(b)
	g.wg.Add(1)
	go g.worker()
	return g
}

// stop ends the generation: sockets close, the worker abandons its prompt.
func (g *generation) stop() {
	g.cancel()
	g.s.mu.Lock()
	for _, c := range g.clients {
		c.close()
	}
	g.s.mu.Unlock()
	g.wg.Wait()
}

// queueRemaining is pending + running; call with s.mu held.
func (g *generation) queueRemaining() int {
	n := len(g.pending)
	if g.running != nil {
		n++
	}
	return n
}

// statusFrame encodes a status message; call with s.mu held.
func (g *generation) statusFrame() wsFrame {
	b, _ := json.Marshal(map[string]any{"type": "status", "data": map[string]any{
		"status": map[string]any{"exec_info": map[string]any{"queue_remaining": g.queueRemaining()}}}})
	return wsFrame{data: b}
}

// broadcast sends to every socket; call with s.mu held.
func (g *generation) broadcast(f wsFrame) {
	for _, c := range g.clients {
		c.send(f)
	}
}

// sendTo sends to one socket, or to all when sid is empty (like
// send_sync with sid None); call with s.mu held.
func (g *generation) sendTo(sid string, f wsFrame) {
	if sid == "" {
		g.broadcast(f)
		return
	}
	if c, ok := g.clients[sid]; ok {
		c.send(f)
	}
}

func jsonFrame(typ string, data any) wsFrame {
	b, _ := json.Marshal(map[string]any{"type": typ, "data": data})
	return wsFrame{data: b}
}

func nowMS() int64 { return time.Now().UnixMilli() }

// enqueue adds a validated prompt; call with s.mu held.
func (g *generation) enqueue(j *job, front bool) {
	j.number = g.number
	g.number++
	if front {
		j.number = -j.number
	}
	g.pending = append(g.pending, j)
	sort.SliceStable(g.pending, func(a, b int) bool { return g.pending[a].number < g.pending[b].number })
	g.broadcast(g.statusFrame())
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

func (g *generation) worker() {
	defer g.wg.Done()
	for {
		g.s.mu.Lock()
		var j *job
		if len(g.pending) > 0 && g.ctx.Err() == nil {
			j = g.pending[0]
			g.pending = g.pending[1:]
			g.running = j
			g.interrupt = false
			g.broadcast(g.statusFrame())
		}
		g.s.mu.Unlock()
		if j == nil {
			select {
			case <-g.ctx.Done():
				return
			case <-g.wake:
				continue
			}
		}
		g.execute(j)
		if g.ctx.Err() != nil {
			return
		}
	}
}

// run state of one prompt.
type run struct {
	g        *generation
	j        *job
	sigs     map[string]string
	results  map[string]cached
	states   map[string]map[string]any
	order    []string // node ids in execution order
	executed []string
	messages [][]any
	outputs  map[string]map[string]any
	meta     map[string]any
}

// send sends a per-prompt message to the prompt's client (nothing when
// the prompt has no client id, like the real server).
func (r *run) send(typ string, data map[string]any) {
	r.g.s.mu.Lock()
	defer r.g.s.mu.Unlock()
	if r.j.clientID != "" {
		r.g.sendTo(r.j.clientID, jsonFrame(typ, data))
	}
}

// sendAll sends a message that goes to server.client_id: the prompt's
// client, or everyone when the prompt has none (progress, progress_state,
// previews).
func (r *run) sendAll(typ string, data map[string]any) {
	r.g.s.mu.Lock()
	defer r.g.s.mu.Unlock()
	r.g.sendTo(r.j.clientID, jsonFrame(typ, data))
}

func (r *run) progressState() {
	nodes := map[string]any{}
	for id, st := range r.states {
		nodes[id] = st
	}
	r.sendAll("progress_state", map[string]any{"prompt_id": r.j.id, "nodes": nodes})
}

func (r *run) setState(id string, value, max any, state string) {
	r.states[id] = map[string]any{"value": value, "max": max, "state": state, "node_id": id, "prompt_id": r.j.id,
		"display_node_id": id, "parent_node_id": nil, "real_node_id": id}
}

func (g *generation) execute(j *job) {
	r := &run{g: g, j: j, sigs: map[string]string{}, results: map[string]cached{}, states: map[string]map[string]any{},
		outputs: map[string]map[string]any{}, meta: map[string]any{}}
	for _, out := range j.outputs {
		r.visit(out, map[string]bool{})
	}
	for _, id := range r.order {
		r.signature(id)
	}
	g.s.mu.Lock()
	var cachedIDs []string
	for _, id := range r.order {
		if c, ok := g.cache[r.sigs[id]]; ok {
			cachedIDs = append(cachedIDs, id)
			r.results[id] = c
		}
	}
	g.s.mu.Unlock()
	comfyui.SortIDs(cachedIDs)
	if cachedIDs == nil {
		cachedIDs = []string{}
	}

	start := map[string]any{"prompt_id": j.id, "timestamp": nowMS()}
	r.send("execution_start", start)
	r.messages = append(r.messages, []any{"execution_start", start})
	cmsg := map[string]any{"nodes": cachedIDs, "prompt_id": j.id, "timestamp": nowMS()}
	r.send("execution_cached", cmsg)
	r.messages = append(r.messages, []any{"execution_cached", cmsg})

	status := "success"
	for _, id := range r.order {
		node := j.prompt[id]
		if c, ok := r.results[id]; ok { // cached
			if c.ui != nil {
				r.outputs[id] = c.ui
				r.meta[id] = map[string]any{"node_id": id, "display_node": id, "parent_node": nil, "real_node_id": id}
				r.send("executed", map[string]any{"node": id, "display_node": id, "output": c.ui, "prompt_id": j.id})
				r.setState(id, 1, 1, "finished")
				r.progressState()
			}
			continue
		}
		if g.ctx.Err() != nil {
			return // killed: the prompt is lost with the process
		}
		if r.interrupted(id) {
			status = "error"
			break
		}
		r.setState(id, 0.0, 1.0, "running")
		r.progressState()
		g.s.mu.Lock()
		g.lastNode = id
		g.s.mu.Unlock()
		r.send("executing", map[string]any{"node": id, "display_node": id, "prompt_id": j.id})
		res, err := r.runNode(id, node)
		if g.ctx.Err() != nil {
			return
		}
		if err == errInterrupted {
			status = "error"
			break
		}
		if err != nil {
			etype := "RuntimeError"
			if ne, ok := err.(*nodeError); ok {
				etype = ne.typ
			}
			msg := map[string]any{"prompt_id": j.id, "node_id": id, "node_type": node.ClassType, "executed": r.executedList(),
				"exception_message": err.Error() + "\n", "exception_type": etype,
				"traceback": []string{"  File \"comfyfake\", line 1, in execute\n"}, "current_inputs": map[string]any{},
				"current_outputs": map[string]any{}, "timestamp": nowMS()}
			r.send("execution_error", msg)
			r.messages = append(r.messages, []any{"execution_error", msg})
			status = "error"
			break
		}
		r.results[id] = res
		r.executed = append(r.executed, id)
		if res.ui != nil {
			r.outputs[id] = res.ui
			r.meta[id] = map[string]any{"node_id": id, "display_node": id, "parent_node": nil, "real_node_id": id}
			r.send("executed", map[string]any{"node": id, "display_node": id, "output": res.ui, "prompt_id": j.id})
		}
		st := r.states[id]
		st["value"], st["state"] = st["max"], "finished"
		r.progressState()
	}
	if status == "success" {
		msg := map[string]any{"prompt_id": j.id, "timestamp": nowMS()}
		r.send("execution_success", msg)
		r.messages = append(r.messages, []any{"execution_success", msg})
	}

	g.s.mu.Lock()
	if g.ctx.Err() != nil {
		g.s.mu.Unlock()
		return
	}
	// The classic cache keeps the outputs of the last prompt's nodes.
	g.cache = map[string]cached{}
	for id, res := range r.results {
		g.cache[r.sigs[id]] = res
	}
	extra := map[string]any{}
	for k, v := range j.extra {
		extra[k] = v
	}
	if j.clientID != "" {
		extra["client_id"] = j.clientID
	}
	outs := r.outputs
	if status != "success" {
		outs = map[string]map[string]any{}
		r.meta = map[string]any{}
	}
	g.history[j.id] = historyEntry{
		Prompt:  comfyui.QueueItem{Number: j.number, PromptID: j.id, Prompt: j.prompt, ExtraData: extra, OutputsToExecute: j.outputs},
		Outputs: outs,
		Status:  historyStatus{StatusStr: status, Completed: status == "success", Messages: r.messages},
		Meta:    r.meta,
	}
	g.order = append(g.order, j.id)
	g.running = nil
	g.lastNode = ""
	g.s.prompts++
	g.broadcast(g.statusFrame())
	if j.clientID != "" {
		g.sendTo(j.clientID, jsonFrame("executing", map[string]any{"node": nil, "prompt_id": j.id}))
	}
	g.s.mu.Unlock()
}

func (r *run) executedList() []string {
	out := append([]string{}, r.executed...)
	return out
}

// interrupted checks and reports an interrupt before or while node id runs.
func (r *run) interrupted(id string) bool {
	r.g.s.mu.Lock()
	hit := r.g.interrupt
	r.g.interrupt = false
	r.g.s.mu.Unlock()
	if !hit {
		return false
	}
	msg := map[string]any{"prompt_id": r.j.id, "node_id": id, "node_type": r.j.prompt[id].ClassType,
		"executed": r.executedList(), "timestamp": nowMS()}
	r.send("execution_interrupted", msg)
	r.messages = append(r.messages, []any{"execution_interrupted", msg})
	return true
}

// nodeError is an exception raised by a node.
type nodeError struct{ typ, msg string }

func (e *nodeError) Error() string { return e.msg }

type interruptErr struct{}

func (interruptErr) Error() string { return "interrupted" }

var errInterrupted error = interruptErr{}

// visit orders nodes depth first, dependencies before dependents.
func (r *run) visit(id string, seen map[string]bool) {
	if seen[id] {
		return
	}
	seen[id] = true
	for _, k := range inputOrder(r.j.prompt[id]) {
		if l, ok := comfyui.AsLink(r.j.prompt[id].Inputs[k]); ok {
			r.visit(l.Node, seen)
		}
	}
	for _, done := range r.order {
		if done == id {
			return
		}
	}
	r.order = append(r.order, id)
}

func inputOrder(n comfyui.Node) []string { return sortedKeys(n.Inputs) }

// signature is the cache key of a node: class, literal inputs and the
// signatures of linked nodes (LoadImage also hashes the file).
func (r *run) signature(id string) string {
	if s, ok := r.sigs[id]; ok {
		return s
	}
	n := r.j.prompt[id]
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00", n.ClassType)
	for _, k := range inputOrder(n) {
		v := n.Inputs[k]
		if l, ok := comfyui.AsLink(v); ok {
			fmt.Fprintf(h, "%s=link(%s,%d)\x00", k, r.signature(l.Node), l.Output)
			continue
		}
		b, _ := json.Marshal(v)
		fmt.Fprintf(h, "%s=%s\x00", k, b)
	}
	if n.ClassType == "QualityProbe" { // IS_CHANGED is NaN: never cached
		h.Write([]byte(randomHex(8)))
	}
	if n.ClassType == "LoadImage" {
		name, _ := n.Inputs["image"].(string)
		r.g.s.mu.Lock()
		data := r.g.s.files[fileKey{"input", "", name}]
		r.g.s.mu.Unlock()
		sum := sha256.Sum256(data)
		h.Write(sum[:])
	}
	s := hex.EncodeToString(h.Sum(nil))
	r.sigs[id] = s
	return s
}

// linkedImages returns the IMAGE output feeding input name of node n.
func (r *run) linkedImages(n comfyui.Node, name string) []image.Image {
	l, ok := comfyui.AsLink(n.Inputs[name])
	if !ok {
		return nil
	}
	return r.results[l.Node].imgs
}

// seedsUpstream returns the sampler seeds upstream of node id (itself
// included), in node id order.
func (r *run) seedsUpstream(id string) []uint64 {
	ids := upstream(r.j.prompt, id)
	comfyui.SortIDs(ids)
	var seeds []uint64
	for _, u := range ids {
		if s, ok := samplerSeed(r.j.prompt[u]); ok {
			seeds = append(seeds, s)
		}
	}
	return seeds
}

// samplerSeed returns a sampler node's literal seed input.
func samplerSeed(n comfyui.Node) (uint64, bool) {
	for _, k := range []string{"seed", "noise_seed"} {
		if v, ok := n.Inputs[k]; ok {
			if s, ok := comfyui.AsUint64(v); ok {
				return s, true
			}
		}
	}
	return 0, false
}

// combineSeeds is the seed images are made from: the one sampler's seed,
// or a hash of several.
func combineSeeds(seeds []uint64) uint64 {
	switch len(seeds) {
	case 0:
		return 0
	case 1:
		return seeds[0]
	}
	h := fnv.New64a()
	for _, s := range seeds {
		fmt.Fprintf(h, "%d,", s)
	}
	return h.Sum64()
}

func intInput(n comfyui.Node, name string, def int) int {
	if v, ok := n.Inputs[name]; ok {
		if num, ok := v.(json.Number); ok {
			if i, err := strconv.Atoi(num.String()); err == nil {
				return i
			}
		}
	}
	return def
}

// runNode executes one node and returns its outputs.
func (r *run) runNode(id string, n comfyui.Node) (cached, error) {
	switch n.ClassType {
	case "KSampler", "KSamplerAdvanced":
		seed, _ := samplerSeed(n)
		if r.g.s.opts.failSeed != nil && r.g.s.opts.failSeed(seed) {
			return cached{}, fmt.Errorf("sampler failed for seed %d", seed)
		}
		steps := intInput(n, "steps", 20)
		if steps > r.g.s.opts.maxSteps {
			steps = r.g.s.opts.maxSteps
		}
		r.setState(id, 0, steps, "running")
		for i := 1; i <= steps; i++ {
			if d := r.g.s.opts.stepDelay; d > 0 {
				select {
				case <-r.g.ctx.Done():
					return cached{}, r.g.ctx.Err()
				case <-time.After(d):
				}
			}
			if r.interrupted(id) {
				return cached{}, errInterrupted
			}
			r.states[id]["value"] = i
			r.progressState()
			r.sendAll("progress", map[string]any{"value": i, "max": steps, "prompt_id": r.j.id, "node": id})
			if r.g.s.opts.previews {
				r.preview(id, previewImage(seed, i))
			}
		}
		return cached{}, nil
	case "QualityProbe":
		return r.runProbe(id, n)
	case "VAEDecode":
		seed := combineSeeds(r.seedsUpstream(id))
		batch := 1
		for _, u := range upstream(r.j.prompt, id) {
			if r.j.prompt[u].ClassType == "EmptyLatentImage" {
				batch = intInput(r.j.prompt[u], "batch_size", 1)
			}
		}
		imgs := make([]image.Image, batch)
		for i := range imgs {
			imgs[i] = r.g.s.opts.image(seed + uint64(i))
		}
		return cached{imgs: imgs}, nil
	case "EmptyImage":
		w, h := intInput(n, "width", 512), intInput(n, "height", 512)
		c := intInput(n, "color", 0)
		imgs := make([]image.Image, intInput(n, "batch_size", 1))
		for i := range imgs {
			img := image.NewRGBA(image.Rect(0, 0, w, h))
			col := color.RGBA{uint8(c >> 16), uint8(c >> 8), uint8(c), 255}
			for p := 0; p < len(img.Pix); p += 4 {
				img.Pix[p], img.Pix[p+1], img.Pix[p+2], img.Pix[p+3] = col.R, col.G, col.B, col.A
			}
			imgs[i] = img
		}
		return cached{imgs: imgs}, nil
	case "LoadImage":
		name, _ := n.Inputs["image"].(string)
		r.g.s.mu.Lock()
		data := r.g.s.files[fileKey{"input", "", name}]
		r.g.s.mu.Unlock()
		img, _, err := image.Decode(bytes.NewReader(data))
		if err != nil {
			return cached{}, fmt.Errorf("load image %s: %v", name, err)
		}
		return cached{imgs: []image.Image{img}}, nil
	case "SaveImage", "PreviewImage":
		imgs := r.linkedImages(n, "images")
		typ, subfolder, prefix := "output", "", "ComfyUI"
		if n.ClassType == "PreviewImage" {
			typ, prefix = "temp", "ComfyUI_temp_"+r.g.tempTag
		} else if p, ok := n.Inputs["filename_prefix"].(string); ok && p != "" {
			prefix = p
		}
		if dir := path.Dir(prefix); dir != "." {
			subfolder, prefix = dir, path.Base(prefix)
		}
		var refs []map[string]any
		for _, img := range imgs {
			data, err := r.encodePNG(img)
			if err != nil {
				return cached{}, err
			}
			r.g.s.mu.Lock()
			key := typ + "/" + subfolder + "/" + prefix
			r.g.s.counters[key]++
			name := fmt.Sprintf("%s_%05d_.png", prefix, r.g.s.counters[key])
			r.g.s.files[fileKey{typ, subfolder, name}] = data
			r.g.s.mu.Unlock()
			refs = append(refs, map[string]any{"filename": name, "subfolder": subfolder, "type": typ})
		}
		if refs == nil {
			refs = []map[string]any{}
		}
		return cached{ui: map[string]any{"images": refs}}, nil
	case "SaveImageWebsocket":
		imgs := r.linkedImages(n, "images")
		r.setState(id, 0, len(imgs), "running")
		for i, img := range imgs {
			r.states[id]["value"] = i
			r.progressState()
			r.sendAll("progress", map[string]any{"value": i, "max": len(imgs), "prompt_id": r.j.id, "node": id})
			var buf bytes.Buffer
			_ = png.Encode(&buf, img)
			r.g.s.mu.Lock()
			r.g.sendTo(r.j.clientID, wsFrame{binary: true, data: comfyui.EncodePreviewFrame(comfyui.PreviewFormatPNG, buf.Bytes())})
			r.g.s.mu.Unlock()
		}
		return cached{}, nil
	}
	// Loaders, text encoders, latents: nothing to compute in the fake.
	return cached{}, nil
}

// encodePNG writes the PNG like SaveImage: with "prompt" and the
// extra_pnginfo keys as tEXt chunks.
func (r *run) encodePNG(img image.Image) ([]byte, error) {
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return nil, fmt.Errorf("encode png: %w", err)
	}
	p, _ := json.Marshal(r.j.prompt)
	chunks := []comfyui.TextChunk{{Key: "prompt", Text: asciiJSON(p)}}
	if info, ok := r.j.extra["extra_pnginfo"].(map[string]any); ok {
		keys := make([]string, 0, len(info))
		for k := range info {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			b, _ := json.Marshal(info[k])
			if len(k) > 0 && len(k) < 80 && !strings.ContainsRune(k, 0) {
				chunks = append(chunks, comfyui.TextChunk{Key: k, Text: asciiJSON(b)})
			}
		}
	}
	return comfyui.AddPNGText(buf.Bytes(), chunks...)
}

// asciiJSON escapes the non-ASCII characters of a JSON text as \uXXXX,
// as Python's json.dumps does by default, so that SaveImage's chunks are
// plain tEXt.
func asciiJSON(b []byte) string {
	var sb strings.Builder
	for _, r := range string(b) {
		switch {
		case r < 0x80:
			sb.WriteRune(r)
		case r > 0xffff:
			r1, r2 := utf16.EncodeRune(r)
			fmt.Fprintf(&sb, `\u%04x\u%04x`, r1, r2)
		default:
			fmt.Fprintf(&sb, `\u%04x`, r)
		}
	}
	return sb.String()
}

// preview sends a sampler preview: binary event 4 to a client that asked
// for metadata, event 1 otherwise.
func (r *run) preview(id string, img []byte) {
	g := r.g
	g.s.mu.Lock()
	defer g.s.mu.Unlock()
	frame1 := wsFrame{binary: true, data: comfyui.EncodePreviewFrame(comfyui.PreviewFormatPNG, img)}
	if r.j.clientID == "" {
		g.broadcast(frame1)
		return
	}
	c, ok := g.clients[r.j.clientID]
	if !ok {
		return
	}
	if c.metadata {
		md := comfyui.PreviewMetadata{NodeID: id, PromptID: r.j.id, DisplayNodeID: id, RealNodeID: id, ImageType: "image/png"}
		if b, err := comfyui.EncodePreviewMetadataFrame(md, img); err == nil {
			c.send(wsFrame{binary: true, data: b})
		}
		return
	}
	c.send(frame1)
}

var previewCache sync.Map

// previewImage is a tiny PNG standing in for a latent preview.
func previewImage(seed uint64, step int) []byte {
	key := fmt.Sprintf("%d", (seed+uint64(step))%64)
	if b, ok := previewCache.Load(key); ok {
		return b.([]byte)
	}
	img := image.NewGray(image.Rect(0, 0, 8, 8))
	v := uint8((seed + uint64(step)) % 64 * 4)
	for i := range img.Pix {
		img.Pix[i] = v
	}
	var buf bytes.Buffer
	_ = png.Encode(&buf, img)
	previewCache.Store(key, buf.Bytes())
	return buf.Bytes()
}

// runProbe is the QualityProbe node of the transcripts' probe pack.
func (r *run) runProbe(id string, n comfyui.Node) (cached, error) {
	imgs := r.linkedImages(n, "images")
	threshold := floatInput(n, "threshold", 0.5)
	if f, _ := n.Inputs["fail"].(bool); f {
		return cached{}, &nodeError{typ: "ValueError", msg: "probe asked to fail"}
	}
	const steps = 4
	sleep := time.Duration(floatInput(n, "sleep_s", 0) * float64(time.Second) / steps)
	r.setState(id, 0, steps, "running")
	for i := 1; i <= steps; i++ {
		if sleep > 0 {
			select {
			case <-r.g.ctx.Done():
				return cached{}, r.g.ctx.Err()
			case <-time.After(sleep):
			}
		}
		if r.interrupted(id) {
			return cached{}, errInterrupted
		}
		r.states[id]["value"] = i
		r.progressState()
		r.sendAll("progress", map[string]any{"value": i, "max": steps, "prompt_id": r.j.id, "node": id})
	}
	scores := make([]float64, len(imgs))
	var mean float64
	shape := []int{len(imgs), 0, 0, 3}
	for k, img := range imgs {
		b := img.Bounds()
		shape[1], shape[2] = b.Dy(), b.Dx()
		var sum float64
		for y := b.Min.Y; y < b.Max.Y; y++ {
			for x := b.Min.X; x < b.Max.X; x++ {
				cr, cg, cb, _ := img.At(x, y).RGBA()
				sum += float64(cr>>8+cg>>8+cb>>8) / 255
			}
		}
		scores[k] = float64(float32(sum / float64(3*b.Dx()*b.Dy())))
		mean += scores[k]
	}
	if len(imgs) > 0 {
		mean /= float64(len(imgs))
	}
	passed := mean >= threshold
	r.g.s.mu.Lock()
	r.g.broadcast(jsonFrame("quality_probe.score", map[string]any{"node": id, "scores": scores, "score": mean,
		"threshold": threshold, "passed": passed, "shape": shape, "dtype": "torch.float32"}))
	r.g.broadcast(wsFrame{binary: true, data: comfyui.EncodeTextFrame(id, fmt.Sprintf("score=%.3f", mean))})
	r.g.s.mu.Unlock()
	return cached{imgs: imgs, ui: map[string]any{"scores": scores, "passed": []bool{passed}}}, nil
}

func floatInput(n comfyui.Node, name string, def float64) float64 {
	if num, ok := n.Inputs[name].(json.Number); ok {
		if f, err := num.Float64(); err == nil {
			return f
		}
	}
	return def
}
