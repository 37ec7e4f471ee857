package hub

import (
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
)

// PartSuffix marks a file that is still being downloaded; a later Download
// resumes it with an HTTP Range request.
const PartSuffix = ".part"

// Statuses of a FileResult.
const (
	StatusDownloaded = "downloaded" // fetched from the start
	StatusResumed    = "resumed"    // continued from a .part file
	StatusPresent    = "present"    // already there with the right checksum
)

// Result describes what a Download did.
type Result struct {
	Repo   string
	Commit string
	Dir    string
	Files  []FileResult
}

// FileResult is one file of a Download.
type FileResult struct {
	Name   string
	Size   int64
	Status string
}

// ChecksumError reports a downloaded file whose size or hash differs from
// the Hub's metadata. The corrupt download has been removed.
type ChecksumError struct {
	File      string
	What      string // "size", "sha256" or "git blob sha1"
	Got, Want string
}

// Error names the file and both values.
func (e *ChecksumError) Error() string {
	return fmt.Sprintf("%s: %s mismatch: got %s, want %s (the corrupt download was removed; run again)",
		e.File, e.What, e.Got, e.Want)
}

// Download fetches the files of repo at revision ("" means main) for which
// want returns true (nil means IsModelFile) into dir, creating it. Files
// already present with the right checksum are kept; an interrupted
// download (a .part file) resumes where it stopped. A file only gets its
// final name after its size and checksum have been checked.
func (c *Client) Download(ctx context.Context, repo, revision, dir string, want func(name string) bool) (*Result, error) {
	if want == nil {
		want = IsModelFile
	}
	info, err := c.Info(ctx, repo, revision)
	if err != nil {
		return nil, err
	}
	var files []File
	hasConfig, hasWeights := false, false
	for _, f := range info.Files {
		if !want(f.Name) {
			continue
		}
		files = append(files, f)
		hasConfig = hasConfig || f.Name == "config.json"
		hasWeights = hasWeights || strings.HasSuffix(f.Name, ".safetensors")
	}
	where := repo + "@" + info.Revision
	if !hasConfig {
		return nil, fmt.Errorf("hub %s: no config.json: not a model repository", where)
	}
	if !hasWeights {
		return nil, fmt.Errorf("hub %s: no .safetensors weights (m3gate loads safetensors only)", where)
	}
	return c.fetch(ctx, repo, info, files, dir)
}

// DownloadFiles fetches the files of repo at revision for which want
// returns true into dir, like Download but without requiring a model
// directory's config.json and weights (adapters, predictor checkpoints).
// At least one file must match.
func (c *Client) DownloadFiles(ctx context.Context, repo, revision, dir string, want func(name string) bool) (*Result, error) {
	info, err := c.Info(ctx, repo, revision)
	if err != nil {
		return nil, err
	}
	var files []File
	for _, f := range info.Files {
		if want(f.Name) {
			files = append(files, f)
		}
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("hub %s@%s: none of the wanted files is in the repository", repo, info.Revision)
	}
	return c.fetch(ctx, repo, info, files, dir)
}

// fetch downloads files of info into dir.
func (c *Client) fetch(ctx context.Context, repo string, info *RepoInfo, files []File, dir string) (*Result, error) {
	// Small files first, so a broken repository fails before the weights.
	sort.SliceStable(files, func(i, j int) bool {
		wi, wj := strings.HasSuffix(files[i].Name, ".safetensors"), strings.HasSuffix(files[j].Name, ".safetensors")
		if wi != wj {
			return !wi
		}
		return files[i].Name < files[j].Name
	})
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("hub: %w", err)
	}
	res := &Result{Repo: repo, Commit: info.Commit, Dir: dir}
	for _, f := range files {
		status, err := c.downloadFile(ctx, info, f, dir)
		if err != nil {
			return res, fmt.Errorf("download %s: %w", f.Name, err)
		}
		res.Files = append(res.Files, FileResult{Name: f.Name, Size: f.Size, Status: status})
	}
	return res, nil
}

// resolveURL is the download URL of a file at the metadata's commit.
func (c *Client) resolveURL(info *RepoInfo, name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = url.PathEscape(p)
	}
	return fmt.Sprintf("%s/%s/resolve/%s/%s", c.Endpoint, info.Repo, url.PathEscape(info.Commit), strings.Join(parts, "/"))
}

func (c *Client) downloadFile(ctx context.Context, info *RepoInfo, f File, dir string) (string, error) {
	final := filepath.Join(dir, filepath.FromSlash(f.Name))
	if st, err := os.Stat(final); err == nil && !st.IsDir() && (f.Size < 0 || st.Size() == f.Size) {
		if verify(final, f) == nil {
			return StatusPresent, nil
		}
	}
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return "", err
	}
	part := final + PartSuffix
	status := StatusDownloaded
	if st, err := os.Stat(part); err == nil && st.Size() > 0 {
		status = StatusResumed
	}

	var bar *progressbar.ProgressBar
	if c.Progress != nil {
		bar = progressbar.NewOptions64(f.Size,
			progressbar.OptionSetWriter(c.Progress),
			progressbar.OptionSetDescription(f.Name),
			progressbar.OptionShowBytes(true),
			progressbar.OptionSetWidth(30),
			progressbar.OptionThrottle(200*time.Millisecond),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(c.Progress) }),
		)
	}
	wait := c.RetryWait
	for attempt := 0; ; attempt++ {
		err := c.fetchOnce(ctx, info, f, part, bar)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return "", fmt.Errorf("%w (the partial download is kept in %s and resumes next time)", ctx.Err(), part)
		}
		if attempt >= c.Retries || !retryable(err) {
			return "", err
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return "", ctx.Err()
		}
		wait *= 2
	}
	if bar != nil {
		_ = bar.Finish()
	}
	if err := verify(part, f); err != nil {
		os.Remove(part)
		return "", err
	}
	if err := os.Rename(part, final); err != nil {
		return "", err
	}
	return status, nil
}

// fetchOnce appends the missing bytes of f to part, asking for them with a
// Range request when part already holds some.
func (c *Client) fetchOnce(ctx context.Context, info *RepoInfo, f File, part string, bar *progressbar.ProgressBar) error {
	var offset int64
	if st, err := os.Stat(part); err == nil {
		offset = st.Size()
	}
	if f.Size >= 0 && offset > f.Size {
		offset = 0 // longer than the file: start again
	}
	if f.Size >= 0 && offset == f.Size {
		return nil
	}
	req, err := c.newRequest(ctx, c.resolveURL(info, f.Name))
	if err != nil {
		return err
	}
	if offset > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", offset))
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	flags := os.O_WRONLY | os.O_CREATE
	switch {
	case resp.StatusCode == http.StatusPartialContent && offset > 0:
		if start, ok := contentRangeStart(resp.Header.Get("Content-Range")); !ok || start != offset {
			return fmt.Errorf("server answered range %d- with %q", offset, resp.Header.Get("Content-Range"))
		}
		flags |= os.O_APPEND
	case resp.StatusCode == http.StatusOK:
		offset = 0 // the server ignored the Range: start again
		flags |= os.O_TRUNC
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable:
		os.Remove(part)
		return errRestart
	default:
		return c.statusError(resp, info.Repo, info.Revision, f.Name)
	}
	out, err := os.OpenFile(part, flags, 0o644)
	if err != nil {
		return err
	}
	var w io.Writer = out
	if bar != nil {
		bar.Reset()
		_ = bar.Set64(offset)
		w = io.MultiWriter(out, bar)
	}
	var body io.Reader = resp.Body
	if f.Size >= 0 {
		// One byte more than expected shows a server sending too much.
		body = io.LimitReader(resp.Body, f.Size-offset+1)
	}
	_, copyErr := io.Copy(w, body)
	syncErr := out.Sync()
	closeErr := out.Close()
	if copyErr != nil {
		return copyErr
	}
	if syncErr != nil {
		return syncErr
	}
	return closeErr
}

// errRestart asks for a retry from the start of the file.
var errRestart = errors.New("server refused the resume range; restarting the file")

func retryable(err error) bool {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Status >= 500 || se.Status == http.StatusRequestTimeout || se.Status == http.StatusTooManyRequests
	}
	var ce *ChecksumError
	return !errors.As(err, &ce)
}

func contentRangeStart(h string) (int64, bool) {
	rest, ok := strings.CutPrefix(h, "bytes ")
	if !ok {
		return 0, false
	}
	start, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(start, 10, 64)
	return n, err == nil
}

// verify checks the size and checksum of the file at p against f.
func verify(p string, f File) error {
	in, err := os.Open(p)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	if f.Size >= 0 && st.Size() != f.Size {
		return &ChecksumError{File: f.Name, What: "size", Got: fmt.Sprintf("%d bytes", st.Size()), Want: fmt.Sprintf("%d bytes", f.Size)}
	}
	var h hash.Hash
	var what, want string
	switch {
	case f.SHA256 != "":
		h, what, want = sha256.New(), "sha256", f.SHA256
	case f.BlobID != "":
		h, what, want = sha1.New(), "git blob sha1", f.BlobID
		fmt.Fprintf(h, "blob %d\x00", st.Size())
	default:
		return nil // the Hub gave no checksum: the size check is all there is
	}
	if _, err := io.Copy(h, in); err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != strings.ToLower(want) {
		return &ChecksumError{File: f.Name, What: what, Got: got, Want: want}
	}
	return nil
}
