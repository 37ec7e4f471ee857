package pipeline

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/m3gate/m3gate/schemas/api"
)

// DaemonScorer scores images through the m3gate daemon's HTTP API (the
// contract of package schemas/api): POST {URL}/v1/score
// {"images":[{"data":"<base64>"}],"prompt":…,"aspects":[…]} →
// {"results":[{"index":0,"error":"","aspects":{"quality":{"mos":…}}}]}; a
// refusal is a non-2xx status with {"error":…}.
type DaemonScorer struct {
	// URL is the daemon's base URL ("http://127.0.0.1:8190").
	URL string
	// Token is the daemon's bearer token (daemon.token,
	// $M3GATE_DAEMON_TOKEN); empty sends none.
	Token string
	// HTTP is the client to use (default: one with a 10-minute timeout,
	// since scoring a batch on CPU takes a while).
	HTTP *http.Client
}

// Score implements Scorer.
func (d *DaemonScorer) Score(ctx context.Context, images []Image, prompt string, aspects []string) ([]Scores, error) {
	if d.URL == "" {
		return nil, errors.New("daemon scorer: no daemon URL")
	}
	req := api.ScoreRequest{Prompt: prompt, Aspects: aspects, Images: make([]api.Image, len(images))}
	for i, img := range images {
		req.Images[i].Data = img.Data // base64 in JSON
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("daemon scorer: encode: %w", err)
	}
	url := strings.TrimSuffix(d.URL, "/") + api.PathScore
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("daemon scorer: %w", err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	if d.Token != "" {
		hreq.Header.Set("Authorization", "Bearer "+d.Token)
	}
	hc := d.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 10 * time.Minute}
	}
	resp, err := hc.Do(hreq)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return nil, fmt.Errorf("daemon scorer: cannot reach the m3gate daemon at %s (start it with `m3gate serve`): %w", d.URL, err)
		}
		return nil, fmt.Errorf("daemon scorer: %w", err)
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("daemon scorer: read answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		msg := strings.TrimSpace(string(rb))
		var refusal api.ErrorResponse
		if json.Unmarshal(rb, &refusal) == nil && refusal.Error != "" {
			msg = refusal.Error
		}
		if len(msg) > 300 {
			msg = msg[:300] + "…"
		}
		return nil, &DaemonError{URL: url, StatusCode: resp.StatusCode, Msg: msg}
	}
	var ans api.ScoreResponse
	if err := json.Unmarshal(rb, &ans); err != nil {
		return nil, fmt.Errorf("daemon scorer: decode answer: %w", err)
	}
	out := make([]Scores, len(images))
	got := make([]bool, len(images))
	for _, r := range ans.Results {
		if r.Index < 0 || r.Index >= len(images) {
			return nil, fmt.Errorf("daemon scorer: result index %d out of range (%d images)", r.Index, len(images))
		}
		sc := Scores{Aspects: make(map[string]AspectScore, len(r.Aspects)), Error: r.Error}
		for k, a := range r.Aspects {
			sc.Aspects[k] = AspectScore{MOS: a.MOS, Rating: a.Rating, WordProbs: a.WordProbs, Description: a.Description, Source: a.Source}
		}
		out[r.Index] = sc
		got[r.Index] = true
	}
	for i, ok := range got {
		if !ok {
			return nil, fmt.Errorf("daemon scorer: no result for image %d", i)
		}
	}
	return out, nil
}

// Ping checks that the daemon answers GET /healthz, trying again for up
// to wait (a daemon started just before may not listen yet). Its error
// says how to start the daemon.
func (d *DaemonScorer) Ping(ctx context.Context, wait time.Duration) error {
	if d.URL == "" {
		return errors.New("daemon scorer: no daemon URL")
	}
	url := strings.TrimSuffix(d.URL, "/") + "/healthz"
	hc := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(wait)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return fmt.Errorf("daemon scorer: %w", err)
		}
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("GET %s: HTTP %d", url, resp.StatusCode)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("daemon scorer: cannot reach the m3gate daemon at %s (start it with `m3gate serve`, or give its address with --daemon or $M3GATE_URL): %w", d.URL, err)
		}
		if !sleep(ctx, 100*time.Millisecond) {
			return ctx.Err()
		}
	}
}

// DaemonError is a non-2xx answer of the daemon to a score request.
type DaemonError struct {
	// URL is the endpoint called.
	URL string
	// StatusCode is the HTTP status.
	StatusCode int
	// Msg is the daemon's error message (or the start of the body).
	Msg string
}

// Error returns "daemon scorer: POST URL: HTTP code: message".
func (e *DaemonError) Error() string {
	return fmt.Sprintf("daemon scorer: POST %s: HTTP %d: %s", e.URL, e.StatusCode, e.Msg)
}

// Temporary reports whether the same request may succeed later: the daemon
// is busy (429), its model process is (re)starting or died mid-request
// (502, 503), or a request timed out (408, 504).
func (e *DaemonError) Temporary() bool {
	switch e.StatusCode {
	case http.StatusRequestTimeout, http.StatusTooManyRequests, http.StatusBadGateway,
		http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// transientScoreError reports whether a scorer error may go away by
// waiting: the daemon unreachable (not started yet, restarting), busy, or
// restarting its model process.
func transientScoreError(err error) bool {
	var de *DaemonError
	if errors.As(err, &de) {
		return de.Temporary()
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)
}
