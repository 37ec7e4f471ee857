// Package distillfake is a scriptable local stand-in for the online teacher
// MLLM: an httptest server speaking either the OpenAI-compatible chat
// completions API or the Gemini generateContent API. It checks the request
// shape strictly (400 on anything but the documented request shape the
// client sends: snake_case inline_data, base64 data URLs), counts
// calls per image, and answers as scripted: good JSON, rate limiting (429
// with Retry-After), server errors, garbage, slow answers.
package distillfake

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/m3gate/m3gate/schemas/iqa"
)

// Request is what the fake decoded from one call.
type Request struct {
	Model    string
	Text     string
	Image    []byte
	ImageSHA string
	MIME     string
	JSONMode bool
	// Aspects are the aspect names the teacher prompt asks for.
	Aspects []string
	Header  http.Header
}

// Reply scripts one answer.
type Reply struct {
	// Status is the HTTP status (0: 200).
	Status int
	// RetryAfter is sent as the Retry-After header when set.
	RetryAfter string
	// Delay holds the answer back (cut short when the client gives up).
	Delay time.Duration
	// Text replaces the model's answer text (default: GoodAnswer).
	Text *string
	// Raw replaces the whole response body of a 200.
	Raw string
	// Message replaces the error message of a non-200.
	Message string
}

// Text returns a pointer to s, for Reply.Text.
func Text(s string) *string { return &s }

// Server is a fake teacher.
type Server struct {
	*httptest.Server
	Format string
	// PromptTokens and CompletionTokens are reported in usage per call.
	PromptTokens, CompletionTokens int64

	mu       sync.Mutex
	noJSON   bool
	key      string
	script   func(n, k int, r *Request) Reply
	calls    int
	perImage map[string]int
	good     map[string]int
	requests []Request
}

// NewOpenAI starts a fake chat completions server; its URL plus "/v1" is
// the endpoint.
func NewOpenAI() *Server { return start("openai") }

// NewGemini starts a fake generateContent server; its URL is the endpoint.
func NewGemini() *Server { return start("gemini") }

func start(format string) *Server {
	s := &Server{Format: format, perImage: map[string]int{}, good: map[string]int{}, PromptTokens: 1000, CompletionTokens: 150}
	s.Server = httptest.NewServer(http.HandlerFunc(s.handle))
	return s
}

// SetKey sets the API key the server requires (empty: none; a wrong or
// missing key gets 401).
func (s *Server) SetKey(key string) {
	s.mu.Lock()
	s.key = key
	s.mu.Unlock()
}

// SetScript sets the function that decides the reply to the n-th call
// (0-based, all images) being the k-th call for the same image (0-based);
// nil: always a good answer.
func (s *Server) SetScript(fn func(n, k int, r *Request) Reply) {
	s.mu.Lock()
	s.script = fn
	s.mu.Unlock()
}

// RejectJSONMode makes the server answer 400 to requests that ask for a
// JSON response format, as some OpenAI-compatible servers do.
func (s *Server) RejectJSONMode(reject bool) {
	s.mu.Lock()
	s.noJSON = reject
	s.mu.Unlock()
}

// Endpoint returns the base URL to configure the client with.
func (s *Server) Endpoint() string {
	if s.Format == "openai" {
		return s.URL + "/v1"
	}
	return s.URL
}

// Calls returns the number of requests received.
func (s *Server) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// GoodAnswers returns, per image SHA-256, how many well-formed answers
// the fake gave (what a real service would have billed as useful).
func (s *Server) GoodAnswers() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for k, v := range s.good {
		out[k] = v
	}
	return out
}

// Requests returns the decoded requests so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

var aspectRE = regexp.MustCompile(`"(` + strings.Join(iqa.Aspects, "|") + `)"`)

// GoodAnswer returns a well-formed answer: a JSON object with a 45-word
// explanation without digits per aspect.
func GoodAnswer(aspects []string) string {
	m := map[string]string{}
	for _, a := range aspects {
		m[a] = "The image shows " + a + " that a careful viewer would judge by its visible details: " +
			strings.Repeat("the shapes, colours and textures hold together in a way that supports this rating, ", 2) +
			"and nothing in the scene contradicts that overall impression at all."
	}
	b, _ := json.Marshal(m)
	return string(b)
}

func (s *Server) fail(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if s.Format == "gemini" {
		fmt.Fprintf(w, `{"error":{"code":%d,"message":%q,"status":"INVALID_ARGUMENT"}}`, status, msg)
		return
	}
	fmt.Fprintf(w, `{"error":{"message":%q,"type":"invalid_request_error"}}`, msg)
}

func (s *Server) handle(w http.ResponseWriter, r *http.Request) {
	req, status, msg := s.decode(r)
	if status != 0 {
		s.mu.Lock()
		s.calls++
		s.mu.Unlock()
		s.fail(w, status, msg)
		return
	}
	s.mu.Lock()
	if s.noJSON && req.JSONMode {
		s.calls++
		s.mu.Unlock()
		field := "response_format"
		if s.Format == "gemini" {
			field = "generationConfig.responseMimeType"
		}
		s.fail(w, http.StatusBadRequest, "unsupported parameter: "+field)
		return
	}
	n := s.calls
	s.calls++
	k := s.perImage[req.ImageSHA]
	s.perImage[req.ImageSHA]++
	s.requests = append(s.requests, *req)
	script := s.script
	s.mu.Unlock()

	var rep Reply
	if script != nil {
		rep = script(n, k, req)
	}
	if rep.Delay > 0 {
		select {
		case <-time.After(rep.Delay):
		case <-r.Context().Done():
			return
		}
	}
	if rep.RetryAfter != "" {
		w.Header().Set("Retry-After", rep.RetryAfter)
	}
	if rep.Status != 0 && rep.Status != http.StatusOK {
		msg := rep.Message
		if msg == "" {
			msg = http.StatusText(rep.Status)
		}
		s.fail(w, rep.Status, msg)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if rep.Raw != "" {
		fmt.Fprint(w, rep.Raw)
		return
	}
	text := GoodAnswer(req.Aspects)
	if rep.Text != nil {
		text = *rep.Text
	} else {
		s.mu.Lock()
		s.good[req.ImageSHA]++
		s.mu.Unlock()
	}
	var body any
	if s.Format == "gemini" {
		body = map[string]any{
			"candidates": []any{map[string]any{
				"content":      map[string]any{"role": "model", "parts": []any{map[string]any{"text": text}}},
				"finishReason": "STOP",
			}},
			"usageMetadata": map[string]any{"promptTokenCount": s.PromptTokens, "candidatesTokenCount": s.CompletionTokens, "totalTokenCount": s.PromptTokens + s.CompletionTokens},
			"modelVersion":  req.Model,
		}
	} else {
		body = map[string]any{
			"id": "chatcmpl-fake", "object": "chat.completion", "model": req.Model,
			"choices": []any{map[string]any{"index": 0, "message": map[string]any{"role": "assistant", "content": text}, "finish_reason": "stop"}},
			"usage":   map[string]any{"prompt_tokens": s.PromptTokens, "completion_tokens": s.CompletionTokens, "total_tokens": s.PromptTokens + s.CompletionTokens},
		}
	}
	json.NewEncoder(w).Encode(body)
}

// decode checks and decodes a request; status != 0 is an error reply.
func (s *Server) decode(r *http.Request) (*Request, int, string) {
	if r.Method != http.MethodPost {
		return nil, http.StatusMethodNotAllowed, "POST only"
	}
	req := &Request{Header: r.Header.Clone()}
	var gotKey string
	if s.Format == "gemini" {
		const prefix, suffix = "/v1beta/models/", ":generateContent"
		if !strings.HasPrefix(r.URL.Path, prefix) || !strings.HasSuffix(r.URL.Path, suffix) {
			return nil, http.StatusNotFound, "no route " + r.URL.Path
		}
		req.Model = strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, prefix), suffix)
		gotKey = r.Header.Get("x-goog-api-key")
	} else {
		if r.URL.Path != "/v1/chat/completions" {
			return nil, http.StatusNotFound, "no route " + r.URL.Path
		}
		if a := r.Header.Get("Authorization"); strings.HasPrefix(a, "Bearer ") {
			gotKey = strings.TrimPrefix(a, "Bearer ")
		}
	}
	s.mu.Lock()
	key := s.key
	s.mu.Unlock()
	if key != "" && gotKey != key {
		return nil, http.StatusUnauthorized, "invalid API key"
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		return nil, http.StatusBadRequest, "content type " + ct
	}
	var err error
	if s.Format == "gemini" {
		err = decodeGemini(r, req)
	} else {
		err = decodeOpenAI(r, req)
	}
	if err != nil {
		return nil, http.StatusBadRequest, err.Error()
	}
	sum := sha256.Sum256(req.Image)
	req.ImageSHA = hex.EncodeToString(sum[:])
	for _, m := range aspectRE.FindAllStringSubmatch(req.Text, -1) {
		if !contains(req.Aspects, m[1]) {
			req.Aspects = append(req.Aspects, m[1])
		}
	}
	return req, 0, ""
}

func contains(l []string, s string) bool {
	for _, v := range l {
		if v == s {
			return true
		}
	}
	return false
}

func decodeOpenAI(r *http.Request, req *Request) error {
	var body struct {
		Model    string `json:"model"`
		Messages []struct {
			Role    string            `json:"role"`
			Content []json.RawMessage `json:"content"`
		} `json:"messages"`
		ResponseFormat *struct {
			Type string `json:"type"`
		} `json:"response_format"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		return fmt.Errorf("bad JSON: %v", err)
	}
	if body.Model == "" || len(body.Messages) == 0 {
		return fmt.Errorf("model and messages are required")
	}
	req.Model = body.Model
	req.JSONMode = body.ResponseFormat != nil && body.ResponseFormat.Type == "json_object"
	for _, m := range body.Messages {
		if m.Role != "user" && m.Role != "system" {
			return fmt.Errorf("unexpected role %q", m.Role)
		}
		for _, raw := range m.Content {
			var part struct {
				Type     string `json:"type"`
				Text     string `json:"text"`
				ImageURL *struct {
					URL string `json:"url"`
				} `json:"image_url"`
			}
			if err := json.Unmarshal(raw, &part); err != nil {
				return fmt.Errorf("bad content part: %v", err)
			}
			switch part.Type {
			case "text":
				req.Text += part.Text
			case "image_url":
				if part.ImageURL == nil {
					return fmt.Errorf("image_url part without image_url")
				}
				rest, ok := strings.CutPrefix(part.ImageURL.URL, "data:")
				mime, data, ok2 := strings.Cut(rest, ";base64,")
				if !ok || !ok2 || !strings.HasPrefix(mime, "image/") {
					return fmt.Errorf("image_url is not a base64 image data URL")
				}
				b, err := base64.StdEncoding.DecodeString(data)
				if err != nil {
					return fmt.Errorf("image data: %v", err)
				}
				req.MIME, req.Image = mime, b
			default:
				return fmt.Errorf("unknown content part type %q", part.Type)
			}
		}
	}
	if req.Image == nil || req.Text == "" {
		return fmt.Errorf("need a text part and an image part")
	}
	return nil
}

func decodeGemini(r *http.Request, req *Request) error {
	var body struct {
		Contents []struct {
			Role  string `json:"role"`
			Parts []struct {
				Text       *string `json:"text"`
				InlineData *struct {
					MimeType string `json:"mime_type"`
					Data     string `json:"data"`
				} `json:"inline_data"`
			} `json:"parts"`
		} `json:"contents"`
		GenerationConfig *struct {
			ResponseMimeType string `json:"responseMimeType"`
		} `json:"generationConfig"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		return fmt.Errorf("bad JSON: %v", err)
	}
	if len(body.Contents) == 0 {
		return fmt.Errorf("contents is required")
	}
	req.JSONMode = body.GenerationConfig != nil && body.GenerationConfig.ResponseMimeType == "application/json"
	for _, c := range body.Contents {
		if c.Role != "" && c.Role != "user" {
			return fmt.Errorf("unexpected role %q", c.Role)
		}
		for _, p := range c.Parts {
			switch {
			case p.Text != nil:
				req.Text += *p.Text
			case p.InlineData != nil:
				if !strings.HasPrefix(p.InlineData.MimeType, "image/") {
					return fmt.Errorf("inline_data mime_type %q", p.InlineData.MimeType)
				}
				b, err := base64.StdEncoding.DecodeString(p.InlineData.Data)
				if err != nil {
					return fmt.Errorf("inline_data: %v", err)
				}
				req.MIME, req.Image = p.InlineData.MimeType, b
			default:
				return fmt.Errorf("empty part")
			}
		}
	}
	if req.Image == nil || req.Text == "" {
		return fmt.Errorf("need a text part and an inline_data part")
	}
	return nil
}
