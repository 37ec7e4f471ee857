// Package jsonschema checks documents against the JSON Schemas kept in
// schemas/ (config.yaml, the node schemas, the daemon's messages). It
// implements the subset of JSON Schema 2020-12 those schemas use: $ref to
// #/$defs, type (a name or a list), const, enum, minimum, maximum,
// exclusiveMinimum, exclusiveMaximum, minLength, pattern, items,
// prefixItems, minItems, maxItems, uniqueItems, required, properties,
// additionalProperties (false or a schema), propertyNames, anyOf, oneOf and
// allOf. Other keywords are annotations and are ignored.
//
// Documents may come from encoding/json (with or without UseNumber) or
// from a YAML decoder: numbers may be json.Number, float64 or any Go
// integer type.
package jsonschema

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"regexp"
	"sort"
	"strings"
)

// Decode parses JSON keeping numbers exact (json.Number).
func Decode(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("decode json: %w", err)
	}
	return v, nil
}

// Schema is a parsed JSON Schema document.
type Schema struct {
	root map[string]any
}

// Parse parses a JSON Schema document.
func Parse(data []byte) (*Schema, error) {
	v, err := Decode(data)
	if err != nil {
		return nil, fmt.Errorf("parse schema: %w", err)
	}
	root, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("parse schema: the document is not an object")
	}
	return &Schema{root: root}, nil
}

// New wraps an already decoded schema document.
func New(root map[string]any) *Schema { return &Schema{root: root} }

// ValidateAt checks doc against sub, a part of the schema (such as one of
// its definitions), reporting locations under at.
func (s *Schema) ValidateAt(sub map[string]any, doc any, at string) []string {
	return s.check(sub, doc, at)
}

// Validate checks doc against the schema and returns every violation, each
// prefixed with its location ("$.model.threads"); nil means doc is valid.
func (s *Schema) Validate(doc any) []string {
	return s.ValidateDef("", doc)
}

// ValidateDef checks doc against the definition #/$defs/name, or the whole
// schema when name is empty.
func (s *Schema) ValidateDef(name string, doc any) []string {
	if name == "" {
		return s.check(s.root, doc, "$")
	}
	def, ok := s.def(name)
	if !ok {
		return []string{fmt.Sprintf("$: no definition #/$defs/%s", name)}
	}
	return s.check(def, doc, "$")
}

func (s *Schema) def(name string) (map[string]any, bool) {
	defs, _ := s.root["$defs"].(map[string]any)
	d, ok := defs[name].(map[string]any)
	return d, ok
}

func (s *Schema) check(sch map[string]any, v any, at string) []string {
	var errs []string
	fail := func(format string, args ...any) {
		errs = append(errs, at+": "+fmt.Sprintf(format, args...))
	}
	if ref, ok := sch["$ref"].(string); ok {
		name, ok := strings.CutPrefix(ref, "#/$defs/")
		def, found := s.def(name)
		if !ok || !found {
			fail("unresolvable $ref %s", ref)
		} else {
			errs = append(errs, s.check(def, v, at)...)
		}
	}
	if t, ok := sch["type"]; ok && !typeMatches(t, v) {
		fail("%s is not of type %v", show(v), t)
		return errs
	}
	if c, ok := sch["const"]; ok && !equal(c, v) {
		fail("%s is not %s", show(v), show(c))
	}
	if e, ok := sch["enum"].([]any); ok {
		found := false
		for _, x := range e {
			found = found || equal(x, v)
		}
		if !found {
			fail("%s is not one of %s", show(v), show(e))
		}
	}
	if f, ok := number(v); ok {
		if m, ok := number(sch["minimum"]); ok && f < m {
			fail("%s is below the minimum %v", show(v), m)
		}
		if m, ok := number(sch["maximum"]); ok && f > m {
			fail("%s is above the maximum %v", show(v), m)
		}
		if m, ok := number(sch["exclusiveMinimum"]); ok && f <= m {
			fail("%s is not above %v", show(v), m)
		}
		if m, ok := number(sch["exclusiveMaximum"]); ok && f >= m {
			fail("%s is not below %v", show(v), m)
		}
	}
	if str, ok := v.(string); ok {
		if m, ok := number(sch["minLength"]); ok && float64(len([]rune(str))) < m {
			fail("%q is shorter than %v", str, m)
		}
		if p, ok := sch["pattern"].(string); ok {
			re, err := regexp.Compile(p)
			if err != nil {
				fail("bad pattern %q: %v", p, err)
			} else if !re.MatchString(str) {
				fail("%q does not match %s", str, p)
			}
		}
	}
	if arr, ok := v.([]any); ok {
		if m, ok := number(sch["minItems"]); ok && float64(len(arr)) < m {
			fail("has %d items, fewer than %v", len(arr), m)
		}
		if m, ok := number(sch["maxItems"]); ok && float64(len(arr)) > m {
			fail("has %d items, more than %v", len(arr), m)
		}
		if u, _ := sch["uniqueItems"].(bool); u {
			for i := range arr {
				for j := 0; j < i; j++ {
					if equal(arr[i], arr[j]) {
						fail("item %d repeats item %d (%s)", i, j, show(arr[i]))
					}
				}
			}
		}
		prefix, _ := sch["prefixItems"].([]any)
		for i, x := range arr {
			sub, ok := map[string]any(nil), false
			if i < len(prefix) {
				sub, ok = prefix[i].(map[string]any)
			} else {
				sub, ok = sch["items"].(map[string]any)
			}
			if ok {
				errs = append(errs, s.check(sub, x, fmt.Sprintf("%s[%d]", at, i))...)
			}
		}
	}
	if obj, ok := v.(map[string]any); ok {
		req, _ := sch["required"].([]any)
		for _, r := range req {
			if name, _ := r.(string); name != "" {
				if _, ok := obj[name]; !ok {
					fail("missing required property %q", name)
				}
			}
		}
		props, _ := sch["properties"].(map[string]any)
		for _, k := range sortedKeys(obj) {
			x := obj[k]
			if pn, ok := sch["propertyNames"].(map[string]any); ok {
				errs = append(errs, s.check(pn, k, at+"."+k)...)
			}
			if p, ok := props[k].(map[string]any); ok {
				errs = append(errs, s.check(p, x, at+"."+k)...)
				continue
			}
			switch ap := sch["additionalProperties"].(type) {
			case bool:
				if !ap {
					fail("unknown property %q", k)
				}
			case map[string]any:
				errs = append(errs, s.check(ap, x, at+"."+k)...)
			}
		}
	}
	if all, ok := sch["allOf"].([]any); ok {
		for _, a := range all {
			if sub, ok := a.(map[string]any); ok {
				errs = append(errs, s.check(sub, v, at)...)
			}
		}
	}
	if alts, ok := sch["anyOf"].([]any); ok {
		if n, why := s.matches(alts, v, at); n == 0 {
			fail("matches no alternative: %s", why)
		}
	}
	if alts, ok := sch["oneOf"].([]any); ok {
		if n, why := s.matches(alts, v, at); n != 1 {
			if n == 0 {
				fail("matches no alternative: %s", why)
			} else {
				fail("matches %d alternatives, want exactly one", n)
			}
		}
	}
	return errs
}

// matches counts the alternatives v satisfies and explains the failures.
func (s *Schema) matches(alts []any, v any, at string) (int, string) {
	n := 0
	var why []string
	for _, a := range alts {
		sub, ok := a.(map[string]any)
		if !ok {
			continue
		}
		if e := s.check(sub, v, at); len(e) == 0 {
			n++
		} else {
			why = append(why, strings.Join(e, ", "))
		}
	}
	return n, strings.Join(why, "; ")
}

// typeMatches reports whether v has the JSON type t (a name or a list).
func typeMatches(t, v any) bool {
	if list, ok := t.([]any); ok {
		for _, x := range list {
			if typeMatches(x, v) {
				return true
			}
		}
		return false
	}
	switch t {
	case "null":
		return v == nil
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
		_, ok := number(v)
		return ok
	case "integer":
		if n, ok := v.(json.Number); ok {
			return !strings.ContainsAny(string(n), ".eE") || isWhole(n)
		}
		f, ok := number(v)
		return ok && f == math.Trunc(f)
	}
	return false
}

func isWhole(n json.Number) bool {
	f, err := n.Float64()
	return err == nil && f == math.Trunc(f)
}

// number converts any numeric representation to float64.
func number(v any) (float64, bool) {
	switch x := v.(type) {
	case json.Number:
		f, err := x.Float64()
		return f, err == nil
	case float64:
		return x, true
	case float32:
		return float64(x), true
	case int:
		return float64(x), true
	case int64:
		return float64(x), true
	case int32:
		return float64(x), true
	case uint64:
		return float64(x), true
	case uint:
		return float64(x), true
	}
	return 0, false
}

// equal compares JSON values, numbers by value whatever their Go type.
func equal(a, b any) bool {
	if fa, ok := number(a); ok {
		fb, ok := number(b)
		return ok && fa == fb
	}
	switch x := a.(type) {
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !equal(x[i], y[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k := range x {
			if !equal(x[k], y[k]) {
				return false
			}
		}
		return true
	}
	return reflect.DeepEqual(a, b)
}

func show(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	if len(b) > 80 {
		return string(b[:77]) + "..."
	}
	return string(b)
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
