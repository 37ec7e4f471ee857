package train

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/m3gate/m3gate/schemas/iqa"
	"github.com/m3gate/m3gate/sidecar/m3"
)

// Record is one line of a conversations JSONL file: one image × aspect with
// its two-round conversation. MOS is optional (a "mos" field, or joined from
// a labels file with JoinMOS); HasMOS says whether it is set.
type Record struct {
	Image              string   `json:"image"`
	Prompt             string   `json:"prompt"`
	Aspect             string   `json:"aspect"`
	Split              string   `json:"split,omitempty"`
	Round1             string   `json:"round1"`
	TeacherDescription string   `json:"teacher_description"`
	Round2             string   `json:"round2"`
	RatingWord         string   `json:"rating_word"`
	StudentDescription string   `json:"student_description,omitempty"`
	MOSField           *float64 `json:"mos,omitempty"`

	// MOS is the mean opinion score on 0–5 when HasMOS.
	MOS    float64 `json:"-"`
	HasMOS bool    `json:"-"`
	// Line is the 1-based line of the record in its file.
	Line int `json:"-"`
}

// Prompts returns the record's two questions as m3.Prompts.
func (r Record) Prompts() m3.Prompts {
	return m3.Prompts{Round1: r.Round1, Round2: r.Round2}
}

// Key identifies the record: image and aspect.
func (r Record) Key() string { return r.Image + "\x00" + r.Aspect }

// ReadConversations reads a conversations JSONL file (the format of
// shared/data/agiqa-3k/conversations.jsonl). Any invalid line (bad JSON,
// empty required field, unknown rating word, duplicate image × aspect) is an
// error naming the file and line: nothing is dropped silently.
func ReadConversations(path string) ([]Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read conversations: %w", err)
	}
	defer f.Close()
	return readConversations(f, path)
}

func readConversations(r io.Reader, path string) ([]Record, error) {
	var out []Record
	var problems []string
	seen := map[string]int{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	line := 0
	for sc.Scan() {
		line++
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		var rec Record
		if err := json.Unmarshal(b, &rec); err != nil {
			problems = append(problems, fmt.Sprintf("%s:%d: %v", path, line, err))
			continue
		}
		rec.Line = line
		if err := rec.validate(); err != nil {
			problems = append(problems, fmt.Sprintf("%s:%d: %v", path, line, err))
			continue
		}
		if prev, ok := seen[rec.Key()]; ok {
			problems = append(problems, fmt.Sprintf("%s:%d: image %s aspect %s repeats line %d", path, line, rec.Image, rec.Aspect, prev))
			continue
		}
		seen[rec.Key()] = line
		if rec.MOSField != nil {
			rec.MOS, rec.HasMOS = *rec.MOSField, true
		}
		out = append(out, rec)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read conversations %s: %w", path, err)
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("read conversations: %d bad lines: %s", len(problems), clipList(problems, 5))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("read conversations %s: no records", path)
	}
	return out, nil
}

func (r Record) validate() error {
	for _, f := range []struct{ name, v string }{
		{"image", r.Image}, {"aspect", r.Aspect}, {"round1", r.Round1}, {"round2", r.Round2},
		{"teacher_description", r.TeacherDescription}, {"rating_word", r.RatingWord},
	} {
		if strings.TrimSpace(f.v) == "" {
			return fmt.Errorf("empty %s", f.name)
		}
	}
	if ratingIndex(r.RatingWord) < 0 {
		return fmt.Errorf("rating word %q is not one of %v", r.RatingWord, iqa.RatingWords)
	}
	if r.MOSField != nil && (math.IsNaN(*r.MOSField) || *r.MOSField < 0 || *r.MOSField > 5) {
		return fmt.Errorf("mos %v outside 0..5", *r.MOSField)
	}
	return nil
}

func ratingIndex(w string) int {
	for i, v := range iqa.RatingWords {
		if v == w {
			return i
		}
	}
	return -1
}

func clipList(s []string, n int) string {
	if len(s) <= n {
		return strings.Join(s, "; ")
	}
	return strings.Join(s[:n], "; ") + fmt.Sprintf("; and %d more", len(s)-n)
}

// Select keeps the records of aspect (all when empty) and split (all when
// empty), in file order, at most limit of them (all when limit <= 0).
func Select(recs []Record, aspect, split string, limit int) []Record {
	var out []Record
	for _, r := range recs {
		if aspect != "" && r.Aspect != aspect {
			continue
		}
		if split != "" && r.Split != split {
			continue
		}
		out = append(out, r)
		if limit > 0 && len(out) == limit {
			break
		}
	}
	return out
}

// MOSTable maps image file name → aspect → MOS on 0–5.
type MOSTable map[string]map[string]float64

// ReadMOS reads MOS labels from an AGIQA-3K data.csv (name, mos_quality,
// mos_align columns; align is the correspondence aspect) or from an m3gate
// manifest JSONL (image or name, and a "mos" object per aspect). Image keys
// are base names.
func ReadMOS(path string) (MOSTable, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read labels: %w", err)
	}
	if strings.HasSuffix(strings.ToLower(path), ".csv") {
		return readMOSCSV(raw, path)
	}
	return readMOSManifest(raw, path)
}

func readMOSCSV(raw []byte, path string) (MOSTable, error) {
	cr := csv.NewReader(bytes.NewReader(raw))
	cr.FieldsPerRecord = -1
	rows, err := cr.ReadAll()
	if err != nil {
		return nil, fmt.Errorf("read labels %s: %w", path, err)
	}
	if len(rows) < 2 {
		return nil, fmt.Errorf("read labels %s: no rows", path)
	}
	col := map[string]int{}
	for i, h := range rows[0] {
		col[strings.TrimSpace(h)] = i
	}
	ni, ok := col["name"]
	if !ok {
		return nil, fmt.Errorf("read labels %s: no name column", path)
	}
	aspects := map[string]string{"mos_quality": "quality", "mos_align": "correspondence", "mos_correspondence": "correspondence", "mos_authenticity": "authenticity"}
	t := MOSTable{}
	for li, row := range rows[1:] {
		if ni >= len(row) {
			return nil, fmt.Errorf("read labels %s:%d: short row", path, li+2)
		}
		name := filepath.Base(row[ni])
		for c, a := range aspects {
			ci, ok := col[c]
			if !ok || ci >= len(row) || strings.TrimSpace(row[ci]) == "" {
				continue
			}
			v, err := strconv.ParseFloat(strings.TrimSpace(row[ci]), 64)
			if err != nil || math.IsNaN(v) || v < 0 || v > 5 {
				return nil, fmt.Errorf("read labels %s:%d: %s %q is not a MOS in 0..5", path, li+2, c, row[ci])
			}
			if t[name] == nil {
				t[name] = map[string]float64{}
			}
			t[name][a] = v
		}
	}
	return t, nil
}

func readMOSManifest(raw []byte, path string) (MOSTable, error) {
	t := MOSTable{}
	for i, l := range bytes.Split(raw, []byte("\n")) {
		l = bytes.TrimSpace(l)
		if len(l) == 0 {
			continue
		}
		var rec struct {
			Image string             `json:"image"`
			Name  string             `json:"name"`
			MOS   map[string]float64 `json:"mos"`
		}
		if err := json.Unmarshal(l, &rec); err != nil {
			return nil, fmt.Errorf("read labels %s:%d: %w", path, i+1, err)
		}
		name := rec.Name
		if name == "" {
			name = rec.Image
		}
		if name == "" {
			return nil, fmt.Errorf("read labels %s:%d: no image or name", path, i+1)
		}
		for a, v := range rec.MOS {
			if math.IsNaN(v) || v < 0 || v > 5 {
				return nil, fmt.Errorf("read labels %s:%d: mos %s %v outside 0..5", path, i+1, a, v)
			}
		}
		t[filepath.Base(name)] = rec.MOS
	}
	if len(t) == 0 {
		return nil, fmt.Errorf("read labels %s: no records", path)
	}
	return t, nil
}

// JoinMOS sets MOS on every record from t; a record without a label is an
// error naming it.
func JoinMOS(recs []Record, t MOSTable) error {
	var missing []string
	for i := range recs {
		r := &recs[i]
		v, ok := t[filepath.Base(r.Image)][r.Aspect]
		if !ok {
			if !r.HasMOS {
				missing = append(missing, fmt.Sprintf("line %d (%s, %s)", r.Line, r.Image, r.Aspect))
			}
			continue
		}
		r.MOS, r.HasMOS = v, true
	}
	if len(missing) > 0 {
		return fmt.Errorf("no MOS label for %d records: %s", len(missing), clipList(missing, 5))
	}
	return nil
}

// errNoMOS is returned when a record that needs a MOS has none.
var errNoMOS = errors.New("record has no MOS (pass --labels)")
