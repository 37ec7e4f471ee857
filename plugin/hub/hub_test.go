package hub

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"
)

func testClient(url string) *Client {
	return &Client{Endpoint: url, Retries: 0, RetryWait: time.Millisecond}
}

var wantModelFiles = []string{
	"config.json", "generation_config.json", "model-00001-of-00002.safetensors",
	"model-00002-of-00002.safetensors", "model.safetensors.index.json",
	"processor_config.json", "tokenizer.json", "tokenizer_config.json",
}

// dirFiles lists the regular files under dir (relative, slash-separated).
func dirFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, filepath.ToSlash(rel))
		}
		return nil
	})
	sort.Strings(out)
	return out
}

func checkContents(t *testing.T, h *fakeHub, dir string) {
	t.Helper()
	if got := dirFiles(t, dir); !reflect.DeepEqual(got, wantModelFiles) {
		t.Fatalf("files = %v, want %v", got, wantModelFiles)
	}
	for _, name := range wantModelFiles {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, h.files[name]) {
			t.Errorf("%s: content differs from the server's", name)
		}
	}
}

func statuses(r *Result) map[string]string {
	m := map[string]string{}
	for _, f := range r.Files {
		m[f.Name] = f.Status
	}
	return m
}

func TestDownloadFull(t *testing.T) {
	h, srv := newFakeHub(t)
	dir := filepath.Join(t.TempDir(), "models", "smolvlm-256m")
	var progress bytes.Buffer
	c := testClient(srv.URL)
	c.Progress = &progress
	res, err := c.Download(context.Background(), h.repo, "", dir, nil)
	if err != nil {
		t.Fatalf("Download: %v", err)
	}
	checkContents(t, h, dir)
	if res.Commit != h.commit {
		t.Errorf("commit = %q, want %q", res.Commit, h.commit)
	}
	for name, st := range statuses(res) {
		if st != StatusDownloaded {
			t.Errorf("%s: status %q, want %q", name, st, StatusDownloaded)
		}
	}
	if !strings.Contains(progress.String(), "model-00001-of-00002.safetensors") {
		t.Errorf("progress output lacks the weights file: %q", progress.String())
	}
	// Files come from the commit, not the branch.
	for _, r := range h.requests {
		if strings.Contains(r, "/resolve/main/") {
			t.Errorf("download by branch name: %s", r)
		}
	}

	// A second run finds everything present and downloads nothing.
	before := len(h.requests)
	res, err = c.Download(context.Background(), h.repo, "main", dir, nil)
	if err != nil {
		t.Fatalf("second Download: %v", err)
	}
	for name, st := range statuses(res) {
		if st != StatusPresent {
			t.Errorf("second run: %s status %q, want %q", name, st, StatusPresent)
		}
	}
	if got := len(h.requests) - before; got != 1 {
		t.Errorf("second run made %d requests, want 1 (the info)", got)
	}
}

func TestDownloadResume(t *testing.T) {
	const name = "model-00001-of-00002.safetensors"
	const cut = 300000
	h, srv := newFakeHub(t)
	dir := t.TempDir()
	h.cutAfter[name] = cut
	c := testClient(srv.URL)

	_, err := c.Download(context.Background(), h.repo, "", dir, nil)
	if err == nil || !strings.Contains(err.Error(), name) {
		t.Fatalf("interrupted Download: err = %v, want one naming %s", err, name)
	}
	if _, err := os.Stat(filepath.Join(dir, name)); !os.IsNotExist(err) {
		t.Errorf("final file exists after an interrupted download (stat err %v)", err)
	}
	st, err := os.Stat(filepath.Join(dir, name+PartSuffix))
	if err != nil || st.Size() != cut {
		t.Fatalf("part file: %v, size %d, want %d", err, st.Size(), cut)
	}

	res, err := c.Download(context.Background(), h.repo, "", dir, nil)
	if err != nil {
		t.Fatalf("resumed Download: %v", err)
	}
	checkContents(t, h, dir)
	if got := statuses(res)[name]; got != StatusResumed {
		t.Errorf("status = %q, want %q", got, StatusResumed)
	}
	reqs := h.requestsFor(name)
	if last := reqs[len(reqs)-1]; !strings.HasSuffix(last, "bytes=300000-") {
		t.Errorf("resume request %q, want a Range from byte %d (all: %v)", last, cut, reqs)
	}
}

func TestDownloadRetriesWithinRun(t *testing.T) {
	const name = "model-00002-of-00002.safetensors"
	h, srv := newFakeHub(t)
	dir := t.TempDir()
	h.cutAfter[name] = 1000
	c := testClient(srv.URL)
	c.Retries = 2
	if _, err := c.Download(context.Background(), h.repo, "", dir, nil); err != nil {
		t.Fatalf("Download: %v", err)
	}
	checkContents(t, h, dir)
	reqs := h.requestsFor(name)
	if last := reqs[len(reqs)-1]; !strings.HasSuffix(last, "bytes=1000-") {
		t.Errorf("retry request %q, want a Range from byte 1000", last)
	}
}

func TestDownloadChecksumMismatch(t *testing.T) {
	tests := []struct {
		name string
		what string
	}{
		{"model-00002-of-00002.safetensors", "sha256"},
		{"tokenizer.json", "git blob sha1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, srv := newFakeHub(t)
			dir := t.TempDir()
			bad := bytes.Clone(h.files[tt.name])
			bad[len(bad)/2] ^= 0xff // same size, different content
			h.served[tt.name] = bad
			_, err := testClient(srv.URL).Download(context.Background(), h.repo, "", dir, nil)
			var ce *ChecksumError
			if !errors.As(err, &ce) {
				t.Fatalf("err = %v, want a *ChecksumError", err)
			}
			if ce.File != tt.name || ce.What != tt.what {
				t.Errorf("ChecksumError{File: %q, What: %q}, want %q, %q", ce.File, ce.What, tt.name, tt.what)
			}
			if !strings.Contains(err.Error(), tt.name) {
				t.Errorf("error %q does not name the file", err)
			}
			for _, p := range []string{tt.name, tt.name + PartSuffix} {
				if _, err := os.Stat(filepath.Join(dir, p)); !os.IsNotExist(err) {
					t.Errorf("%s left behind after a checksum mismatch", p)
				}
			}
		})
	}
}

func TestDownloadSizeMismatch(t *testing.T) {
	h, srv := newFakeHub(t)
	h.served["config.json"] = append(bytes.Clone(h.files["config.json"]), ' ')
	_, err := testClient(srv.URL).Download(context.Background(), h.repo, "", t.TempDir(), nil)
	var ce *ChecksumError
	if !errors.As(err, &ce) || ce.What != "size" || ce.File != "config.json" {
		t.Fatalf("err = %v, want a size ChecksumError for config.json", err)
	}
}

func TestDownloadReplacesCorruptFinalFile(t *testing.T) {
	h, srv := newFakeHub(t)
	dir := t.TempDir()
	c := testClient(srv.URL)
	if _, err := c.Download(context.Background(), h.repo, "", dir, nil); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "tokenizer.json")
	b, _ := os.ReadFile(p)
	b[0] ^= 1
	os.WriteFile(p, b, 0o644)
	res, err := c.Download(context.Background(), h.repo, "", dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := statuses(res)["tokenizer.json"]; got != StatusDownloaded {
		t.Errorf("corrupt file status %q, want %q", got, StatusDownloaded)
	}
	checkContents(t, h, dir)
}

func TestAuth(t *testing.T) {
	tests := []struct {
		name    string
		token   string
		wantErr string
	}{
		{"no token", "", "HTTP 401: the repository does not exist, or it is private or gated and needs a token: set HF_TOKEN"},
		{"wrong token", "hf_wrong", "HTTP 401: HF_TOKEN was rejected"},
		{"right token", "hf_secret", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, srv := newFakeHub(t)
			h.token = "hf_secret"
			c := NewClient([]string{"HF_ENDPOINT=" + srv.URL + "/", "HF_TOKEN=" + tt.token, "HOME=" + t.TempDir()})
			c.Retries = 0
			dir := t.TempDir()
			_, err := c.Download(context.Background(), h.repo, "", dir, nil)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Download: %v", err)
				}
				checkContents(t, h, dir)
				for _, a := range h.auth {
					if a != "Bearer hf_secret" {
						t.Errorf("request without the token: %q", a)
					}
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
			}
			if got := dirFiles(t, dir); len(got) != 0 {
				t.Errorf("files written after a 401: %v", got)
			}
		})
	}
}

func TestNewClient(t *testing.T) {
	home := t.TempDir()
	os.MkdirAll(filepath.Join(home, ".cache", "huggingface"), 0o755)
	os.WriteFile(filepath.Join(home, ".cache", "huggingface", "token"), []byte("hf_fromfile\n"), 0o600)
	tests := []struct {
		env          []string
		wantEndpoint string
		wantToken    string
	}{
		{nil, DefaultEndpoint, ""},
		{[]string{"HF_ENDPOINT=https://hf-mirror.example/", "HF_TOKEN=hf_env"}, "https://hf-mirror.example", "hf_env"},
		{[]string{"HOME=" + home}, DefaultEndpoint, "hf_fromfile"},
		{[]string{"HOME=" + home, "HF_TOKEN=hf_env"}, DefaultEndpoint, "hf_env"},
	}
	for _, tt := range tests {
		c := NewClient(tt.env)
		if c.Endpoint != tt.wantEndpoint || c.Token != tt.wantToken {
			t.Errorf("NewClient(%v) = %q, %q; want %q, %q", tt.env, c.Endpoint, c.Token, tt.wantEndpoint, tt.wantToken)
		}
	}
}

func TestDownloadCancel(t *testing.T) {
	const name = "model-00001-of-00002.safetensors"
	h, srv := newFakeHub(t)
	h.blockHalf = name
	h.sentHalf = make(chan struct{})
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-h.sentHalf
		time.Sleep(50 * time.Millisecond) // let the client write what it got
		cancel()
	}()
	start := time.Now()
	_, err := testClient(srv.URL).Download(ctx, h.repo, "", dir, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancel took %v", d)
	}
	if _, err := os.Stat(filepath.Join(dir, name)); !os.IsNotExist(err) {
		t.Errorf("final file exists after cancel")
	}
	if st, err := os.Stat(filepath.Join(dir, name+PartSuffix)); err != nil || st.Size() == 0 {
		t.Errorf("no partial file kept for resuming: %v", err)
	}
}

func TestInfoErrors(t *testing.T) {
	h, srv := newFakeHub(t)
	c := testClient(srv.URL)
	_, err := c.Info(context.Background(), h.repo, "v9")
	if err == nil || !strings.Contains(err.Error(), "HTTP 404: revision not found") {
		t.Errorf("bad revision: %v", err)
	}
	_, err = c.Info(context.Background(), "nobody/nothing", "main")
	if err == nil || !strings.Contains(err.Error(), "HTTP 404") {
		t.Errorf("missing repo: %v", err)
	}
	h.files["../evil.json"] = []byte("x")
	_, err = c.Info(context.Background(), h.repo, "main")
	if err == nil || !strings.Contains(err.Error(), `bad file name "../evil.json"`) {
		t.Errorf("path traversal: %v", err)
	}
}

func TestDownloadNotAModel(t *testing.T) {
	h, srv := newFakeHub(t)
	for name := range h.files {
		if strings.HasSuffix(name, ".safetensors") {
			delete(h.files, name)
		}
	}
	_, err := testClient(srv.URL).Download(context.Background(), h.repo, "", t.TempDir(), nil)
	if err == nil || !strings.Contains(err.Error(), "no .safetensors weights") {
		t.Errorf("err = %v", err)
	}
}

func TestResolveRepo(t *testing.T) {
	tests := []struct {
		in, repo, dir, err string
	}{
		{"smolvlm-256m", "HuggingFaceTB/SmolVLM-256M-Instruct", "smolvlm-256m", ""},
		{"SmolVLM-500M", "HuggingFaceTB/SmolVLM-500M-Instruct", "smolvlm-500m", ""},
		{"smolvlm-2.2b", "HuggingFaceTB/SmolVLM-Instruct", "smolvlm-2.2b", ""},
		{"me/my-model.v2", "me/my-model.v2", "my-model.v2", ""},
		{"smolvlm", "", "", "unknown model"},
		{"a/../b", "", "", "unknown model"},
		{"a/b/c", "", "", "unknown model"},
	}
	for _, tt := range tests {
		repo, dir, err := ResolveRepo(tt.in)
		if repo != tt.repo || dir != tt.dir || (tt.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.err)) {
			t.Errorf("ResolveRepo(%q) = %q, %q, %v; want %q, %q, %q", tt.in, repo, dir, err, tt.repo, tt.dir, tt.err)
		}
	}
}

func TestIsModelFile(t *testing.T) {
	tests := []struct {
		name string
		want bool
	}{
		{"config.json", true}, {"tokenizer.json", true}, {"tokenizer_config.json", true},
		{"special_tokens_map.json", true}, {"chat_template.json", true}, {"preprocessor_config.json", true},
		{"processor_config.json", true}, {"model.safetensors", true}, {"model-00001-of-00004.safetensors", true},
		{"model.safetensors.index.json", true}, {"generation_config.json", true},
		{"README.md", false}, {"pytorch_model.bin", false}, {"onnx/model.safetensors", false},
		{".gitattributes", false}, {"vocab.json", false},
	}
	for _, tt := range tests {
		if got := IsModelFile(tt.name); got != tt.want {
			t.Errorf("IsModelFile(%q) = %v, want %v", tt.name, got, tt.want)
		}
	}
}
