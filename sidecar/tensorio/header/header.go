// Package header parses, validates and encodes safetensors headers and
// sharded-checkpoint indexes. It is pure Go (no gotch, no cgo) so it can be
// fuzzed cheaply:
//
//	go test -run '^$' -fuzz FuzzParseHeader ./sidecar/tensorio/header/
package header

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"sort"
	"strconv"
	"unicode/utf8"
)

// DType is a safetensors dtype name as written in a header ("F32", "BF16", ...).
type DType string

// The dtypes this package reads and writes. Any other name in a header is
// rejected with an error that names it.
const (
	F32  DType = "F32"
	F16  DType = "F16"
	BF16 DType = "BF16"
	I64  DType = "I64"
)

// Size returns the size of one element in bytes, or 0 for an unsupported dtype.
func (d DType) Size() int64 {
	switch d {
	case F32:
		return 4
	case F16, BF16:
		return 2
	case I64:
		return 8
	}
	return 0
}

// MaxSize is the largest JSON header accepted, in bytes (the reference
// implementation's limit). A larger length prefix is refused before anything
// is allocated.
const MaxSize = 100_000_000

// Entry describes one tensor of a safetensors header. Begin and End are byte
// offsets relative to the start of the data section (data_offsets).
type Entry struct {
	Name       string
	DType      DType
	Shape      []int64
	Begin, End int64
}

// Header is a parsed and validated safetensors header.
type Header struct {
	// Entries are sorted by Begin (then name); they tile the data section
	// exactly, without holes or overlaps.
	Entries []Entry
	// Metadata is the optional __metadata__ map (nil when absent).
	Metadata map[string]string
	// DataStart is the absolute file offset of the data section (8 + header length).
	DataStart int64
}

// Parse parses and validates the header of a safetensors file whose
// complete contents are file (typically a read-only memory mapping). It checks
// the 8-byte little-endian length prefix against the file size before
// looking at the JSON, rejects duplicate keys, unsupported dtypes, negative or
// overflowing shapes, data_offsets that disagree with dtype×shape, offsets
// out of range, overlapping tensors and holes in the data section. Errors do
// not name the file; callers wrap them with it.
func Parse(file []byte) (*Header, error) {
	if len(file) < 8 {
		return nil, fmt.Errorf("truncated: %d bytes, need at least 8 for the header length", len(file))
	}
	n := binary.LittleEndian.Uint64(file[:8])
	if n > MaxSize {
		return nil, fmt.Errorf("header length %d exceeds the limit of %d bytes", n, MaxSize)
	}
	if n > uint64(len(file)-8) {
		return nil, fmt.Errorf("truncated: header length %d runs past the end of the file (%d bytes after the length prefix)", n, len(file)-8)
	}
	js := file[8 : 8+n]
	dataSize := int64(len(file)) - 8 - int64(n)
	h, err := parseHeaderJSON(js, dataSize)
	if err != nil {
		return nil, err
	}
	h.DataStart = 8 + int64(n)
	return h, nil
}

// parseHeaderJSON parses the JSON header and validates it against a data
// section of dataSize bytes.
func parseHeaderJSON(js []byte, dataSize int64) (*Header, error) {
	if !utf8.Valid(js) {
		return nil, errors.New("header is not valid UTF-8")
	}
	trimmed := bytes.TrimLeft(js, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, errors.New("header is not a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	if err := expectDelim(dec, '{'); err != nil {
		return nil, fmt.Errorf("header: %w", err)
	}
	h := &Header{}
	seen := map[string]bool{}
	for dec.More() {
		key, err := readKey(dec)
		if err != nil {
			return nil, fmt.Errorf("header: %w", err)
		}
		if seen[key] {
			return nil, fmt.Errorf("header: duplicate key %q", key)
		}
		seen[key] = true
		if key == "__metadata__" {
			m, err := readStringMap(dec)
			if err != nil {
				return nil, fmt.Errorf("header __metadata__: %w", err)
			}
			h.Metadata = m
			continue
		}
		e, err := readEntry(dec)
		if err != nil {
			return nil, fmt.Errorf("tensor %q: %w", key, err)
		}
		e.Name = key
		h.Entries = append(h.Entries, e)
	}
	if err := expectDelim(dec, '}'); err != nil {
		return nil, fmt.Errorf("header: %w", err)
	}
	// Only whitespace (the writer's space padding) may follow the object.
	if off := dec.InputOffset(); off > int64(len(js)) || len(bytes.TrimSpace(js[off:])) != 0 {
		return nil, errors.New("header: trailing data after the JSON object")
	}
	if err := validateLayout(h.Entries, dataSize); err != nil {
		return nil, err
	}
	return h, nil
}

// validateLayout checks each entry's size against dtype×shape and that the
// entries tile [0, dataSize) exactly. It sorts entries by offset.
func validateLayout(entries []Entry, dataSize int64) error {
	for i := range entries {
		e := &entries[i]
		if e.Begin > e.End {
			return fmt.Errorf("tensor %q: data_offsets [%d, %d] end before they begin", e.Name, e.Begin, e.End)
		}
		if e.End > dataSize {
			return fmt.Errorf("tensor %q: data_offsets [%d, %d] run past the end of the data section (%d bytes; file truncated?)", e.Name, e.Begin, e.End, dataSize)
		}
		want, ok := ByteSize(e.DType, e.Shape)
		if !ok {
			return fmt.Errorf("tensor %q: shape %v of %s overflows", e.Name, e.Shape, e.DType)
		}
		if got := e.End - e.Begin; got != want {
			return fmt.Errorf("tensor %q: data_offsets [%d, %d] span %d bytes but %s %v needs %d", e.Name, e.Begin, e.End, got, e.DType, e.Shape, want)
		}
	}
	sort.SliceStable(entries, func(i, j int) bool {
		a, b := entries[i], entries[j]
		if a.Begin != b.Begin {
			return a.Begin < b.Begin
		}
		if a.End != b.End {
			return a.End < b.End
		}
		return a.Name < b.Name
	})
	var pos int64
	prev := ""
	for _, e := range entries {
		switch {
		case e.Begin > pos:
			return fmt.Errorf("tensor %q: data_offsets [%d, %d] leave a hole of %d bytes at offset %d", e.Name, e.Begin, e.End, e.Begin-pos, pos)
		case e.Begin < pos:
			return fmt.Errorf("tensor %q: data_offsets [%d, %d] overlap tensor %q (ends at %d)", e.Name, e.Begin, e.End, prev, pos)
		}
		pos = e.End
		prev = e.Name
	}
	if pos != dataSize {
		return fmt.Errorf("data section has %d bytes but the tensors cover %d: %d unused bytes at the end", dataSize, pos, dataSize-pos)
	}
	return nil
}

// ByteSize returns the number of bytes of a dtype×shape tensor; ok is false
// on overflow of int64 or for an unsupported dtype.
func ByteSize(d DType, shape []int64) (int64, bool) {
	n := uint64(d.Size())
	if n == 0 {
		return 0, false
	}
	for _, s := range shape {
		hi, lo := bits.Mul64(n, uint64(s))
		if hi != 0 || lo > math.MaxInt64 {
			return 0, false
		}
		n = lo
	}
	return int64(n), true
}

// readEntry reads one tensor object {"dtype", "shape", "data_offsets"}.
// Unknown fields are skipped (as serde does in the reference); duplicated
// fields are errors.
func readEntry(dec *json.Decoder) (Entry, error) {
	var e Entry
	if err := expectDelim(dec, '{'); err != nil {
		return e, err
	}
	seen := map[string]bool{}
	var haveOffsets bool
	for dec.More() {
		key, err := readKey(dec)
		if err != nil {
			return e, err
		}
		if seen[key] {
			return e, fmt.Errorf("duplicate field %q", key)
		}
		seen[key] = true
		switch key {
		case "dtype":
			tok, err := dec.Token()
			if err != nil {
				return e, fmt.Errorf("dtype: %w", err)
			}
			s, ok := tok.(string)
			if !ok {
				return e, fmt.Errorf("dtype is %s, not a string", describe(tok))
			}
			d := DType(s)
			if d.Size() == 0 {
				return e, fmt.Errorf("unsupported dtype %q (supported: F32, F16, BF16, I64)", s)
			}
			e.DType = d
		case "shape":
			shape, err := readInts(dec)
			if err != nil {
				return e, fmt.Errorf("shape: %w", err)
			}
			e.Shape = shape
		case "data_offsets":
			offs, err := readInts(dec)
			if err != nil {
				return e, fmt.Errorf("data_offsets: %w", err)
			}
			if len(offs) != 2 {
				return e, fmt.Errorf("data_offsets has %d values, want 2", len(offs))
			}
			e.Begin, e.End = offs[0], offs[1]
			haveOffsets = true
		default:
			if err := skipValue(dec); err != nil {
				return e, fmt.Errorf("%s: %w", key, err)
			}
		}
	}
	if err := expectDelim(dec, '}'); err != nil {
		return e, err
	}
	switch {
	case e.DType == "":
		return e, errors.New("missing dtype")
	case !seen["shape"]:
		return e, errors.New("missing shape")
	case !haveOffsets:
		return e, errors.New("missing data_offsets")
	}
	if e.Shape == nil {
		e.Shape = []int64{}
	}
	return e, nil
}

// readInts reads a JSON array of non-negative integers.
func readInts(dec *json.Decoder) ([]int64, error) {
	if err := expectDelim(dec, '['); err != nil {
		return nil, err
	}
	out := []int64{}
	for dec.More() {
		if len(out) >= 64 {
			return nil, errors.New("more than 64 values")
		}
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		num, ok := tok.(json.Number)
		if !ok {
			return nil, fmt.Errorf("value is %s, not an integer", describe(tok))
		}
		v, err := strconv.ParseInt(string(num), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("value %s is not a 64-bit integer", num)
		}
		if v < 0 {
			return nil, fmt.Errorf("value %d is negative", v)
		}
		out = append(out, v)
	}
	if err := expectDelim(dec, ']'); err != nil {
		return nil, err
	}
	return out, nil
}

// readStringMap reads a JSON object whose values are all strings, rejecting
// duplicate keys.
func readStringMap(dec *json.Decoder) (map[string]string, error) {
	if err := expectDelim(dec, '{'); err != nil {
		return nil, err
	}
	m := map[string]string{}
	for dec.More() {
		key, err := readKey(dec)
		if err != nil {
			return nil, err
		}
		if _, dup := m[key]; dup {
			return nil, fmt.Errorf("duplicate key %q", key)
		}
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		s, ok := tok.(string)
		if !ok {
			return nil, fmt.Errorf("value of %q is %s, not a string", key, describe(tok))
		}
		m[key] = s
	}
	if err := expectDelim(dec, '}'); err != nil {
		return nil, err
	}
	return m, nil
}

// readKey reads an object key.
func readKey(dec *json.Decoder) (string, error) {
	tok, err := dec.Token()
	if err != nil {
		return "", err
	}
	s, ok := tok.(string)
	if !ok {
		return "", fmt.Errorf("expected an object key, got %s", describe(tok))
	}
	return s, nil
}

// expectDelim reads one token and checks that it is the delimiter d.
func expectDelim(dec *json.Decoder, d json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("unexpected end of JSON, expected %q", d)
		}
		return err
	}
	if got, ok := tok.(json.Delim); !ok || got != d {
		return fmt.Errorf("expected %q, got %s", d, describe(tok))
	}
	return nil
}

// skipValue consumes one JSON value of any kind, with a nesting limit.
func skipValue(dec *json.Decoder) error {
	depth := 0
	for {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		if d, ok := tok.(json.Delim); ok {
			switch d {
			case '{', '[':
				depth++
				if depth > 64 {
					return errors.New("nested deeper than 64 levels")
				}
			default:
				depth--
			}
		}
		if depth == 0 {
			return nil
		}
	}
}

// describe names the kind of a JSON token for error messages.
func describe(tok json.Token) string {
	switch v := tok.(type) {
	case json.Delim:
		return fmt.Sprintf("%q", string(v))
	case string:
		return fmt.Sprintf("the string %q", v)
	case json.Number:
		return "the number " + string(v)
	case bool:
		return fmt.Sprintf("the boolean %v", v)
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", tok)
}
