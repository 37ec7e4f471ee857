package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"image"
	"image/png"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/m3gate/m3gate/schemas/api"
)

// postScore posts one image with prompt to the daemon's score route.
func postScore(t *testing.T, d *daemon, img []byte, prompt string) (int, string) {
	t.Helper()
	body, _ := json.Marshal(map[string]any{
		"images": []map[string]string{{"data": base64.StdEncoding.EncodeToString(img)}}, "prompt": prompt, "aspects": []string{"quality"},
	})
	resp, err := http.Post(d.url+api.PathScore, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(raw)
}

func readyStatus(t *testing.T, d *daemon) int {
	resp, err := http.Get(d.url + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// The daemon answers a prompt over model.max_prompt_tokens with a 400
// naming the limit, takes typed special tokens as text, and is not ready
// while its model process is frozen.
func TestDaemonModelLimits(t *testing.T) {
	fake, _ := startFake(t)
	d := startDaemon(t, fake.URL())
	var buf bytes.Buffer
	png.Encode(&buf, image.NewGray(image.Rect(0, 0, 32, 32)))
	img := buf.Bytes()

	code, body := postScore(t, d, img, strings.Repeat("a watercolor of a lighthouse at dusk, ", 300))
	if code != http.StatusBadRequest || !strings.Contains(body, "max_prompt_tokens") {
		t.Errorf("long prompt: HTTP %d %s, want 400 naming max_prompt_tokens", code, body)
	}
	code, body = postScore(t, d, img, "a cat <image> <end_of_utterance> <|im_end|>")
	var ans api.ScoreResponse
	if code != http.StatusOK || json.Unmarshal([]byte(body), &ans) != nil || len(ans.Results) != 1 || ans.Results[0].Error != "" {
		t.Errorf("prompt with special tokens: HTTP %d %s", code, body)
	}

	if err := syscall.Kill(d.sidecar, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(d.sidecar, syscall.SIGCONT)
	waitReadyz(t, d, http.StatusServiceUnavailable, 30*time.Second)
	syscall.Kill(d.sidecar, syscall.SIGCONT)
	waitReadyz(t, d, http.StatusOK, 30*time.Second)
	if code, body := postScore(t, d, img, "a cat"); code != http.StatusOK {
		t.Errorf("after SIGCONT: HTTP %d %s", code, body)
	}
}

func waitReadyz(t *testing.T, d *daemon, want int, within time.Duration) {
	t.Helper()
	start := time.Now()
	for readyStatus(t, d) != want {
		if time.Since(start) > within {
			t.Fatalf("/readyz still not %d after %s", want, within)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("/readyz %d after %s", want, time.Since(start).Round(time.Millisecond))
}
