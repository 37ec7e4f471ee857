package config

import (
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestDefaultValidates(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v", err)
	}
}

func TestLoadGood(t *testing.T) {
	full := Config{
		Model: Model{
			Dir: "/models/smolvlm-500m", Family: "idefics3", DType: "bf16", Device: "cuda:1",
			Threads: 8, MaxNewTokens: 96, MaxPromptTokens: 1024, ImageSplitting: true,
			Adapters:   map[string]string{"quality": "/adapters/quality", "correspondence": "/adapters/correspondence"},
			Predictors: map[string]string{"quality": "/predictors/quality.safetensors"},
			Options:    map[string]string{},
		},
		Scoring: Scoring{
			Aspects:    []string{"quality", "correspondence", "authenticity"},
			Thresholds: map[string]float64{"quality": 3, "correspondence": 2.75, "authenticity": 1.5},
			Gate:       "any", MaxRerolls: 5, BatchSize: 4,
		},
		ComfyUI: ComfyUI{
			Servers:      []string{"http://10.0.0.5:8188", "https://comfy.example.com"},
			ReconnectMin: time.Second, ReconnectMax: time.Minute,
		},
		Daemon: func() Daemon {
			d := Default().Daemon
			d.Listen, d.QueueSize, d.RequestTimeout = "0.0.0.0:9000", 64, 90*time.Second
			return d
		}(),
		Sidecar: Sidecar{
			Path: "/opt/m3gate/m3gate-sidecar", StartTimeout: 2 * time.Minute,
			LoadStallTimeout: 5 * time.Minute, BusyTimeout: 20 * time.Minute, RestartBackoffMax: time.Minute,
		},
		Log: Log{Level: "debug", Format: "json"},
		Queue: Queue{
			URL: "nats://n1:4222,tls://n2:4222", Listen: "0.0.0.0:4222", DataDir: "/var/lib/m3gate/queue",
			Credentials: "/etc/m3gate/worker.creds", TLSCA: "/etc/m3gate/ca.pem", TLSCert: "/etc/m3gate/client.pem", TLSKey: "/etc/m3gate/client-key.pem",
			AckWait: time.Minute, MaxAckPending: 64, MaxDeliver: 3, NakDelay: 10 * time.Second, MaxJobs: 5000, Replicas: 3,
		},
	}
	partial := Default()
	partial.Daemon.Listen = "127.0.0.1:9999"
	partial.Scoring.Thresholds["quality"] = 3.5 // the other aspects keep their defaults

	relative := Default()
	relative.Model.Dir = filepath.Join("testdata", "good", "models", "tiny")
	relative.Model.Adapters = map[string]string{"quality": filepath.Join("testdata", "good", "adapters", "q")}
	relative.Sidecar.Path = filepath.Join("testdata", "bin", "m3gate-sidecar")

	anchors := Default()
	anchors.Model.Adapters = map[string]string{"quality": "/a/q"}
	anchors.Model.Predictors = map[string]string{"quality": "/a/q"}

	tests := []struct {
		file string
		want Config
	}{
		{"", Default()},
		{"empty.yaml", Default()},
		{"full.yaml", full},
		{"partial.yaml", partial},
		{"relative.yaml", relative},
		{"anchors.yaml", anchors},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			path := ""
			if tt.file != "" {
				path = filepath.Join("testdata", "good", tt.file)
			}
			got, err := Load(path, nil)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestLoadBad(t *testing.T) {
	tests := []struct {
		file string
		want []string // the FieldErrors, or the whole error for a non-field error
	}{
		{"unknown_key.yaml", []string{`testdata/bad/unknown_key.yaml:3: daemon.listn: unknown key, did you mean "listen"?`}},
		{"unknown_section.yaml", []string{`testdata/bad/unknown_section.yaml:3: modle: unknown key, did you mean "model"?`}},
		{"wrong_type.yaml", []string{`testdata/bad/wrong_type.yaml:2: model.threads: want an integer, got string "four"`}},
		{"string_as_int.yaml", []string{`testdata/bad/string_as_int.yaml:2: log.level: want a string, got integer 3 (quote it if you meant a string)`}},
		{"out_of_range.yaml", []string{`testdata/bad/out_of_range.yaml:4: scoring.thresholds.quality: 7 is out of range [0, 5] (the MOS scale)`}},
		{"duration.yaml", []string{`testdata/bad/duration.yaml:2: daemon.request_timeout: want a duration such as 30s or 500ms, got integer 30`}},
		{"negative_duration.yaml", []string{`testdata/bad/negative_duration.yaml:2: sidecar.busy_timeout: duration -5s is negative`}},
		{"unknown_aspect.yaml", []string{`testdata/bad/unknown_aspect.yaml:4: scoring.aspects[1]: unknown aspect "beauty" (known: quality, correspondence, authenticity)`}},
		{"duplicate_key.yaml", []string{`testdata/bad/duplicate_key.yaml:3: daemon.queue_size: duplicate key (first on line 2)`}},
		{"section_scalar.yaml", []string{`testdata/bad/section_scalar.yaml:1: model: want a mapping of model keys, got integer 5`}},
		{"list_as_string.yaml", []string{`testdata/bad/list_as_string.yaml:2: comfyui.servers: want a list, got string "http://127.0.0.1:8188"`}},
		{"listen.yaml", []string{`testdata/bad/listen.yaml:3: daemon.listen: want host:port such as 127.0.0.1:8190, got "8190"`}},
		{"several.yaml", []string{
			`testdata/bad/several.yaml:2: model.dtype: "f16" is not one of f32, mixed, bf16`,
			`testdata/bad/several.yaml:3: model.threads: -1 is out of range [0, 1024]`,
			`testdata/bad/several.yaml:5: scoring.gate: "most" is not one of all, any`,
			`testdata/bad/several.yaml:7: comfyui.servers[0]: URL "ftp://x" must start with http:// or https://`,
		}},
		{"queue_url.yaml", []string{`testdata/bad/queue_url.yaml:2: queue.url: URL "http://127.0.0.1:4222": want embedded or nats://host:4222 (tls://, ws://, wss:// also work)`}},
		{"syntax.yaml", []string{"parse config testdata/bad/syntax.yaml: yaml: line 1: did not find expected ',' or ']'"}},
		{"missing.yaml", []string{"read config: open testdata/bad/missing.yaml: no such file or directory"}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			path := filepath.Join("testdata", "bad", tt.file)
			_, err := Load(path, nil)
			if err == nil {
				t.Fatal("Load succeeded, want an error")
			}
			var got []string
			var errs Errors
			if errors.As(err, &errs) {
				for _, e := range errs {
					got = append(got, e.Error())
				}
			} else {
				got = []string{err.Error()}
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(tt.want, "\n  "))
			}
		})
	}
}

func TestLoadEnv(t *testing.T) {
	partialFile := filepath.Join("testdata", "good", "partial.yaml")
	tests := []struct {
		name string
		file string
		env  []string
		edit func(c *Config) // applied to the config loaded without env
	}{
		{"listen overrides file", partialFile, []string{"M3GATE_DAEMON_LISTEN=0.0.0.0:1234"},
			func(c *Config) { c.Daemon.Listen = "0.0.0.0:1234" }},
		{"int with underscore key", "", []string{"M3GATE_MODEL_MAX_NEW_TOKENS=64", "M3GATE_MODEL_THREADS=2"},
			func(c *Config) { c.Model.MaxNewTokens = 64; c.Model.Threads = 2 }},
		{"bool and duration", "", []string{"M3GATE_MODEL_IMAGE_SPLITTING=true", "M3GATE_DAEMON_REQUEST_TIMEOUT=45s"},
			func(c *Config) { c.Model.ImageSplitting = true; c.Daemon.RequestTimeout = 45 * time.Second }},
		{"list", "", []string{"M3GATE_COMFYUI_SERVERS=http://a:1, http://b:2"},
			func(c *Config) { c.ComfyUI.Servers = []string{"http://a:1", "http://b:2"} }},
		{"map entry", partialFile, []string{"M3GATE_SCORING_THRESHOLDS_CORRESPONDENCE=1.25", "M3GATE_MODEL_ADAPTERS_QUALITY=/ad/q"},
			func(c *Config) { c.Scoring.Thresholds["correspondence"] = 1.25; c.Model.Adapters["quality"] = "/ad/q" }},
		{"whole map", "", []string{"M3GATE_MODEL_PREDICTORS=quality=/p/q.safetensors,authenticity=/p/a.safetensors"},
			func(c *Config) {
				c.Model.Predictors = map[string]string{"quality": "/p/q.safetensors", "authenticity": "/p/a.safetensors"}
			}},
		{"not a section is ignored", "", []string{"M3GATE_SIDECAR=/bin/true", "M3GATE_FOO_BAR=1", "OTHER=1"},
			func(c *Config) {}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want, err := Load(tt.file, nil)
			if err != nil {
				t.Fatal(err)
			}
			tt.edit(&want)
			got, err := Load(tt.file, tt.env)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("got  %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestLoadEnvBad(t *testing.T) {
	tests := []struct {
		env  []string
		want string
	}{
		{[]string{"M3GATE_MODEL_THREADS=many"}, `invalid config: $M3GATE_MODEL_THREADS: model.threads: want an integer, got "many"`},
		{[]string{"M3GATE_MODEL_THREADS=4096"}, `invalid config: $M3GATE_MODEL_THREADS: model.threads: 4096 is out of range [0, 1024]`},
		{[]string{"M3GATE_DAEMON_LISTN=x"}, `invalid config: $M3GATE_DAEMON_LISTN: daemon.listn: unknown key "listn" in section daemon (known keys: listen, queue_size, request_timeout, token, allowed_hosts, allowed_origins, allow_paths, path_roots, max_image_bytes, max_images, max_inflight_bytes, body_timeout, min_upload_rate, shutdown_grace, max_subscribers)`},
		{[]string{"M3GATE_SCORING_THRESHOLDS_QUALITY=9"}, `invalid config: $M3GATE_SCORING_THRESHOLDS_QUALITY: scoring.thresholds.quality: 9 is out of range [0, 5] (the MOS scale)`},
		{[]string{"M3GATE_DAEMON_REQUEST_TIMEOUT=10"}, `invalid config: $M3GATE_DAEMON_REQUEST_TIMEOUT: daemon.request_timeout: want a duration such as 30s or 500ms, got "10"`},
		{[]string{"M3GATE_SCORING_ASPECTS=quality,beauty"}, `invalid config: $M3GATE_SCORING_ASPECTS: scoring.aspects[1]: unknown aspect "beauty" (known: quality, correspondence, authenticity)`},
	}
	for _, tt := range tests {
		_, err := Load("", tt.env)
		if err == nil || err.Error() != tt.want {
			t.Errorf("env %v:\n got  %v\n want %s", tt.env, err, tt.want)
		}
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	c, err := Load(filepath.Join("testdata", "good", "full.yaml"), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "printed.yaml")
	if err := writeFile(path, b); err != nil {
		t.Fatal(err)
	}
	got, err := Load(path, nil)
	if err != nil {
		t.Fatalf("load printed config: %v\n%s", err, b)
	}
	if !reflect.DeepEqual(got, c) {
		t.Errorf("round trip changed the config:\ngot  %+v\nwant %+v", got, c)
	}
}

func TestFormatDuration(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{10 * time.Minute, "10m"},
		{time.Hour, "1h"},
		{90 * time.Minute, "1h30m"},
		{90 * time.Second, "1m30s"},
		{500 * time.Millisecond, "500ms"},
		{time.Hour + time.Second, "1h0m1s"},
	}
	for _, tt := range tests {
		if got := FormatDuration(tt.d); got != tt.want {
			t.Errorf("FormatDuration(%v) = %q, want %q", tt.d, got, tt.want)
		}
		if back, err := time.ParseDuration(FormatDuration(tt.d)); err != nil || back != tt.d {
			t.Errorf("ParseDuration(%q) = %v, %v", FormatDuration(tt.d), back, err)
		}
	}
}

// TestLoadEnvErrorNamesVariableOverFile: a variable that replaces a list
// of the file is blamed for a bad element, not the file's line of the
// element it replaced.
func TestLoadEnvErrorNamesVariableOverFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := writeFile(path, []byte("scoring:\n  aspects:\n    - quality\n    - correspondence\n")); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path, []string{"M3GATE_SCORING_ASPECTS=quality,sharpness"})
	want := `invalid config: $M3GATE_SCORING_ASPECTS: scoring.aspects[1]: unknown aspect "sharpness" (known: quality, correspondence, authenticity)`
	if err == nil || err.Error() != want {
		t.Errorf("got  %v\nwant %s", err, want)
	}
	// The file's own bad element is still blamed on its line.
	if err := writeFile(path, []byte("scoring:\n  aspects:\n    - quality\n    - sharpness\n")); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path, nil); err == nil || !strings.Contains(err.Error(), path+":4: scoring.aspects[1]") {
		t.Errorf("file error = %v, want %s:4", err, path)
	}
}
