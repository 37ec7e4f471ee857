package tensorio

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// rawFile assembles a safetensors file from a header text and data bytes,
// with the true header length.
func rawFile(header string, data []byte) []byte {
	b := make([]byte, 8, 8+len(header)+len(data))
	binary.LittleEndian.PutUint64(b, uint64(len(header)))
	b = append(b, header...)
	return append(b, data...)
}

// withLen is rawFile with a length prefix that may lie.
func withLen(n uint64, rest string) []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, n)
	return append(b, rest...)
}

func TestCorruptFiles(t *testing.T) {
	valid := `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I64","shape":[1],"data_offsets":[8,16]}}`
	d16 := make([]byte, 16)
	tests := []struct {
		name string
		file []byte
		want []string // substrings of the error besides the file name
	}{
		{"empty file", nil, []string{"truncated", "0 bytes"}},
		{"short length prefix", []byte{1, 2, 3}, []string{"truncated", "3 bytes"}},
		{"header length beyond file", withLen(500, `{}`), []string{"truncated", "header length 500"}},
		{"huge header length", withLen(1<<60, `{}`), []string{"header length 1152921504606846976 exceeds"}},
		{"max uint64 header length", withLen(^uint64(0), `{}`), []string{"exceeds"}},
		{"not json", rawFile(`hello world`, nil), []string{"not a JSON object"}},
		{"json array", rawFile(`[1,2]`, nil), []string{"not a JSON object"}},
		{"cut json", rawFile(`{"a":{"dtype":"F32"`, nil), []string{`tensor "a"`}},
		{"trailing garbage", rawFile(`{}  x`, nil), []string{"trailing data"}},
		{"invalid utf8", rawFile("{\"\xff\":1}", nil), []string{"UTF-8"}},
		{"unknown dtype", rawFile(`{"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}}`, make([]byte, 8)), []string{`tensor "a"`, `unsupported dtype "F64"`}},
		{"u8 dtype", rawFile(`{"q":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`, make([]byte, 1)), []string{`tensor "q"`, `"U8"`}},
		{"dtype not string", rawFile(`{"a":{"dtype":4,"shape":[1],"data_offsets":[0,4]}}`, make([]byte, 4)), []string{`tensor "a"`, "dtype is the number 4"}},
		{"duplicate tensor", rawFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, make([]byte, 8)), []string{`duplicate key "a"`}},
		{"duplicate metadata", rawFile(`{"__metadata__":{},"__metadata__":{}}`, nil), []string{`duplicate key "__metadata__"`}},
		{"duplicate metadata key", rawFile(`{"__metadata__":{"k":"1","k":"2"}}`, nil), []string{"__metadata__", `duplicate key "k"`}},
		{"metadata not string", rawFile(`{"__metadata__":{"k":1}}`, nil), []string{"__metadata__", `"k"`, "not a string"}},
		{"duplicate field", rawFile(`{"a":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}}`, make([]byte, 4)), []string{`tensor "a"`, `duplicate field "dtype"`}},
		{"missing offsets", rawFile(`{"a":{"dtype":"F32","shape":[1]}}`, nil), []string{`tensor "a"`, "missing data_offsets"}},
		{"missing shape", rawFile(`{"a":{"dtype":"F32","data_offsets":[0,4]}}`, make([]byte, 4)), []string{`tensor "a"`, "missing shape"}},
		{"negative dim", rawFile(`{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}`, make([]byte, 4)), []string{`tensor "a"`, "negative"}},
		{"fractional dim", rawFile(`{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}`, make([]byte, 4)), []string{`tensor "a"`, "1.5"}},
		{"three offsets", rawFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}`, make([]byte, 8)), []string{`tensor "a"`, "3 values"}},
		{"shape overflow", rawFile(`{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}`, make([]byte, 4)), []string{`tensor "a"`, "overflows"}},
		{"size lie", rawFile(`{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}`, make([]byte, 8)), []string{`tensor "a"`, "span 8 bytes", "needs 12"}},
		{"dtype lie", rawFile(`{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,8]}}`, make([]byte, 8)), []string{`tensor "a"`, "needs 4"}},
		{"offsets reversed", rawFile(`{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}}`, make([]byte, 8)), []string{`tensor "a"`, "end before"}},
		{"offsets out of range", rawFile(`{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}`, make([]byte, 8)), []string{`tensor "a"`, "past the end"}},
		{"truncated data", rawFile(valid, d16[:12]), []string{`tensor "b"`, "past the end"}},
		{"overlap", rawFile(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}`, make([]byte, 12)), []string{`tensor "b"`, `overlap tensor "a"`}},
		{"hole", rawFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}`, make([]byte, 12)), []string{`tensor "b"`, "hole of 4 bytes"}},
		{"leading hole", rawFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, make([]byte, 8)), []string{`tensor "a"`, "hole"}},
		{"unused tail", rawFile(valid, make([]byte, 20)), []string{"4 unused bytes"}},
	}
	dir := t.TempDir()
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_")+".safetensors")
			if err := os.WriteFile(path, tc.file, 0o644); err != nil {
				t.Fatal(err)
			}
			c, err := Open(path)
			if err == nil {
				c.Close()
				t.Fatalf("case %d: Open succeeded, want an error", i)
			}
			for _, w := range append([]string{path}, tc.want...) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestValidEdgeCases(t *testing.T) {
	tests := []struct {
		name  string
		file  []byte
		names []string
	}{
		{"no tensors", rawFile(`{}`, nil), nil},
		{"padded header", rawFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}      `, make([]byte, 4)), []string{"a"}},
		{"zero-size tensors share an offset", rawFile(`{"z":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"y":{"dtype":"BF16","shape":[3,0],"data_offsets":[4,4]}}`, make([]byte, 4)), []string{"a", "y", "z"}},
		{"unknown tensor field", rawFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"extra":{"x":[1,2]}}}`, make([]byte, 4)), []string{"a"}},
		{"unaligned header", rawFile(`{"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}`, make([]byte, 8)), []string{"a"}},
	}
	dir := t.TempDir()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_")+".safetensors")
			if err := os.WriteFile(path, tc.file, 0o644); err != nil {
				t.Fatal(err)
			}
			c, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if got, want := strings.Join(c.Names(), ","), strings.Join(tc.names, ","); got != want {
				t.Errorf("Names() = %q, want %q", got, want)
			}
			for _, n := range c.Names() {
				if _, err := c.Tensor(n); err != nil {
					t.Errorf("Tensor(%q): %v", n, err)
				}
			}
		})
	}
}

func TestCorruptSharded(t *testing.T) {
	shardA := rawFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, make([]byte, 4))
	shardB := rawFile(`{"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, make([]byte, 4))
	shardAB := rawFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, make([]byte, 8))
	badShard := rawFile(`{"b":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}`, make([]byte, 4))
	tests := []struct {
		name  string
		index string
		files map[string][]byte
		want  []string
	}{
		{"missing tensor in shard",
			`{"weight_map":{"a":"s1.safetensors","b":"s1.safetensors"}}`,
			map[string][]byte{"s1.safetensors": shardA},
			[]string{`tensor "b"`, "missing from shard", "s1.safetensors"}},
		{"tensor in two shards",
			`{"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}}`,
			map[string][]byte{"s1.safetensors": shardA, "s2.safetensors": shardAB},
			[]string{`tensor "a"`, "two shards", "s1.safetensors", "s2.safetensors"}},
		{"tensor in other shard than index says",
			`{"weight_map":{"a":"s2.safetensors","b":"s1.safetensors"}}`,
			map[string][]byte{"s1.safetensors": shardA, "s2.safetensors": shardB},
			[]string{`tensor "a"`, "index puts it in s2.safetensors"}},
		{"tensor not in index",
			`{"weight_map":{"a":"s1.safetensors"}}`,
			map[string][]byte{"s1.safetensors": shardAB},
			[]string{`tensor "b"`, "not in the index"}},
		{"shard file missing",
			`{"weight_map":{"a":"s1.safetensors","b":"gone.safetensors"}}`,
			map[string][]byte{"s1.safetensors": shardA},
			[]string{"gone.safetensors", "no such file"}},
		{"corrupt shard",
			`{"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}}`,
			map[string][]byte{"s1.safetensors": shardA, "s2.safetensors": badShard},
			[]string{"s2.safetensors", `tensor "b"`, "needs 8"}},
		{"path traversal",
			`{"weight_map":{"a":"../s1.safetensors"}}`,
			map[string][]byte{"s1.safetensors": shardA},
			[]string{`tensor "a"`, "not a plain file name"}},
		{"duplicate weight_map key",
			`{"weight_map":{"a":"s1.safetensors","a":"s1.safetensors"}}`,
			map[string][]byte{"s1.safetensors": shardA},
			[]string{`duplicate key "a"`}},
		{"no weight_map",
			`{"metadata":{"total_size":4}}`,
			map[string][]byte{"s1.safetensors": shardA},
			[]string{"no weight_map"}},
		{"index not json",
			`weights`,
			nil,
			[]string{IndexName}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for n, b := range tc.files {
				if err := os.WriteFile(filepath.Join(dir, n), b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			idx := filepath.Join(dir, IndexName)
			if err := os.WriteFile(idx, []byte(tc.index), 0o644); err != nil {
				t.Fatal(err)
			}
			c, err := Open(dir)
			if err == nil {
				c.Close()
				t.Fatal("Open succeeded, want an error")
			}
			for _, w := range append([]string{idx}, tc.want...) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestOpenDirectory(t *testing.T) {
	one := rawFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, make([]byte, 4))
	tests := []struct {
		name  string
		files []string
		want  string // "" = success
	}{
		{"model.safetensors", []string{"model.safetensors", "other.safetensors"}, ""},
		{"single other file", []string{"weights.safetensors"}, ""},
		{"empty", nil, "no " + IndexName},
		{"ambiguous", []string{"x.safetensors", "y.safetensors"}, "2 .safetensors files"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range tc.files {
				os.WriteFile(filepath.Join(dir, f), one, 0o644)
			}
			c, err := Open(dir)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if got, want := filepath.Base(mustInfo(t, c, "a").File), tc.files[0]; got != want {
					t.Errorf("opened %s, want %s", got, want)
				}
				c.Close()
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Open err = %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := Open(filepath.Join(t.TempDir(), "absent.safetensors")); err == nil {
		t.Error("Open of a missing path succeeded")
	}
}

func mustInfo(t *testing.T, c *Checkpoint, name string) Info {
	t.Helper()
	info, ok := c.Info(name)
	if !ok {
		t.Fatalf("%s not found", name)
	}
	return info
}
