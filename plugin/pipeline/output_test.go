package pipeline

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"image"
	"image/png"
	"os"
	"testing"

	"github.com/m3gate/m3gate/plugin/comfyui"
)

// TestWriterMetadataIsUTF8: the m3gate chunk is iTXt, so a prompt outside
// Latin-1 reads back unchanged, and ComfyUI's own chunks stay as they were.
func TestWriterMetadataIsUTF8(t *testing.T) {
	var buf bytes.Buffer
	if err := png.Encode(&buf, image.NewGray(image.Rect(0, 0, 4, 4))); err != nil {
		t.Fatal(err)
	}
	src, err := comfyui.AddPNGText(buf.Bytes(), comfyui.TextChunk{Key: "prompt", Text: `{"3":{}}`})
	if err != nil {
		t.Fatal(err)
	}
	w, err := newWriter(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	const prompt = "statue café 雕像"
	md := Metadata{Prompt: prompt, Attempt: 2, Seeds: map[string]uint64{"3": 1 << 63}, Passed: true,
		Scores: map[string]AspectScore{"quality": {MOS: 3.25, Rating: "good"}}}
	path, err := w.image(false, &attempt{job: 1, try: 2, seeds: []uint64{1 << 63}}, &Image{Data: src, Node: "9"}, md)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ReadMetadata(data)
	if err != nil {
		t.Fatal(err)
	}
	if got.Prompt != prompt || got.Attempt != 2 || got.Seeds["3"] != 1<<63 || got.Scores["quality"].MOS != 3.25 {
		t.Errorf("read back %+v", got)
	}
	chunks, err := comfyui.PNGText(data)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		key  string
		intl bool
	}{{"prompt", false}, {MetadataKey, true}}
	if len(chunks) != len(want) {
		t.Fatalf("chunks %+v", chunks)
	}
	for i, c := range chunks {
		if c.Key != want[i].key || c.International != want[i].intl {
			t.Errorf("chunk %d = %s (iTXt %v), want %s (iTXt %v)", i, c.Key, c.International, want[i].key, want[i].intl)
		}
	}
}

// TestReadMetadataOfOldFiles: PNGs written before iTXt carry the JSON as
// UTF-8 in a tEXt chunk; they still read.
func TestReadMetadataOfOldFiles(t *testing.T) {
	var buf bytes.Buffer
	png.Encode(&buf, image.NewGray(image.Rect(0, 0, 1, 1)))
	b := buf.Bytes()
	data := []byte(`m3gate` + "\x00" + `{"prompt":"statue café 雕像","attempt":3}`)
	chunk := comfyuiRawChunk("tEXt", data)
	iend := bytes.Index(b, []byte("IEND")) - 4
	old := append(append(append([]byte{}, b[:iend]...), chunk...), b[iend:]...)
	md, err := ReadMetadata(old)
	if err != nil || md.Prompt != "statue café 雕像" || md.Attempt != 3 {
		t.Errorf("old file read as %+v, %v", md, err)
	}
}

func comfyuiRawChunk(typ string, data []byte) []byte {
	out := binary.BigEndian.AppendUint32(nil, uint32(len(data)))
	out = append(out, typ...)
	out = append(out, data...)
	return binary.BigEndian.AppendUint32(out, crc32.ChecksumIEEE(append([]byte(typ), data...)))
}
