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

	"github.com/m3gate/m3gate/schemas/iqa"
	"github.com/m3gate/m3gate/schemas/labels"
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
func ReadManifest(path string) (*Manifest, *labels.Report, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read manifest: %w", err)
	}
	defer f.Close()
	m := &Manifest{Path: path}
	rep := &labels.Report{}
	seen := map[string]int{}
	err = rep.Lines(f, func(line int, b []byte) {
		var rec Record
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&rec); err != nil {
			rep.Add(path, line, labels.KindParse, "%v", err)
			return
		}
		if !validateRecord(rep, path, line, rec) {
			return
		}
		if prev, ok := seen[rec.Image]; ok {
			rep.Add(path, line, labels.KindDuplicate, "image %q already listed on line %d", rec.Image, prev)
			return
		}
		seen[rec.Image] = line
		m.Records = append(m.Records, rec)
	})
	if err != nil {
		return nil, nil, fmt.Errorf("read manifest %s: %w", path, err)
	}
	rep.Records = len(m.Records)
	return m, rep, nil
}

func validateRecord(rep *labels.Report, file string, line int, rec Record) bool {
	ok := true
	if rec.Image == "" {
		rep.Add(file, line, labels.KindMissingField, "no image")
		ok = false
	}
	for a, v := range rec.MOS {
		if !iqa.IsAspect(a) {
			rep.Add(file, line, labels.KindParse, "unknown aspect %q", a)
			ok = false
		} else if !(v >= 0 && v <= iqa.MaxMOS) {
			rep.Add(file, line, labels.KindRange, "%s MOS %v outside [0, %v]", a, v, iqa.MaxMOS)
			ok = false
		}
	}
	for a, w := range rec.RatingWords {
		if !iqa.IsAspect(a) {
			rep.Add(file, line, labels.KindParse, "unknown aspect %q", a)
			ok = false
		} else if iqa.RatingIndex(w) < 0 {
			rep.Add(file, line, labels.KindParse, "%s rating word %q not one of %v", a, w, iqa.RatingWords)
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
