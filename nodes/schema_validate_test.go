package nodes

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// validate checks v against the subset of JSON Schema 2020-12 the node
// schemas use (type, properties, required, additionalProperties, anyOf,
// $ref to #/$defs, const, enum, minimum, maximum, prefixItems, minItems,
// maxItems, minLength); other keywords are annotations.
func validate(root, s map[string]any, v any, path string) error {
	if ref, ok := s["$ref"].(string); ok {
		name, ok := strings.CutPrefix(ref, "#/$defs/")
		if !ok {
			return fmt.Errorf("%s: unsupported $ref %s", path, ref)
		}
		def, _ := root["$defs"].(map[string]any)[name].(map[string]any)
		if def == nil {
			return fmt.Errorf("%s: no $defs/%s", path, name)
		}
		if err := validate(root, def, v, path); err != nil {
			return err
		}
	}
	if t, ok := s["type"].(string); ok && !hasType(v, t) {
		return fmt.Errorf("%s: %v is not of type %s", path, v, t)
	}
	if c, ok := s["const"]; ok && fmt.Sprint(c) != fmt.Sprint(v) {
		return fmt.Errorf("%s: %v is not %v", path, v, c)
	}
	if e, ok := s["enum"].([]any); ok {
		found := false
		for _, x := range e {
			found = found || fmt.Sprint(x) == fmt.Sprint(v)
		}
		if !found {
			return fmt.Errorf("%s: %v not in %v", path, v, e)
		}
	}
	if n, ok := v.(json.Number); ok {
		f, _ := n.Float64()
		if m, ok := s["minimum"].(json.Number); ok {
			if mf, _ := m.Float64(); f < mf {
				return fmt.Errorf("%s: %v below minimum %v", path, n, m)
			}
		}
		if m, ok := s["maximum"].(json.Number); ok {
			if mf, _ := m.Float64(); f > mf {
				return fmt.Errorf("%s: %v above maximum %v", path, n, m)
			}
		}
	}
	if str, ok := v.(string); ok {
		if m, ok := s["minLength"].(json.Number); ok {
			if ml, _ := m.Int64(); int64(len(str)) < ml {
				return fmt.Errorf("%s: %q shorter than %v", path, str, m)
			}
		}
	}
	if arr, ok := v.([]any); ok {
		if m, ok := s["minItems"].(json.Number); ok {
			if n, _ := m.Int64(); int64(len(arr)) < n {
				return fmt.Errorf("%s: fewer than %v items", path, m)
			}
		}
		if m, ok := s["maxItems"].(json.Number); ok {
			if n, _ := m.Int64(); int64(len(arr)) > n {
				return fmt.Errorf("%s: more than %v items", path, m)
			}
		}
		if pi, ok := s["prefixItems"].([]any); ok {
			for i, sub := range pi {
				if i < len(arr) {
					if err := validate(root, sub.(map[string]any), arr[i], fmt.Sprintf("%s[%d]", path, i)); err != nil {
						return err
					}
				}
			}
		}
	}
	if obj, ok := v.(map[string]any); ok {
		props, _ := s["properties"].(map[string]any)
		for _, r := range asSlice(s["required"]) {
			if _, ok := obj[r.(string)]; !ok {
				return fmt.Errorf("%s: missing required %s", path, r)
			}
		}
		for k, x := range obj {
			sub, ok := props[k].(map[string]any)
			if !ok {
				if s["additionalProperties"] == false {
					return fmt.Errorf("%s: unknown property %s", path, k)
				}
				continue
			}
			if err := validate(root, sub, x, path+"."+k); err != nil {
				return err
			}
		}
	}
	if alts, ok := s["anyOf"].([]any); ok {
		var errs []string
		for _, a := range alts {
			err := validate(root, a.(map[string]any), v, path)
			if err == nil {
				return nil
			}
			errs = append(errs, err.Error())
		}
		return fmt.Errorf("%s: no alternative matches: %s", path, strings.Join(errs, "; "))
	}
	return nil
}

func asSlice(v any) []any { s, _ := v.([]any); return s }

func hasType(v any, t string) bool {
	switch t {
	case "object":
		_, ok := v.(map[string]any)
		return ok
	case "array":
		_, ok := v.([]any)
		return ok
	case "string":
		_, ok := v.(string)
		return ok
	case "boolean":
		_, ok := v.(bool)
		return ok
	case "number":
		_, ok := v.(json.Number)
		return ok
	case "integer":
		n, ok := v.(json.Number)
		return ok && !strings.ContainsAny(string(n), ".eE")
	}
	return false
}

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
	if checked != 4 {
		t.Fatalf("checked %d m3gate nodes, want 4", checked)
	}

	tests := []struct {
		name, id string
		mutate   func(in map[string]any)
		want     string
	}{
		{"threshold above 5", "11", func(in map[string]any) { in["quality_min"] = json.Number("7.5") }, "above maximum"},
		{"literal image", "11", func(in map[string]any) { in["images"] = "x.png" }, "not of type array"},
		{"unknown input", "10", func(in map[string]any) { in["qualty"] = true }, "unknown property qualty"},
		{"missing required", "11", func(in map[string]any) { delete(in, "mode") }, "missing required mode"},
		{"mode not a choice", "11", func(in map[string]any) { in["mode"] = "most" }, "not in"},
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
