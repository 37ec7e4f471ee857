package header

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
)

// Encode renders a JSON header for entries in the given order (their Begin
// and End as given), with metadata as __metadata__ (sorted keys, omitted when
// empty), padded with spaces to a multiple of 8 bytes as the reference writer
// does. It does not include the 8-byte length prefix.
func Encode(entries []Entry, metadata map[string]string) ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteByte('{')
	first := true
	comma := func() {
		if !first {
			buf.WriteByte(',')
		}
		first = false
	}
	if len(metadata) > 0 {
		comma()
		keys := make([]string, 0, len(metadata))
		for k := range metadata {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		buf.WriteString(`"__metadata__":{`)
		for i, k := range keys {
			if i > 0 {
				buf.WriteByte(',')
			}
			writeString(&buf, k)
			buf.WriteByte(':')
			writeString(&buf, metadata[k])
		}
		buf.WriteByte('}')
	}
	for _, e := range entries {
		if e.Name == "__metadata__" {
			return nil, fmt.Errorf("tensor name %q is reserved", e.Name)
		}
		comma()
		writeString(&buf, e.Name)
		buf.WriteString(`:{"dtype":`)
		writeString(&buf, string(e.DType))
		buf.WriteString(`,"shape":[`)
		for i, s := range e.Shape {
			if i > 0 {
				buf.WriteByte(',')
			}
			buf.WriteString(strconv.FormatInt(s, 10))
		}
		buf.WriteString(`],"data_offsets":[`)
		buf.WriteString(strconv.FormatInt(e.Begin, 10))
		buf.WriteByte(',')
		buf.WriteString(strconv.FormatInt(e.End, 10))
		buf.WriteString("]}")
	}
	buf.WriteByte('}')
	for buf.Len()%8 != 0 {
		buf.WriteByte(' ')
	}
	if buf.Len() > MaxSize {
		return nil, fmt.Errorf("header of %d bytes exceeds the limit of %d", buf.Len(), MaxSize)
	}
	return buf.Bytes(), nil
}

func writeString(buf *bytes.Buffer, s string) {
	b, _ := json.Marshal(s) // a string always marshals
	buf.Write(b)
}
