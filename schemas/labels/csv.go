package labels

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// ReadCSV calls fn with each row of a CSV file and its 1-based line number.
// Unparsable rows are reported to rep (and counted in rep.Rows) and
// skipped; a byte-order mark before the first field is dropped. Quotes
// inside unquoted fields are kept verbatim, as pandas writes them.
func ReadCSV(path string, rep *Report, fn func(line int, row []string)) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	r := csv.NewReader(f)
	r.FieldsPerRecord = -1
	// pandas writes quotes inside unquoted fields verbatim (AIGCIQA2023
	// prompts such as: a dog saying "I see what you did there").
	r.LazyQuotes = true
	first := true
	lastErrLine := -1
	for {
		row, err := r.Read()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			var pe *csv.ParseError
			if !errors.As(err, &pe) {
				return fmt.Errorf("read %s: %w", path, err)
			}
			if pe.StartLine == lastErrLine {
				return fmt.Errorf("read %s: %w", path, err)
			}
			lastErrLine = pe.StartLine
			rep.Rows++
			rep.Add(path, pe.StartLine, KindParse, "%v", pe.Err)
			continue
		}
		line, _ := r.FieldPos(0)
		if first {
			first = false
			if len(row) > 0 {
				row[0] = strings.TrimPrefix(row[0], "\ufeff")
			}
		}
		fn(line, row)
	}
}

// Header maps the lower-cased, trimmed column names of a header row to
// their indices and checks that the required ones are present.
func Header(path string, row []string, required ...string) (map[string]int, error) {
	m := map[string]int{}
	for i, c := range row {
		m[strings.ToLower(strings.TrimSpace(c))] = i
	}
	var missing []string
	for _, c := range required {
		if _, ok := m[c]; !ok {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("read %s: header %q lacks columns %v", path, row, missing)
	}
	return m, nil
}

// ReadHeadedCSV reads a CSV file whose first row is a header naming at
// least the required columns (see Header), and calls fn for every data row
// with as many fields as the header; other rows are reported to rep. Every
// data row counts in rep.Rows. An empty file or a header that lacks a
// required column is an error.
func ReadHeadedCSV(path string, rep *Report, required []string, fn func(line int, row []string, cols map[string]int)) error {
	var h map[string]int
	var herr error
	err := ReadCSV(path, rep, func(line int, row []string) {
		if h == nil && herr == nil {
			h, herr = Header(path, row, required...)
			return
		}
		if herr != nil {
			return
		}
		rep.Rows++
		if len(row) != len(h) {
			rep.Add(path, line, KindParse, "row has %d fields, header has %d", len(row), len(h))
			return
		}
		fn(line, row, h)
	})
	switch {
	case err != nil:
		return err
	case herr != nil:
		return herr
	case h == nil:
		return fmt.Errorf("read %s: empty file", path)
	}
	return nil
}
