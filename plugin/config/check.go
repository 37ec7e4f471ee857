package config

import (
	"fmt"
	"math"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// mapKeyRE is what a map key (an aspect name) may look like: viper splits
// keys on dots, so anything else would be misread.
var mapKeyRE = regexp.MustCompile(`^[a-z][a-z0-9_-]*$`)

// checkNode checks the YAML node n against the Go type t: unknown or
// duplicate keys and wrong scalar types become FieldErrors with n's line.
// It records the line of every key it sees in lines.
func checkNode(file string, n *yaml.Node, t reflect.Type, key string, lines map[string]int) Errors {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if key != "" {
		if _, seen := lines[key]; !seen {
			lines[key] = n.Line
		}
	}
	fail := func(format string, args ...any) Errors {
		k := key
		if k == "" {
			k = "(top level)"
		}
		return Errors{{Key: k, Source: file, Line: n.Line, Msg: fmt.Sprintf(format, args...)}}
	}
	switch {
	case t == durationType:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
			return fail("want a duration such as 30s or 500ms, got %s", describe(n))
		}
		d, err := time.ParseDuration(n.Value)
		if err != nil {
			return fail("want a duration such as 30s or 500ms, got %q", n.Value)
		}
		if d < 0 {
			return fail("duration %s is negative", n.Value)
		}
		return nil
	case t.Kind() == reflect.Struct:
		if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
			return nil // an empty section keeps its defaults
		}
		if n.Kind != yaml.MappingNode {
			return fail("want a mapping of %s keys, got %s", sectionName(key), describe(n))
		}
		fields := map[string]reflect.Type{}
		var names []string
		for i := 0; i < t.NumField(); i++ {
			k := yamlKey(t.Field(i))
			fields[k] = t.Field(i).Type
			names = append(names, k)
		}
		var errs Errors
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			kn, vn := n.Content[i], n.Content[i+1]
			child := joinKey(key, kn.Value)
			ft, ok := fields[kn.Value]
			switch {
			case !ok:
				msg := fmt.Sprintf("unknown key (known keys: %s)", strings.Join(names, ", "))
				if s := suggest(kn.Value, names); s != "" {
					msg = fmt.Sprintf("unknown key, did you mean %q?", s)
				}
				errs = append(errs, &FieldError{Key: child, Source: file, Line: kn.Line, Msg: msg})
			case seen[kn.Value]:
				errs = append(errs, &FieldError{Key: child, Source: file, Line: kn.Line, Msg: fmt.Sprintf("duplicate key (first on line %d)", lines[child])})
			default:
				seen[kn.Value] = true
				lines[child] = kn.Line
				errs = append(errs, checkNode(file, vn, ft, child, lines)...)
			}
		}
		return errs
	case t.Kind() == reflect.Map:
		if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
			return nil
		}
		if n.Kind != yaml.MappingNode {
			return fail("want a mapping of aspect to value, got %s", describe(n))
		}
		var errs Errors
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			kn, vn := n.Content[i], n.Content[i+1]
			child := joinKey(key, kn.Value)
			switch {
			case kn.Kind != yaml.ScalarNode || !mapKeyRE.MatchString(kn.Value):
				errs = append(errs, &FieldError{Key: child, Source: file, Line: kn.Line, Msg: "map key must be a lowercase name such as quality"})
			case seen[kn.Value]:
				errs = append(errs, &FieldError{Key: child, Source: file, Line: kn.Line, Msg: "duplicate key"})
			default:
				seen[kn.Value] = true
				lines[child] = kn.Line
				errs = append(errs, checkNode(file, vn, t.Elem(), child, lines)...)
			}
		}
		return errs
	case t.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return fail("want a list, got %s", describe(n))
		}
		var errs Errors
		for i, en := range n.Content {
			errs = append(errs, checkNode(file, en, t.Elem(), fmt.Sprintf("%s[%d]", key, i), lines)...)
		}
		return errs
	}
	if n.Kind != yaml.ScalarNode {
		return fail("want %s, got %s", kindName(t), describe(n))
	}
	switch t.Kind() {
	case reflect.String:
		if n.Tag != "!!str" {
			return fail("want a string, got %s (quote it if you meant a string)", describe(n))
		}
	case reflect.Bool:
		if n.Tag != "!!bool" {
			return fail("want true or false, got %s", describe(n))
		}
	case reflect.Int:
		if n.Tag != "!!int" {
			return fail("want an integer, got %s", describe(n))
		}
		var i int
		if err := n.Decode(&i); err != nil {
			return fail("integer %s does not fit", n.Value)
		}
	case reflect.Float64:
		if n.Tag != "!!int" && n.Tag != "!!float" {
			return fail("want a number, got %s", describe(n))
		}
		var f float64
		if err := n.Decode(&f); err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return fail("want a finite number, got %s", n.Value)
		}
	default:
		return fail("unsupported type %s", t)
	}
	return nil
}

func joinKey(prefix, k string) string {
	if prefix == "" {
		return k
	}
	return prefix + "." + k
}

func sectionName(key string) string {
	if key == "" {
		return "section"
	}
	return key
}

// describe names a YAML node's type for error messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!str":
			return "string " + strconv.Quote(n.Value)
		case "!!int":
			return "integer " + n.Value
		case "!!float":
			return "number " + n.Value
		case "!!bool":
			return "boolean " + n.Value
		case "!!null":
			return "null"
		}
		return n.Tag + " " + n.Value
	}
	return "an unexpected node"
}

func kindName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int:
		return "an integer"
	case reflect.Float64:
		return "a number"
	}
	return t.String()
}

// suggest returns the known name closest to s (edit distance at most 2).
func suggest(s string, names []string) string {
	best, bestD := "", 3
	sorted := append([]string(nil), names...)
	sort.Strings(sorted)
	for _, n := range sorted {
		if d := editDistance(strings.ToLower(s), n); d < bestD {
			best, bestD = n, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
