package testenv

import (
	"bytes"
	"compress/zlib"
	pngbin "encoding/binary"
	"hash/crc32"
)

// RawPNG writes a w×h PNG chunk by chunk, so tests can build images Go's
// encoder would not (decompression bombs, strips of millions of pixels,
// stored deflate blocks): colour type ct (0 gray, 2 RGB, 6 RGBA) at bits
// per sample, deflate level, and row (nil: zeros) filling each row's
// samples.
func RawPNG(w, h int, ct, bits byte, level int, row func(y int, buf []byte)) []byte {
	channels := map[byte]int{0: 1, 2: 3, 6: 4}[ct]
	var z bytes.Buffer
	zw, _ := zlib.NewWriterLevel(&z, level)
	line := make([]byte, 1+w*channels*int(bits)/8) // filter byte 0 (none) + samples
	for y := range h {
		if row != nil {
			row(y, line[1:])
		}
		zw.Write(line)
	}
	zw.Close()
	var out bytes.Buffer
	chunk := func(typ string, data []byte) {
		pngbin.Write(&out, pngbin.BigEndian, uint32(len(data)))
		c := crc32.NewIEEE()
		c.Write([]byte(typ))
		c.Write(data)
		out.WriteString(typ)
		out.Write(data)
		pngbin.Write(&out, pngbin.BigEndian, c.Sum32())
	}
	out.WriteString("\x89PNG\r\n\x1a\n")
	ihdr := make([]byte, 13)
	pngbin.BigEndian.PutUint32(ihdr[0:], uint32(w))
	pngbin.BigEndian.PutUint32(ihdr[4:], uint32(h))
	ihdr[8], ihdr[9] = bits, ct
	chunk("IHDR", ihdr)
	chunk("IDAT", z.Bytes())
	chunk("IEND", nil)
	return out.Bytes()
}
