package comfyfake

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path"
	"strconv"
	"strings"

	"github.com/m3gate/m3gate/plugin/comfyui"
)

func (s *Server) routes() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := trimAPI(r.URL.Path)
		switch {
		case p == "/ws":
			s.handleWS(w, r)
		case p == "/prompt" && r.Method == http.MethodPost:
			s.postPrompt(w, r)
		case p == "/prompt" && r.Method == http.MethodGet:
			s.withGen(w, func(g *generation) any {
				return map[string]any{"exec_info": map[string]any{"queue_remaining": g.queueRemaining()}}
			})
		case p == "/queue" && r.Method == http.MethodGet:
			s.withGen(w, func(g *generation) any {
				running := []comfyui.QueueItem{}
				if g.running != nil {
					running = append(running, g.running.item())
				}
				pending := []comfyui.QueueItem{}
				for _, j := range g.pending {
					pending = append(pending, j.item())
				}
				return map[string]any{"queue_running": running, "queue_pending": pending}
			})
		case p == "/queue" && r.Method == http.MethodPost:
			s.postQueue(w, r)
		case p == "/interrupt" && r.Method == http.MethodPost:
			s.postInterrupt(w, r)
		case p == "/history" && r.Method == http.MethodGet:
			max, _ := strconv.Atoi(r.URL.Query().Get("max_items"))
			s.withGen(w, func(g *generation) any {
				out := map[string]historyEntry{}
				ids := g.order
				if max > 0 && len(ids) > max {
					ids = ids[len(ids)-max:]
				}
				for _, id := range ids {
					out[id] = g.history[id]
				}
				return out
			})
		case p == "/history" && r.Method == http.MethodPost:
			s.postHistory(w, r)
		case strings.HasPrefix(p, "/history/") && r.Method == http.MethodGet:
			id := strings.TrimPrefix(p, "/history/")
			s.withGen(w, func(g *generation) any {
				out := map[string]historyEntry{}
				if h, ok := g.history[id]; ok {
					out[id] = h
				}
				return out
			})
		case p == "/view" && r.Method == http.MethodGet:
			s.view(w, r)
		case p == "/upload/image" && r.Method == http.MethodPost:
			s.upload(w, r)
		case p == "/object_info" && r.Method == http.MethodGet:
			s.objectInfo(w, "")
		case strings.HasPrefix(p, "/object_info/") && r.Method == http.MethodGet:
			if class := strings.TrimPrefix(p, "/object_info/"); class != "" {
				s.objectInfo(w, class)
			} else {
				writeJSON(w, http.StatusOK, map[string]any{})
			}
		case p == "/features" && r.Method == http.MethodGet:
			writeJSON(w, http.StatusOK, serverFeatures)
		case p == "/system_stats" && r.Method == http.MethodGet:
			writeJSON(w, http.StatusOK, map[string]any{"system": map[string]any{"os": "posix", "comfyui_version": "0.3.64",
				"argv": []string{"comfyfake"}}, "devices": []any{map[string]any{"name": "cpu", "type": "cpu"}}})
		default:
			http.NotFound(w, r)
		}
	})
}

func (j *job) item() comfyui.QueueItem {
	extra := map[string]any{}
	for k, v := range j.extra {
		extra[k] = v
	}
	if j.clientID != "" {
		extra["client_id"] = j.clientID
	}
	return comfyui.QueueItem{Number: j.number, PromptID: j.id, Prompt: j.prompt, ExtraData: extra, OutputsToExecute: j.outputs}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(code)
	w.Write(b)
}

// withGen answers with f's value computed under the lock, or 503 while the
// server is stopped.
func (s *Server) withGen(w http.ResponseWriter, f func(g *generation) any) {
	s.mu.Lock()
	g := s.gen
	if g == nil {
		s.mu.Unlock()
		http.Error(w, "server stopped", http.StatusServiceUnavailable)
		return
	}
	v := f(g)
	b, err := json.Marshal(v)
	s.mu.Unlock()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Write(b)
}

func readJSONExact(r *http.Request, v any) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
	if err != nil {
		return err
	}
	d := json.NewDecoder(bytes.NewReader(body))
	d.UseNumber()
	return d.Decode(v)
}

func (s *Server) postPrompt(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Prompt    json.RawMessage `json:"prompt"`
		ClientID  string          `json:"client_id"`
		PromptID  string          `json:"prompt_id"`
		Front     bool            `json:"front"`
		ExtraData map[string]any  `json:"extra_data"`
	}
	if err := readJSONExact(r, &body); err != nil {
		writeJSON(w, http.StatusBadRequest, invalidPrompt("Invalid JSON body", err.Error()))
		return
	}
	if len(body.Prompt) == 0 || string(body.Prompt) == "null" {
		writeJSON(w, http.StatusBadRequest, &validationFailure{Error: apiError{Type: "no_prompt", Message: "No prompt provided",
			Details: "No prompt provided", ExtraInfo: map[string]any{}}, NodeErrors: map[string]nodeErrors{}})
		return
	}
	wf, err := parsePromptBody(body.Prompt)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, invalidPrompt("Cannot execute because the prompt is malformed.", err.Error()))
		return
	}
	outputs, fail := s.validate(wf)
	if fail != nil {
		writeJSON(w, http.StatusBadRequest, fail)
		return
	}
	id := body.PromptID
	if id == "" {
		id = comfyui.NewPromptID()
	}
	j := &job{id: id, prompt: wf, extra: body.ExtraData, outputs: outputs, clientID: body.ClientID}
	s.mu.Lock()
	g := s.gen
	if g == nil {
		s.mu.Unlock()
		http.Error(w, "server stopped", http.StatusServiceUnavailable)
		return
	}
	g.enqueue(j, body.Front)
	number := j.number
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"prompt_id": id, "number": number, "node_errors": map[string]any{}})
}

// parsePromptBody decodes the prompt object without the UI-format and
// class_type checks of comfyui.ParseWorkflow: validation reports those the
// server's way.
func parsePromptBody(b []byte) (comfyui.Workflow, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, err
	}
	wf := comfyui.Workflow{}
	for id, r := range raw {
		var n comfyui.Node
		d := json.NewDecoder(bytes.NewReader(r))
		d.UseNumber()
		if err := d.Decode(&n); err != nil {
			return nil, fmt.Errorf("node %s: %w", id, err)
		}
		if n.Inputs == nil {
			n.Inputs = map[string]any{}
		}
		wf[id] = n
	}
	return wf, nil
}

func (s *Server) postQueue(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Clear  bool     `json:"clear"`
		Delete []string `json:"delete"`
	}
	_ = readJSONExact(r, &body)
	s.mu.Lock()
	if g := s.gen; g != nil {
		if body.Clear {
			g.pending = nil
		}
		if len(body.Delete) > 0 {
			kept := g.pending[:0]
			for _, j := range g.pending {
				if !contains(body.Delete, j.id) {
					kept = append(kept, j)
				}
			}
			g.pending = kept
		}
		g.broadcast(g.statusFrame())
	}
	s.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

func (s *Server) postInterrupt(w http.ResponseWriter, r *http.Request) {
	var body struct {
		PromptID string `json:"prompt_id"`
	}
	_ = readJSONExact(r, &body)
	s.mu.Lock()
	if g := s.gen; g != nil && g.running != nil && (body.PromptID == "" || body.PromptID == g.running.id) {
		g.interrupt = true
	}
	s.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

func (s *Server) postHistory(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Clear  bool     `json:"clear"`
		Delete []string `json:"delete"`
	}
	_ = readJSONExact(r, &body)
	s.mu.Lock()
	if g := s.gen; g != nil {
		if body.Clear {
			g.history, g.order = map[string]historyEntry{}, nil
		}
		for _, id := range body.Delete {
			delete(g.history, id)
			for i, o := range g.order {
				if o == id {
					g.order = append(g.order[:i:i], g.order[i+1:]...)
					break
				}
			}
		}
	}
	s.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

func badPath(p string) bool {
	return strings.Contains(p, "..") || strings.HasPrefix(p, "/") || strings.Contains(p, "\\")
}

func (s *Server) view(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	name, sub, typ := q.Get("filename"), q.Get("subfolder"), q.Get("type")
	if typ == "" {
		typ = "output"
	}
	if name == "" || badPath(name) {
		http.Error(w, "invalid filename", http.StatusBadRequest)
		return
	}
	if badPath(sub) {
		http.Error(w, "forbidden subfolder", http.StatusForbidden)
		return
	}
	s.mu.Lock()
	data, ok := s.files[fileKey{typ, sub, name}]
	s.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	ctype := "application/octet-stream"
	switch strings.ToLower(path.Ext(name)) {
	case ".png":
		ctype = "image/png"
	case ".jpg", ".jpeg":
		ctype = "image/jpeg"
	case ".webp":
		ctype = "image/webp"
	}
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("Content-Disposition", fmt.Sprintf("filename=%q", name))
	w.Write(data)
}

func (s *Server) upload(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseMultipartForm(64 << 20); err != nil {
		http.Error(w, "bad multipart body", http.StatusBadRequest)
		return
	}
	f, hdr, err := r.FormFile("image")
	if err != nil {
		http.Error(w, "no image field", http.StatusBadRequest)
		return
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	typ := r.FormValue("type")
	if typ == "" {
		typ = "input"
	}
	sub := r.FormValue("subfolder")
	name := path.Base(hdr.Filename)
	if name == "" || badPath(name) || badPath(sub) || (typ != "input" && typ != "temp" && typ != "output") {
		http.Error(w, "invalid upload", http.StatusBadRequest)
		return
	}
	overwrite := r.FormValue("overwrite")
	s.mu.Lock()
	if overwrite != "true" && overwrite != "1" {
		base, ext := strings.TrimSuffix(name, path.Ext(name)), path.Ext(name)
		for i := 1; ; i++ {
			old, exists := s.files[fileKey{typ, sub, name}]
			if !exists || bytes.Equal(old, data) {
				break
			}
			name = fmt.Sprintf("%s (%d)%s", base, i, ext)
		}
	}
	s.files[fileKey{typ, sub, name}] = data
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"name": name, "subfolder": sub, "type": typ})
}
