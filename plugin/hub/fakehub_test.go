package hub

import (
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeHub serves the Hub's URL layout for one repository: the model info
// API with blobs=true, and /resolve/ downloads with Range support, LFS files
// redirected to a CDN path as the real Hub does.
type fakeHub struct {
	t      *testing.T
	repo   string
	commit string
	files  map[string][]byte
	lfs    map[string]bool
	token  string // when set, every request needs "Bearer <token>"

	mu        sync.Mutex
	requests  []string          // "path range"
	cutAfter  map[string]int64  // name -> abort the next response after so many bytes
	served    map[string][]byte // name -> different bytes to serve (corruption)
	sentHalf  chan struct{}     // closed when a blocking response has sent half
	blockHalf string            // name whose response blocks after half until the client leaves
	auth      []string          // Authorization headers seen
}

func newFakeHub(t *testing.T) (*fakeHub, *httptest.Server) {
	rng := rand.New(rand.NewPCG(1, 2))
	weights := make([]byte, 1<<20+123)
	for i := range weights {
		weights[i] = byte(rng.Uint32())
	}
	shard2 := make([]byte, 70000)
	for i := range shard2 {
		shard2[i] = byte(rng.Uint32())
	}
	h := &fakeHub{
		t:      t,
		repo:   "HuggingFaceTB/SmolVLM-256M-Instruct",
		commit: "0123456789abcdef0123456789abcdef01234567",
		files: map[string][]byte{
			"config.json":                      []byte(`{"model_type":"idefics3"}`),
			"generation_config.json":           []byte(`{"eos_token_id":49279}`),
			"tokenizer.json":                   []byte(`{"model":{"type":"BPE"},"added_tokens":["<end_of_utterance>","é"]}`),
			"tokenizer_config.json":            []byte(`{}`),
			"processor_config.json":            []byte(`{"image_seq_len":64}`),
			"model-00001-of-00002.safetensors": weights,
			"model-00002-of-00002.safetensors": shard2,
			"model.safetensors.index.json":     []byte(`{"weight_map":{}}`),
			"README.md":                        []byte("# readme"),
			".gitattributes":                   []byte("*.safetensors filter=lfs"),
			"onnx/model.onnx":                  []byte("onnx"),
		},
		lfs: map[string]bool{
			"model-00001-of-00002.safetensors": true,
			"model-00002-of-00002.safetensors": true,
			"onnx/model.onnx":                  true,
		},
		cutAfter: map[string]int64{},
		served:   map[string][]byte{},
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return h, srv
}

func gitBlobSHA1(b []byte) string {
	s := sha1.New()
	fmt.Fprintf(s, "blob %d\x00", len(b))
	s.Write(b)
	return hex.EncodeToString(s.Sum(nil))
}

func (h *fakeHub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	h.requests = append(h.requests, r.URL.Path+" "+r.Header.Get("Range"))
	h.auth = append(h.auth, r.Header.Get("Authorization"))
	h.mu.Unlock()
	if h.token != "" && r.Header.Get("Authorization") != "Bearer "+h.token {
		w.Header().Set("X-Error-Code", "RepoNotFound")
		w.Header().Set("X-Error-Message", "Invalid username or password.")
		http.Error(w, `{"error":"Invalid username or password."}`, http.StatusUnauthorized)
		return
	}
	apiPrefix := "/api/models/" + h.repo + "/revision/"
	resolvePrefix := "/" + h.repo + "/resolve/" + h.commit + "/"
	switch {
	case strings.HasPrefix(r.URL.Path, apiPrefix):
		rev := strings.TrimPrefix(r.URL.Path, apiPrefix)
		if rev != "main" && rev != h.commit {
			w.Header().Set("X-Error-Code", "RevisionNotFound")
			w.Header().Set("X-Error-Message", "Invalid rev id: "+rev)
			http.Error(w, `{"error":"Invalid rev id"}`, http.StatusNotFound)
			return
		}
		if r.URL.Query().Get("blobs") != "true" {
			h.t.Errorf("info request without blobs=true: %s", r.URL)
		}
		type lfsInfo struct {
			Size        int64  `json:"size"`
			SHA256      string `json:"sha256"`
			PointerSize int64  `json:"pointerSize"`
		}
		type sibling struct {
			RFilename string   `json:"rfilename"`
			Size      int64    `json:"size"`
			BlobID    string   `json:"blobId"`
			LFS       *lfsInfo `json:"lfs,omitempty"`
		}
		var sibs []sibling
		for name, b := range h.files {
			s := sibling{RFilename: name, Size: int64(len(b)), BlobID: gitBlobSHA1(b)}
			if h.lfs[name] {
				sum := sha256.Sum256(b)
				pointer := fmt.Sprintf("version https://git-lfs.github.com/spec/v1\noid sha256:%x\nsize %d\n", sum, len(b))
				s.BlobID = gitBlobSHA1([]byte(pointer))
				s.LFS = &lfsInfo{Size: int64(len(b)), SHA256: hex.EncodeToString(sum[:]), PointerSize: int64(len(pointer))}
			}
			sibs = append(sibs, s)
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"id": h.repo, "sha": h.commit, "private": false, "siblings": sibs})
	case strings.HasPrefix(r.URL.Path, resolvePrefix):
		name := strings.TrimPrefix(r.URL.Path, resolvePrefix)
		if _, ok := h.files[name]; !ok {
			w.Header().Set("X-Error-Code", "EntryNotFound")
			http.Error(w, "Entry not found", http.StatusNotFound)
			return
		}
		if h.lfs[name] {
			// The Hub redirects LFS downloads to its CDN.
			http.Redirect(w, r, "/cdn/"+name, http.StatusFound)
			return
		}
		h.serveFile(w, r, name)
	case strings.HasPrefix(r.URL.Path, "/cdn/"):
		h.serveFile(w, r, strings.TrimPrefix(r.URL.Path, "/cdn/"))
	default:
		http.NotFound(w, r)
	}
}

func (h *fakeHub) serveFile(w http.ResponseWriter, r *http.Request, name string) {
	h.mu.Lock()
	body := h.files[name]
	if b, ok := h.served[name]; ok {
		body = b
	}
	cut, hasCut := h.cutAfter[name]
	delete(h.cutAfter, name)
	block := h.blockHalf == name
	h.mu.Unlock()
	if hasCut {
		// Send the start of the file, then drop the connection.
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		w.WriteHeader(http.StatusOK)
		w.Write(body[:cut])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}
	if block {
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		w.WriteHeader(http.StatusOK)
		w.Write(body[:len(body)/2])
		w.(http.Flusher).Flush()
		close(h.sentHalf)
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
			h.t.Error("client did not go away after cancel")
		}
		return
	}
	http.ServeContent(w, r, name, time.Time{}, strings.NewReader(string(body)))
}

func (h *fakeHub) requestsFor(name string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, r := range h.requests {
		if strings.HasSuffix(strings.Fields(r)[0], "/"+name) {
			out = append(out, r)
		}
	}
	return out
}
