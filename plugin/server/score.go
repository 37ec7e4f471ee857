package server

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"mime"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/m3gate/m3gate/plugin/config"
	"github.com/m3gate/m3gate/schemas"
)

// ScoreJSON is the JSON form of a POST /v1/score request.
type ScoreJSON struct {
	Images       []ImageJSON `json:"images"`
	Prompt       string      `json:"prompt"`
	Aspects      []string    `json:"aspects,omitempty"`
	MaxNewTokens int         `json:"max_new_tokens,omitempty"`
	// Attempt and Seed say how the images were made (the generation
	// attempt, 1 for the first, and the sampler seed), for the review page.
	Attempt int     `json:"attempt,omitempty"`
	Seed    *uint64 `json:"seed,omitempty"`
}

// ImageJSON is one image of a JSON score request: base64 data or an
// absolute path readable by the model process, and optionally its own
// generation prompt.
type ImageJSON struct {
	Data   string `json:"data,omitempty"`
	Path   string `json:"path,omitempty"`
	Prompt string `json:"prompt,omitempty"`
}

// ScoreResponse is the answer of POST /v1/score.
type ScoreResponse struct {
	RequestID string       `json:"request_id"`
	Results   []ResultJSON `json:"results"`
}

// ResultJSON is the result of one image.
type ResultJSON struct {
	Index   int                   `json:"index"`
	Error   string                `json:"error"`
	Aspects map[string]AspectJSON `json:"aspects,omitempty"`
}

// AspectJSON is the score of one image on one aspect.
type AspectJSON struct {
	MOS         float64            `json:"mos"`
	Rating      string             `json:"rating"`
	WordProbs   map[string]float64 `json:"word_probs,omitempty"`
	Description string             `json:"description,omitempty"`
	Source      string             `json:"source"`
	TimingsMS   map[string]float64 `json:"timings_ms,omitempty"`
}

// Event is a /v1/events websocket message: {"type": "score"|"state", "data": ...}.
type Event struct {
	Type string `json:"type"`
	Data any    `json:"data"`
}

// StateEvent is the data of a "state" event.
type StateEvent struct {
	State string `json:"state"`
	Error string `json:"error,omitempty"`
}

// ScoreEvent is the data of a "score" event.
type ScoreEvent struct {
	RequestID string       `json:"request_id"`
	Prompt    string       `json:"prompt"`
	Results   []ResultJSON `json:"results"`
	// Time is when the request was answered.
	Time time.Time `json:"time,omitzero"`
	// Prompts are the images' own prompts by index, when any image had one.
	Prompts []string `json:"prompts,omitempty"`
	// Attempt and Seed are what the request said about how its images were
	// made; Seed in decimal, as a 64-bit seed does not fit a JavaScript
	// number.
	Attempt int    `json:"attempt,omitempty"`
	Seed    string `json:"seed,omitempty"`
	// Thumbs are the thumbnail URLs (GET /v1/thumbs/{id}) by result, ""
	// for an image that has none.
	Thumbs []string `json:"thumbs,omitempty"`
}

// provenance is what a score request says about how its images were made.
type provenance struct {
	Attempt int
	Seed    *uint64
}

// badRequest marks an error in the request itself (400).
type badRequest struct{ err error }

func (e badRequest) Error() string { return e.err.Error() }
func (e badRequest) Unwrap() error { return e.err }

func badf(format string, args ...any) error { return badRequest{fmt.Errorf(format, args...)} }

func (s *Server) score(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	// Admission comes first, before the body is read, so a full queue costs
	// no memory.
	select {
	case s.slots <- struct{}{}:
	default:
		s.metrics.rejected.Inc()
		w.Header().Set("Retry-After", s.retryAfter())
		// Close the connection instead of draining a body we will not read.
		w.Header().Set("Connection", "close")
		writeError(w, http.StatusTooManyRequests, fmt.Errorf("score queue full (%d requests); retry later", cap(s.slots)))
		return
	}
	defer func() { <-s.slots }()

	ctx := r.Context()
	if s.cfg.RequestTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.cfg.RequestTimeout)
		defer cancel()
	}
	id := strconv.FormatUint(s.nextID.Add(1), 10)
	w.Header().Set("X-Request-Id", id)

	r.Body = http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes)
	req, prov, err := s.parseScore(r)
	s.metrics.stages.WithLabelValues("parse").Observe(time.Since(start).Seconds())
	if err != nil {
		var tooBig *http.MaxBytesError
		switch {
		case errors.As(err, &tooBig):
			w.Header().Set("Connection", "close")
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("request body over %d bytes", s.cfg.MaxBodyBytes))
		default:
			writeError(w, http.StatusBadRequest, err)
		}
		return
	}
	if err := req.Validate(); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}

	scoreStart := time.Now()
	results, err := s.cfg.Scorer.Score(ctx, req)
	s.metrics.stages.WithLabelValues("score").Observe(time.Since(scoreStart).Seconds())
	if err != nil {
		if r.Context().Err() != nil {
			return // the client left; nobody to answer
		}
		s.log.Warn("score failed", "request_id", id, "error", err)
		if code := statusFor(err); code == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", s.retryAfter())
		}
		writeError(w, statusFor(err), err)
		return
	}
	resp := ScoreResponse{RequestID: id, Results: make([]ResultJSON, len(results))}
	for i, res := range results {
		resp.Results[i] = s.resultJSON(res)
	}
	total := time.Since(start)
	s.observeLatency(total)
	s.metrics.stages.WithLabelValues("total").Observe(total.Seconds())
	writeJSON(w, http.StatusOK, resp)
	s.publishScore(id, req, prov, resp.Results)
}

func (s *Server) resultJSON(res schemas.ItemResult) ResultJSON {
	out := ResultJSON{Index: res.Index, Error: res.Error}
	if len(res.Aspects) > 0 {
		out.Aspects = make(map[string]AspectJSON, len(res.Aspects))
	}
	for name, a := range res.Aspects {
		aj := AspectJSON{MOS: a.MOS, Rating: a.Rating, WordProbs: a.WordProbs, Description: a.Description, Source: a.Source}
		if len(a.Timings) > 0 {
			aj.TimingsMS = make(map[string]float64, len(a.Timings))
			for stage, d := range a.Timings {
				aj.TimingsMS[stage] = float64(d) / float64(time.Millisecond)
				s.metrics.stages.WithLabelValues("sidecar_" + stage).Observe(d.Seconds())
			}
		}
		s.metrics.scores.WithLabelValues(name).Observe(a.MOS)
		out.Aspects[name] = aj
	}
	return out
}

// knownAspects lists the aspects that have prompts: the standard ones in
// their usual order, then any others sorted.
func knownAspects(prompts map[string]schemas.AspectPrompt) []string {
	var out []string
	for _, a := range config.Aspects {
		if _, ok := prompts[a]; ok {
			out = append(out, a)
		}
	}
	for _, a := range slices.Sorted(maps.Keys(prompts)) {
		if !slices.Contains(config.Aspects, a) {
			out = append(out, a)
		}
	}
	return out
}

// checkPrompts refuses a request that scores correspondence on an image
// without a generation prompt, naming the field to set (as `m3gate score`
// refuses it): the model would rate the match with an empty prompt.
func checkPrompts(req schemas.ScoreRequest) error {
	if !slices.Contains(req.Options.Aspects, config.AspectCorrespondence) || strings.TrimSpace(req.Prompt) != "" {
		return nil
	}
	for i, it := range req.Items {
		if strings.TrimSpace(it.Prompt) == "" {
			if len(req.Items) == 1 {
				return badf("prompt is empty: correspondence needs the generation prompt of the image (set \"prompt\", or score other aspects)")
			}
			return badf("prompt is empty and images[%d].prompt too: correspondence needs the generation prompt of every image (set \"prompt\" or each image's \"prompt\", or score other aspects)", i)
		}
	}
	return nil
}

// parseScore reads a multipart or JSON score request.
func (s *Server) parseScore(r *http.Request) (schemas.ScoreRequest, provenance, error) {
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	var (
		req  schemas.ScoreRequest
		prov provenance
		err  error
	)
	switch ct {
	case "multipart/form-data":
		req, prov, err = s.parseMultipart(r)
	case "application/json", "":
		req, prov, err = s.parseJSON(r.Body)
	default:
		return req, prov, badf("unsupported content type %q: use multipart/form-data or application/json", ct)
	}
	if err != nil {
		return req, prov, err
	}
	if prov.Attempt < 0 {
		return req, prov, badf("attempt %d: want 1 or more (0: unknown)", prov.Attempt)
	}
	if len(req.Items) == 0 {
		return req, prov, badf("no images")
	}
	if len(req.Items) > s.cfg.MaxImages {
		return req, prov, badf("%d images: at most %d per request", len(req.Items), s.cfg.MaxImages)
	}
	d := s.cfg.Defaults
	if len(req.Options.Aspects) == 0 {
		req.Options.Aspects = d.Aspects
	}
	if req.Options.MaxNewTokens == 0 {
		req.Options.MaxNewTokens = d.MaxNewTokens
	}
	if len(d.Prompts) > 0 {
		for _, a := range req.Options.Aspects {
			if _, ok := d.Prompts[a]; !ok {
				return req, prov, badf("unknown aspect %q (known: %s)", a, strings.Join(knownAspects(d.Prompts), ", "))
			}
		}
	}
	if err := checkPrompts(req); err != nil {
		return req, prov, err
	}
	req.Options.Prompts = d.Prompts
	req.Options.SkipDescription = d.SkipDescription
	req.Options.Extra = d.Extra
	return req, prov, nil
}

func (s *Server) parseJSON(body io.Reader) (schemas.ScoreRequest, provenance, error) {
	var in ScoreJSON
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return schemas.ScoreRequest{}, provenance{}, err
		}
		return schemas.ScoreRequest{}, provenance{}, badf("decode JSON body: %v", err)
	}
	if len(in.Images) > s.cfg.MaxImages {
		return schemas.ScoreRequest{}, provenance{}, badf("%d images: at most %d per request", len(in.Images), s.cfg.MaxImages)
	}
	req := schemas.ScoreRequest{Prompt: in.Prompt, Options: schemas.ScoreOptions{Aspects: in.Aspects, MaxNewTokens: in.MaxNewTokens}}
	prov := provenance{Attempt: in.Attempt, Seed: in.Seed}
	for i, im := range in.Images {
		it := schemas.ScoreItem{Prompt: im.Prompt}
		switch {
		case im.Data != "" && im.Path != "":
			return req, prov, badf("image %d: give data or path, not both", i)
		case im.Data != "":
			b, err := base64.StdEncoding.DecodeString(im.Data)
			if err != nil {
				return req, prov, badf("image %d: data is not base64: %v", i, err)
			}
			it.Data = b
		case im.Path != "":
			if !filepath.IsAbs(im.Path) {
				return req, prov, badf("image %d: path %q is not absolute", i, im.Path)
			}
			it.Path = im.Path
		default:
			return req, prov, badf("image %d: no data or path", i)
		}
		req.Items = append(req.Items, it)
	}
	return req, prov, nil
}

func (s *Server) parseMultipart(r *http.Request) (schemas.ScoreRequest, provenance, error) {
	var (
		req  schemas.ScoreRequest
		prov provenance
	)
	mr, err := r.MultipartReader()
	if err != nil {
		return req, prov, badf("multipart body: %v", err)
	}
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				return req, prov, err
			}
			return req, prov, badf("multipart body: %v", err)
		}
		b, err := io.ReadAll(part)
		part.Close()
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				return req, prov, err
			}
			return req, prov, badf("multipart field %s: %v", part.FormName(), err)
		}
		switch name := part.FormName(); name {
		case "image":
			if len(req.Items) == s.cfg.MaxImages {
				return req, prov, badf("more than %d images: at most %d per request", s.cfg.MaxImages, s.cfg.MaxImages)
			}
			if len(b) == 0 {
				return req, prov, badf("image %d (%s) is empty", len(req.Items), part.FileName())
			}
			req.Items = append(req.Items, schemas.ScoreItem{Data: b})
		case "prompt":
			req.Prompt = string(b)
		case "aspects":
			for _, a := range strings.Split(string(b), ",") {
				if a = strings.TrimSpace(a); a != "" {
					req.Options.Aspects = append(req.Options.Aspects, a)
				}
			}
		case "max_new_tokens":
			n, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				return req, prov, badf("max_new_tokens %q is not an integer", b)
			}
			req.Options.MaxNewTokens = n
		case "attempt":
			n, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				return req, prov, badf("attempt %q is not an integer", b)
			}
			prov.Attempt = n
		case "seed":
			n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
			if err != nil {
				return req, prov, badf("seed %q is not an integer in 0..2^64-1", b)
			}
			prov.Seed = &n
		default:
			return req, prov, badf("unknown multipart field %q (want image, prompt, aspects, max_new_tokens, attempt, seed)", name)
		}
	}
	return req, prov, nil
}
