package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// budget bounds the request-body bytes held at once across requests.
type budget struct {
	mu   sync.Mutex
	used int64
	max  int64
}

// take reserves n bytes, or reports false when they do not fit.
func (b *budget) take(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n > b.max {
		return false
	}
	b.used += n
	return true
}

func (b *budget) give(n int64) {
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
}

func (b *budget) inUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

var (
	// errBudget: the body does not fit in daemon.max_inflight_bytes now.
	errBudget = errors.New("too many request bytes in flight")
	// errTooSlow: the body arrives slower than daemon.min_upload_rate.
	errTooSlow = errors.New("request body arrives too slowly")
)

// rateGrace is how long a body may arrive at any rate before the minimum
// rate applies; idleWait how long one read may wait for data at all.
const (
	rateGrace = 5 * time.Second
	idleWait  = 10 * time.Second
)

// bodyReader reads a request body within its limits: it charges bytes
// without a Content-Length to the budget as they arrive, cuts off a body
// slower than minRate (averaged after rateGrace) or stalled for idleWait,
// and stops at the body deadline.
type bodyReader struct {
	r        io.Reader
	rc       *http.ResponseController
	b        *budget
	charged  *int64 // bytes charged to b for this request
	counted  bool   // charge as read (no Content-Length)
	start    time.Time
	deadline time.Time
	minRate  int64
	n        int64
}

func (br *bodyReader) Read(p []byte) (int, error) {
	now := time.Now()
	if el := now.Sub(br.start); br.minRate > 0 && el > rateGrace && float64(br.n) < float64(br.minRate)*el.Seconds() {
		return 0, errTooSlow
	}
	next := now.Add(idleWait)
	if next.After(br.deadline) {
		next = br.deadline
	}
	_ = br.rc.SetReadDeadline(next)
	n, err := br.r.Read(p)
	br.n += int64(n)
	if br.counted && n > 0 {
		if !br.b.take(int64(n)) {
			return n, errBudget
		}
		*br.charged += int64(n)
	}
	if err != nil && isTimeout(err) {
		if time.Now().Before(br.deadline) {
			return n, errTooSlow
		}
		return n, fmt.Errorf("request body not received within daemon.body_timeout: %w", errTooSlow)
	}
	return n, err
}

func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout() || errors.Is(err, os.ErrDeadlineExceeded)
}

// admitBody sets up the reading of r's body: it refuses a body over the
// cap (413) or one that does not fit in the budget (429), and returns a
// release func the handler calls once it no longer holds the body's data.
// A daemon shutdown cuts the read short.
func (s *Server) admitBody(w http.ResponseWriter, r *http.Request, maxBytes int64) (release func(), code int, err error) {
	if r.ContentLength > maxBytes {
		return nil, http.StatusRequestEntityTooLarge, fmt.Errorf("request body of %d bytes is over the %d-byte limit (daemon.max_images x daemon.max_image_bytes, base64)", r.ContentLength, maxBytes)
	}
	if r.ContentLength > s.budget.max {
		return nil, http.StatusRequestEntityTooLarge, fmt.Errorf("request body of %d bytes is over daemon.max_inflight_bytes (%d): send fewer images per request", r.ContentLength, s.budget.max)
	}
	charged := new(int64)
	if r.ContentLength > 0 {
		if !s.budget.take(r.ContentLength) {
			s.metrics.refused.WithLabelValues("budget").Inc()
			return nil, http.StatusTooManyRequests, fmt.Errorf("%w (%d bytes, daemon.max_inflight_bytes %d); retry later", errBudget, r.ContentLength, s.budget.max)
		}
		*charged = r.ContentLength
	}
	rc := http.NewResponseController(w)
	now := time.Now()
	br := &bodyReader{
		r: http.MaxBytesReader(w, r.Body, maxBytes), rc: rc, b: s.budget, charged: charged,
		counted: r.ContentLength <= 0, start: now, deadline: now.Add(s.cfg.BodyTimeout), minRate: s.cfg.MinUploadRate,
	}
	r.Body = io.NopCloser(br)
	stop := context.AfterFunc(s.aborting, func() { _ = rc.SetReadDeadline(time.Now()) })
	var once sync.Once
	return func() {
		once.Do(func() {
			stop()
			s.budget.give(*charged)
		})
	}, 0, nil
}

// bodyDone clears the body's read deadline once it has been read, so the
// connection stays usable for the answer and the next request.
func bodyDone(w http.ResponseWriter) {
	_ = http.NewResponseController(w).SetReadDeadline(time.Time{})
}

// bodyErrorStatus maps an error from reading a body onto a status.
func bodyErrorStatus(err error) (int, bool) {
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return http.StatusRequestEntityTooLarge, true
	case errors.Is(err, errBudget):
		return http.StatusTooManyRequests, true
	case errors.Is(err, errTooSlow):
		return http.StatusRequestTimeout, true
	}
	return 0, false
}

// errPathRefused is the one answer for a path outside the roots, missing,
// or unreadable: it never tells whether a file exists there.
var errPathRefused = errors.New("not a readable file under daemon.path_roots")

// readImagePath reads the image file p for a request: only when the
// operator allowed paths, only a regular file under one of the roots after
// resolving symlinks, opened without following a final symlink and without
// blocking (a FIFO or device is refused after fstat, never read), and at
// most MaxImageBytes. Its errors never show the file's contents.
func (s *Server) readImagePath(p string) ([]byte, error) {
	if !s.cfg.AllowPaths {
		return nil, errors.New("image paths are not accepted (daemon.allow_paths is off): send the image bytes")
	}
	if !filepath.IsAbs(p) {
		return nil, fmt.Errorf("path %q is not absolute", p)
	}
	real, err := filepath.EvalSymlinks(p)
	if err != nil || !s.underRoot(real) {
		return nil, fmt.Errorf("path %q: %w", p, errPathRefused)
	}
	f, err := openNoFollow(real)
	if err != nil {
		return nil, fmt.Errorf("path %q: %w", p, errPathRefused)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("path %q: not a regular file", p)
	}
	if fi.Size() > s.cfg.MaxImageBytes {
		return nil, fmt.Errorf("path %q: file of %d bytes is over daemon.max_image_bytes (%d)", p, fi.Size(), s.cfg.MaxImageBytes)
	}
	b, err := io.ReadAll(io.LimitReader(f, s.cfg.MaxImageBytes+1))
	if err != nil {
		return nil, fmt.Errorf("path %q: read failed", p)
	}
	if int64(len(b)) > s.cfg.MaxImageBytes {
		return nil, fmt.Errorf("path %q: file grew over daemon.max_image_bytes (%d)", p, s.cfg.MaxImageBytes)
	}
	return b, nil
}

// underRoot reports whether the resolved path p lies in a path root.
func (s *Server) underRoot(p string) bool {
	for _, root := range s.roots {
		rel, err := filepath.Rel(root, p)
		if err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) && rel != "." {
			return true
		}
	}
	return false
}
