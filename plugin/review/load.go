package review

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/m3gate/m3gate/plugin/pipeline"
)

// MaxItems bounds the images one report holds.
const MaxItems = 100000

// maxLine bounds one line of a results file (descriptions of three aspects
// fit many times over).
const maxLine = 16 << 20

// Loaded is what Load read: the items and, when the files said, the gate
// they were judged by.
type Loaded struct {
	Items []Item
	// Gate is the gate m3gate run used (from the first accepted PNG's
	// metadata), nil when unknown.
	Gate *Gate
	// Missing counts images whose file was not found (no thumbnail).
	Missing int
}

// LoadOptions tunes Load.
type LoadOptions struct {
	// ThumbSide is the longest thumbnail side in pixels; 0 is 192.
	ThumbSide int
	// NoThumbs leaves thumbnails out.
	NoThumbs bool
}

// Load reads the results of `m3gate run` (an output folder or its
// results.jsonl) or the JSON lines of `m3gate score --json`, and makes an
// Item of every line, with a thumbnail (a data: URL) from the image file
// the line names, looked up as written and then relative to the results
// file's folder (and its rejected/ folder). A line that is not JSON is an
// error naming the line, except a last line cut short (a crash mid-write),
// which is skipped.
func Load(path string, opt LoadOptions) (*Loaded, error) {
	if opt.ThumbSide <= 0 {
		opt.ThumbSide = 192
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("load results: %w", err)
	}
	if st.IsDir() {
		path = filepath.Join(path, pipeline.ResultsFile)
	}
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && st.IsDir() {
			return nil, fmt.Errorf("load results: %s has no %s (is it an output folder of m3gate run?)", filepath.Dir(path), pipeline.ResultsFile)
		}
		return nil, fmt.Errorf("load results: %w", err)
	}
	defer f.Close()
	dir := filepath.Dir(path)
	out := &Loaded{}
	r := bufio.NewReaderSize(f, 64<<10)
	for n := 1; ; n++ {
		line, terminated, err := readLine(r)
		if err != nil {
			return nil, fmt.Errorf("load results: %s line %d: %w", path, n, err)
		}
		if line == nil {
			break
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		it, file, perr := parseLine(line)
		if perr != nil {
			var syn *json.SyntaxError
			if !terminated && errors.As(perr, &syn) {
				break // the last line, cut short by a crash mid-write
			}
			return nil, fmt.Errorf("load results: %s line %d: %w", path, n, perr)
		}
		if len(out.Items) == MaxItems {
			return nil, fmt.Errorf("load results: %s: more than %d images; split the file", path, MaxItems)
		}
		it.ID = strconv.Itoa(n)
		if file != "" {
			data, found := readImage(file, dir)
			switch {
			case !found:
				out.Missing++
			case !opt.NoThumbs:
				if th, err := Thumbnail(data, opt.ThumbSide); err == nil {
					it.Thumb = DataURL(th)
				}
			}
			if found && it.Recorded != "" && (out.Gate == nil || it.Prompt == "") {
				// An image written by m3gate run carries the prompt and gate.
				if md, err := pipeline.ReadMetadata(data); err == nil {
					if it.Prompt == "" {
						it.Prompt = md.Prompt
					}
					if out.Gate == nil && len(md.Gate.Thresholds) > 0 {
						out.Gate = &Gate{Thresholds: md.Gate.Thresholds, Mode: string(md.Gate.Mode)}
						if out.Gate.Mode == "" {
							out.Gate.Mode = string(pipeline.ModeAll)
						}
					}
				}
			}
		}
		out.Items = append(out.Items, it)
	}
	return out, nil
}

// readLine reads one line of at most maxLine bytes, without its newline,
// and says whether it ended with one; nil at the end of the file.
func readLine(r *bufio.Reader) (line []byte, terminated bool, err error) {
	for {
		chunk, err := r.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > maxLine {
			return nil, false, fmt.Errorf("line longer than %d bytes", maxLine)
		}
		switch {
		case err == nil:
			return line[:len(line)-1], true, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF):
			if len(line) == 0 {
				return nil, false, nil
			}
			return line, false, nil
		default:
			return nil, false, err
		}
	}
}

// scoreLine is a line of `m3gate score --json`.
type scoreLine struct {
	Image   string            `json:"image"`
	Path    string            `json:"path"`
	Prompt  string            `json:"prompt"`
	Error   string            `json:"error"`
	Aspects map[string]Aspect `json:"aspects"`
}

// parseLine decodes a line of either format and returns the item and the
// image file it names.
func parseLine(line []byte) (Item, string, error) {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(line, &keys); err != nil {
		return Item{}, "", fmt.Errorf("not a JSON object: %w", err)
	}
	_, isRun := keys["prompt_id"]
	_, hasScores := keys["scores"]
	if isRun || hasScores {
		var r pipeline.Result
		if err := json.Unmarshal(line, &r); err != nil {
			return Item{}, "", fmt.Errorf("not an m3gate run result: %w", err)
		}
		it := Item{Time: r.Time, Prompt: r.Prompt, Seed: strconv.FormatUint(r.Seed, 10), Attempt: r.Attempt, Error: r.Error,
			Name: r.Source.Filename, Recorded: "rejected"}
		if r.Passed {
			it.Recorded = "passed"
		}
		if r.File != "" {
			it.Name = filepath.Base(r.File)
		}
		if len(r.Scores) > 0 {
			it.Aspects = make(map[string]Aspect, len(r.Scores))
			for a, s := range r.Scores {
				it.Aspects[a] = Aspect{MOS: s.MOS, Rating: s.Rating, WordProbs: s.WordProbs, Description: s.Description, Source: s.Source}
			}
		}
		return it, r.File, nil
	}
	if _, ok := keys["image"]; ok {
		var s scoreLine
		if err := json.Unmarshal(line, &s); err != nil {
			return Item{}, "", fmt.Errorf("not an m3gate score --json line: %w", err)
		}
		file := s.Path
		if file == "" && s.Image != "-" {
			file = s.Image
		}
		return Item{Name: s.Image, Prompt: s.Prompt, Error: s.Error, Aspects: s.Aspects}, file, nil
	}
	return Item{}, "", errors.New("neither an m3gate run result (prompt_id, scores) nor an m3gate score --json line (image, aspects)")
}

// readImage reads an image file named by a results line: as written, then
// by its name in dir and dir/rejected.
func readImage(file, dir string) ([]byte, bool) {
	cands := []string{file}
	if !filepath.IsAbs(file) {
		cands = append(cands, filepath.Join(dir, file))
	}
	cands = append(cands, filepath.Join(dir, filepath.Base(file)), filepath.Join(dir, "rejected", filepath.Base(file)))
	for _, c := range cands {
		st, err := os.Stat(c)
		if err != nil || !st.Mode().IsRegular() || st.Size() > 512<<20 {
			continue
		}
		if b, err := os.ReadFile(c); err == nil {
			return b, true
		}
	}
	return nil, false
}
