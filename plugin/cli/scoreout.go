package cli

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/m3gate/m3gate/schemas"
	"github.com/m3gate/m3gate/schemas/iqa"
)

// rowWriter writes the rows of a score run one at a time, each complete
// when the call returns (a table's header comes with the first row).
type rowWriter interface {
	WriteRow(r scoreRow) error
}

// tableWriter writes rows as an aligned table. Column widths are fixed up
// front (from the image names, the aspects, the rating words and the
// score sources) so that a row can be printed as soon as it is known.
type tableWriter struct {
	w       io.Writer
	aspects []string
	widths  [5]int // image, aspect, MOS, rating, source
	header  bool
}

// tableGap is the space between two table columns.
const tableGap = 2

// newTableWriter sizes the columns for images named names.
func newTableWriter(w io.Writer, names, aspects []string) *tableWriter {
	t := &tableWriter{w: w, aspects: aspects}
	t.widths = [5]int{len("IMAGE"), len("ASPECT"), len("MOS"), len("RATING"), len("SOURCE")}
	grow := func(col int, s string) { t.widths[col] = max(t.widths[col], len(s)) }
	for _, n := range names {
		grow(0, n)
	}
	for _, a := range aspects {
		grow(1, a)
	}
	grow(2, "0.00")
	for _, word := range iqa.RatingWords {
		grow(3, word)
	}
	grow(4, schemas.SourcePredictor)
	grow(4, schemas.SourceWordProbs)
	return t
}

// line writes one table line: five padded cells and the last one.
func (t *tableWriter) line(cells [5]string, last string) error {
	var b strings.Builder
	for i, c := range cells {
		b.WriteString(c)
		b.WriteString(strings.Repeat(" ", max(0, t.widths[i]-len(c))+tableGap))
	}
	b.WriteString(last)
	b.WriteByte('\n')
	_, err := io.WriteString(t.w, b.String())
	return err
}

// WriteRow implements rowWriter: one line per aspect, or one FAILED line.
func (t *tableWriter) WriteRow(r scoreRow) error {
	if !t.header {
		t.header = true
		if err := t.line([5]string{"IMAGE", "ASPECT", "MOS", "RATING", "SOURCE"}, "DESCRIPTION"); err != nil {
			return err
		}
	}
	if r.Err != "" {
		return t.line([5]string{r.Image, "-", "-", "-", "-"}, "FAILED: "+oneLine(r.Err))
	}
	for _, a := range t.aspects {
		ar := r.Aspects[a]
		if err := t.line([5]string{r.Image, a, fmt.Sprintf("%.2f", ar.MOS), ar.Rating, sourceName(ar.Source)}, shortDescription(ar.Description)); err != nil {
			return err
		}
	}
	return nil
}

// writeScoreTable prints one row per image and aspect; a failed image gets
// one FAILED row (its error is also reported on stderr).
func writeScoreTable(w io.Writer, rows []scoreRow, aspects []string) error {
	names := make([]string, len(rows))
	for i, r := range rows {
		names[i] = r.Image
	}
	t := newTableWriter(w, names, aspects)
	for _, r := range rows {
		if err := t.WriteRow(r); err != nil {
			return err
		}
	}
	return nil
}

// jsonWriter writes one JSON object per image per line.
type jsonWriter struct {
	enc     *json.Encoder
	aspects []string
}

func newJSONWriter(w io.Writer, aspects []string) *jsonWriter {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return &jsonWriter{enc: enc, aspects: aspects}
}

// WriteRow implements rowWriter.
func (j *jsonWriter) WriteRow(r scoreRow) error {
	jr := jsonRow{Image: r.Image, Path: r.Path, Prompt: r.Prompt, Error: r.Err}
	if r.Err == "" {
		jr.Aspects = make(map[string]jsonAspect, len(j.aspects))
		for _, a := range j.aspects {
			ar := r.Aspects[a]
			ja := jsonAspect{MOS: ar.MOS, Rating: ar.Rating, Source: ar.Source, WordProbs: ar.WordProbs, Description: ar.Description}
			if len(ar.Timings) > 0 {
				ja.TimingsMs = make(map[string]float64, len(ar.Timings))
				for k, d := range ar.Timings {
					ja.TimingsMs[k] = float64(d.Microseconds()) / 1000
				}
			}
			jr.Aspects[a] = ja
		}
	}
	return j.enc.Encode(jr) // one Write per line
}

// writeScoreJSON prints one JSON object per image per line, failed images
// included (with "error").
func writeScoreJSON(w io.Writer, rows []scoreRow, aspects []string) error {
	j := newJSONWriter(w, aspects)
	for _, r := range rows {
		if err := j.WriteRow(r); err != nil {
			return err
		}
	}
	return nil
}

// scoreOutput is where a score run writes its rows: stdout, or the
// --output file, which --resume appends to after skipping the images it
// already holds.
type scoreOutput struct {
	rows rowWriter
	file *os.File // nil for stdout
	path string
	// todo lists the indices of the job's images still to score.
	todo []int
}

// write writes one row.
func (o *scoreOutput) write(r scoreRow) error { return o.rows.WriteRow(r) }

// Close closes the --output file.
func (o *scoreOutput) Close() error {
	if o.file == nil {
		return nil
	}
	return o.file.Close()
}

// where names the output for messages (" in FILE"; "" for stdout).
func (o *scoreOutput) where() string {
	if o.file == nil {
		return ""
	}
	return " (in " + o.path + ")"
}

// resumeHint tells how to continue a cut run.
func (o *scoreOutput) resumeHint() string {
	if o.file == nil {
		return " (write to a file with --json --output F.jsonl to continue a cut run with --resume)"
	}
	return "; rerun with --resume to score only those"
}

// openScoreOutput opens stdout or the --output file. With --resume the
// file's JSON lines name the images already scored (lines with an error
// do not count: those images are scored again) and new rows are appended.
func openScoreOutput(app *App, f *scoreFlags, job *scoreJob, status *statusLine) (*scoreOutput, error) {
	o := &scoreOutput{path: f.output}
	done := map[string]bool{}
	if f.output != "" {
		flags := os.O_WRONLY | os.O_CREATE | os.O_TRUNC
		if f.resume {
			var err error
			if done, err = readScoredImages(f.output); err != nil {
				return nil, fmt.Errorf("score: --resume: %w", err)
			}
			flags = os.O_WRONLY | os.O_CREATE | os.O_APPEND
		}
		fh, err := os.OpenFile(f.output, flags, 0o666)
		if err != nil {
			return nil, fmt.Errorf("score: --output: %w", err)
		}
		o.file = fh
	}
	var names []string
	for i, im := range job.Images {
		if im.Path != "" && done[im.Path] || im.Path == "" && im.Name != "-" && done[im.Name] {
			continue
		}
		o.todo = append(o.todo, i)
		names = append(names, im.Name)
	}
	if f.resume && len(o.todo) < len(job.Images) {
		fmt.Fprintf(app.Stderr, "resuming: %d of %d images already scored in %s, %d left\n", len(job.Images)-len(o.todo), len(job.Images), f.output, len(o.todo))
	}
	w := status.Above(app.Stdout)
	if o.file != nil {
		w = o.file
	}
	if f.json {
		o.rows = newJSONWriter(w, job.Request.Options.Aspects)
	} else {
		o.rows = newTableWriter(w, names, job.Request.Options.Aspects)
	}
	return o, nil
}

// readScoredImages reads the JSON lines of an earlier `score --json
// --output` run and returns the paths (or names) of the images scored
// without error. A cut last line (the run was killed mid-write) is removed
// from the file so appended lines start on a line of their own; a missing
// file means nothing was scored yet.
func readScoredImages(path string) (map[string]bool, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return map[string]bool{}, nil
	}
	if err != nil {
		return nil, err
	}
	if i := bytes.LastIndexByte(b, '\n'); i+1 < len(b) {
		if err := os.Truncate(path, int64(i+1)); err != nil {
			return nil, err
		}
		b = b[:i+1]
	}
	done := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for line := 1; sc.Scan(); line++ {
		text := bytes.TrimSpace(sc.Bytes())
		if len(text) == 0 {
			continue
		}
		var r jsonRow
		if err := json.Unmarshal(text, &r); err != nil || r.Image == "" {
			return nil, fmt.Errorf("%s:%d: not a line of `m3gate score --json` (resume reads the JSON lines of an earlier --json --output run)", path, line)
		}
		if r.Error != "" {
			continue
		}
		if r.Path != "" {
			done[r.Path] = true
		} else {
			done[r.Image] = true
		}
	}
	return done, sc.Err()
}
