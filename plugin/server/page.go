package server

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"mime"
	"net/http"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/m3gate/m3gate/plugin/review"
	"github.com/m3gate/m3gate/schemas"
	"github.com/m3gate/m3gate/schemas/api"
)

// The review page: GET / (the page), GET /ui/{file} (its script and
// style), GET /v1/recent (the gate and the latest score events) and GET
// /v1/thumbs/{id} (thumbnails of recently scored images). The page is
// read-only: it shows what POST /v1/score answered and never scores.

// pageCSP lets the page load only its own script, style, thumbnails and
// API; nothing else, and no framing.
const pageCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// RecentImages is the default number of recently scored images the daemon
// keeps for the review page (scores and a thumbnail each).
const RecentImages = 256

// thumbURL is where the thumbnail of image index of request id is served.
func thumbURL(id string) string { return "/v1/thumbs/" + id }

// RecentJSON is the answer of GET /v1/recent.
type RecentJSON struct {
	// Gate is the daemon's configured gate (scoring.thresholds, scoring.gate).
	Gate review.Gate `json:"gate"`
	// Events are the latest score events, oldest first.
	Events []api.ScoreEvent `json:"events"`
}

// feed remembers the latest score events and their thumbnails, bounded by
// a number of images.
type feed struct {
	mu     sync.Mutex
	limit  int
	images int
	events []api.ScoreEvent
	thumbs map[string][]byte
	// work serialises thumbnail decoding, so that concurrent requests
	// never decode more than one image at once.
	work sync.Mutex
	// pending counts the image bytes held for thumbnails not made yet;
	// beyond maxPending an event goes out without thumbnails.
	pending    atomic.Int64
	maxPending int64
}

// maxPendingThumbBytes bounds the image bytes the daemon keeps after
// answering, for thumbnails still to be made.
const maxPendingThumbBytes = 64 << 20

func newFeed(limit int) *feed {
	if limit <= 0 {
		limit = RecentImages
	}
	return &feed{limit: limit, thumbs: map[string][]byte{}, maxPending: maxPendingThumbBytes}
}

// add remembers ev and the thumbnails of its images (keyed like thumbURL),
// forgetting the oldest events beyond the limit.
func (f *feed) add(ev api.ScoreEvent, thumbs map[string][]byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events = append(f.events, ev)
	f.images += len(ev.Results)
	for k, v := range thumbs {
		f.thumbs[k] = v
	}
	for f.images > f.limit && len(f.events) > 1 {
		old := f.events[0]
		f.events[0] = api.ScoreEvent{}
		f.events = f.events[1:]
		f.images -= len(old.Results)
		for _, r := range old.Results {
			delete(f.thumbs, old.RequestID+"-"+strconv.Itoa(r.Index))
		}
	}
}

func (f *feed) recent() []api.ScoreEvent {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]api.ScoreEvent(nil), f.events...)
}

func (f *feed) thumb(id string) ([]byte, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.thumbs[id]
	return b, ok
}

// publishScore publishes the score event of an answered request on
// /v1/events and remembers it for GET /v1/recent. The thumbnails are made
// after the answer, off the request's goroutine, one image at a time; while
// more than maxPendingThumbBytes of images wait for theirs, an event goes
// out without thumbnails, so a burst of requests costs bounded memory.
func (s *Server) publishScore(id string, req schemas.ScoreRequest, prov provenance, results []api.Result) {
	var size int64
	for _, it := range req.Items {
		size += int64(len(it.Data))
	}
	if size == 0 || s.feed.pending.Add(size) > s.feed.maxPending {
		if size > 0 {
			s.feed.pending.Add(-size)
		}
		s.hub.publish(api.Event{Type: api.EventScore, Data: s.reviewEvent(id, req, prov, results, false)})
		return
	}
	go func() {
		defer s.feed.pending.Add(-size)
		s.hub.publish(api.Event{Type: api.EventScore, Data: s.reviewEvent(id, req, prov, results, true)})
	}()
}

// reviewEvent builds the score event of an answered request, with
// thumbnails of its images when thumbs is set (an image given by path was
// read by the daemon from under daemon.path_roots, so it has bytes too),
// and remembers it for the page.
func (s *Server) reviewEvent(id string, req schemas.ScoreRequest, prov provenance, results []api.Result, thumbs bool) api.ScoreEvent {
	ev := api.ScoreEvent{RequestID: id, Prompt: req.Prompt, Results: results, Time: time.Now().UTC(), Attempt: prov.Attempt}
	if prov.Seed != nil {
		ev.Seed = strconv.FormatUint(*prov.Seed, 10)
	}
	for _, it := range req.Items {
		if it.Prompt != "" && it.Prompt != req.Prompt {
			ev.Prompts = make([]string, len(req.Items))
			for i, it := range req.Items {
				ev.Prompts[i] = it.Prompt
				if it.Prompt == "" {
					ev.Prompts[i] = req.Prompt
				}
			}
			break
		}
	}
	made := map[string][]byte{}
	ev.Thumbs = make([]string, len(results))
	if thumbs {
		s.feed.work.Lock()
		defer s.feed.work.Unlock()
	}
	for i, r := range results {
		if !thumbs || r.Index < 0 || r.Index >= len(req.Items) || len(req.Items[r.Index].Data) == 0 {
			continue
		}
		th, err := review.Thumbnail(req.Items[r.Index].Data, review.ThumbSide)
		if err != nil {
			s.log.Debug("no thumbnail", "request_id", id, "index", r.Index, "error", err)
			continue
		}
		key := id + "-" + strconv.Itoa(r.Index)
		made[key] = th
		ev.Thumbs[i] = thumbURL(key)
	}
	s.feed.add(ev, made)
	return ev
}

// sameOrigin refuses requests that a browser made for another site (an
// <img> or fetch from a page that is not the daemon's own): browsers send
// Sec-Fetch-Site on every request; other clients send none.
func sameOrigin(w http.ResponseWriter, r *http.Request) bool {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "", "same-origin", "none":
		return true
	}
	writeError(w, http.StatusForbidden, fmt.Errorf("%s is only for the daemon's own page (Sec-Fetch-Site: %s)", r.URL.Path, r.Header.Get("Sec-Fetch-Site")))
	return false
}

// pagePublic reports whether path is the page's shell: / and /ui/… hold
// no data, so they are served without the daemon's token (a browser sends
// none when it opens a page); the page then asks its user for the token
// and sends it on every data request.
func pagePublic(path string) bool { return path == "/" || strings.HasPrefix(path, "/ui/") }

// wsProtocol is the websocket subprotocol the page asks for. A browser
// cannot set Authorization on a websocket, so with a token the page also
// offers the subprotocol "bearer.<base64url of the token>".
const wsProtocol = "m3gate"

// subprotocolToken returns the token a browser's websocket handshake
// offers as a subprotocol.
func subprotocolToken(r *http.Request) (string, bool) {
	for _, p := range websocket.Subprotocols(r) {
		if enc, ok := strings.CutPrefix(p, "bearer."); ok {
			if b, err := base64.RawURLEncoding.DecodeString(enc); err == nil {
				return string(b), true
			}
		}
	}
	return "", false
}

// registerPage adds the review page's routes.
func (s *Server) registerPage() {
	s.handle("GET /{$}", "page", s.page)
	s.handle("GET /ui/{file}", "page", s.pageAsset)
	s.handle("GET /v1/recent", "recent", s.recentEvents)
	s.handle("GET /v1/thumbs/{id}", "thumbs", s.thumbnail)
}

func pageHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", pageCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-cache")
}

func (s *Server) page(w http.ResponseWriter, r *http.Request) {
	b, err := review.Asset("index.html")
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	pageHeaders(w)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	http.ServeContent(w, r, "index.html", time.Time{}, bytes.NewReader(b))
}

// pageAssets are the files under /ui/.
var pageAssets = map[string]bool{"app.js": true, "style.css": true}

func (s *Server) pageAsset(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("file")
	if !pageAssets[name] {
		writeError(w, http.StatusNotFound, fmt.Errorf("no page file %q", name))
		return
	}
	b, err := review.Asset(name)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	pageHeaders(w)
	ct := mime.TypeByExtension(path.Ext(name))
	if strings.HasSuffix(name, ".js") {
		ct = "text/javascript; charset=utf-8"
	}
	w.Header().Set("Content-Type", ct)
	http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(b))
}

func (s *Server) recentEvents(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(w, r) {
		return
	}
	g := s.cfg.Gate
	if g.Thresholds == nil {
		g.Thresholds = map[string]float64{}
	}
	if g.Mode == "" {
		g.Mode = "all"
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, RecentJSON{Gate: g, Events: s.feed.recent()})
}

func (s *Server) thumbnail(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(w, r) {
		return
	}
	id := r.PathValue("id")
	b, ok := s.feed.thumb(id)
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Errorf("no thumbnail %q (the daemon keeps those of the last %d images)", id, s.feed.limit))
		return
	}
	w.Header().Set("Content-Type", "image/jpeg")
	w.Header().Set("Cache-Control", "private, no-cache") // request ids restart with the daemon
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Write(b)
}
