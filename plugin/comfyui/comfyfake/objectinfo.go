package comfyfake

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"net/http"
	"sort"

	"github.com/m3gate/m3gate/nodes"
)

// member is one key of a JSON object, in document order.
type member struct {
	key string
	raw json.RawMessage
}

// orderedObject splits a JSON object into its members, keeping their order.
func orderedObject(doc []byte) ([]member, error) {
	dec := json.NewDecoder(bytes.NewReader(doc))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, fmt.Errorf("not a JSON object")
	}
	var out []member
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, err
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, fmt.Errorf("%v: %w", t, err)
		}
		out = append(out, member{key: t.(string), raw: raw})
	}
	return out, nil
}

// examplePNG stands in for the input/example.png a ComfyUI checkout ships.
func examplePNG() []byte {
	img := image.NewRGBA(image.Rect(0, 0, 16, 16))
	for y := 0; y < 16; y++ {
		for x := 0; x < 16; x++ {
			img.Set(x, y, color.RGBA{uint8(16 * x), uint8(16 * y), 128, 255})
		}
	}
	var buf bytes.Buffer
	_ = png.Encode(&buf, img)
	return buf.Bytes()
}

// infoEntry is a class's /object_info entry as the server encodes it;
// LoadImage lists the fake's input folder like the real node does.
func (s *Server) infoEntry(class string) []byte {
	py := s.pyInfo[class]
	if class != "LoadImage" {
		return py
	}
	s.mu.Lock()
	names := []any{}
	var sorted []string
	for k := range s.files {
		if k.typ == "input" && k.subfolder == "" {
			sorted = append(sorted, k.name)
		}
	}
	s.mu.Unlock()
	sort.Strings(sorted)
	for _, n := range sorted {
		names = append(names, n)
	}
	list, _ := json.Marshal(names)
	pyList, err := nodes.PythonJSON(list)
	if err != nil {
		return py
	}
	return bytes.Replace(py, []byte(loadImageChoices),
		[]byte(`"image": [`+string(pyList)+`, {"image_upload": true}]`), 1)
}

// objectInfo answers GET /object_info (class "") or /object_info/{class}
// in the server's encoding: classes in registration order, Python's
// json.dumps separators and escapes.
func (s *Server) objectInfo(w http.ResponseWriter, class string) {
	var b bytes.Buffer
	b.WriteByte('{')
	classes := s.infoOrder
	if class != "" {
		classes = nil
		if _, ok := s.pyInfo[class]; ok {
			classes = []string{class}
		}
	}
	for i, c := range classes {
		if i > 0 {
			b.WriteString(", ")
		}
		k, _ := json.Marshal(c)
		pk, _ := nodes.PythonJSON(k)
		b.Write(pk)
		b.WriteString(": ")
		b.Write(s.infoEntry(c))
	}
	b.WriteByte('}')
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	w.Write(b.Bytes())
}
