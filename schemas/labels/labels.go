// Package labels reads and writes the label files that both the daemon
// (data convert, distill, eval) and the model process (finetune,
// train-predictor) consume: the conversations JSONL, MOS tables from headed
// CSV files or manifest JSONL, and the CSV reading underneath the dataset
// converters.
//
// Every reader follows one rule for bad input: each bad line is recorded in
// a Report as a Problem naming its file and line ("file:line: kind:
// message") and left out; reading goes on, so one pass lists every bad line.
// The error return is reserved for a file that cannot be read at all (or a
// CSV header that lacks a required column). The caller decides what the
// problems mean: data convert writes them to its report, training refuses
// to start while there is any (Report.Err).
//
// It is pure Go and imports only schemas/iqa, so both sides of the
// plugin/sidecar wall may import it.
package labels

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"sort"
	"strings"
)

// Problem is one bad line of a label file.
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

// Add records a problem on line of file.
func (r *Report) Add(file string, line int, kind, format string, args ...any) {
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

// maxListed is how many problems Err names before summarising the rest.
const maxListed = 5

// Err returns nil when the report has no problems, and otherwise an error
// naming the number of problems and the first few, each as file:line.
func (r *Report) Err() error {
	if len(r.Problems) == 0 {
		return nil
	}
	var s []string
	for i, p := range r.Problems {
		if i == maxListed {
			s = append(s, fmt.Sprintf("and %d more", len(r.Problems)-maxListed))
			break
		}
		s = append(s, p.String())
	}
	return fmt.Errorf("%d problems: %s", len(r.Problems), strings.Join(s, "; "))
}

// MaxLineBytes is the longest line a label file may have.
const MaxLineBytes = 16 << 20

// Lines calls fn with the number (from 1) and the trimmed bytes of each
// non-blank line of r, counting them in rep.Rows: the loop of every JSON
// Lines label reader. The error is the reader's (or a line longer than
// MaxLineBytes).
func (rep *Report) Lines(r io.Reader, fn func(line int, b []byte)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), MaxLineBytes)
	line := 0
	for sc.Scan() {
		line++
		b := bytes.TrimSpace(sc.Bytes())
		if len(b) == 0 {
			continue
		}
		rep.Rows++
		fn(line, b)
	}
	return sc.Err()
}
