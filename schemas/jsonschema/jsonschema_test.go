package jsonschema

import (
	"strings"
	"testing"
)

const testSchema = `{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["name", "threads"],
  "additionalProperties": false,
  "properties": {
    "name": {"type": "string", "minLength": 2, "pattern": "^[a-z]+$"},
    "threads": {"type": "integer", "minimum": 0, "maximum": 8},
    "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    "mode": {"enum": ["all", "any"]},
    "kind": {"const": "gate"},
    "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3, "uniqueItems": true},
    "pair": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]},
    "scores": {"type": "object", "propertyNames": {"enum": ["quality", "correspondence"]}, "additionalProperties": {"$ref": "#/$defs/mos"}},
    "seed": {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": "^[0-9]+$"}]},
    "either": {"oneOf": [{"type": "integer"}, {"type": "number", "minimum": 10}]},
    "maybe": {"type": ["string", "null"]}
  },
  "$defs": {"mos": {"type": "number", "minimum": 0, "maximum": 5}}
}`

func TestValidate(t *testing.T) {
	s, err := Parse([]byte(testSchema))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		doc  string
		want string // "" valid, else a substring of the first error
	}{
		{"minimal", `{"name":"ab","threads":0}`, ""},
		{"full", `{"name":"ab","threads":8,"ratio":0.5,"mode":"any","kind":"gate","tags":["x","y"],"pair":["a",1],"scores":{"quality":4.5},"seed":"18446744073709551615","either":3,"maybe":null}`, ""},
		{"exact big integer", `{"name":"ab","threads":1,"seed":18446744073709551615}`, ""},
		{"missing required", `{"name":"ab"}`, `missing required property "threads"`},
		{"unknown property", `{"name":"ab","threads":1,"colour":1}`, `unknown property "colour"`},
		{"wrong type", `{"name":"ab","threads":"1"}`, "$.threads: \"1\" is not of type integer"},
		{"fraction for integer", `{"name":"ab","threads":1.5}`, "not of type integer"},
		{"below minimum", `{"name":"ab","threads":-1}`, "below the minimum"},
		{"above maximum", `{"name":"ab","threads":9}`, "above the maximum"},
		{"exclusive", `{"name":"ab","threads":1,"ratio":1}`, "is not below 1"},
		{"short string", `{"name":"a","threads":1}`, "shorter than 2"},
		{"pattern", `{"name":"AB","threads":1}`, "does not match"},
		{"enum", `{"name":"ab","threads":1,"mode":"most"}`, "is not one of"},
		{"const", `{"name":"ab","threads":1,"kind":"reroll"}`, `is not "gate"`},
		{"too many items", `{"name":"ab","threads":1,"tags":["a","b","c","d"]}`, "more than 3"},
		{"no items", `{"name":"ab","threads":1,"tags":[]}`, "fewer than 1"},
		{"duplicate items", `{"name":"ab","threads":1,"tags":["a","a"]}`, "repeats item 0"},
		{"item type", `{"name":"ab","threads":1,"tags":["a",2]}`, "$.tags[1]"},
		{"prefix items", `{"name":"ab","threads":1,"pair":[1,"a"]}`, "$.pair[0]"},
		{"property names", `{"name":"ab","threads":1,"scores":{"beauty":3}}`, "$.scores.beauty"},
		{"$ref", `{"name":"ab","threads":1,"scores":{"quality":7}}`, "above the maximum 5"},
		{"anyOf", `{"name":"ab","threads":1,"seed":"x1"}`, "matches no alternative"},
		{"oneOf twice", `{"name":"ab","threads":1,"either":12}`, "matches 2 alternatives"},
		{"type list", `{"name":"ab","threads":1,"maybe":3}`, "not of type"},
	}
	for _, tt := range tests {
		doc, err := Decode([]byte(tt.doc))
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		errs := s.Validate(doc)
		switch {
		case tt.want == "" && len(errs) > 0:
			t.Errorf("%s: got %v, want valid", tt.name, errs)
		case tt.want != "" && len(errs) == 0:
			t.Errorf("%s: valid, want an error containing %q", tt.name, tt.want)
		case tt.want != "" && !strings.Contains(strings.Join(errs, "\n"), tt.want):
			t.Errorf("%s: got %v, want an error containing %q", tt.name, errs, tt.want)
		}
	}
}

// TestYAMLValues accepts the Go types a YAML decoder produces.
func TestYAMLValues(t *testing.T) {
	s, err := Parse([]byte(testSchema))
	if err != nil {
		t.Fatal(err)
	}
	doc := map[string]any{"name": "ab", "threads": 3, "ratio": 0.25, "scores": map[string]any{"quality": 4}}
	if errs := s.Validate(doc); len(errs) > 0 {
		t.Errorf("yaml-shaped document: %v", errs)
	}
	doc["threads"] = 2.5
	if errs := s.Validate(doc); len(errs) == 0 {
		t.Error("2.5 accepted as an integer")
	}
}

func TestValidateDef(t *testing.T) {
	s, err := Parse([]byte(testSchema))
	if err != nil {
		t.Fatal(err)
	}
	if errs := s.ValidateDef("mos", 6); len(errs) == 0 {
		t.Error("6 accepted as a MOS")
	}
	if errs := s.ValidateDef("nope", 1); len(errs) == 0 || !strings.Contains(errs[0], "no definition") {
		t.Errorf("unknown definition: %v", errs)
	}
	if _, err := Parse([]byte(`[1]`)); err == nil {
		t.Error("a non-object schema parsed")
	}
}
