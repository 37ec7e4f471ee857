package comfyui

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

var pngSignature = []byte("\x89PNG\r\n\x1a\n")

// TextChunk is one PNG tEXt chunk (Latin-1 keyword of 1–79 bytes, text).
type TextChunk struct {
	Key, Text string
}

// AddPNGText returns the PNG with tEXt chunks inserted just before IEND
// (ComfyUI's SaveImage stores "prompt" and "workflow" this way). The
// original chunks are kept byte for byte.
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

func writeTextChunk(buf *bytes.Buffer, c TextChunk) error {
	if len(c.Key) == 0 || len(c.Key) > 79 || bytes.IndexByte([]byte(c.Key), 0) >= 0 {
		return fmt.Errorf("png text key %q: must be 1-79 bytes without NUL", c.Key)
	}
	if bytes.IndexByte([]byte(c.Text), 0) >= 0 {
		return fmt.Errorf("png text %q: text contains NUL", c.Key)
	}
	data := make([]byte, 0, len(c.Key)+1+len(c.Text))
	data = append(data, c.Key...)
	data = append(data, 0)
	data = append(data, c.Text...)
	var hdr [8]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(data)))
	copy(hdr[4:], "tEXt")
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

// PNGText reads every tEXt chunk of a PNG, in file order, checking CRCs.
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
		case "tEXt":
			k, v, ok := bytes.Cut(data, []byte{0})
			if !ok {
				return nil, fmt.Errorf("png text: tEXt chunk at %d has no keyword separator", off)
			}
			out = append(out, TextChunk{Key: string(k), Text: string(v)})
		case "IEND":
			return out, nil
		}
		off += 12 + n
	}
	return nil, errors.New("png text: no IEND chunk")
}
