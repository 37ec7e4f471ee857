package distill

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// Format is a teacher wire format.
type Format string

// Wire formats.
const (
	// FormatOpenAI is POST {endpoint}/chat/completions with the image as a
	// base64 data URL and Authorization: Bearer KEY (vLLM, Ollama, LM
	// Studio and hosted services speak it).
	FormatOpenAI Format = "openai"
	// FormatGemini is POST {endpoint}/v1beta/models/{model}:generateContent
	// with the image as inline_data and the key in x-goog-api-key.
	FormatGemini Format = "gemini"
)

// ParseFormat checks a wire format name.
func ParseFormat(s string) (Format, error) {
	switch Format(strings.ToLower(s)) {
	case FormatOpenAI:
		return FormatOpenAI, nil
	case FormatGemini:
		return FormatGemini, nil
	}
	return "", fmt.Errorf("unknown teacher format %q (want openai or gemini)", s)
}

// DefaultEndpoint returns the public endpoint of a format.
func DefaultEndpoint(f Format) string {
	if f == FormatGemini {
		return "https://generativelanguage.googleapis.com"
	}
	return "https://api.openai.com/v1"
}

// Usage counts tokens of one call.
type Usage struct {
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
}

// request is one teacher call.
type request struct {
	Text     string
	Image    []byte
	MIME     string
	Model    string
	JSONMode bool
	Temp     float64
}

// httpError is a non-2xx answer.
type httpError struct {
	Status     int
	RetryAfter string
	Body       string
}

func (e *httpError) Error() string {
	return fmt.Sprintf("http %d: %s", e.Status, e.Body)
}

// buildRequest returns the HTTP request of one call in the given format.
func buildRequest(ctx context.Context, f Format, endpoint, key string, r request) (*http.Request, error) {
	var body any
	var u string
	data := base64.StdEncoding.EncodeToString(r.Image)
	switch f {
	case FormatOpenAI:
		u = strings.TrimRight(endpoint, "/") + "/chat/completions"
		m := map[string]any{
			"model": r.Model,
			"messages": []any{map[string]any{
				"role": "user",
				"content": []any{
					map[string]any{"type": "text", "text": r.Text},
					map[string]any{"type": "image_url", "image_url": map[string]any{"url": "data:" + r.MIME + ";base64," + data}},
				},
			}},
			"temperature": r.Temp,
		}
		if r.JSONMode {
			m["response_format"] = map[string]any{"type": "json_object"}
		}
		body = m
	case FormatGemini:
		u = strings.TrimRight(endpoint, "/") + "/v1beta/models/" + url.PathEscape(r.Model) + ":generateContent"
		gen := map[string]any{"temperature": r.Temp}
		if r.JSONMode {
			gen["responseMimeType"] = "application/json"
		}
		body = map[string]any{
			"contents": []any{map[string]any{
				"role": "user",
				"parts": []any{
					map[string]any{"text": r.Text},
					map[string]any{"inline_data": map[string]any{"mime_type": r.MIME, "data": data}},
				},
			}},
			"generationConfig": gen,
		}
	default:
		return nil, fmt.Errorf("unknown teacher format %q", f)
	}
	b, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		if f == FormatGemini {
			req.Header.Set("x-goog-api-key", key)
		} else {
			req.Header.Set("Authorization", "Bearer "+key)
		}
	}
	return req, nil
}

type openAIResponse struct {
	Choices []struct {
		Message struct {
			Content string `json:"content"`
		} `json:"message"`
		FinishReason string `json:"finish_reason"`
	} `json:"choices"`
	Usage struct {
		PromptTokens     int64 `json:"prompt_tokens"`
		CompletionTokens int64 `json:"completion_tokens"`
	} `json:"usage"`
}

type geminiResponse struct {
	Candidates []struct {
		Content struct {
			Parts []struct {
				Text    string `json:"text"`
				Thought bool   `json:"thought"`
			} `json:"parts"`
		} `json:"content"`
		FinishReason string `json:"finishReason"`
	} `json:"candidates"`
	PromptFeedback *struct {
		BlockReason string `json:"blockReason"`
	} `json:"promptFeedback"`
	UsageMetadata struct {
		PromptTokenCount     int64 `json:"promptTokenCount"`
		CandidatesTokenCount int64 `json:"candidatesTokenCount"`
		ThoughtsTokenCount   int64 `json:"thoughtsTokenCount"`
	} `json:"usageMetadata"`
}

// parseResponse extracts the answer text and usage of a 2xx body. An error
// here means the service answered (and billed) but not with text.
func parseResponse(f Format, body []byte) (string, Usage, error) {
	switch f {
	case FormatOpenAI:
		var r openAIResponse
		if err := json.Unmarshal(body, &r); err != nil {
			return "", Usage{}, fmt.Errorf("%w: response is not chat completion JSON: %v", ErrMalformed, err)
		}
		u := Usage{PromptTokens: r.Usage.PromptTokens, CompletionTokens: r.Usage.CompletionTokens}
		if len(r.Choices) == 0 {
			return "", u, fmt.Errorf("%w: no choices", ErrMalformed)
		}
		return r.Choices[0].Message.Content, u, nil
	case FormatGemini:
		var r geminiResponse
		if err := json.Unmarshal(body, &r); err != nil {
			return "", Usage{}, fmt.Errorf("%w: response is not generateContent JSON: %v", ErrMalformed, err)
		}
		m := r.UsageMetadata
		u := Usage{PromptTokens: m.PromptTokenCount, CompletionTokens: m.CandidatesTokenCount + m.ThoughtsTokenCount}
		if len(r.Candidates) == 0 {
			reason := ""
			if r.PromptFeedback != nil {
				reason = " (blocked: " + r.PromptFeedback.BlockReason + ")"
			}
			return "", u, fmt.Errorf("%w: no candidates%s", ErrMalformed, reason)
		}
		var sb strings.Builder
		for _, p := range r.Candidates[0].Content.Parts {
			if !p.Thought {
				sb.WriteString(p.Text)
			}
		}
		return sb.String(), u, nil
	}
	return "", Usage{}, fmt.Errorf("unknown teacher format %q", f)
}

// readBody reads at most limit bytes of a response body.
func readBody(r io.Reader, limit int64) ([]byte, error) {
	return io.ReadAll(io.LimitReader(r, limit))
}
