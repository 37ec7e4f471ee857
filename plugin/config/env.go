package config

import (
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/viper"
)

// applyEnv applies M3GATE_<SECTION>_<KEY> overrides from env to v and
// records in set which variable set which key. Variables whose section is
// not a config section (such as M3GATE_SIDECAR, the sidecar binary) are
// ignored; a known section with an unknown key is an error.
func applyEnv(v *viper.Viper, env []string, set map[string]string) Errors {
	vars := map[string]string{}
	for _, kv := range env {
		name, value, ok := strings.Cut(kv, "=")
		if ok && strings.HasPrefix(name, EnvPrefix) {
			vars[name] = value
		}
	}
	names := make([]string, 0, len(vars))
	for n := range vars {
		names = append(names, n)
	}
	sort.Strings(names)

	var errs Errors
	for _, name := range names {
		rest := strings.ToLower(strings.TrimPrefix(name, EnvPrefix))
		for i := 0; i < configType.NumField(); i++ {
			section := configType.Field(i)
			skey := yamlKey(section)
			after, ok := strings.CutPrefix(rest, skey+"_")
			if !ok {
				continue
			}
			key, ft, err := envField(section.Type, skey, after)
			if err == nil {
				var val any
				val, err = parseEnvValue(ft, vars[name])
				if err == nil {
					v.Set(key, val)
					set[key] = name
					break
				}
			}
			if key == "" {
				key = skey + "." + after
			}
			errs = append(errs, &FieldError{Key: key, Source: "$" + name, Msg: err.Error()})
			break
		}
	}
	return errs
}

// envField finds the field of section type st named by rest ("max_new_tokens",
// or "<map field>_<entry>" such as "thresholds_quality").
func envField(st reflect.Type, skey, rest string) (string, reflect.Type, error) {
	var names []string
	for i := 0; i < st.NumField(); i++ {
		f := st.Field(i)
		fkey := yamlKey(f)
		names = append(names, fkey)
		if rest == fkey {
			return skey + "." + fkey, f.Type, nil
		}
		if entry, ok := strings.CutPrefix(rest, fkey+"_"); ok && f.Type.Kind() == reflect.Map {
			return skey + "." + fkey + "." + entry, f.Type.Elem(), nil
		}
	}
	return "", nil, fmt.Errorf("unknown key %q in section %s (known keys: %s)", rest, skey, strings.Join(names, ", "))
}

// parseEnvValue converts an environment string to a value of type t: lists
// are comma-separated, maps are "key=value,key=value".
func parseEnvValue(t reflect.Type, s string) (any, error) {
	if t == durationType {
		d, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("want a duration such as 30s or 500ms, got %q", s)
		}
		return d, nil
	}
	switch t.Kind() {
	case reflect.String:
		return s, nil
	case reflect.Int:
		i, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("want an integer, got %q", s)
		}
		return i, nil
	case reflect.Float64:
		f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
		if err != nil {
			return nil, fmt.Errorf("want a number, got %q", s)
		}
		return f, nil
	case reflect.Bool:
		b, err := strconv.ParseBool(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("want true or false, got %q", s)
		}
		return b, nil
	case reflect.Slice:
		out := []string{}
		for _, part := range strings.Split(s, ",") {
			if part = strings.TrimSpace(part); part != "" {
				out = append(out, part)
			}
		}
		return out, nil
	case reflect.Map:
		out := map[string]any{}
		for _, part := range strings.Split(s, ",") {
			if part = strings.TrimSpace(part); part == "" {
				continue
			}
			k, val, ok := strings.Cut(part, "=")
			k = strings.TrimSpace(k)
			if !ok || !mapKeyRE.MatchString(k) {
				return nil, fmt.Errorf("want key=value pairs separated by commas, got %q", part)
			}
			pv, err := parseEnvValue(t.Elem(), strings.TrimSpace(val))
			if err != nil {
				return nil, fmt.Errorf("entry %s: %w", k, err)
			}
			out[k] = pv
		}
		return out, nil
	}
	return nil, fmt.Errorf("unsupported type %s", t)
}
