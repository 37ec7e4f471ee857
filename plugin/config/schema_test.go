package config

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/m3gate/m3gate/schemas/jsonschema"
	"go.yaml.in/yaml/v3"
)

// The repository's config.yaml and schemas/config.schema.json, relative to
// this package.
var (
	repoConfig = filepath.Join("..", "..", "config.yaml")
	repoSchema = filepath.Join("..", "..", "schemas", "config.schema.json")
)

func loadSchema(t *testing.T) map[string]any {
	t.Helper()
	b, err := os.ReadFile(repoSchema)
	if err != nil {
		t.Fatal(err)
	}
	var s map[string]any
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("parse schema: %v", err)
	}
	return s
}

// yamlValue decodes YAML (or a marshalled config) into plain Go values.
func yamlValue(t *testing.T, b []byte) any {
	t.Helper()
	var v any
	if err := yaml.Unmarshal(b, &v); err != nil {
		t.Fatalf("decode yaml: %v", err)
	}
	if v == nil {
		v = map[string]any{}
	}
	return v
}

func TestRepoConfigIsDefault(t *testing.T) {
	got, err := Load(repoConfig, nil)
	if err != nil {
		t.Fatalf("load %s: %v", repoConfig, err)
	}
	want := Default()
	// Relative paths of the file resolve against its directory.
	want.Model.Dir = filepath.Join("..", "..", want.Model.Dir)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("config.yaml differs from Default():\ngot  %+v\nwant %+v", got, want)
	}
}

// TestRepoConfigDocumented checks that config.yaml sets every key of Config
// and has a comment above each key.
func TestRepoConfigDocumented(t *testing.T) {
	b, err := os.ReadFile(repoConfig)
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	var walk func(n *yaml.Node, prefix string, depth int)
	walk = func(n *yaml.Node, prefix string, depth int) {
		if n.Kind != yaml.MappingNode || depth > 1 {
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			key := joinKey(prefix, k.Value)
			seen[key] = true
			if strings.TrimSpace(k.HeadComment) == "" && !(depth == 0 && i == 0) {
				t.Errorf("config.yaml:%d: key %s has no comment above it", k.Line, key)
			}
			walk(n.Content[i+1], key, depth+1)
		}
	}
	walk(doc.Content[0], "", 0)
	for _, key := range configKeys(configType, "") {
		if !seen[key] {
			t.Errorf("config.yaml does not document %s", key)
		}
	}
}

// configKeys lists "section" and "section.key" for every field of Config.
func configKeys(t reflect.Type, prefix string) []string {
	var keys []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		key := joinKey(prefix, yamlKey(f))
		keys = append(keys, key)
		if f.Type.Kind() == reflect.Struct && f.Type != durationType {
			keys = append(keys, configKeys(f.Type, key)...)
		}
	}
	return keys
}

// TestSchemaMatchesConfig checks that the schema has exactly the keys of
// Config and that its defaults are Default().
func TestSchemaMatchesConfig(t *testing.T) {
	schema := loadSchema(t)
	defaults, err := Marshal(Default())
	if err != nil {
		t.Fatal(err)
	}
	def := yamlValue(t, defaults).(map[string]any)

	var schemaKeys []string
	props := schema["properties"].(map[string]any)
	for section, s := range props {
		schemaKeys = append(schemaKeys, section)
		for key, ks := range s.(map[string]any)["properties"].(map[string]any) {
			full := section + "." + key
			schemaKeys = append(schemaKeys, full)
			d, ok := ks.(map[string]any)["default"]
			if !ok {
				t.Errorf("schema: %s has no default", full)
				continue
			}
			want := def[section].(map[string]any)[key]
			if fmt.Sprint(normaliseNumbers(d)) != fmt.Sprint(normaliseNumbers(want)) {
				t.Errorf("schema default of %s = %v, want %v (Default())", full, d, want)
			}
		}
	}
	sort.Strings(schemaKeys)
	goKeys := configKeys(configType, "")
	sort.Strings(goKeys)
	if !reflect.DeepEqual(schemaKeys, goKeys) {
		t.Errorf("schema keys\n  %v\nConfig keys\n  %v", schemaKeys, goKeys)
	}
}

// normaliseNumbers turns every number into float64 so JSON and YAML values compare.
func normaliseNumbers(v any) any {
	switch x := v.(type) {
	case int:
		return float64(x)
	case map[string]any:
		out := map[string]any{}
		for k, e := range x {
			out[k] = normaliseNumbers(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = normaliseNumbers(e)
		}
		return out
	}
	return v
}

// TestSchemaAgreesWithLoad validates the default config, the repository's
// config.yaml and testdata against the schema: good files must pass and bad
// files must fail, as they do in Load.
func TestSchemaAgreesWithLoad(t *testing.T) {
	schema := loadSchema(t)
	defaults, err := Marshal(Default())
	if err != nil {
		t.Fatal(err)
	}
	if errs := validateSchema(schema, schema, yamlValue(t, defaults), ""); len(errs) > 0 {
		t.Errorf("Default() fails the schema: %v", errs)
	}
	files, _ := filepath.Glob(filepath.Join("testdata", "*", "*.yaml"))
	files = append(files, repoConfig)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var v any
		var errs []string
		if err := yaml.Unmarshal(b, &v); err != nil {
			errs = []string{err.Error()}
		} else {
			if v == nil {
				v = map[string]any{}
			}
			errs = validateSchema(schema, schema, v, "")
		}
		wantFail := strings.Contains(f, string(filepath.Separator)+"bad"+string(filepath.Separator))
		if gotFail := len(errs) > 0; gotFail != wantFail {
			t.Errorf("%s: schema errors %v, want failure %v", f, errs, wantFail)
		}
	}
}

// validateSchema checks v against the schema part s of root
// (schemas/jsonschema).
func validateSchema(root, s map[string]any, v any, at string) []string {
	return jsonschema.New(root).ValidateAt(s, v, at)
}
