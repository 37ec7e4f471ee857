// Package hub downloads model directories from the Hugging Face Hub: the
// files a model needs (config, tokenizer, processor, safetensors), resumably,
// each checked against the Hub's size and checksum metadata.
//
// URL layout (the Hub's, also served by mirrors through HF_ENDPOINT):
//
//	GET {endpoint}/api/models/{repo}/revision/{rev}?blobs=true
//	    -> {"sha": commit, "siblings": [{"rfilename", "size", "blobId",
//	        "lfs": {"size", "sha256", "pointerSize"}}]}
//	GET {endpoint}/{repo}/resolve/{commit}/{file}   (Range supported)
//
// Checksums: a Git LFS file (every safetensors file) is checked against its
// lfs.sha256 and lfs.size. A small file kept in git itself has no SHA-256 in
// the Hub's metadata, only its git blob id (blobId), which is the SHA-1 of
// "blob <size>\x00" + content: hub checks that and the size. Files are
// fetched from the commit that the metadata describes, so a branch moving
// during the download cannot mix two versions.
package hub

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// DefaultEndpoint is the Hugging Face Hub.
const DefaultEndpoint = "https://huggingface.co"

// KnownModels maps the short names that `m3gate model fetch` accepts to Hub
// repositories.
var KnownModels = map[string]string{
	"smolvlm-256m": "HuggingFaceTB/SmolVLM-256M-Instruct",
	"smolvlm-500m": "HuggingFaceTB/SmolVLM-500M-Instruct",
	"smolvlm-2.2b": "HuggingFaceTB/SmolVLM-Instruct",
}

var repoRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$`)

// ResolveRepo returns the repository and a default directory name for a
// known short name (smolvlm-256m) or a repository id (owner/name).
func ResolveRepo(nameOrRepo string) (repo, dirName string, err error) {
	if r, ok := KnownModels[strings.ToLower(nameOrRepo)]; ok {
		return r, strings.ToLower(nameOrRepo), nil
	}
	if repoRE.MatchString(nameOrRepo) && !strings.Contains(nameOrRepo, "..") {
		return nameOrRepo, path.Base(nameOrRepo), nil
	}
	names := make([]string, 0, len(KnownModels))
	for n := range KnownModels {
		names = append(names, n)
	}
	sort.Strings(names)
	return "", "", fmt.Errorf("unknown model %q: give a known name (%s) or a Hub repository owner/name",
		nameOrRepo, strings.Join(names, ", "))
}

// IsModelFile reports whether a repository file is one a model directory
// needs: configs, tokenizer and processor files, chat template and
// safetensors weights (top level only; onnx/ and other folders are skipped).
func IsModelFile(name string) bool {
	if strings.Contains(name, "/") {
		return false
	}
	switch name {
	case "config.json", "generation_config.json", "special_tokens_map.json",
		"chat_template.json", "chat_template.jinja", "preprocessor_config.json",
		"processor_config.json", "model.safetensors.index.json":
		return true
	}
	if strings.HasPrefix(name, "tokenizer") && strings.HasSuffix(name, ".json") {
		return true
	}
	return strings.HasSuffix(name, ".safetensors")
}

// Client talks to a Hugging Face Hub endpoint.
type Client struct {
	// Endpoint is the Hub's base URL, without a trailing slash.
	Endpoint string
	// Token is sent as "Authorization: Bearer" when set.
	Token string
	// HTTP is the HTTP client; nil means one without an overall timeout
	// (large files take long; ctx bounds each call).
	HTTP *http.Client
	// Progress receives one progress bar per file; nil shows none.
	Progress io.Writer
	// Retries is how many times a failed file transfer is resumed within
	// one Download before giving up.
	Retries int
	// RetryWait is the first wait before a retry; it doubles each time.
	RetryWait time.Duration
}

// NewClient returns a client configured from env (KEY=VALUE pairs):
// HF_ENDPOINT (default https://huggingface.co) and HF_TOKEN, else the token
// that `huggingface-cli login` saved in $HF_TOKEN_PATH or $HF_HOME/token
// (default ~/.cache/huggingface/token).
func NewClient(env []string) *Client {
	get := func(k string) string {
		for i := len(env) - 1; i >= 0; i-- {
			if name, v, ok := strings.Cut(env[i], "="); ok && name == k {
				return v
			}
		}
		return ""
	}
	c := &Client{
		Endpoint:  strings.TrimRight(get("HF_ENDPOINT"), "/"),
		Token:     strings.TrimSpace(get("HF_TOKEN")),
		Retries:   3,
		RetryWait: time.Second,
	}
	if c.Endpoint == "" {
		c.Endpoint = DefaultEndpoint
	}
	if c.Token == "" {
		tokenPath := get("HF_TOKEN_PATH")
		if tokenPath == "" {
			home := get("HF_HOME")
			if home == "" {
				if h := get("HOME"); h != "" {
					home = filepath.Join(h, ".cache", "huggingface")
				}
			}
			if home != "" {
				tokenPath = filepath.Join(home, "token")
			}
		}
		if tokenPath != "" {
			if b, err := os.ReadFile(tokenPath); err == nil {
				c.Token = strings.TrimSpace(string(b))
			}
		}
	}
	return c
}

func (c *Client) httpClient() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return http.DefaultClient
}

// File is one file of a repository with the metadata used to check it.
type File struct {
	Name string
	Size int64
	// SHA256 is the content hash of a Git LFS file; "" for a file kept in git.
	SHA256 string
	// BlobID is the git blob SHA-1 of a file kept in git (for an LFS file it
	// hashes the pointer, not the content, and is not used).
	BlobID string
}

// RepoInfo is a repository at one revision.
type RepoInfo struct {
	Repo     string
	Revision string // as asked for (branch, tag or commit)
	Commit   string // the commit it resolved to
	Files    []File // every file, sorted by name
}

// apiInfo is the JSON of GET /api/models/{repo}/revision/{rev}?blobs=true.
type apiInfo struct {
	ID       string `json:"id"`
	SHA      string `json:"sha"`
	Siblings []struct {
		RFilename string `json:"rfilename"`
		Size      *int64 `json:"size"`
		BlobID    string `json:"blobId"`
		LFS       *struct {
			Size        int64  `json:"size"`
			SHA256      string `json:"sha256"`
			PointerSize int64  `json:"pointerSize"`
		} `json:"lfs"`
	} `json:"siblings"`
}

var hexRE = regexp.MustCompile(`^[0-9a-f]+$`)

// Info fetches the file list of repo at revision, with sizes and checksums.
func (c *Client) Info(ctx context.Context, repo, revision string) (*RepoInfo, error) {
	if revision == "" {
		revision = "main"
	}
	u := fmt.Sprintf("%s/api/models/%s/revision/%s?blobs=true", c.Endpoint, repo, url.PathEscape(revision))
	req, err := c.newRequest(ctx, u)
	if err != nil {
		return nil, err
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return nil, fmt.Errorf("hub info %s: %w", repo, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, c.statusError(resp, repo, revision, "")
	}
	var ai apiInfo
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&ai); err != nil {
		return nil, fmt.Errorf("hub info %s: decode response: %w", repo, err)
	}
	if ai.SHA == "" || !hexRE.MatchString(ai.SHA) {
		return nil, fmt.Errorf("hub info %s: response has no commit sha", repo)
	}
	info := &RepoInfo{Repo: repo, Revision: revision, Commit: ai.SHA}
	for _, s := range ai.Siblings {
		f := File{Name: s.RFilename, BlobID: s.BlobID, Size: -1}
		if s.Size != nil {
			f.Size = *s.Size
		}
		if s.LFS != nil {
			f.Size = s.LFS.Size
			f.SHA256 = strings.ToLower(s.LFS.SHA256)
			f.BlobID = ""
		}
		if err := checkName(f.Name); err != nil {
			return nil, fmt.Errorf("hub info %s: %w", repo, err)
		}
		info.Files = append(info.Files, f)
	}
	sort.Slice(info.Files, func(i, j int) bool { return info.Files[i].Name < info.Files[j].Name })
	return info, nil
}

// checkName refuses file names that would escape the target directory.
func checkName(name string) error {
	if name == "" || strings.HasPrefix(name, "/") || strings.Contains(name, "\\") {
		return fmt.Errorf("bad file name %q", name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == "" || part == "." || part == ".." {
			return fmt.Errorf("bad file name %q", name)
		}
	}
	return nil
}

func (c *Client) newRequest(ctx context.Context, u string) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("hub request: %w", err)
	}
	req.Header.Set("User-Agent", "m3gate")
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	return req, nil
}

// StatusError is a Hub HTTP error with the Hub's own error code and message
// (X-Error-Code, X-Error-Message) when it gave them.
type StatusError struct {
	Status    int
	Code      string // e.g. RepoNotFound, RevisionNotFound, GatedRepo
	Message   string
	Repo      string
	File      string // "" for the repository metadata
	HaveToken bool
}

// Error explains the failure and what to do about it.
func (e *StatusError) Error() string {
	what := e.Repo
	if e.File != "" {
		what += ": " + e.File
	}
	var hint string
	switch {
	case e.Status == http.StatusUnauthorized && !e.HaveToken:
		hint = "the repository does not exist, or it is private or gated and needs a token: " +
			"set HF_TOKEN to a token from https://huggingface.co/settings/tokens"
	case e.Status == http.StatusUnauthorized:
		hint = "HF_TOKEN was rejected: check that it is valid and has read access"
	case e.Status == http.StatusForbidden || e.Code == "GatedRepo":
		hint = "access denied: if the model is gated, accept its terms on its Hub page with the account of HF_TOKEN"
	case e.Status == http.StatusNotFound && e.Code == "RevisionNotFound":
		hint = "revision not found"
	case e.Status == http.StatusNotFound && e.File != "":
		hint = "file not found"
	case e.Status == http.StatusNotFound:
		hint = "repository or revision not found"
	case e.Status == http.StatusTooManyRequests:
		hint = "rate limited by the Hub; wait and run again (the download resumes)"
	default:
		hint = http.StatusText(e.Status)
	}
	msg := fmt.Sprintf("hub %s: HTTP %d: %s", what, e.Status, hint)
	if e.Message != "" {
		msg += " (hub says: " + e.Message + ")"
	}
	return msg
}

func (c *Client) statusError(resp *http.Response, repo, revision, file string) error {
	msg := resp.Header.Get("X-Error-Message")
	if msg == "" {
		var body struct {
			Error string `json:"error"`
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if json.Unmarshal(b, &body) == nil {
			msg = body.Error
		}
	}
	return &StatusError{
		Status: resp.StatusCode, Code: resp.Header.Get("X-Error-Code"), Message: msg,
		Repo: repo + "@" + revision, File: file, HaveToken: c.Token != "",
	}
}
