package dataset

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/m3gate/m3gate/schemas/iqa"
)

// Scale is the original MOS scale of a source dataset.
type Scale struct {
	Min float64 `json:"min"`
	Max float64 `json:"max"`
}

// ToManifest maps a raw score on s to the manifest's 0–5 scale.
func (s Scale) ToManifest(raw float64) float64 {
	if s.Min == 0 && s.Max == iqa.MaxMOS {
		return raw
	}
	return (raw - s.Min) / (s.Max - s.Min) * iqa.MaxMOS
}

// FromManifest maps a 0–5 manifest score back to s.
func (s Scale) FromManifest(mos float64) float64 {
	if s.Min == 0 && s.Max == iqa.MaxMOS {
		return mos
	}
	return s.Min + mos*(s.Max-s.Min)/iqa.MaxMOS
}

// Contains reports whether raw lies within s (NaN never does).
func (s Scale) Contains(raw float64) bool {
	return raw >= s.Min && raw <= s.Max
}

// Record is one image of a manifest; see the package documentation for the
// meaning of each field.
type Record struct {
	Image       string             `json:"image"`
	Name        string             `json:"name,omitempty"`
	Prompt      string             `json:"prompt"`
	MOS         map[string]float64 `json:"mos,omitempty"`
	STD         map[string]float64 `json:"std,omitempty"`
	RatingWords map[string]string  `json:"rating_words,omitempty"`
	Split       string             `json:"split,omitempty"`
	Source      string             `json:"source,omitempty"`
	Dataset     string             `json:"dataset,omitempty"`
	Scale       *Scale             `json:"scale,omitempty"`
	Style       string             `json:"style,omitempty"`
	Origin      string             `json:"origin,omitempty"`
}

// AspectNames returns the aspects that r has a MOS for, in canonical order.
func (r Record) AspectNames() []string {
	var out []string
	for _, a := range iqa.Aspects {
		if _, ok := r.MOS[a]; ok {
			out = append(out, a)
		}
	}
	return out
}

// Problem is one defect found in an input file.
type Problem struct {
	File string `json:"file"`
	Line int    `json:"line"`
	Kind string `json:"kind"`
	Msg  string `json:"message"`
}

// Problem kinds.
const (
	KindParse        = "parse"         // a row that could not be parsed
	KindRange        = "range"         // a MOS outside the source's scale
	KindMissingField = "missing-field" // a required field is empty
	KindMissingImage = "missing-image" // the image file does not exist
	KindDuplicate    = "duplicate"     // the same image appears twice
)

// String formats p as "file:line: kind: message".
func (p Problem) String() string {
	return fmt.Sprintf("%s:%d: %s: %s", p.File, p.Line, p.Kind, p.Msg)
}

// Report collects every problem found while reading or converting.
type Report struct {
	Problems []Problem `json:"problems"`
	// Rows counts the data rows read (excluding headers and blank lines).
	Rows int `json:"rows"`
	// Records counts the records that passed every check.
	Records int `json:"records"`
}

func (r *Report) add(file string, line int, kind, format string, args ...any) {
	r.Problems = append(r.Problems, Problem{File: file, Line: line, Kind: kind, Msg: fmt.Sprintf(format, args...)})
}

// Sort orders the problems by file and line, keeping the order of
// problems on the same line.
func (r *Report) Sort() {
	sort.SliceStable(r.Problems, func(i, j int) bool {
		a, b := r.Problems[i], r.Problems[j]
		if a.File != b.File {
			return a.File < b.File
		}
		return a.Line < b.Line
	})
}

// Counts returns the number of problems per kind.
func (r *Report) Counts() map[string]int {
	m := map[string]int{}
	for _, p := range r.Problems {
		m[p.Kind]++
	}
	return m
}

// OnlyKinds reports whether every problem is of one of the given kinds.
func (r *Report) OnlyKinds(kinds ...string) bool {
	for _, p := range r.Problems {
		ok := false
		for _, k := range kinds {
			ok = ok || p.Kind == k
		}
		if !ok {
			return false
		}
	}
	return true
}

// WriteText writes one line per problem and a summary line.
func (r *Report) WriteText(w io.Writer) error {
	for _, p := range r.Problems {
		if _, err := fmt.Fprintln(w, p.String()); err != nil {
			return err
		}
	}
	counts := r.Counts()
	kinds := make([]string, 0, len(counts))
	for k := range counts {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	var parts []string
	for _, k := range kinds {
		parts = append(parts, fmt.Sprintf("%s %d", k, counts[k]))
	}
	summary := "none"
	if len(parts) > 0 {
		summary = strings.Join(parts, ", ")
	}
	_, err := fmt.Fprintf(w, "%d rows, %d records, %d problems (%s)\n", r.Rows, r.Records, len(r.Problems), summary)
	return err
}

// Manifest is a loaded manifest file.
type Manifest struct {
	// Path is the manifest file; relative image paths resolve against its
	// directory.
	Path    string
	Records []Record
}

// ImagePath returns the file path of rec's image, resolved against the
// manifest's directory when relative.
func (m *Manifest) ImagePath(rec Record) string {
	if filepath.IsAbs(rec.Image) || m.Path == "" {
		return rec.Image
	}
	return filepath.Join(filepath.Dir(m.Path), rec.Image)
}

// ReadManifest reads and validates a manifest. Records with problems
// (unparsable line, missing image field, unknown aspect, MOS outside 0–5,
// duplicate image) are left out and listed in the report. The error is
// non-nil only when the file cannot be read at all.
func ReadManifest(path string) (*Manifest, *Report, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read manifest: %w", err)
	}
	defer f.Close()
	m := &Manifest{Path: path}
	rep := &Report{}
	seen := map[string]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	line := 0
	for sc.Scan() {
		line++
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		rep.Rows++
		var rec Record
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rec); err != nil {
			rep.add(path, line, KindParse, "%v", err)
			continue
		}
		if !validateRecord(rep, path, line, rec) {
			continue
		}
		if prev, ok := seen[rec.Image]; ok {
			rep.add(path, line, KindDuplicate, "image %q already listed on line %d", rec.Image, prev)
			continue
		}
		seen[rec.Image] = line
		m.Records = append(m.Records, rec)
	}
	if err := sc.Err(); err != nil {
		return nil, nil, fmt.Errorf("read manifest %s: %w", path, err)
	}
	rep.Records = len(m.Records)
	return m, rep, nil
}

func validateRecord(rep *Report, file string, line int, rec Record) bool {
	ok := true
	if rec.Image == "" {
		rep.add(file, line, KindMissingField, "no image")
		ok = false
	}
	for a, v := range rec.MOS {
		if !iqa.IsAspect(a) {
			rep.add(file, line, KindParse, "unknown aspect %q", a)
			ok = false
		} else if !(v >= 0 && v <= iqa.MaxMOS) {
			rep.add(file, line, KindRange, "%s MOS %v outside [0, %v]", a, v, iqa.MaxMOS)
			ok = false
		}
	}
	for a, w := range rec.RatingWords {
		if !iqa.IsAspect(a) {
			rep.add(file, line, KindParse, "unknown aspect %q", a)
			ok = false
		} else if iqa.RatingIndex(w) < 0 {
			rep.add(file, line, KindParse, "%s rating word %q not one of %v", a, w, iqa.RatingWords)
			ok = false
		}
	}
	return ok
}

// WriteManifest writes records as JSONL to w.
func WriteManifest(w io.Writer, recs []Record) error {
	bw := bufio.NewWriter(w)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	for i := range recs {
		if err := enc.Encode(&recs[i]); err != nil {
			return fmt.Errorf("write manifest record %d: %w", i, err)
		}
	}
	return bw.Flush()
}

// WriteManifestFile writes records to path atomically (temporary file then
// rename).
func WriteManifestFile(path string, recs []Record) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".manifest-*.jsonl")
	if err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := WriteManifest(tmp, recs); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	return nil
}

func isFinite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
