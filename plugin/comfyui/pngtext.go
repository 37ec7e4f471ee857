package comfyui

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"
	"unicode/utf8"
)

var pngSignature = []byte("\x89PNG\r\n\x1a\n")

// MaxPNGTextBytes bounds the inflated text of one compressed (zTXt or iTXt)
// chunk that PNGText reads, so a hostile PNG cannot inflate without limit.
const MaxPNGTextBytes = 16 << 20

// TextChunk is one PNG text chunk: a keyword of 1–79 Latin-1 characters and
// its text. International marks an iTXt chunk, whose text is UTF-8;
// otherwise the chunk is tEXt (or zTXt when read), whose text is Latin-1 by
// the PNG specification. Text is always held as a Go (UTF-8) string.
type TextChunk struct {
	Key, Text     string
	International bool
}

// AddPNGText returns the PNG with text chunks inserted just before IEND:
// tEXt for plain chunks (ComfyUI's SaveImage stores "prompt" and "workflow"
// this way; their text must be Latin-1), iTXt for International ones (any
// UTF-8 text, uncompressed, no language tag). The original chunks are kept
// byte for byte.
func AddPNGText(png []byte, chunks ...TextChunk) ([]byte, error) {
	if !bytes.HasPrefix(png, pngSignature) {
		return nil, errors.New("add png text: not a PNG")
	}
	iend := -1
	for off := len(pngSignature); off+12 <= len(png); {
		n := int(binary.BigEndian.Uint32(png[off:]))
		typ := string(png[off+4 : off+8])
		if n < 0 || off+12+n > len(png) {
			return nil, fmt.Errorf("add png text: chunk %q at %d overruns the file", typ, off)
		}
		if typ == "IEND" {
			iend = off
			break
		}
		off += 12 + n
	}
	if iend < 0 {
		return nil, errors.New("add png text: no IEND chunk")
	}
	var buf bytes.Buffer
	buf.Grow(len(png) + 256)
	buf.Write(png[:iend])
	for _, c := range chunks {
		if err := writeTextChunk(&buf, c); err != nil {
			return nil, err
		}
	}
	buf.Write(png[iend:])
	return buf.Bytes(), nil
}

// latin1 encodes s as Latin-1; ok is false when s has a rune above U+00FF.
func latin1(s string) (b []byte, ok bool) {
	b = make([]byte, 0, len(s))
	for _, r := range s {
		if r > 0xff {
			return nil, false
		}
		b = append(b, byte(r))
	}
	return b, true
}

func fromLatin1(b []byte) string {
	var sb strings.Builder
	sb.Grow(len(b))
	for _, c := range b {
		sb.WriteRune(rune(c))
	}
	return sb.String()
}

func writeTextChunk(buf *bytes.Buffer, c TextChunk) error {
	key, ok := latin1(c.Key)
	if !ok || len(key) == 0 || len(key) > 79 || bytes.IndexByte(key, 0) >= 0 {
		return fmt.Errorf("png text key %q: must be 1-79 Latin-1 characters without NUL", c.Key)
	}
	data := append([]byte{}, key...)
	data = append(data, 0)
	typ := "tEXt"
	if c.International {
		if !utf8.ValidString(c.Text) {
			return fmt.Errorf("png text %q: iTXt text is not UTF-8", c.Key)
		}
		typ = "iTXt"
		// compression flag, method, empty language tag, empty translated keyword
		data = append(data, 0, 0, 0, 0)
		data = append(data, c.Text...)
	} else {
		text, ok := latin1(c.Text)
		if !ok {
			return fmt.Errorf("png text %q: text is not Latin-1; write it as an International (iTXt) chunk", c.Key)
		}
		if bytes.IndexByte(text, 0) >= 0 {
			return fmt.Errorf("png text %q: text contains NUL", c.Key)
		}
		data = append(data, text...)
	}
	var hdr [8]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(data)))
	copy(hdr[4:], typ)
	crc := crc32.NewIEEE()
	crc.Write(hdr[4:])
	crc.Write(data)
	buf.Write(hdr[:])
	buf.Write(data)
	var sum [4]byte
	binary.BigEndian.PutUint32(sum[:], crc.Sum32())
	buf.Write(sum[:])
	return nil
}

// PNGText reads every text chunk of a PNG (tEXt, zTXt, iTXt), in file
// order, checking CRCs. tEXt and zTXt text is Latin-1, except that a tEXt
// text which is valid UTF-8 with non-ASCII bytes is read as UTF-8: m3gate
// before iTXt wrote its UTF-8 JSON that way, and real Latin-1 text is
// almost never valid UTF-8.
func PNGText(png []byte) ([]TextChunk, error) {
	if !bytes.HasPrefix(png, pngSignature) {
		return nil, errors.New("png text: not a PNG")
	}
	var out []TextChunk
	for off := len(pngSignature); off+12 <= len(png); {
		n := int(binary.BigEndian.Uint32(png[off:]))
		if n < 0 || off+12+n > len(png) {
			return nil, fmt.Errorf("png text: chunk at %d overruns the file", off)
		}
		typ := png[off+4 : off+8]
		data := png[off+8 : off+8+n]
		want := binary.BigEndian.Uint32(png[off+8+n:])
		crc := crc32.NewIEEE()
		crc.Write(typ)
		crc.Write(data)
		if crc.Sum32() != want {
			return nil, fmt.Errorf("png text: bad CRC in %q chunk at %d", typ, off)
		}
		switch string(typ) {
		case "tEXt", "zTXt", "iTXt":
			c, err := decodeTextChunk(string(typ), data)
			if err != nil {
				return nil, fmt.Errorf("png text: %s chunk at %d: %w", typ, off, err)
			}
			out = append(out, c)
		case "IEND":
			return out, nil
		}
		off += 12 + n
	}
	return nil, errors.New("png text: no IEND chunk")
}

func decodeTextChunk(typ string, data []byte) (TextChunk, error) {
	k, rest, ok := bytes.Cut(data, []byte{0})
	if !ok || len(k) == 0 || len(k) > 79 {
		return TextChunk{}, errors.New("no keyword of 1-79 bytes")
	}
	key := fromLatin1(k)
	switch typ {
	case "tEXt":
		if utf8.Valid(rest) {
			return TextChunk{Key: key, Text: string(rest)}, nil
		}
		return TextChunk{Key: key, Text: fromLatin1(rest)}, nil
	case "zTXt":
		if len(rest) < 1 || rest[0] != 0 {
			return TextChunk{}, errors.New("unknown compression method")
		}
		text, err := inflate(rest[1:])
		if err != nil {
			return TextChunk{}, err
		}
		return TextChunk{Key: key, Text: fromLatin1(text)}, nil
	}
	// iTXt: flag, method, language tag NUL, translated keyword NUL, text.
	if len(rest) < 2 {
		return TextChunk{}, errors.New("truncated header")
	}
	flag, method := rest[0], rest[1]
	_, rest, ok1 := bytes.Cut(rest[2:], []byte{0})
	_, text, ok2 := bytes.Cut(rest, []byte{0})
	if !ok1 || !ok2 {
		return TextChunk{}, errors.New("no language tag or translated keyword")
	}
	switch {
	case flag == 1 && method == 0:
		var err error
		if text, err = inflate(text); err != nil {
			return TextChunk{}, err
		}
	case flag != 0:
		return TextChunk{}, errors.New("unknown compression")
	}
	if !utf8.Valid(text) {
		return TextChunk{}, errors.New("text is not UTF-8")
	}
	return TextChunk{Key: key, Text: string(text), International: true}, nil
}

func inflate(b []byte) ([]byte, error) {
	r, err := zlib.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("inflate: %w", err)
	}
	defer r.Close()
	out, err := io.ReadAll(io.LimitReader(r, MaxPNGTextBytes+1))
	if err != nil {
		return nil, fmt.Errorf("inflate: %w", err)
	}
	if len(out) > MaxPNGTextBytes {
		return nil, fmt.Errorf("inflated text over %d bytes", MaxPNGTextBytes)
	}
	return out, nil
}
