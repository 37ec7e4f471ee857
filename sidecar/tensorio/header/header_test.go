package header

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"testing"
)

// rawFile assembles a safetensors file from a header text and data bytes.
func rawFile(header string, data []byte) []byte {
	b := make([]byte, 8, 8+len(header)+len(data))
	binary.LittleEndian.PutUint64(b, uint64(len(header)))
	b = append(b, header...)
	return append(b, data...)
}

// withLen is a length prefix (which may lie) followed by rest.
func withLen(n uint64, rest string) []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, n)
	return append(b, rest...)
}

// fuzzSeeds are the seed inputs of FuzzParseHeader (also written to
// testdata/fuzz/FuzzParseHeader by TestWriteFuzzSeeds when
// M3GATE_WRITE_FUZZ_SEEDS=1).
func fuzzSeeds() [][]byte {
	return [][]byte{
		rawFile(`{}`, nil),
		rawFile(`{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I64","shape":[1],"data_offsets":[8,16]}}`, make([]byte, 16)),
		rawFile(`{"w":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]},"z":{"dtype":"F16","shape":[0],"data_offsets":[8,8]}}    `, make([]byte, 8)),
		rawFile(`{"a":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}`, make([]byte, 4)),
		rawFile(`{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}`, make([]byte, 8)),
		rawFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, make([]byte, 8)),
		rawFile(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}`, make([]byte, 12)),
		rawFile(`{"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}}`, make([]byte, 8)),
		rawFile(`{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}`, make([]byte, 4)),
		withLen(1<<60, `{}`),
		withLen(3, `{}`),
	}
}

// FuzzParseHeader checks that Parse never panics, and that whatever it
// accepts is consistent: entries tile the data section exactly, each entry's
// size is dtype×shape, and re-encoding the header parses to the same result.
func FuzzParseHeader(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, file []byte) {
		h, err := Parse(file)
		if err != nil {
			if h != nil {
				t.Fatal("header returned with an error")
			}
			return
		}
		dataSize := int64(len(file)) - h.DataStart
		var pos int64

		for _, e := range h.Entries {
			if e.Begin != pos {
				t.Fatalf("entry %q begins at %d, want %d", e.Name, e.Begin, pos)
			}
			size, ok := ByteSize(e.DType, e.Shape)
			if !ok || e.End-e.Begin != size {
				t.Fatalf("entry %q spans %d bytes, dtype×shape %d (ok=%v)", e.Name, e.End-e.Begin, size, ok)
			}
			pos = e.End
		}
		if pos != dataSize {
			t.Fatalf("entries cover %d of %d data bytes", pos, dataSize)
		}
		hdr, err := Encode(h.Entries, h.Metadata)
		if err != nil {
			return // too large to re-encode; nothing to compare
		}
		again, err := Parse(append(rawFile(string(hdr), nil), file[h.DataStart:]...))
		if err != nil {
			t.Fatalf("re-encoded header rejected: %v\n%s", err, hdr)
		}
		if len(h.Metadata) == 0 {
			h.Metadata = nil
		}
		again.DataStart = h.DataStart
		if !reflect.DeepEqual(again, h) {
			t.Fatalf("re-encoded header differs:\n got %+v\nwant %+v", again, h)
		}
	})
}

// TestWriteFuzzSeeds writes the seed corpus files; run with
// M3GATE_WRITE_FUZZ_SEEDS=1 after changing fuzzSeeds.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("M3GATE_WRITE_FUZZ_SEEDS") == "" {
		t.Skip("set M3GATE_WRITE_FUZZ_SEEDS=1 to rewrite testdata/fuzz/FuzzParseHeader")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzParseHeader")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, s := range fuzzSeeds() {
		body := "go test fuzz v1\n[]byte(" + strconv.Quote(string(s)) + ")\n"
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestParseEntries(t *testing.T) {
	file := rawFile(`{"__metadata__":{"format":"pt"},"b":{"dtype":"I64","shape":[1],"data_offsets":[8,16]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, make([]byte, 16))
	h, err := Parse(file)
	if err != nil {
		t.Fatal(err)
	}
	want := &Header{
		Entries: []Entry{
			{Name: "a", DType: F32, Shape: []int64{2}, Begin: 0, End: 8},
			{Name: "b", DType: I64, Shape: []int64{1}, Begin: 8, End: 16},
		},
		Metadata:  map[string]string{"format": "pt"},
		DataStart: int64(len(file) - 16),
	}
	if got := h; !reflect.DeepEqual(got, want) {
		t.Errorf("ParseHeader = %+v, want %+v", got, want)
	}
}

func TestParseIndex(t *testing.T) {
	idx, err := ParseIndex([]byte(`{"metadata":{"total_size":1234,"format":"pt","x":[1, 2]},"weight_map":{"a":"m-1.safetensors","b":"m-2.safetensors"},"extra":{"ignored":true}}`))
	if err != nil {
		t.Fatal(err)
	}
	want := &Index{
		Metadata:  map[string]string{"total_size": "1234", "format": "pt", "x": "[1,2]"},
		WeightMap: map[string]string{"a": "m-1.safetensors", "b": "m-2.safetensors"},
	}
	if got := idx; !reflect.DeepEqual(got, want) {
		t.Errorf("ParseIndex = %+v, want %+v", got, want)
	}
}

func TestHugeLengthDoesNotAllocate(t *testing.T) {
	tests := []struct {
		name string
		n    uint64
	}{
		{"2^60", 1 << 60},
		{"max uint64", ^uint64(0)},
		{"just over the limit", MaxSize + 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			file := withLen(tc.n, `{"a":1}`)
			allocs := testing.AllocsPerRun(10, func() {
				if _, err := Parse(file); err == nil {
					t.Fatal("Parse succeeded")
				}
			})
			// Only the error value itself.
			if allocs > 5 {
				t.Errorf("Parse allocated %v times", allocs)
			}
		})
	}
}
