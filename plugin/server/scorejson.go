package server

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/m3gate/m3gate/schemas/api"
)

// decodeScoreJSON reads an api.ScoreRequest from r as a stream: each
// image's base64 data is decoded while it arrives, straight into its bytes
// (never held as text next to them), and refused as soon as it passes
// maxImage decoded bytes or maxImages images. Unknown fields, a second
// JSON value after the object and malformed JSON are errors (badRequest);
// body-read errors (size cap, budget, deadlines) are returned unwrapped
// so that the caller can map them to a status. size is the body's length
// when known (else -1): an image's bytes are then allocated once, at most
// the size the rest of the body can hold.
func decodeScoreJSON(r io.Reader, maxImage int64, maxImages int, size int64) (api.ScoreRequest, error) {
	cr := &countReader{r: r}
	d := &jsonStream{r: bufio.NewReaderSize(cr, 64<<10), cr: cr, size: size}
	var req api.ScoreRequest
	err := d.object(func(key string) error {
		switch key {
		case "images":
			return d.array(func(i int) error {
				if i >= maxImages {
					return badf("more than %d images: at most %d per request", maxImages, maxImages)
				}
				var im api.Image
				err := d.object(func(key string) error {
					switch key {
					case "data":
						b, err := d.base64String(maxImage)
						if err != nil {
							return fmt.Errorf("image %d data: %w", i, err)
						}
						im.Data = b
						return nil
					case "path":
						return d.decodeValue(&im.Path)
					case "prompt":
						return d.decodeValue(&im.Prompt)
					}
					return badf("image %d: unknown field %q", i, key)
				})
				req.Images = append(req.Images, im)
				return err
			})
		case "prompt":
			return d.decodeValue(&req.Prompt)
		case "aspects":
			return d.decodeValue(&req.Aspects)
		case "max_new_tokens":
			return d.decodeValue(&req.MaxNewTokens)
		case "attempt":
			return d.decodeValue(&req.Attempt)
		case "seed":
			return d.decodeValue(&req.Seed)
		}
		return badf("unknown field %q", key)
	})
	if err != nil {
		return req, err
	}
	if c, err := d.next(); err != io.EOF {
		if err != nil {
			return req, err
		}
		return req, badf("data after the JSON object (%q)", c)
	}
	return req, nil
}

// jsonStream is a small pull parser for the shapes of a score request.
type jsonStream struct {
	r    *bufio.Reader
	cr   *countReader
	size int64 // body length, -1 when unknown
}

// countReader counts the bytes read from the body.
type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// remaining is how many body bytes are still to be parsed, or -1.
func (d *jsonStream) remaining() int64 {
	if d.size < 0 {
		return -1
	}
	return d.size - d.cr.n + int64(d.r.Buffered())
}

// syntax wraps a JSON syntax error as a bad request.
func syntax(format string, args ...any) error {
	return badf("decode JSON body: "+format, args...)
}

// readErr turns io.EOF inside a value into a syntax error and passes body
// errors through.
func readErr(err error) error {
	if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
		return syntax("unexpected end of body")
	}
	return err
}

// next returns the next non-space byte.
func (d *jsonStream) next() (byte, error) {
	for {
		c, err := d.r.ReadByte()
		if err != nil {
			return 0, err
		}
		switch c {
		case ' ', '\t', '\n', '\r':
			continue
		}
		return c, nil
	}
}

func (d *jsonStream) peek() (byte, error) {
	c, err := d.next()
	if err != nil {
		return 0, readErr(err)
	}
	return c, d.r.UnreadByte()
}

// object reads {"key": value, ...}, calling field for each key with the
// reader at its value; null counts as an empty object.
func (d *jsonStream) object(field func(key string) error) error {
	c, err := d.next()
	if err != nil {
		return readErr(err)
	}
	if c == 'n' {
		return d.literal("ull")
	}
	if c != '{' {
		return syntax("want an object, got %q", c)
	}
	for first := true; ; first = false {
		c, err := d.next()
		if err != nil {
			return readErr(err)
		}
		if c == '}' && first {
			return nil
		}
		if c != '"' {
			return syntax("want a field name, got %q", c)
		}
		key, err := d.stringBody(4 << 10)
		if err != nil {
			return err
		}
		if c, err := d.next(); err != nil || c != ':' {
			return syntax("want ':' after %q", key)
		}
		if err := field(key); err != nil {
			return err
		}
		c, err = d.next()
		if err != nil {
			return readErr(err)
		}
		if c == '}' {
			return nil
		}
		if c != ',' {
			return syntax("want ',' or '}' after field %q, got %q", key, c)
		}
	}
}

// array reads [value, ...], calling elem for each with its index; null
// counts as an empty array.
func (d *jsonStream) array(elem func(i int) error) error {
	c, err := d.next()
	if err != nil {
		return readErr(err)
	}
	if c == 'n' {
		return d.literal("ull")
	}
	if c != '[' {
		return syntax("want an array, got %q", c)
	}
	if c, err := d.peek(); err != nil {
		return err
	} else if c == ']' {
		d.r.ReadByte()
		return nil
	}
	for i := 0; ; i++ {
		if err := elem(i); err != nil {
			return err
		}
		c, err := d.next()
		if err != nil {
			return readErr(err)
		}
		if c == ']' {
			return nil
		}
		if c != ',' {
			return syntax("want ',' or ']' in an array, got %q", c)
		}
	}
}

func (d *jsonStream) literal(rest string) error {
	for i := 0; i < len(rest); i++ {
		c, err := d.r.ReadByte()
		if err != nil {
			return readErr(err)
		}
		if c != rest[i] {
			return syntax("bad literal")
		}
	}
	return nil
}

// stringBody reads the rest of a string after its opening quote (escapes
// kept) and decodes it; at most max raw bytes.
func (d *jsonStream) stringBody(max int) (string, error) {
	raw := []byte{'"'}
	for {
		c, err := d.r.ReadByte()
		if err != nil {
			return "", readErr(err)
		}
		raw = append(raw, c)
		if len(raw) > max {
			return "", syntax("string longer than %d bytes", max)
		}
		if c == '\\' {
			e, err := d.r.ReadByte()
			if err != nil {
				return "", readErr(err)
			}
			raw = append(raw, e)
			continue
		}
		if c == '"' {
			var s string
			if err := json.Unmarshal(raw, &s); err != nil {
				return "", syntax("%v", err)
			}
			return s, nil
		}
	}
}

// decodeValue reads one scalar or flat array value (a string, number,
// null or array of strings) and decodes it into v with encoding/json.
func (d *jsonStream) decodeValue(v any) error {
	raw, err := d.rawValue()
	if err != nil {
		return err
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return syntax("%v", err)
	}
	return nil
}

// rawValue captures one JSON value's text (strings, numbers, literals and
// arrays or objects of them), at most 1 MiB.
func (d *jsonStream) rawValue() ([]byte, error) {
	const max = 1 << 20
	var raw []byte
	depth, inStr := 0, false
	c, err := d.next()
	if err != nil {
		return nil, readErr(err)
	}
	for {
		raw = append(raw, c)
		if len(raw) > max {
			return nil, syntax("value longer than %d bytes", max)
		}
		switch {
		case inStr:
			if c == '\\' {
				e, err := d.r.ReadByte()
				if err != nil {
					return nil, readErr(err)
				}
				raw = append(raw, e)
			} else if c == '"' {
				inStr = false
			}
		case c == '"':
			inStr = true
		case c == '[' || c == '{':
			depth++
		case c == ']' || c == '}':
			depth--
		}
		if !inStr && depth == 0 {
			// A scalar ends before the next delimiter; a string or a closed
			// array/object ends here.
			p, err := d.r.Peek(1)
			scalarGoesOn := err == nil && bytes.IndexByte([]byte(",}] \t\r\n"), p[0]) < 0 && c != '"' && c != ']' && c != '}'
			if !scalarGoesOn {
				return raw, nil
			}
		}
		if c, err = d.r.ReadByte(); err != nil {
			if err == io.EOF && !inStr && depth == 0 {
				return raw, nil
			}
			return nil, readErr(err)
		}
	}
}

// base64String decodes a base64 string value as it arrives into at most
// max bytes.
func (d *jsonStream) base64String(max int64) ([]byte, error) {
	c, err := d.next()
	if err != nil {
		return nil, readErr(err)
	}
	if c == 'n' {
		return nil, d.literal("ull")
	}
	if c != '"' {
		return nil, badf("want a base64 string, got %q", c)
	}
	src := &b64Text{r: d.r}
	// Known body length: the rest of the body bounds this image, so one
	// allocation of that size (capped) holds it without regrowing.
	capHint := int64(64 << 10)
	if rest := d.remaining(); rest > 0 {
		capHint = min(max+1, rest/4*3+3)
	}
	out := &appendWriter{b: make([]byte, 0, capHint)}
	n, err := io.Copy(out, io.LimitReader(base64.NewDecoder(base64.StdEncoding, src), max+1))
	if src.err != nil {
		return nil, src.err // the body, or a bad escape
	}
	if n > max {
		return nil, badf("over daemon.max_image_bytes (%d)", max)
	}
	if err != nil {
		var ce base64.CorruptInputError
		if errors.As(err, &ce) {
			return nil, badf("not base64: illegal base64 data at input byte %d", int64(ce))
		}
		return nil, badf("not base64: %v", err)
	}
	if !src.done {
		return nil, badf("not base64: data after the padding")
	}
	return out.bytes(), nil
}

// appendWriter appends to b.
type appendWriter struct{ b []byte }

func (w *appendWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

// bytes returns the written bytes, copied to a tight slice when the
// allocation was far larger (an image among several).
func (w *appendWriter) bytes() []byte {
	if cap(w.b) > 2*len(w.b)+64<<10 {
		return bytes.Clone(w.b)
	}
	return w.b
}

// b64Text yields a JSON string's base64 text up to its closing quote; the
// one escape base64 can need, \/, is undone.
type b64Text struct {
	r    *bufio.Reader
	done bool
	err  error
}

func (t *b64Text) Read(p []byte) (int, error) {
	if t.done {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) {
		c, err := t.r.ReadByte()
		if err != nil {
			t.err = readErr(err)
			return n, t.err
		}
		switch c {
		case '"':
			t.done = true
			return n, io.EOF
		case '\\':
			e, err := t.r.ReadByte()
			if err != nil {
				t.err = readErr(err)
				return n, t.err
			}
			if e != '/' {
				t.err = badf("not base64: escape \\%c in image data", e)
				return n, t.err
			}
			c = '/'
		}
		p[n] = c
		n++
		if t.r.Buffered() == 0 {
			return n, nil // hand over what we have before blocking
		}
	}
	return n, nil
}
