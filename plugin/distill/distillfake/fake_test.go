package distillfake

import (
	"net/http"
	"strings"
	"testing"
)

// TestRejectsMalformedRequests checks that the fake is strict about the
// wire format, so client tests against it mean something.
func TestRejectsMalformedRequests(t *testing.T) {
	oa := NewOpenAI()
	defer oa.Close()
	gm := NewGemini()
	defer gm.Close()
	gm.SetKey("k")
	for _, tc := range []struct {
		name   string
		url    string
		header map[string]string
		body   string
		want   int
	}{
		{"openai http image url", oa.Endpoint() + "/chat/completions", nil,
			`{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"http://x/a.jpg"}}]}]}`, 400},
		{"openai no image", oa.Endpoint() + "/chat/completions", nil,
			`{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}`, 400},
		{"openai good", oa.Endpoint() + "/chat/completions", nil,
			`{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"\"quality\""},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}]}`, 200},
		{"openai wrong path", oa.URL + "/chat/completions", nil, `{}`, 404},
		{"gemini no key", gm.Endpoint() + "/v1beta/models/g:generateContent", nil,
			`{"contents":[{"parts":[{"text":"hi"},{"inline_data":{"mime_type":"image/jpeg","data":"AAAA"}}]}]}`, 401},
		{"gemini camelCase only", gm.Endpoint() + "/v1beta/models/g:generateContent", map[string]string{"x-goog-api-key": "k"},
			`{"contents":[{"parts":[{"text":"hi"},{"inlineData":{"mimeType":"image/jpeg","data":"AAAA"}}]}]}`, 400},
		{"gemini good", gm.Endpoint() + "/v1beta/models/g:generateContent", map[string]string{"x-goog-api-key": "k"},
			`{"contents":[{"parts":[{"text":"hi"},{"inline_data":{"mime_type":"image/jpeg","data":"AAAA"}}]}]}`, 200},
	} {
		req, _ := http.NewRequest(http.MethodPost, tc.url, strings.NewReader(tc.body))
		req.Header.Set("Content-Type", "application/json")
		for k, v := range tc.header {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s: status %d, want %d", tc.name, resp.StatusCode, tc.want)
		}
	}
}
