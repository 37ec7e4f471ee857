package dataset

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/m3gate/m3gate/schemas/iqa"
	"github.com/m3gate/m3gate/schemas/labels"
)

// Format names a source dataset format.
type Format string

// Supported source formats.
const (
	FormatAGIQA3K       Format = "agiqa-3k"
	FormatAIGCIQA2023   Format = "aigciqa2023"
	FormatAGIQA1K       Format = "agiqa-1k"
	FormatAIGIQA20K     Format = "aigiqa-20k"
	FormatConversations Format = "conversations"
)

// Formats lists the supported source formats.
func Formats() []Format {
	return []Format{FormatAGIQA3K, FormatAIGCIQA2023, FormatAGIQA1K, FormatAIGIQA20K, FormatConversations}
}

// ParseFormat checks a format name.
func ParseFormat(s string) (Format, error) {
	for _, f := range Formats() {
		if string(f) == strings.ToLower(strings.TrimSpace(s)) {
			return f, nil
		}
	}
	return "", fmt.Errorf("unknown dataset format %q (want one of %v)", s, Formats())
}

// Scale returns the original MOS scale of the format.
func (f Format) Scale() Scale {
	if f == FormatAIGCIQA2023 {
		return Scale{Min: 0, Max: 100}
	}
	return Scale{Min: 0, Max: 5}
}

// Options control how source rows become manifest records.
type Options struct {
	// ImagesDir, when set, is the folder holding the images: each record's
	// image becomes ImagesDir/name and a missing file is a problem. When
	// empty, the image is the bare name and nothing is checked.
	ImagesDir string
	// BaseDir, when set, is the folder the manifest will live in: image
	// paths are written relative to it where possible.
	BaseDir string
	// Split, when set, overrides the split of every record.
	Split string
}

// Convert reads one or more input files of the given format and returns the
// records that passed every check, with a report of every problem. Duplicate
// images across the inputs are problems too. The error is non-nil only when
// an input cannot be read at all (missing file, wrong header).
func Convert(format Format, inputs []string, opts Options) ([]Record, *labels.Report, error) {
	if len(inputs) == 0 {
		return nil, nil, errors.New("convert: no input files")
	}
	rep := &labels.Report{}
	var all []Record
	seen := map[string]string{}
	for _, in := range inputs {
		recs, err := Read(format, in, opts, rep)
		if err != nil {
			return nil, nil, err
		}
		for _, r := range recs {
			if prev, ok := seen[r.Image]; ok {
				file, line := splitOrigin(r.Origin)
				rep.Add(file, line, labels.KindDuplicate, "image %q already listed at %s", r.Image, prev)
				continue
			}
			seen[r.Image] = r.Origin
			all = append(all, r)
		}
	}
	rep.Records = len(all)
	rep.Sort()
	return all, rep, nil
}

func splitOrigin(o string) (string, int) {
	i := strings.LastIndexByte(o, ':')
	if i < 0 {
		return o, 0
	}
	n, _ := strconv.Atoi(o[i+1:])
	return o[:i], n
}

// Read reads one input file of the given format. Row-level problems are
// added to rep (which must not be nil) and their rows left out; the error
// is non-nil only when the file cannot be read at all.
func Read(format Format, path string, opts Options, rep *labels.Report) ([]Record, error) {
	var recs []Record
	var err error
	switch format {
	case FormatAGIQA3K:
		recs, err = readAGIQA3K(path, rep)
	case FormatAIGCIQA2023:
		recs, err = readAIGCIQA2023(path, rep)
	case FormatAGIQA1K:
		recs, err = readAGIQA1K(path, rep)
	case FormatAIGIQA20K:
		recs, err = readAIGIQA20K(path, rep)
	case FormatConversations:
		recs, err = readConversationRecords(path, rep)
	default:
		return nil, fmt.Errorf("read %s: unknown format %q", path, format)
	}
	if err != nil {
		return nil, err
	}
	return finish(recs, format, opts, rep), nil
}

// finish sets the common fields, resolves image paths and checks that the
// images exist.
func finish(recs []Record, format Format, opts Options, rep *labels.Report) []Record {
	out := recs[:0]
	seen := map[string]string{}
	for _, r := range recs {
		file, line := splitOrigin(r.Origin)
		if prev, ok := seen[r.Name]; ok {
			rep.Add(file, line, labels.KindDuplicate, "image %q already listed at %s", r.Name, prev)
			continue
		}
		seen[r.Name] = r.Origin
		r.Dataset = string(format)
		if format != FormatConversations {
			s := format.Scale()
			r.Scale = &s
		}
		if opts.Split != "" {
			r.Split = opts.Split
		}
		r.Image = r.Name
		if opts.ImagesDir != "" {
			p := filepath.Join(opts.ImagesDir, filepath.FromSlash(r.Name))
			if _, err := os.Stat(p); err != nil {
				rep.Add(file, line, labels.KindMissingImage, "image %s: %v", r.Name, statReason(err))
				continue
			}
			r.Image = p
			if opts.BaseDir != "" {
				r.Image = relativeTo(opts.BaseDir, p)
			}
		}
		r.Origin = filepath.Base(file) + ":" + strconv.Itoa(line)
		out = append(out, r)
	}
	return out
}

func statReason(err error) string {
	if errors.Is(err, os.ErrNotExist) {
		return "no such file"
	}
	return err.Error()
}

// relativeTo returns p relative to base when p lies inside base (so the
// manifest and its images move together), else p made absolute.
func relativeTo(base, p string) string {
	ab, err1 := filepath.Abs(base)
	ap, err2 := filepath.Abs(p)
	if err1 != nil || err2 != nil {
		return p
	}
	rel, err := filepath.Rel(ab, ap)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return filepath.ToSlash(ap)
	}
	return filepath.ToSlash(rel)
}

// rowReader extracts typed fields of one row and records problems.
type rowReader struct {
	path string
	line int
	row  []string
	rep  *labels.Report
	ok   bool
}

func (r *rowReader) str(i int, name string, required bool) string {
	if i < 0 || i >= len(r.row) {
		if required {
			r.rep.Add(r.path, r.line, labels.KindParse, "row has %d fields, no %s", len(r.row), name)
			r.ok = false
		}
		return ""
	}
	s := strings.TrimSpace(r.row[i])
	if s == "" && required {
		r.rep.Add(r.path, r.line, labels.KindMissingField, "empty %s", name)
		r.ok = false
	}
	return s
}

// score parses a score column on the given scale; ok=false when absent
// and not required.
func (r *rowReader) score(i int, name string, scale Scale, required bool) (float64, bool) {
	s := r.str(i, name, required)
	if s == "" {
		return 0, false
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || !isFinite(v) {
		r.rep.Add(r.path, r.line, labels.KindParse, "%s %q is not a number", name, s)
		r.ok = false
		return 0, false
	}
	if !scale.Contains(v) {
		r.rep.Add(r.path, r.line, labels.KindRange, "%s %v outside [%v, %v]", name, v, scale.Min, scale.Max)
		r.ok = false
		return 0, false
	}
	return scale.ToManifest(v), true
}

// std parses a standard deviation column (non-negative) on the given scale.
func (r *rowReader) std(i int, name string, scale Scale) (float64, bool) {
	s := r.str(i, name, false)
	if s == "" {
		return 0, false
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || !isFinite(v) || v < 0 {
		r.rep.Add(r.path, r.line, labels.KindParse, "%s %q is not a non-negative number", name, s)
		r.ok = false
		return 0, false
	}
	return v / (scale.Max - scale.Min) * iqa.MaxMOS, true
}

func col(h map[string]int, name string) int {
	if i, ok := h[name]; ok {
		return i
	}
	return -1
}

func origin(path string, line int) string { return path + ":" + strconv.Itoa(line) }

// sourceOf returns the generator prefix of an image name: the name without
// extension and without its last n "_"-separated parts.
func sourceOf(name string, n int) string {
	base := strings.TrimSuffix(name, filepath.Ext(name))
	for ; n > 0; n-- {
		i := strings.LastIndexByte(base, '_')
		if i <= 0 {
			return ""
		}
		base = base[:i]
	}
	return base
}

func readAGIQA3K(path string, rep *labels.Report) ([]Record, error) {
	var recs []Record
	scale := FormatAGIQA3K.Scale()
	err := headedRows(path, rep, []string{"name", "prompt", "mos_quality", "mos_align"}, func(rr *rowReader, h map[string]int) {
		line := rr.line
		rec := Record{
			Name:   rr.str(col(h, "name"), "name", true),
			Prompt: rr.str(col(h, "prompt"), "prompt", true),
			Style:  rr.str(col(h, "style"), "style", false),
			Split:  rr.str(col(h, "split"), "split", false),
			MOS:    map[string]float64{},
			STD:    map[string]float64{},
			Origin: origin(path, line),
		}
		if v, ok := rr.score(col(h, "mos_quality"), "mos_quality", scale, true); ok {
			rec.MOS[iqa.Quality] = v
		}
		if v, ok := rr.score(col(h, "mos_align"), "mos_align", scale, true); ok {
			rec.MOS[iqa.Correspondence] = v
		}
		if v, ok := rr.std(col(h, "std_quality"), "std_quality", scale); ok {
			rec.STD[iqa.Quality] = v
		}
		if v, ok := rr.std(col(h, "std_align"), "std_align", scale); ok {
			rec.STD[iqa.Correspondence] = v
		}
		if !rr.ok {
			return
		}
		rec.Source = sourceOf(rec.Name, 2)
		recs = append(recs, emptyMapsNil(rec))
	})
	return recs, err
}

// headedRows reads a headed CSV file (labels.ReadHeadedCSV) and calls fn
// with a rowReader for every data row with the header's field count.
func headedRows(path string, rep *labels.Report, required []string, fn func(rr *rowReader, h map[string]int)) error {
	return labels.ReadHeadedCSV(path, rep, required, func(line int, row []string, h map[string]int) {
		fn(&rowReader{path: path, line: line, row: row, rep: rep, ok: true}, h)
	})
}

func emptyMapsNil(r Record) Record {
	if len(r.MOS) == 0 {
		r.MOS = nil
	}
	if len(r.STD) == 0 {
		r.STD = nil
	}
	return r
}

// AIGCIQA2023BlockSize is the number of consecutive images per generator in
// the AIGCIQA2023 label file (100 prompts × 4 images).
const AIGCIQA2023BlockSize = 400

func readAIGCIQA2023(path string, rep *labels.Report) ([]Record, error) {
	var recs []Record
	scale := FormatAIGCIQA2023.Scale()
	err := headedRows(path, rep, []string{"name", "prompt", "quality_mos", "authenticity_mos", "correspondence_mos"}, func(rr *rowReader, h map[string]int) {
		line := rr.line
		rec := Record{
			Name:   rr.str(col(h, "name"), "name", true),
			Prompt: rr.str(col(h, "prompt"), "prompt", true),
			Style:  rr.str(col(h, "style"), "style", false),
			MOS:    map[string]float64{},
			STD:    map[string]float64{},
			Origin: origin(path, line),
		}
		for _, a := range []string{iqa.Quality, iqa.Authenticity, iqa.Correspondence} {
			if v, ok := rr.score(col(h, a+"_mos"), a+"_mos", scale, true); ok {
				rec.MOS[a] = v
			}
			if v, ok := rr.std(col(h, a+"_std"), a+"_std", scale); ok {
				rec.STD[a] = v
			}
		}
		if !rr.ok {
			return
		}
		if n, err := strconv.Atoi(strings.TrimSuffix(rec.Name, filepath.Ext(rec.Name))); err == nil && n >= 0 {
			rec.Source = fmt.Sprintf("block-%d", n/AIGCIQA2023BlockSize)
		}
		recs = append(recs, emptyMapsNil(rec))
	})
	return recs, err
}

func readAGIQA1K(path string, rep *labels.Report) ([]Record, error) {
	var recs []Record
	scale := FormatAGIQA1K.Scale()
	err := headedRows(path, rep, []string{"image", "score"}, func(rr *rowReader, h map[string]int) {
		line := rr.line
		rec := Record{
			Name:   rr.str(col(h, "image"), "image", true),
			Prompt: rr.str(col(h, "prompt"), "prompt", false),
			MOS:    map[string]float64{},
			Origin: origin(path, line),
		}
		if v, ok := rr.score(col(h, "score"), "score", scale, true); ok {
			rec.MOS[iqa.Quality] = v
		}
		if !rr.ok {
			return
		}
		rec.Source = sourceOf(rec.Name, 4)
		if rec.Source == "" {
			rec.Source = sourceOf(rec.Name, 1)
		}
		recs = append(recs, emptyMapsNil(rec))
	})
	return recs, err
}

// splitFromName guesses the split from a file name: "train", "val" or
// "test" when the name contains it.
func splitFromName(path string) string {
	b := strings.ToLower(filepath.Base(path))
	for _, s := range []string{"train", "val", "test"} {
		if strings.Contains(b, s) {
			return s
		}
	}
	return ""
}

func readAIGIQA20K(path string, rep *labels.Report) ([]Record, error) {
	var recs []Record
	scale := FormatAIGIQA20K.Scale()
	split := splitFromName(path)
	first := true
	err := labels.ReadCSV(path, rep, func(line int, row []string) {
		if first {
			first = false
			// The files have no header; tolerate one anyway.
			if len(row) >= 2 && strings.EqualFold(strings.TrimSpace(row[0]), "name") && strings.EqualFold(strings.TrimSpace(row[1]), "prompt") {
				return
			}
		}
		rep.Rows++
		rr := &rowReader{path: path, line: line, row: row, rep: rep, ok: true}
		if len(row) != 2 && len(row) != 3 {
			rep.Add(path, line, labels.KindParse, "row has %d fields, want name, prompt[, mos]", len(row))
			return
		}
		rec := Record{
			Name:   rr.str(0, "name", true),
			Prompt: rr.str(1, "prompt", true),
			Split:  split,
			Origin: origin(path, line),
		}
		if len(row) == 3 {
			if v, ok := rr.score(2, "mos", scale, true); ok {
				rec.MOS = map[string]float64{iqa.Quality: v}
			}
		}
		if !rr.ok {
			return
		}
		rec.Source = sourceOf(rec.Name, 1)
		recs = append(recs, rec)
	})
	return recs, err
}
