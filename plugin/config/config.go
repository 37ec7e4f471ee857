// Package config defines m3gate's configuration: the Config type, its
// defaults, loading from config.yaml plus M3GATE_<SECTION>_<KEY> environment
// overrides, and validation. It is the only package that imports viper.
package config

import (
	"time"

	"github.com/m3gate/m3gate/schemas/iqa"
)

// Config is the whole effective configuration of m3gate.
type Config struct {
	Model   Model   `mapstructure:"model" yaml:"model" json:"model"`
	Scoring Scoring `mapstructure:"scoring" yaml:"scoring" json:"scoring"`
	ComfyUI ComfyUI `mapstructure:"comfyui" yaml:"comfyui" json:"comfyui"`
	Daemon  Daemon  `mapstructure:"daemon" yaml:"daemon" json:"daemon"`
	Sidecar Sidecar `mapstructure:"sidecar" yaml:"sidecar" json:"sidecar"`
	Log     Log     `mapstructure:"log" yaml:"log" json:"log"`
	Queue   Queue   `mapstructure:"queue" yaml:"queue" json:"queue"`
}

// Model configures the local MLLM, its LoRA adapters and xLSTM predictors.
type Model struct {
	// Dir is the Hugging Face model directory (config.json, safetensors,
	// tokenizer.json).
	Dir string `mapstructure:"dir" yaml:"dir" json:"dir"`
	// Family is the architecture family: idefics3 or minicpmv25.
	Family string `mapstructure:"family" yaml:"family" json:"family"`
	// DType is the compute dtype: f32, mixed (f32 with bf16 products for
	// the vision tower and prompts on CPUs with avx512_bf16) or bf16.
	DType string `mapstructure:"dtype" yaml:"dtype" json:"dtype"`
	// Device is cpu or cuda.
	Device string `mapstructure:"device" yaml:"device" json:"device"`
	// Threads is libtorch's intra-op thread count; 0 means one per core.
	Threads int `mapstructure:"threads" yaml:"threads" json:"threads"`
	// MaxNewTokens bounds the length of a generated description.
	MaxNewTokens int `mapstructure:"max_new_tokens" yaml:"max_new_tokens" json:"max_new_tokens"`
	// MaxPromptTokens bounds one aspect's conversation (chat template,
	// questions and generation prompt) in tokens; longer prompts get a 400.
	MaxPromptTokens int `mapstructure:"max_prompt_tokens" yaml:"max_prompt_tokens" json:"max_prompt_tokens"`
	// ImageSplitting turns on Idefics3 tiled mode (tiles + global image).
	ImageSplitting bool `mapstructure:"image_splitting" yaml:"image_splitting" json:"image_splitting"`
	// Adapters maps an aspect to a PEFT LoRA adapter directory.
	Adapters map[string]string `mapstructure:"adapters" yaml:"adapters" json:"adapters"`
	// Predictors maps an aspect to an xLSTM predictor checkpoint file.
	Predictors map[string]string `mapstructure:"predictors" yaml:"predictors" json:"predictors"`
	// Options are family options passed to the model process as they are
	// (minicpmv25: max_slices, max_length, num_beams, repetition_penalty).
	Options map[string]string `mapstructure:"options" yaml:"options" json:"options"`
}

// Scoring configures which aspects are scored and how the gate decides.
type Scoring struct {
	// Aspects are the aspects scored for every image.
	Aspects []string `mapstructure:"aspects" yaml:"aspects" json:"aspects"`
	// Thresholds maps an aspect to the lowest passing score on the 0..5 MOS scale.
	Thresholds map[string]float64 `mapstructure:"thresholds" yaml:"thresholds" json:"thresholds"`
	// Gate is "all" (every scored aspect must pass) or "any" (one suffices).
	Gate string `mapstructure:"gate" yaml:"gate" json:"gate"`
	// MaxRerolls bounds how often a failing generation is re-queued; 0 disables rerolls.
	MaxRerolls int `mapstructure:"max_rerolls" yaml:"max_rerolls" json:"max_rerolls"`
	// BatchSize is how many images the sidecar scores in one batch.
	BatchSize int `mapstructure:"batch_size" yaml:"batch_size" json:"batch_size"`
}

// ComfyUI configures the ComfyUI servers m3gate talks to.
type ComfyUI struct {
	// Servers are base URLs of ComfyUI servers, e.g. http://127.0.0.1:8188.
	Servers []string `mapstructure:"servers" yaml:"servers" json:"servers"`
	// ReconnectMin is the first delay before reconnecting a dropped websocket.
	ReconnectMin time.Duration `mapstructure:"reconnect_min" yaml:"reconnect_min" json:"reconnect_min"`
	// ReconnectMax caps the exponential reconnect backoff.
	ReconnectMax time.Duration `mapstructure:"reconnect_max" yaml:"reconnect_max" json:"reconnect_max"`
}

// Daemon configures m3gate's own HTTP/WS API (m3gate serve).
type Daemon struct {
	// Listen is the host:port the daemon listens on.
	Listen string `mapstructure:"listen" yaml:"listen" json:"listen"`
	// QueueSize is how many score requests may wait; more are refused (429).
	QueueSize int `mapstructure:"queue_size" yaml:"queue_size" json:"queue_size"`
	// RequestTimeout bounds one score request, queueing included.
	RequestTimeout time.Duration `mapstructure:"request_timeout" yaml:"request_timeout" json:"request_timeout"`
	// Token, when set, is the bearer token every request but /healthz and
	// /readyz must send ("Authorization: Bearer <token>"). It is never
	// logged or printed; $M3GATE_DAEMON_TOKEN sets it too.
	Token string `mapstructure:"token" yaml:"token" json:"token"`
	// AllowedHosts are host names (besides localhost, IP addresses and the
	// listen host) a request's Host header may name; others are refused, so
	// a DNS-rebinding page cannot reach the daemon.
	AllowedHosts []string `mapstructure:"allowed_hosts" yaml:"allowed_hosts" json:"allowed_hosts"`
	// AllowedOrigins are browser origins (scheme://host:port) besides the
	// daemon's own that may POST and open the websocket.
	AllowedOrigins []string `mapstructure:"allowed_origins" yaml:"allowed_origins" json:"allowed_origins"`
	// AllowPaths lets score requests name image files by path; off, only
	// image bytes are accepted.
	AllowPaths bool `mapstructure:"allow_paths" yaml:"allow_paths" json:"allow_paths"`
	// PathRoots are the directories paths must lie in (after resolving
	// symlinks) when AllowPaths is on.
	PathRoots []string `mapstructure:"path_roots" yaml:"path_roots" json:"path_roots"`
	// MaxImageBytes bounds one image (decoded bytes or a file read).
	MaxImageBytes int `mapstructure:"max_image_bytes" yaml:"max_image_bytes" json:"max_image_bytes"`
	// MaxImages bounds the images of one score request.
	MaxImages int `mapstructure:"max_images" yaml:"max_images" json:"max_images"`
	// MaxInflightBytes bounds the request bodies being read and held at
	// once; a request past it is refused (429).
	MaxInflightBytes int `mapstructure:"max_inflight_bytes" yaml:"max_inflight_bytes" json:"max_inflight_bytes"`
	// BodyTimeout bounds the reading of one request body.
	BodyTimeout time.Duration `mapstructure:"body_timeout" yaml:"body_timeout" json:"body_timeout"`
	// MinUploadRate is the slowest a body may arrive (bytes/s, averaged
	// after its first 5 seconds); slower uploads are cut off (408).
	MinUploadRate int `mapstructure:"min_upload_rate" yaml:"min_upload_rate" json:"min_upload_rate"`
	// ShutdownGrace is how long SIGTERM waits for requests in flight
	// before answering them 503.
	ShutdownGrace time.Duration `mapstructure:"shutdown_grace" yaml:"shutdown_grace" json:"shutdown_grace"`
	// MaxSubscribers bounds the /v1/events websockets open at once.
	MaxSubscribers int `mapstructure:"max_subscribers" yaml:"max_subscribers" json:"max_subscribers"`
}

// Sidecar configures the model process (m3gate-sidecar) and its supervisor.
type Sidecar struct {
	// Path is the m3gate-sidecar binary; empty means search (see cli.LocateSidecar).
	Path string `mapstructure:"path" yaml:"path" json:"path"`
	// StartTimeout bounds the go-plugin handshake.
	StartTimeout time.Duration `mapstructure:"start_timeout" yaml:"start_timeout" json:"start_timeout"`
	// LoadStallTimeout is how long model loading may go without progress.
	LoadStallTimeout time.Duration `mapstructure:"load_stall_timeout" yaml:"load_stall_timeout" json:"load_stall_timeout"`
	// BusyTimeout is how long one RPC may run before the sidecar counts as hung.
	BusyTimeout time.Duration `mapstructure:"busy_timeout" yaml:"busy_timeout" json:"busy_timeout"`
	// RestartBackoffMax caps the delay between restarts of a crashed sidecar.
	RestartBackoffMax time.Duration `mapstructure:"restart_backoff_max" yaml:"restart_backoff_max" json:"restart_backoff_max"`
}

// Log configures logging.
type Log struct {
	// Level is debug, info, warn or error.
	Level string `mapstructure:"level" yaml:"level" json:"level"`
	// Format is text or json.
	Format string `mapstructure:"format" yaml:"format" json:"format"`
}

// Queue configures scale-out over NATS JetStream: `m3gate serve` and
// `m3gate run` publish score jobs and `m3gate worker` processes score them.
// An empty URL turns the queue off.
type Queue struct {
	// URL is empty (no queue: score locally), "embedded" (serve runs a
	// JetStream server with a file store) or comma-separated nats:// URLs.
	URL string `mapstructure:"url" yaml:"url" json:"url"`
	// Listen is the host:port of the embedded server's client port.
	Listen string `mapstructure:"listen" yaml:"listen" json:"listen"`
	// DataDir is the embedded server's file store; empty: the user cache
	// directory's m3gate/queue.
	DataDir string `mapstructure:"data_dir" yaml:"data_dir" json:"data_dir"`
	// Credentials is a NATS .creds file.
	Credentials string `mapstructure:"credentials" yaml:"credentials" json:"credentials"`
	// TLSCA is the PEM CA file that verifies the NATS servers.
	TLSCA string `mapstructure:"tls_ca" yaml:"tls_ca" json:"tls_ca"`
	// TLSCert and TLSKey are this client's PEM certificate and key.
	TLSCert string `mapstructure:"tls_cert" yaml:"tls_cert" json:"tls_cert"`
	TLSKey  string `mapstructure:"tls_key" yaml:"tls_key" json:"tls_key"`
	// AckWait is how long a worker may hold a job without a sign of life
	// before it is redelivered.
	AckWait time.Duration `mapstructure:"ack_wait" yaml:"ack_wait" json:"ack_wait"`
	// MaxAckPending bounds the jobs all workers hold together.
	MaxAckPending int `mapstructure:"max_ack_pending" yaml:"max_ack_pending" json:"max_ack_pending"`
	// MaxDeliver is how often a job is delivered before it ends with an error.
	MaxDeliver int `mapstructure:"max_deliver" yaml:"max_deliver" json:"max_deliver"`
	// NakDelay is how long a job handed back (model process restarting) waits.
	NakDelay time.Duration `mapstructure:"nak_delay" yaml:"nak_delay" json:"nak_delay"`
	// MaxJobs bounds the jobs waiting in the queue.
	MaxJobs int `mapstructure:"max_jobs" yaml:"max_jobs" json:"max_jobs"`
	// Replicas is the number of copies of the queue's streams (3 in a
	// three-node cluster).
	Replicas int `mapstructure:"replicas" yaml:"replicas" json:"replicas"`
}

// Default returns the built-in configuration: CPU, f32, SmolVLM-256M in
// models/smolvlm-256m, a local ComfyUI and a daemon on 127.0.0.1:8190.
func Default() Config {
	return Config{
		Model: Model{
			Dir:             "models/smolvlm-256m",
			Family:          "idefics3",
			DType:           "f32",
			Device:          "cpu",
			Threads:         0,
			MaxNewTokens:    128,
			MaxPromptTokens: 1024,
			Adapters:        map[string]string{},
			Predictors:      map[string]string{},
			Options:         map[string]string{},
		},
		Scoring: Scoring{
			Aspects: []string{iqa.Quality, iqa.Correspondence},
			Thresholds: map[string]float64{
				iqa.Quality:        2.5,
				iqa.Correspondence: 2.5,
				iqa.Authenticity:   2.5,
			},
			Gate:       "all",
			MaxRerolls: 3,
			BatchSize:  1,
		},
		ComfyUI: ComfyUI{
			Servers:      []string{"http://127.0.0.1:8188"},
			ReconnectMin: 500 * time.Millisecond,
			ReconnectMax: 30 * time.Second,
		},
		Daemon: Daemon{
			Listen:           "127.0.0.1:8190",
			QueueSize:        16,
			RequestTimeout:   10 * time.Minute,
			AllowedHosts:     []string{},
			AllowedOrigins:   []string{},
			PathRoots:        []string{},
			MaxImageBytes:    32 << 20,
			MaxImages:        64,
			MaxInflightBytes: 512 << 20,
			BodyTimeout:      2 * time.Minute,
			MinUploadRate:    64 << 10,
			ShutdownGrace:    10 * time.Second,
			MaxSubscribers:   256,
		},
		Sidecar: Sidecar{
			StartTimeout:      time.Minute,
			LoadStallTimeout:  2 * time.Minute,
			BusyTimeout:       10 * time.Minute,
			RestartBackoffMax: 30 * time.Second,
		},
		Log: Log{Level: "info", Format: "text"},
		Queue: Queue{
			Listen:        "127.0.0.1:4222",
			AckWait:       30 * time.Second,
			MaxAckPending: 1000,
			MaxDeliver:    5,
			NakDelay:      5 * time.Second,
			MaxJobs:       100000,
			Replicas:      1,
		},
	}
}
