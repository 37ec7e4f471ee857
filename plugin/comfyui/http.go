package comfyui

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// HTTPError is a non-2xx answer other than a prompt validation error.
type HTTPError struct {
	Method, Path string
	StatusCode   int
	Body         string
}

// Error implements error.
func (e *HTTPError) Error() string {
	body := strings.TrimSpace(e.Body)
	if len(body) > 300 {
		body = body[:300] + "…"
	}
	return fmt.Sprintf("%s %s: HTTP %d: %s", e.Method, e.Path, e.StatusCode, body)
}

// ErrNotFound is returned (wrapped) when the server does not know the
// requested prompt or file.
var ErrNotFound = errors.New("not found")

// NewPromptID returns a random UUIDv4 string, the form ComfyUI uses.
func NewPromptID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func (c *Client) endpoint(path string, q url.Values) string {
	u := *c.base
	u.Path = strings.TrimSuffix(u.Path, "/") + path
	if q != nil {
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// do sends a request and returns the body of a 2xx answer.
func (c *Client) do(ctx context.Context, method, path string, q url.Values, body io.Reader, ctype string) ([]byte, int, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.endpoint(path, q), body)
	if err != nil {
		return nil, 0, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, resp.StatusCode, fmt.Errorf("%s %s: read body: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		return b, resp.StatusCode, &HTTPError{Method: method, Path: path, StatusCode: resp.StatusCode, Body: string(b)}
	}
	return b, resp.StatusCode, nil
}

func (c *Client) postJSON(ctx context.Context, path string, v any) ([]byte, int, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, 0, fmt.Errorf("POST %s: encode: %w", path, err)
	}
	return c.do(ctx, http.MethodPost, path, nil, bytes.NewReader(b), "application/json")
}

func decodeExact(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	return d.Decode(v)
}

// QueuePrompt submits a prompt (POST /prompt) for this client's socket. It
// sets ClientID to the client's id and a fresh PromptID when none is given,
// so that events arriving before the answer can be matched. A 400 answer
// is returned as *PromptError.
func (c *Client) QueuePrompt(ctx context.Context, req PromptRequest) (*PromptResponse, error) {
	if req.ClientID == "" {
		req.ClientID = c.id
	}
	if req.PromptID == "" {
		req.PromptID = NewPromptID()
	}
	b, code, err := c.postJSON(ctx, "/prompt", req)
	if err != nil {
		var he *HTTPError
		if errors.As(err, &he) && code == http.StatusBadRequest {
			pe := &PromptError{StatusCode: code}
			if json.Unmarshal(b, pe) == nil && pe.Err.Type != "" {
				return nil, pe
			}
		}
		return nil, fmt.Errorf("queue prompt: %w", err)
	}
	var pr PromptResponse
	if err := json.Unmarshal(b, &pr); err != nil {
		return nil, fmt.Errorf("queue prompt: decode answer: %w", err)
	}
	if pr.PromptID == "" {
		pr.PromptID = req.PromptID
	}
	return &pr, nil
}

// History returns the history entry of one prompt (GET /history/{id}). A
// prompt the server does not know (still queued, or lost in a restart)
// yields an error wrapping ErrNotFound.
func (c *Client) History(ctx context.Context, promptID string) (*HistoryEntry, error) {
	b, _, err := c.do(ctx, http.MethodGet, "/history/"+url.PathEscape(promptID), nil, nil, "")
	if err != nil {
		return nil, fmt.Errorf("history %s: %w", promptID, err)
	}
	var m map[string]HistoryEntry
	if err := decodeExact(b, &m); err != nil {
		return nil, fmt.Errorf("history %s: decode: %w", promptID, err)
	}
	h, ok := m[promptID]
	if !ok {
		return nil, fmt.Errorf("history %s: %w", promptID, ErrNotFound)
	}
	return &h, nil
}

// HistoryAll returns the server's whole history (GET /history), newest
// maxItems entries when maxItems > 0.
func (c *Client) HistoryAll(ctx context.Context, maxItems int) (map[string]HistoryEntry, error) {
	var q url.Values
	if maxItems > 0 {
		q = url.Values{"max_items": {strconv.Itoa(maxItems)}}
	}
	b, _, err := c.do(ctx, http.MethodGet, "/history", q, nil, "")
	if err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	var m map[string]HistoryEntry
	if err := decodeExact(b, &m); err != nil {
		return nil, fmt.Errorf("history: decode: %w", err)
	}
	return m, nil
}

// View downloads an output, temp or input file (GET /view).
func (c *Client) View(ctx context.Context, ref ImageRef) ([]byte, error) {
	q := url.Values{"filename": {ref.Filename}, "subfolder": {ref.Subfolder}, "type": {ref.Type}}
	b, code, err := c.do(ctx, http.MethodGet, "/view", q, nil, "")
	if err != nil {
		if code == http.StatusNotFound {
			return nil, fmt.Errorf("view %s/%s (%s): %w", ref.Subfolder, ref.Filename, ref.Type, ErrNotFound)
		}
		return nil, fmt.Errorf("view %s/%s (%s): %w", ref.Subfolder, ref.Filename, ref.Type, err)
	}
	return b, nil
}

// UploadOptions are the form fields of POST /upload/image.
type UploadOptions struct {
	Overwrite bool
	Type      string // "input" (default), "temp" or "output"
	Subfolder string
}

// UploadImage uploads an image (POST /upload/image, multipart field
// "image") and returns where the server stored it.
func (c *Client) UploadImage(ctx context.Context, name string, r io.Reader, opt UploadOptions) (ImageRef, error) {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	fw, err := mw.CreateFormFile("image", name)
	if err != nil {
		return ImageRef{}, fmt.Errorf("upload %s: %w", name, err)
	}
	if _, err := io.Copy(fw, r); err != nil {
		return ImageRef{}, fmt.Errorf("upload %s: %w", name, err)
	}
	if opt.Overwrite {
		_ = mw.WriteField("overwrite", "true")
	}
	if opt.Type != "" {
		_ = mw.WriteField("type", opt.Type)
	}
	if opt.Subfolder != "" {
		_ = mw.WriteField("subfolder", opt.Subfolder)
	}
	if err := mw.Close(); err != nil {
		return ImageRef{}, fmt.Errorf("upload %s: %w", name, err)
	}
	b, _, err := c.do(ctx, http.MethodPost, "/upload/image", nil, &buf, mw.FormDataContentType())
	if err != nil {
		return ImageRef{}, fmt.Errorf("upload %s: %w", name, err)
	}
	var ans struct {
		Name      string `json:"name"`
		Subfolder string `json:"subfolder"`
		Type      string `json:"type"`
	}
	if err := json.Unmarshal(b, &ans); err != nil {
		return ImageRef{}, fmt.Errorf("upload %s: decode answer: %w", name, err)
	}
	return ImageRef{Filename: ans.Name, Subfolder: ans.Subfolder, Type: ans.Type}, nil
}

// ObjectInfo returns node class definitions (GET /object_info, or
// /object_info/{class} when class is not empty), raw per class. An unknown
// class yields an error wrapping ErrNotFound.
func (c *Client) ObjectInfo(ctx context.Context, class string) (map[string]json.RawMessage, error) {
	path := "/object_info"
	if class != "" {
		path += "/" + url.PathEscape(class)
	}
	b, _, err := c.do(ctx, http.MethodGet, path, nil, nil, "")
	if err != nil {
		return nil, fmt.Errorf("object info: %w", err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("object info: decode: %w", err)
	}
	if class != "" && len(m) == 0 {
		return nil, fmt.Errorf("object info %s: %w", class, ErrNotFound)
	}
	return m, nil
}

// Queue returns the running and pending prompts (GET /queue).
func (c *Client) Queue(ctx context.Context) (*QueueState, error) {
	b, _, err := c.do(ctx, http.MethodGet, "/queue", nil, nil, "")
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	var q QueueState
	if err := decodeExact(b, &q); err != nil {
		return nil, fmt.Errorf("queue: decode: %w", err)
	}
	return &q, nil
}

// DeleteQueued removes pending prompts from the queue (POST /queue
// {"delete": ids}).
func (c *Client) DeleteQueued(ctx context.Context, promptIDs ...string) error {
	if _, _, err := c.postJSON(ctx, "/queue", map[string]any{"delete": promptIDs}); err != nil {
		return fmt.Errorf("delete queued: %w", err)
	}
	return nil
}

// ClearQueue removes every pending prompt (POST /queue {"clear": true}).
func (c *Client) ClearQueue(ctx context.Context) error {
	if _, _, err := c.postJSON(ctx, "/queue", map[string]any{"clear": true}); err != nil {
		return fmt.Errorf("clear queue: %w", err)
	}
	return nil
}

// Interrupt stops the running prompt (POST /interrupt). With a prompt id,
// the server interrupts only if that prompt is the one running.
func (c *Client) Interrupt(ctx context.Context, promptID string) error {
	body := map[string]any{}
	if promptID != "" {
		body["prompt_id"] = promptID
	}
	if _, _, err := c.postJSON(ctx, "/interrupt", body); err != nil {
		return fmt.Errorf("interrupt: %w", err)
	}
	return nil
}
