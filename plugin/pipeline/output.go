package pipeline

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	_ "image/jpeg" // decode JPEG outputs before re-encoding them as PNG
	"image/png"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/m3gate/m3gate/plugin/comfyui"
	_ "golang.org/x/image/webp" // decode WebP outputs
)

// MetadataKey is the PNG iTXt keyword under which accepted images carry
// their Metadata as JSON.
const MetadataKey = "m3gate"

// ResultsFile is the name of the per-image log in the output folder.
const ResultsFile = "results.jsonl"

// Metadata is what m3gate writes into an image's PNG (iTXt "m3gate", UTF-8).
type Metadata struct {
	Scores   map[string]AspectScore `json:"scores"`
	Passed   bool                   `json:"passed"`
	Seed     uint64                 `json:"seed"`
	Seeds    map[string]uint64      `json:"seeds"`
	Attempt  int                    `json:"attempt"`
	Job      int                    `json:"job"`
	PromptID string                 `json:"prompt_id"`
	Server   string                 `json:"server"`
	Node     string                 `json:"node"`
	Prompt   string                 `json:"prompt,omitempty"`
	Gate     Gate                   `json:"gate"`
}

// ReadMetadata reads the m3gate metadata of a PNG written by Run (the
// last "m3gate" chunk: Run appends its own after ComfyUI's).
func ReadMetadata(pngData []byte) (*Metadata, error) {
	chunks, err := comfyui.PNGText(pngData)
	if err != nil {
		return nil, fmt.Errorf("read metadata: %w", err)
	}
	for i := len(chunks) - 1; i >= 0; i-- {
		c := chunks[i]
		if c.Key != MetadataKey {
			continue
		}
		var md Metadata
		if err := json.Unmarshal([]byte(c.Text), &md); err != nil {
			return nil, fmt.Errorf("read metadata: %w", err)
		}
		return &md, nil
	}
	return nil, fmt.Errorf("read metadata: no %q text chunk", MetadataKey)
}

// Result is one line of results.jsonl: one image (or one failed prompt).
type Result struct {
	Time     time.Time              `json:"time"`
	Job      int                    `json:"job"`
	Attempt  int                    `json:"attempt"`
	Server   string                 `json:"server"`
	PromptID string                 `json:"prompt_id"`
	Node     string                 `json:"node,omitempty"`
	Prompt   string                 `json:"prompt,omitempty"`
	Index    int                    `json:"index"`
	Source   comfyui.ImageRef       `json:"source"`
	Seed     uint64                 `json:"seed"`
	Seeds    map[string]uint64      `json:"seeds"`
	Scores   map[string]AspectScore `json:"scores,omitempty"`
	Passed   bool                   `json:"passed"`
	Accepted bool                   `json:"accepted"`
	File     string                 `json:"file,omitempty"`
	Error    string                 `json:"error,omitempty"`
	Note     string                 `json:"note,omitempty"`
}

// readResults reads a results.jsonl; a missing file has no results, and
// lines that do not decode (a write cut short by a crash) are skipped.
func readResults(path string) ([]Result, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("run: read %s: %w", path, err)
	}
	var out []Result
	for _, line := range bytes.Split(data, []byte("\n")) {
		var r Result
		if len(bytes.TrimSpace(line)) == 0 || json.Unmarshal(line, &r) != nil {
			continue
		}
		out = append(out, r)
	}
	return out, nil
}

// writer owns the output folder.
type writer struct {
	dir     string
	rejDir  string
	mu      sync.Mutex
	results *os.File
}

func newWriter(dir string, keepRejected bool) (*writer, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("run: output folder: %w", err)
	}
	w := &writer{dir: dir}
	if keepRejected {
		w.rejDir = filepath.Join(dir, "rejected")
		if err := os.MkdirAll(w.rejDir, 0o755); err != nil {
			return nil, fmt.Errorf("run: output folder: %w", err)
		}
	}
	path := filepath.Join(dir, ResultsFile)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o666) // less the umask
	if err != nil {
		return nil, fmt.Errorf("run: results file: %w", err)
	}
	// A line cut short by a crash must not swallow the next one.
	if st, err := f.Stat(); err == nil && st.Size() > 0 {
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, st.Size()-1); err == nil && last[0] != '\n' {
			if _, err := f.Write([]byte("\n")); err != nil {
				f.Close()
				return nil, fmt.Errorf("run: results file: %w", err)
			}
		}
	}
	w.results = f
	return w, nil
}

func (w *writer) close() error { return w.results.Close() }

// result appends one line to results.jsonl and syncs it.
func (w *writer) result(r Result) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("run: encode result: %w", err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, err := w.results.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("run: write %s: %w", ResultsFile, err)
	}
	if err := w.results.Sync(); err != nil {
		return fmt.Errorf("run: sync %s: %w", ResultsFile, err)
	}
	return nil
}

// image writes an image as PNG with its metadata chunk, atomically (temp
// file, fsync, rename), and returns its path.
func (w *writer) image(rejected bool, a *attempt, img *Image, md Metadata) (string, error) {
	data := img.Data
	if !bytes.HasPrefix(data, []byte("\x89PNG\r\n\x1a\n")) {
		dec, _, err := image.Decode(bytes.NewReader(data))
		if err != nil {
			return "", fmt.Errorf("run: decode %s: %w", img.Ref.Filename, err)
		}
		var buf bytes.Buffer
		if err := png.Encode(&buf, dec); err != nil {
			return "", fmt.Errorf("run: encode %s: %w", img.Ref.Filename, err)
		}
		data = buf.Bytes()
	}
	mj, err := json.Marshal(md)
	if err != nil {
		return "", fmt.Errorf("run: encode metadata: %w", err)
	}
	data, err = comfyui.AddPNGText(data, comfyui.TextChunk{Key: MetadataKey, Text: string(mj), International: true})
	if err != nil {
		return "", fmt.Errorf("run: %s: %w", img.Ref.Filename, err)
	}
	dir := w.dir
	if rejected {
		dir = w.rejDir
	}
	name := fmt.Sprintf("m3gate_j%04d_t%02d_s%d_n%s_%d.png", a.job, a.try, a.seeds[0], img.Node, img.Index)
	path := filepath.Join(dir, name)
	tmp, err := createTemp(dir)
	if err != nil {
		return "", fmt.Errorf("run: write image: %w", err)
	}
	_, werr := tmp.Write(data)
	serr := tmp.Sync()
	cerr := tmp.Close()
	if err := firstErr(werr, serr, cerr); err != nil {
		os.Remove(tmp.Name())
		return "", fmt.Errorf("run: write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return "", fmt.Errorf("run: write %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return path, nil
}

// createTemp creates a new hidden temporary file in dir with mode 0666
// less the umask, like any file a tool writes (os.CreateTemp's 0600 would
// make the accepted images private while results.jsonl is not).
func createTemp(dir string) (*os.File, error) {
	for range 100 {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, err
		}
		f, err := os.OpenFile(filepath.Join(dir, ".m3gate-"+hex.EncodeToString(b[:])+".tmp"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o666)
		if !errors.Is(err, fs.ErrExist) {
			return f, err
		}
	}
	return nil, fmt.Errorf("create a temporary file in %s: too many name collisions", dir)
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
