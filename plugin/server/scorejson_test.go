package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/m3gate/m3gate/schemas/api"
)

// TestDecodeScoreJSONMatchesEncodingJSON: the streaming decoder reads what
// encoding/json writes exactly as encoding/json reads it back.
func TestDecodeScoreJSONMatchesEncodingJSON(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 200 {
		var want api.ScoreRequest
		want.Prompt = strings.Repeat("a \"quoted\" \\ prompt é ✓ \n", rng.IntN(3))
		if rng.IntN(2) == 0 {
			want.Aspects = []string{"quality", "correspondence"}[:1+rng.IntN(2)]
		}
		want.MaxNewTokens = int64(rng.IntN(5000))
		for range 1 + rng.IntN(4) {
			var im api.Image
			switch rng.IntN(3) {
			case 0:
				im.Path = "/images/x y/" + strings.Repeat("é", rng.IntN(3)) + ".png"
			default:
				im.Data = make([]byte, rng.IntN(3000))
				for j := range im.Data {
					im.Data[j] = byte(rng.Uint32())
				}
			}
			if rng.IntN(2) == 0 {
				im.Prompt = "own\tprompt"
			}
			want.Images = append(want.Images, im)
		}
		raw, _ := json.Marshal(want)
		if rng.IntN(2) == 0 { // indentation and escaped slashes are JSON too
			var buf bytes.Buffer
			json.Indent(&buf, raw, "", "  ")
			raw = bytes.ReplaceAll(buf.Bytes(), []byte("/"), []byte(`\/`))
		}
		var ref api.ScoreRequest
		if err := json.Unmarshal(raw, &ref); err != nil {
			t.Fatal(err)
		}
		size := int64(len(raw)) // the body length, known or not
		if i%2 == 0 {
			size = -1
		}
		got, err := decodeScoreJSON(bytes.NewReader(raw), 1<<20, 64, size)
		if err != nil {
			t.Fatalf("case %d: %v\n%s", i, err, raw)
		}
		if !reflect.DeepEqual(got, ref) {
			t.Fatalf("case %d: got %+v, want %+v\n%s", i, got, ref, raw)
		}
	}
}

func TestDecodeScoreJSONErrors(t *testing.T) {
	tests := []struct{ name, body, want string }{
		{"unknown field", `{"imgs":[]}`, `unknown field "imgs"`},
		{"unknown image field", `{"images":[{"url":"x"}]}`, `image 0: unknown field "url"`},
		{"bad base64", `{"images":[{"data":"!!"}]}`, "not base64"},
		{"escape in base64", `{"images":[{"data":"aG\nk="}]}`, `not base64: escape \n`},
		{"data after padding", `{"images":[{"data":"aGk=aGk="}]}`, "not base64"},
		{"too many images", `{"images":[{"path":"/a"},{"path":"/b"},{"path":"/c"}]}`, "at most 2"},
		{"image over the cap", `{"images":[{"data":"` + strings.Repeat("A", 2000) + `"}]}`, "over daemon.max_image_bytes (1024)"},
		{"trailing data", `{"prompt":"x"} {}`, "data after the JSON object"},
		{"truncated", `{"images":[{"data":"aGk=`, "unexpected end of body"},
		{"truncated object", `{"prompt":"x",`, "unexpected end of body"},
		{"not an object", `[1]`, "want an object"},
		{"max_new_tokens not an integer", `{"max_new_tokens":1.5}`, "cannot unmarshal"},
		{"max_new_tokens over int64", `{"max_new_tokens":1e30}`, "cannot unmarshal"},
		{"aspects not strings", `{"aspects":[1]}`, "cannot unmarshal"},
		{"missing colon", `{"prompt" "x"}`, "want ':'"},
	}
	for _, tt := range tests {
		_, err := decodeScoreJSON(strings.NewReader(tt.body), 1024, 2, int64(len(tt.body)))
		var br badRequest
		if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.As(err, &br) {
			t.Errorf("%s: got %v, want a bad request containing %q", tt.name, err, tt.want)
		}
	}
}

// TestDecodeScoreJSONStopsAtTheCap: an image past max_image_bytes is
// refused once the cap is passed, without reading the rest of the body.
func TestDecodeScoreJSONStopsAtTheCap(t *testing.T) {
	head := strings.NewReader(`{"images":[{"data":"` + strings.Repeat("QUFB", 1<<20))
	r := io.MultiReader(head, failingReader{})
	_, err := decodeScoreJSON(r, 64<<10, 4, -1)
	if err == nil || !strings.Contains(err.Error(), "over daemon.max_image_bytes") {
		t.Fatalf("got %v", err)
	}
	if head.Len() == 0 {
		t.Error("the whole body was read")
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("read past the cap") }

// TestDecodeScoreJSONPassesBodyErrors: an error of the body reader (cap,
// budget, deadline) reaches the caller unchanged, not as a 400.
func TestDecodeScoreJSONPassesBodyErrors(t *testing.T) {
	r := io.MultiReader(strings.NewReader(`{"images":[{"data":"QUFB`), errReader{errTooSlow})
	_, err := decodeScoreJSON(r, 1<<20, 4, -1)
	if code, ok := bodyErrorStatus(err); !ok || code != 408 {
		t.Fatalf("got %v (status %d)", err, code)
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }
