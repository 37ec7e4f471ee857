package pipeline

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// DaemonScorer scores images through the m3gate daemon's HTTP API:
// POST {URL}/v1/score {"images":[{"data":"<base64>"}],"prompt":…,"aspects":[…]}
// → {"results":[{"index":0,"error":"","aspects":{"quality":{"mos":…}}}]}.
type DaemonScorer struct {
	// URL is the daemon's base URL ("http://127.0.0.1:8190").
	URL string
	// HTTP is the client to use (default: one with a 10-minute timeout,
	// since scoring a batch on CPU takes a while).
	HTTP *http.Client
}

type scoreRequest struct {
	Images  []scoreImage `json:"images"`
	Prompt  string       `json:"prompt"`
	Aspects []string     `json:"aspects"`
}

type scoreImage struct {
	Data string `json:"data"`
}

type scoreResponse struct {
	Results []struct {
		Index   int                    `json:"index"`
		Error   string                 `json:"error"`
		Aspects map[string]AspectScore `json:"aspects"`
	} `json:"results"`
	Error string `json:"error"`
}

// Score implements Scorer.
func (d *DaemonScorer) Score(ctx context.Context, images []Image, prompt string, aspects []string) ([]Scores, error) {
	if d.URL == "" {
		return nil, errors.New("daemon scorer: no daemon URL")
	}
	req := scoreRequest{Prompt: prompt, Aspects: aspects, Images: make([]scoreImage, len(images))}
	for i, img := range images {
		req.Images[i].Data = base64.StdEncoding.EncodeToString(img.Data)
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("daemon scorer: encode: %w", err)
	}
	url := strings.TrimSuffix(d.URL, "/") + "/v1/score"
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("daemon scorer: %w", err)
	}
	hreq.Header.Set("Content-Type", "application/json")
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
	var ans scoreResponse
	jerr := json.Unmarshal(rb, &ans)
	if resp.StatusCode != http.StatusOK {
		msg := strings.TrimSpace(string(rb))
		if jerr == nil && ans.Error != "" {
			msg = ans.Error
		}
		if len(msg) > 300 {
			msg = msg[:300] + "…"
		}
		return nil, fmt.Errorf("daemon scorer: POST %s: HTTP %d: %s", url, resp.StatusCode, msg)
	}
	if jerr != nil {
		return nil, fmt.Errorf("daemon scorer: decode answer: %w", jerr)
	}
	out := make([]Scores, len(images))
	got := make([]bool, len(images))
	for _, r := range ans.Results {
		if r.Index < 0 || r.Index >= len(images) {
			return nil, fmt.Errorf("daemon scorer: result index %d out of range (%d images)", r.Index, len(images))
		}
		out[r.Index] = Scores{Aspects: r.Aspects, Error: r.Error}
		got[r.Index] = true
	}
	for i, ok := range got {
		if !ok {
			return nil, fmt.Errorf("daemon scorer: no result for image %d", i)
		}
	}
	return out, nil
}
