package cli

import (
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// miniHub serves a two-file repository in the Hub's URL layout.
func miniHub(t *testing.T, token string) *httptest.Server {
	files := map[string]string{"config.json": `{"model_type":"idefics3"}`, "model.safetensors": "weights"}
	const commit = "abcdef0123456789abcdef0123456789abcdef01"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if token != "" && r.Header.Get("Authorization") != "Bearer "+token {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		switch {
		case r.URL.Path == "/api/models/HuggingFaceTB/SmolVLM-256M-Instruct/revision/main":
			var sibs []map[string]any
			for name, b := range files {
				h := sha1.New()
				fmt.Fprintf(h, "blob %d\x00%s", len(b), b)
				sibs = append(sibs, map[string]any{"rfilename": name, "size": len(b), "blobId": hex.EncodeToString(h.Sum(nil))})
			}
			json.NewEncoder(w).Encode(map[string]any{"sha": commit, "siblings": sibs})
		case strings.HasPrefix(r.URL.Path, "/HuggingFaceTB/SmolVLM-256M-Instruct/resolve/"+commit+"/"):
			name := strings.TrimPrefix(r.URL.Path, "/HuggingFaceTB/SmolVLM-256M-Instruct/resolve/"+commit+"/")
			fmt.Fprint(w, files[name])
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestModelFetch(t *testing.T) {
	srv := miniHub(t, "")
	code, out, errOut := run(t, []string{"HF_ENDPOINT=" + srv.URL}, "", "model", "fetch", "smolvlm-256m")
	if code != 0 {
		t.Fatalf("code %d, stderr %q", code, errOut)
	}
	b, err := os.ReadFile(filepath.Join("models", "smolvlm-256m", "config.json"))
	if err != nil || string(b) != `{"model_type":"idefics3"}` {
		t.Errorf("config.json = %q, %v", b, err)
	}
	if !strings.Contains(out, "fetched HuggingFaceTB/SmolVLM-256M-Instruct@abcdef0") || strings.Contains(out, "to use it") {
		t.Errorf("stdout = %q", out)
	}
}

func TestModelFetchErrors(t *testing.T) {
	srv := miniHub(t, "hf_x")
	tests := []struct {
		args     []string
		wantCode int
		wantErr  string
	}{
		{[]string{"model", "fetch", "smolvlm-256m", "--dir", "d"}, ExitError, "set HF_TOKEN"},
		{[]string{"model", "fetch", "nonsense"}, ExitUsage, `unknown model "nonsense"`},
		{[]string{"model", "fetch"}, ExitUsage, "accepts 1 arg"},
	}
	for _, tt := range tests {
		code, _, errOut := run(t, []string{"HF_ENDPOINT=" + srv.URL, "HOME=" + t.TempDir()}, "", tt.args...)
		if code != tt.wantCode || !strings.Contains(errOut, tt.wantErr) {
			t.Errorf("%v: code %d stderr %q; want %d and %q", tt.args, code, errOut, tt.wantCode, tt.wantErr)
		}
	}
}
