package nodes

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"unicode/utf16"
)

// The renderers build ordered values and write them the way Python's
// json.dumps does (which is what aiohttp's json_response, and so ComfyUI,
// sends): object keys in insertion order, floats in repr form (3.0, 0.05,
// 1e-05), ints without a fraction, non-ASCII escaped as \uXXXX.

type member struct {
	key string
	val any
}

// object is a JSON object whose keys keep their order.
type object []member

func (o *object) set(key string, val any) { *o = append(*o, member{key, val}) }

// pyInt and pyFloat carry numbers whose JSON form depends on the Python type.
type (
	pyInt   int64
	pyFloat float64
)

// dumps writes v like json.dumps(v) with indent=None (separators ", " and
// ": ") or, when indent > 0, like json.dumps(v, indent=indent).
func dumps(v any, indent int) []byte {
	var b bytes.Buffer
	writeValue(&b, v, indent, 0)
	return b.Bytes()
}

func writeValue(b *bytes.Buffer, v any, indent, depth int) {
	switch x := v.(type) {
	case nil:
		b.WriteString("null")
	case bool:
		if x {
			b.WriteString("true")
		} else {
			b.WriteString("false")
		}
	case string:
		writeString(b, x)
	case pyInt:
		b.WriteString(strconv.FormatInt(int64(x), 10))
	case pyFloat:
		b.WriteString(formatPyFloat(float64(x)))
	case rawNumber:
		b.WriteString(string(x))
	case object:
		if len(x) == 0 {
			b.WriteString("{}")
			return
		}
		b.WriteByte('{')
		for i, m := range x {
			sep(b, i, indent, depth+1)
			writeString(b, m.key)
			b.WriteString(": ")
			writeValue(b, m.val, indent, depth+1)
		}
		closeIndent(b, indent, depth)
		b.WriteByte('}')
	case []any:
		if len(x) == 0 {
			b.WriteString("[]")
			return
		}
		b.WriteByte('[')
		for i, e := range x {
			sep(b, i, indent, depth+1)
			writeValue(b, e, indent, depth+1)
		}
		closeIndent(b, indent, depth)
		b.WriteByte(']')
	default:
		panic(fmt.Sprintf("nodes: cannot render %T", v))
	}
}

func sep(b *bytes.Buffer, i, indent, depth int) {
	if indent > 0 {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('\n')
		b.WriteString(strings.Repeat(" ", indent*depth))
		return
	}
	if i > 0 {
		b.WriteString(", ")
	}
}

func closeIndent(b *bytes.Buffer, indent, depth int) {
	if indent > 0 {
		b.WriteByte('\n')
		b.WriteString(strings.Repeat(" ", indent*depth))
	}
}

// writeString escapes like Python's json with ensure_ascii=True.
func writeString(b *bytes.Buffer, s string) {
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		default:
			switch {
			case r < 0x20 || (r >= 0x7f && r <= 0xffff):
				if r == 0x7f {
					b.WriteRune(r)
				} else {
					fmt.Fprintf(b, `\u%04x`, r)
				}
			case r > 0xffff:
				r1, r2 := utf16.EncodeRune(r)
				fmt.Fprintf(b, `\u%04x\u%04x`, r1, r2)
			default:
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
}

// formatPyFloat formats f like Python's float repr, as json.dumps does.
func formatPyFloat(f float64) string {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	case f == 0:
		if math.Signbit(f) {
			return "-0.0"
		}
		return "0.0"
	}
	neg := f < 0
	if neg {
		f = -f
	}
	e := strconv.FormatFloat(f, 'e', -1, 64) // shortest round-trip digits: d.ddde±XX
	mant, expStr, _ := strings.Cut(e, "e")
	exp, _ := strconv.Atoi(expStr)
	digits := strings.Replace(mant, ".", "", 1)
	decpt := exp + 1 // value = 0.digits × 10^decpt
	var s string
	if decpt > -4 && decpt <= 16 {
		switch {
		case decpt <= 0:
			s = "0." + strings.Repeat("0", -decpt) + digits
		case decpt >= len(digits):
			s = digits + strings.Repeat("0", decpt-len(digits)) + ".0"
		default:
			s = digits[:decpt] + "." + digits[decpt:]
		}
	} else {
		s = digits[:1]
		if len(digits) > 1 {
			s += "." + digits[1:]
		}
		sign := "+"
		if exp < 0 {
			sign, exp = "-", -exp
		}
		s += fmt.Sprintf("e%s%02d", sign, exp)
	}
	if neg {
		s = "-" + s
	}
	return s
}

// rawNumber is a number literal copied from parsed JSON.
type rawNumber string

// parseOrdered decodes a JSON document into object/[]any/string/bool/nil/
// rawNumber values, keeping key order and number literals, so that it can be
// written again with dumps.
func parseOrdered(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := parseValue(dec)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("parse json: trailing data after the document")
	}
	return v, nil
}

func parseValue(dec *json.Decoder) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("parse json: %w", err)
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			o := object{}
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, fmt.Errorf("parse json: %w", err)
				}
				v, err := parseValue(dec)
				if err != nil {
					return nil, err
				}
				o.set(kt.(string), v)
			}
			_, err := dec.Token() // '}'
			return o, err
		case '[':
			a := []any{}
			for dec.More() {
				v, err := parseValue(dec)
				if err != nil {
					return nil, err
				}
				a = append(a, v)
			}
			_, err := dec.Token() // ']'
			return a, err
		}
		return nil, fmt.Errorf("parse json: unexpected %v", t)
	case json.Number:
		return rawNumber(t), nil
	default:
		return t, nil // string, bool, nil
	}
}

// PythonJSON re-encodes the JSON document data the way Python's json.dumps
// writes it with default separators (", " and ": "), which is what a
// ComfyUI server's aiohttp json_response sends: key order and number
// literals are kept, non-ASCII is escaped as \uXXXX. It lets a fake server
// answer from a recorded, re-indented response byte for byte.
func PythonJSON(data []byte) ([]byte, error) {
	v, err := parseOrdered(data)
	if err != nil {
		return nil, err
	}
	return dumps(v, 0), nil
}
