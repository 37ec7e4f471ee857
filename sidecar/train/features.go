package train

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/m3gate/m3gate/sidecar/m3"
	"github.com/m3gate/m3gate/sidecar/mllm"
	"github.com/m3gate/m3gate/sidecar/tensorio"
	"github.com/m3gate/m3gate/sidecar/torch"
)

// Description sources for the predictor's input conversation.
const (
	DescTeacher   = "teacher"   // the record's teacher_description
	DescStudent   = "student"   // the record's student_description
	DescGenerated = "generated" // the local model's own greedy description
)

// hashFiles fingerprints files cheaply but content-wise: every byte of
// files up to 64 MiB, and the size plus the first and last 16 MiB of larger
// ones (safetensors headers sit at the start).
func hashFiles(paths ...string) (string, error) {
	h := sha256.New()
	sort.Strings(paths)
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return "", err
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return "", err
		}
		fmt.Fprintf(h, "%s|%d|", filepath.Base(p), st.Size())
		const whole, part = 64 << 20, 16 << 20
		if st.Size() <= whole {
			_, err = io.Copy(h, f)
		} else {
			if _, err = io.CopyN(h, f, part); err == nil {
				if _, err = f.Seek(-part, io.SeekEnd); err == nil {
					_, err = io.Copy(h, f)
				}
			}
		}
		f.Close()
		if err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:24], nil
}

// dirHash fingerprints a model or adapter directory: its JSON configs and
// weight files.
func dirHash(dir string) (string, error) {
	var paths []string
	for _, pat := range []string{"*.json", "*.safetensors", "*.bin"} {
		m, _ := filepath.Glob(filepath.Join(dir, pat))
		for _, p := range m {
			if !strings.HasPrefix(filepath.Base(p), "trainer_state") {
				paths = append(paths, p)
			}
		}
	}
	if len(paths) == 0 {
		return "", fmt.Errorf("hash %s: no config or weight files", dir)
	}
	s, err := hashFiles(paths...)
	if err != nil {
		return "", fmt.Errorf("hash %s: %w", dir, err)
	}
	return s, nil
}

// featureBuilder computes and caches the predictor inputs: the final normed
// hidden states of the three-message prefix, truncated to maxLen.
type featureBuilder struct {
	m         *mllm.Model
	images    string
	cacheDir  string
	modelHash string
	adaptHash string
	maxLen    int
	genTokens int
	stops     []int64
}

// featureItem is one record's cached input.
type featureItem struct {
	rec  Record
	path string
}

func (b *featureBuilder) key(r Record, src string) string {
	h := sha256.New()
	fmt.Fprintf(h, "v1|%s|%s|%s|%s|%s|%s|%s|%s|%d", b.modelHash, b.adaptHash, r.Image, r.Aspect, r.Prompt, r.Round1, r.Round2, src, b.maxLen)
	switch src {
	case DescTeacher:
		fmt.Fprintf(h, "|%s", r.TeacherDescription)
	case DescStudent:
		fmt.Fprintf(h, "|%s", r.StudentDescription)
	case DescGenerated:
		fmt.Fprintf(h, "|%d", b.genTokens)
	}
	return hex.EncodeToString(h.Sum(nil))[:32]
}

// build makes sure every record has a cache file and returns the items;
// progress goes to prog. computed counts the items it had to compute.
func (b *featureBuilder) build(ctx context.Context, recs []Record, src string, prog *progress) (items []featureItem, computed int, err error) {
	if err := os.MkdirAll(b.cacheDir, 0o755); err != nil {
		return nil, 0, fmt.Errorf("feature cache: %w", err)
	}
	for i, r := range recs {
		if err := ctx.Err(); err != nil {
			return nil, computed, err
		}
		path := filepath.Join(b.cacheDir, b.key(r, src)+".safetensors")
		items = append(items, featureItem{rec: r, path: path})
		if _, err := os.Stat(path); err == nil {
			prog.update(i+1, 1, i+1 == len(recs), "cached")
			continue
		}
		if err := b.compute(ctx, r, src, path); err != nil {
			return nil, computed, fmt.Errorf("features of %s (%s, line %d): %w", r.Image, r.Aspect, r.Line, err)
		}
		computed++
		prog.update(i+1, 1, i+1 == len(recs), "computed")
	}
	return items, computed, nil
}

// describe generates the model's own greedy round-1 description.
func (b *featureBuilder) describe(ctx context.Context, r Record, feats []*mllm.ImageFeatures) (string, error) {
	seq, err := b.m.EncodeChat(m3.RoundOne(r.Prompts(), r.Prompt), true, feats)
	if err != nil {
		return "", err
	}
	out, cache, err := b.m.Prefill([]mllm.Sequence{seq}, mllm.ForwardOptions{Logits: mllm.LogitsLast})
	if err != nil {
		return "", err
	}
	defer cache.Free()
	gen, err := b.m.Generate(ctx, cache, out.Logits, mllm.GenerateOptions{MaxTokens: b.genTokens, StopTokens: b.stops})
	if err != nil {
		return "", err
	}
	if gen.Cache != cache {
		gen.Cache.Free()
	}
	toks := gen.Tokens[0]
	if gen.Stopped[0] && len(toks) > 0 {
		toks = toks[:len(toks)-1]
	}
	text, err := b.m.Tokenizer.Decode(toks, true)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(strings.ToValidUTF8(text, "\uFFFD")), nil
}

func (b *featureBuilder) compute(ctx context.Context, r Record, src, path string) error {
	px, err := loadPixels(imagePath(b.images, r.Image), b.m.Config.Vision.ImageSize)
	if err != nil {
		return err
	}
	feats, err := b.m.EncodeImages([]mllm.Pixels{px}, false)
	if err != nil {
		return err
	}
	var desc string
	switch src {
	case DescTeacher:
		desc = r.TeacherDescription
	case DescStudent:
		if desc = r.StudentDescription; desc == "" {
			return fmt.Errorf("no student_description in the record")
		}
	case DescGenerated:
		if desc, err = b.describe(ctx, r, feats); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown description source %q", src)
	}
	seq, err := b.m.EncodeChat(m3.ThreeMessages(r.Prompts(), r.Prompt, desc), true, feats)
	if err != nil {
		return err
	}
	out, cache, err := b.m.Prefill([]mllm.Sequence{seq}, mllm.ForwardOptions{Logits: mllm.LogitsNone, Hidden: true})
	if err != nil {
		return err
	}
	// Only the hidden states are used.
	cache.Free()
	h := out.Hidden.MustSelect(0, 0, false) // [T, H]
	if t := h.MustSize()[0]; t > int64(b.maxLen) {
		h = h.MustNarrow(0, 0, int64(b.maxLen), true)
	}
	h = torch.ToCPU(h.MustTotype(gotch.Float, true), true).MustContiguous(true)
	meta := map[string]string{"image": r.Image, "aspect": r.Aspect, "description": desc, "source": src, "tokens": fmt.Sprint(len(seq.Tokens))}
	tmp := path + ".tmp"
	if err := tensorio.Write(tmp, []tensorio.Named{{Name: "hidden", Tensor: h}}, meta); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// loadHidden reads a cached input as [1, S, H] f32 on dev.
func loadHidden(path string, dev gotch.Device) (*ts.Tensor, error) {
	ck, err := tensorio.Open(path)
	if err != nil {
		return nil, fmt.Errorf("feature cache: %w", err)
	}
	defer ck.Close()
	t, err := ck.TensorAs("hidden", gotch.Float)
	if err != nil {
		return nil, fmt.Errorf("feature cache %s: %w", path, err)
	}
	return torch.ToDevice(t.MustUnsqueeze(0, true), dev, true), nil
}
