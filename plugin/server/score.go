package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"mime"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/m3gate/m3gate/schemas"
	"github.com/m3gate/m3gate/schemas/api"
	"github.com/m3gate/m3gate/schemas/iqa"
)

// provenance is what a score request says about how its images were made.
type provenance struct {
	Attempt int
	Seed    *uint64
	// fromPath marks the items the daemon read from a file: their errors
	// are scrubbed of file bytes.
	fromPath []bool
}

// fileBytes matches the model process's quote of an image's first bytes
// ("(first bytes 89 50 ...; supported: ...)"), removed from the errors of
// images the daemon read from files: no answer shows a file's contents.
var fileBytes = regexp.MustCompile(`first bytes [0-9a-f ]*;? ?`)

// badRequest marks an error in the request itself (400).
type badRequest struct{ err error }

func (e badRequest) Error() string { return e.err.Error() }
func (e badRequest) Unwrap() error { return e.err }

func badf(format string, args ...any) error { return badRequest{fmt.Errorf(format, args...)} }

func (s *Server) score(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	id := strconv.FormatUint(s.nextID.Add(1), 10)
	w.Header().Set("X-Request-Id", id)
	if err := requireContentType(r, "multipart/form-data", "application/json"); err != nil {
		writeError(w, http.StatusUnsupportedMediaType, err)
		return
	}
	// The body is read first, within the byte budget and its time limits;
	// only a complete request takes a queue slot, so slow uploads cannot
	// hold the slots that scoring needs.
	release, code, err := s.admitBody(w, r, s.cfg.MaxBodyBytes)
	if err != nil {
		s.refuseBody(w, code, err)
		return
	}
	defer release()
	req, prov, err := s.parseScore(r)
	s.metrics.stages.WithLabelValues("parse").Observe(time.Since(start).Seconds())
	if err != nil {
		if code, ok := bodyErrorStatus(err); ok {
			if s.aborting.Err() != nil {
				code, err = http.StatusServiceUnavailable, errShuttingDown
			}
			s.refuseBody(w, code, fmt.Errorf("request body: %w", err))
			return
		}
		writeError(w, http.StatusBadRequest, err)
		return
	}
	bodyDone(w)
	if err := req.Validate(); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}

	select {
	case s.slots <- struct{}{}:
	default:
		s.metrics.rejected.Inc()
		w.Header().Set("Retry-After", s.retryAfter())
		writeError(w, http.StatusTooManyRequests, fmt.Errorf("score queue full (%d requests); retry later", cap(s.slots)))
		return
	}
	defer func() { <-s.slots }()

	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	stop := context.AfterFunc(s.aborting, func() { cancel(errShuttingDown) })
	defer stop()
	if s.cfg.RequestTimeout > 0 {
		var cancelT context.CancelFunc
		ctx, cancelT = context.WithTimeout(ctx, s.cfg.RequestTimeout)
		defer cancelT()
	}

	scoreStart := time.Now()
	results, err := s.cfg.Scorer.Score(ctx, req)
	s.metrics.stages.WithLabelValues("score").Observe(time.Since(scoreStart).Seconds())
	if err != nil {
		if r.Context().Err() != nil {
			return // the client left; nobody to answer (counted as cancelled)
		}
		if errors.Is(context.Cause(ctx), errShuttingDown) {
			w.Header().Set("Retry-After", "5")
			writeError(w, http.StatusServiceUnavailable, errShuttingDown)
			return
		}
		s.log.Warn("score failed", "request_id", id, "error", err)
		if code := statusFor(err); code == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", s.retryAfter())
		}
		writeError(w, statusFor(err), err)
		return
	}
	resp := api.ScoreResponse{RequestID: id, Results: make([]api.Result, len(results))}
	for i, res := range results {
		if res.Index >= 0 && res.Index < len(prov.fromPath) && prov.fromPath[res.Index] {
			res.Error = fileBytes.ReplaceAllString(res.Error, "")
		}
		resp.Results[i] = s.resultJSON(res)
	}
	total := time.Since(start)
	s.observeLatency(total)
	s.metrics.stages.WithLabelValues("total").Observe(total.Seconds())
	writeJSON(w, http.StatusOK, resp)
	s.publishScore(id, req, prov, resp.Results)
}

func (s *Server) resultJSON(res schemas.ItemResult) api.Result {
	out := api.Result{Index: res.Index, Error: res.Error}
	if len(res.Aspects) > 0 {
		out.Aspects = make(map[string]api.AspectScore, len(res.Aspects))
	}
	for name, a := range res.Aspects {
		aj := api.AspectScore{MOS: a.MOS, Rating: a.Rating, WordProbs: a.WordProbs, Description: a.Description, Source: a.Source}
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
	for _, a := range iqa.Aspects {
		if _, ok := prompts[a]; ok {
			out = append(out, a)
		}
	}
	for _, a := range slices.Sorted(maps.Keys(prompts)) {
		if !slices.Contains(iqa.Aspects, a) {
			out = append(out, a)
		}
	}
	return out
}

// checkPrompts refuses a request that scores correspondence on an image
// without a generation prompt, naming the field to set (as `m3gate score`
// refuses it): the model would rate the match with an empty prompt.
func checkPrompts(req schemas.ScoreRequest) error {
	if !slices.Contains(req.Options.Aspects, iqa.Correspondence) || strings.TrimSpace(req.Prompt) != "" {
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
	case "application/json":
		req, prov, err = s.parseJSON(r.Body, r.ContentLength)
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
	for i := range req.Items {
		if n := int64(len(req.Items[i].Data)); n > s.cfg.MaxImageBytes {
			return req, prov, badf("image %d: %d bytes is over daemon.max_image_bytes (%d)", i, n, s.cfg.MaxImageBytes)
		}
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

func (s *Server) parseJSON(body io.Reader, size int64) (schemas.ScoreRequest, provenance, error) {
	in, err := decodeScoreJSON(body, s.cfg.MaxImageBytes, s.cfg.MaxImages, size)
	if err != nil {
		return schemas.ScoreRequest{}, provenance{}, err
	}
	if len(in.Images) > s.cfg.MaxImages {
		return schemas.ScoreRequest{}, provenance{}, badf("%d images: at most %d per request", len(in.Images), s.cfg.MaxImages)
	}
	n, err := s.maxNewTokens(in.MaxNewTokens)
	if err != nil {
		return schemas.ScoreRequest{}, provenance{}, err
	}
	req := schemas.ScoreRequest{Prompt: in.Prompt, Options: schemas.ScoreOptions{Aspects: in.Aspects, MaxNewTokens: n}}
	prov := provenance{Attempt: in.Attempt, Seed: in.Seed}
	for i, im := range in.Images {
		it := schemas.ScoreItem{Prompt: im.Prompt}
		switch {
		case len(im.Data) > 0 && im.Path != "":
			return req, prov, badf("image %d: give data or path, not both", i)
		case len(im.Data) > 0:
			it.Data = im.Data
		case im.Path != "":
			// The daemon reads the file itself: the model process is never
			// handed a path from the network.
			b, err := s.readImagePath(im.Path)
			if err != nil {
				return req, prov, badf("image %d: %v", i, err)
			}
			it.Data = b
			if prov.fromPath == nil {
				prov.fromPath = make([]bool, len(in.Images))
			}
			prov.fromPath[i] = true
		default:
			return req, prov, badf("image %d: no data or path", i)
		}
		req.Items = append(req.Items, it)
	}
	return req, prov, nil
}

// maxNewTokens checks a request's max_new_tokens against the bound, as
// int64 so that nothing is truncated on the way.
func (s *Server) maxNewTokens(n int64) (int, error) {
	if n < 0 || n > s.cfg.MaxNewTokens {
		return 0, badf("max_new_tokens %d is out of range 1..%d", n, s.cfg.MaxNewTokens)
	}
	return int(n), nil
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
			if _, ok := bodyErrorStatus(err); ok {
				return req, prov, err
			}
			return req, prov, badf("multipart body: %v", err)
		}
		b, err := io.ReadAll(io.LimitReader(part, s.cfg.MaxImageBytes+1))
		part.Close()
		if err != nil {
			if _, ok := bodyErrorStatus(err); ok {
				return req, prov, err
			}
			return req, prov, badf("multipart field %s: %v", part.FormName(), err)
		}
		if int64(len(b)) > s.cfg.MaxImageBytes {
			return req, prov, badf("multipart field %s: over daemon.max_image_bytes (%d)", part.FormName(), s.cfg.MaxImageBytes)
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
			n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
			if err != nil {
				return req, prov, badf("max_new_tokens %q is not an integer", b)
			}
			if req.Options.MaxNewTokens, err = s.maxNewTokens(n); err != nil {
				return req, prov, err
			}
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

// refuseBody answers a request whose body was not taken: the connection is
// closed instead of draining a body we will not read.
func (s *Server) refuseBody(w http.ResponseWriter, code int, err error) {
	w.Header().Set("Connection", "close")
	if code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", s.retryAfter())
	}
	writeError(w, code, err)
}
