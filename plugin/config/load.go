package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"

	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"
)

// EnvPrefix starts every environment override: M3GATE_<SECTION>_<KEY>, for
// example M3GATE_DAEMON_LISTEN or M3GATE_MODEL_MAX_NEW_TOKENS. A map entry is
// set with M3GATE_<SECTION>_<KEY>_<ENTRY> (M3GATE_SCORING_THRESHOLDS_QUALITY=3)
// or the whole map with "k=v,k=v"; lists are comma-separated.
const EnvPrefix = "M3GATE_"

// Load reads the configuration: the built-in defaults, then the YAML file at
// path (none when path is empty), then M3GATE_<SECTION>_<KEY> overrides from
// env (KEY=VALUE pairs as os.Environ returns them), and validates the result.
// Unknown keys, wrong types and out-of-range values give an *Errors naming
// the key and the file line (or the environment variable). Relative paths
// written in the file (model.dir, model.adapters, model.predictors,
// sidecar.path) are resolved against the file's directory.
func Load(path string, env []string) (Config, error) {
	v := viper.New()
	v.SetConfigType("yaml")
	setDefaults(v, "", reflect.ValueOf(Default()))

	src := &sources{file: path, lines: map[string]int{}, env: map[string]string{}}
	var errs Errors
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return Config{}, fmt.Errorf("read config: %w", err)
		}
		var doc yaml.Node
		if err := yaml.Unmarshal(data, &doc); err != nil {
			return Config{}, fmt.Errorf("parse config %s: %w", path, err)
		}
		if len(doc.Content) > 0 {
			errs = append(errs, checkNode(path, doc.Content[0], configType, "", src.lines)...)
		}
		if len(errs) > 0 {
			return Config{}, errs
		}
		if err := v.ReadConfig(bytes.NewReader(data)); err != nil {
			return Config{}, fmt.Errorf("parse config %s: %w", path, err)
		}
	}
	errs = append(errs, applyEnv(v, env, src.env)...)
	if len(errs) > 0 {
		return Config{}, errs
	}

	var c Config
	if err := v.Unmarshal(&c); err != nil {
		return Config{}, fmt.Errorf("decode config: %w", err)
	}
	normalise(&c)
	if path != "" {
		resolvePaths(&c, filepath.Dir(path), src)
	}
	if err := c.Validate(); err != nil {
		var verrs Errors
		if errors.As(err, &verrs) {
			for _, e := range verrs {
				src.locate(e)
			}
			return Config{}, verrs
		}
		return Config{}, err
	}
	return c, nil
}

var configType = reflect.TypeOf(Config{})

// sources records where each key of the effective config came from.
type sources struct {
	file  string
	lines map[string]int    // key -> line in file
	env   map[string]string // key -> environment variable
}

// locate fills e.Source and e.Line from the most specific key (or parent
// key) that the environment or the file set.
func (s *sources) locate(e *FieldError) {
	// A variable that set the key or a key above it replaced what the
	// file says there, so it is the source even when the file has a line
	// for the key itself (a list element of a list the variable set).
	for key := e.Key; key != ""; key = parentKey(key) {
		if name, ok := s.env[key]; ok {
			e.Source = "$" + name
			e.Line = 0
			return
		}
	}
	for key := e.Key; key != ""; key = parentKey(key) {
		if line, ok := s.lines[key]; ok {
			e.Source = s.file
			e.Line = line
			return
		}
	}
}

// parentKey returns "a.b" for "a.b.c" and "a.b" for "a.b[2]".
func parentKey(key string) string {
	i := strings.LastIndexAny(key, ".[")
	if i < 0 {
		return ""
	}
	return key[:i]
}

// setDefaults registers every leaf of the default config with viper.
func setDefaults(v *viper.Viper, prefix string, val reflect.Value) {
	if val.Kind() == reflect.Struct && val.Type() != durationType {
		for i := 0; i < val.NumField(); i++ {
			key := yamlKey(val.Type().Field(i))
			if prefix != "" {
				key = prefix + "." + key
			}
			setDefaults(v, key, val.Field(i))
		}
		return
	}
	if val.Kind() == reflect.Map && val.Len() > 0 {
		// One default per entry, so that a file or environment setting one
		// entry keeps the defaults of the others.
		for _, k := range val.MapKeys() {
			v.SetDefault(prefix+"."+k.String(), val.MapIndex(k).Interface())
		}
		return
	}
	v.SetDefault(prefix, val.Interface())
}

// normalise replaces nil maps and slices by empty ones.
func normalise(c *Config) {
	if c.Model.Adapters == nil {
		c.Model.Adapters = map[string]string{}
	}
	if c.Model.Predictors == nil {
		c.Model.Predictors = map[string]string{}
	}
	if c.Model.Options == nil {
		c.Model.Options = map[string]string{}
	}
	if c.Scoring.Thresholds == nil {
		c.Scoring.Thresholds = map[string]float64{}
	}
	if c.Scoring.Aspects == nil {
		c.Scoring.Aspects = []string{}
	}
	if c.ComfyUI.Servers == nil {
		c.ComfyUI.Servers = []string{}
	}
}

// resolvePaths makes relative paths that the file set relative to dir.
func resolvePaths(c *Config, dir string, src *sources) {
	fromFile := func(key string) bool {
		for k := key; k != ""; k = parentKey(k) {
			if _, inEnv := src.env[k]; inEnv {
				return false
			}
		}
		_, inFile := src.lines[key]
		return inFile
	}
	abs := func(key string, p *string) {
		if *p != "" && !filepath.IsAbs(*p) && fromFile(key) {
			*p = filepath.Join(dir, *p)
		}
	}
	abs("model.dir", &c.Model.Dir)
	abs("sidecar.path", &c.Sidecar.Path)
	abs("queue.data_dir", &c.Queue.DataDir)
	abs("queue.credentials", &c.Queue.Credentials)
	abs("queue.tls_ca", &c.Queue.TLSCA)
	abs("queue.tls_cert", &c.Queue.TLSCert)
	abs("queue.tls_key", &c.Queue.TLSKey)
	for k, p := range c.Model.Adapters {
		abs("model.adapters."+k, &p)
		c.Model.Adapters[k] = p
	}
	for k, p := range c.Model.Predictors {
		abs("model.predictors."+k, &p)
		c.Model.Predictors[k] = p
	}
}
