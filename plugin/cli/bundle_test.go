package cli

import (
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/m3gate/m3gate/plugin/hub"
)

// bundleHub serves local folders as Hub repositories (metadata with sizes,
// git blob SHA-1 and LFS SHA-256, files under resolve/COMMIT/).
func bundleHub(t *testing.T, repos map[string]string) *httptest.Server {
	t.Helper()
	const commit = "0123456789abcdef0123456789abcdef01234567"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for repo, dir := range repos {
			if r.URL.Path == "/api/models/"+repo+"/revision/main" {
				var sibs []map[string]any
				filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
					if err != nil || d.IsDir() {
						return err
					}
					b, _ := os.ReadFile(p)
					rel, _ := filepath.Rel(dir, p)
					h := sha1.New()
					fmt.Fprintf(h, "blob %d\x00", len(b))
					h.Write(b)
					s := map[string]any{"rfilename": filepath.ToSlash(rel), "size": len(b), "blobId": hex.EncodeToString(h.Sum(nil))}
					if len(b) > 1024 {
						sum := sha256.Sum256(b)
						s["lfs"] = map[string]any{"sha256": hex.EncodeToString(sum[:]), "size": len(b)}
					}
					sibs = append(sibs, s)
					return nil
				})
				json.NewEncoder(w).Encode(map[string]any{"sha": commit, "siblings": sibs})
				return
			}
			prefix := "/" + repo + "/resolve/" + commit + "/"
			if strings.HasPrefix(r.URL.Path, prefix) {
				http.ServeFile(w, r, filepath.Join(dir, filepath.FromSlash(strings.TrimPrefix(r.URL.Path, prefix))))
				return
			}
		}
		http.NotFound(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestFetchM3AGIQABundle serves a tiny minicpmv25 bundle as the m3-agiqa
// repositories from a fake Hub, fetches it with `model fetch m3-agiqa`,
// checks the profile it writes, and scores an image through the real
// sidecar with nothing but that profile.
func TestFetchM3AGIQABundle(t *testing.T) {
	bin := realSidecar(t)
	src := t.TempDir()
	var out, errb bytes.Buffer
	env := []string{"M3GATE_SIDECAR=" + bin, "HOME=" + t.TempDir()}
	if code := Execute(context.Background(), []string{"model", "tiny", "--family", "minicpmv25", "--out", src}, strings.NewReader(""), &out, &errb, env); code != 0 {
		t.Fatalf("model tiny: %d\n%s", code, errb.String())
	}
	b := hub.KnownBundles["m3-agiqa"]
	repos := map[string]string{b.Base: filepath.Join(src, "base")}
	for aspect, repo := range b.Adapters {
		repos[repo] = filepath.Join(src, "adapters", aspect)
	}
	// the predictor repository holds the checkpoints under the reference's names
	preds := t.TempDir()
	for aspect, name := range b.PredictorFiles {
		raw, err := os.ReadFile(filepath.Join(src, "predictors", aspect+".ckpt"))
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(preds, filepath.FromSlash(name))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, raw, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	repos[b.Predictors] = preds
	srv := bundleHub(t, repos)
	env = append(env, "HF_ENDPOINT="+srv.URL)

	t.Chdir(t.TempDir())
	exec := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := Execute(context.Background(), args, strings.NewReader(""), &out, &errb, env)
		return code, out.String(), errb.String()
	}
	code, stdout, stderr := exec("model", "fetch", "m3-agiqa")
	if code != 0 {
		t.Fatalf("fetch: %d\n%s", code, stderr)
	}
	if !strings.Contains(stdout, "wrote the profile models/m3-agiqa/config.yaml") {
		t.Errorf("fetch stdout: %q", stdout)
	}
	for _, f := range []string{"base/model.safetensors", "adapters/quality/adapter_config.json", "adapters/authenticity/adapter_model.safetensors",
		"predictors/agiqa-3k/alignment/best-epoch=14-val_SRCC=0.87.ckpt"} {
		if _, err := os.Stat(filepath.Join("models", "m3-agiqa", f)); err != nil {
			t.Errorf("not fetched: %v", err)
		}
	}
	// the profile is read instead of the defaults and wires every aspect
	code, stdout, stderr = exec("config", "print")
	if code != 0 {
		t.Fatalf("config print: %d\n%s", code, stderr)
	}
	for _, want := range []string{"family: minicpmv25", "dir: models/m3-agiqa/base", "correspondence: models/m3-agiqa/adapters/correspondence",
		"best-epoch=15-val_SRCC=0.83.ckpt", "max_slices: \"9\"", "- authenticity"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("config print lacks %q:\n%s", want, stdout)
		}
	}
	if !strings.Contains(stderr, "using the M3-AGIQA profile") {
		t.Errorf("no notice that the profile is used: %q", stderr)
	}
	// the tiny model runs on the CPU in f32
	img := filepath.Join(t.TempDir(), "img.png")
	if err := os.WriteFile(img, texturePNG(t), 0o644); err != nil {
		t.Fatal(err)
	}
	env = append(env, "M3GATE_MODEL_DEVICE=cpu", "M3GATE_MODEL_DTYPE=f32", "M3GATE_MODEL_MAX_NEW_TOKENS=4")
	code, stdout, stderr = exec("score", img, "--prompt", "statue of a man", "--json")
	if code != 0 {
		t.Fatalf("score: %d\n%s", code, stderr)
	}
	var res struct {
		Aspects map[string]struct {
			MOS    float64 `json:"mos"`
			Source string  `json:"source"`
		} `json:"aspects"`
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(stdout)), &res); err != nil {
		t.Fatalf("%v: %q", err, stdout)
	}
	for _, a := range []string{"quality", "correspondence", "authenticity"} {
		r, ok := res.Aspects[a]
		if !ok || r.Source != "predictor" || r.MOS < 0 || r.MOS > 5 {
			t.Errorf("%s: %+v (present %v), want a predictor MOS", a, r, ok)
		}
	}
}

// texturePNG is a 300×200 PNG with some structure.
func texturePNG(t *testing.T) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, 300, 200))
	for y := range 200 {
		for x := range 300 {
			img.SetRGBA(x, y, color.RGBA{uint8(x), uint8(y), uint8(x ^ y), 255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
