package nodes

import (
	"bytes"
	"encoding/json"
	"errors"
	"github.com/m3gate/m3gate/schemas/jsonschema"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func decodeAny(t *testing.T, data []byte) any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestWorkflowMatchesNodeSchemas validates the m3gate nodes of the example
// API workflow against the committed schemas, and broken copies against
// them too.
func TestWorkflowMatchesNodeSchemas(t *testing.T) {
	root := repoRoot(t)
	schemaOf := func(class string) map[string]any {
		data, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(SchemaDir), class+".schema.json"))
		if err != nil {
			t.Fatal(err)
		}
		return decodeAny(t, data).(map[string]any)
	}
	raw, err := os.ReadFile("testdata/workflow-api.json")
	if err != nil {
		t.Fatal(err)
	}
	prompt := func() map[string]any { return decodeAny(t, raw).(map[string]any) }
	checked := 0
	for id, n := range prompt() {
		class := n.(map[string]any)["class_type"].(string)
		if _, ok := Lookup(class); !ok {
			continue
		}
		s := schemaOf(class)
		if err := validate(s, s, n, id); err != nil {
			t.Errorf("node %s: %v", id, err)
		}
		checked++
	}
	if checked != 7 {
		t.Fatalf("checked %d m3gate nodes, want 7", checked)
	}

	tests := []struct {
		name, id string
		mutate   func(in map[string]any)
		want     string
	}{
		{"threshold above 5", "11", func(in map[string]any) { in["quality_min"] = json.Number("7.5") }, "above the maximum 5"},
		{"literal image", "11", func(in map[string]any) { in["images"] = "x.png" }, "not of type array"},
		{"unknown input", "10", func(in map[string]any) { in["qualty"] = true }, `unknown property "qualty"`},
		{"missing required", "11", func(in map[string]any) { delete(in, "mode") }, `missing required property "mode"`},
		{"mode not a choice", "11", func(in map[string]any) { in["mode"] = "most" }, "is not one of"},
		{"int link id", "12", func(in map[string]any) { in["passed_count"] = []any{json.Number("11"), json.Number("2")} }, "not of type string"},
		{"fractional top_k", "15", func(in map[string]any) { in["top_k"] = json.Number("1.5") }, "not of type integer"},
		{"literal forceInput", "10", func(in map[string]any) { in["prompt"] = "a fox" }, "not of type array"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := prompt()
			n := p[tt.id].(map[string]any)
			tt.mutate(n["inputs"].(map[string]any))
			s := schemaOf(n["class_type"].(string))
			err := validate(s, s, n, tt.id)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("validate = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// validate checks v against the schema part s of root (schemas/jsonschema).
func validate(root, s map[string]any, v any, path string) error {
	if errs := jsonschema.New(root).ValidateAt(s, v, path); len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}
