// Package schemas holds the contract between the m3gate daemon and the
// m3gate-sidecar model process: the gRPC .proto (generated Go in schemas/gen),
// the domain types both sides program against, the conversion layer between
// the two, and the go-plugin handshake and plugin map.
//
// Protobuf types never appear in this package's exported API: callers use the
// domain types below and the Scorer interface.
package schemas

import (
	"context"
	"time"
)

// State is the lifecycle state of the model process as the sidecar reports it
// (starting, idle, loading, ready, error) plus the host-side states of the
// supervisor (restarting, stopped, unresponsive).
type State string

// States of the model process.
const (
	StateStarting   State = "starting"
	StateIdle       State = "idle"
	StateLoading    State = "loading"
	StateReady      State = "ready"
	StateError      State = "error"
	StateRestarting State = "restarting"
	StateStopped    State = "stopped"
	// StateUnresponsive: the process is up but has not answered the
	// supervisor's heartbeat recently (frozen, stopped, overloaded).
	StateUnresponsive State = "unresponsive"
)

// Sources of an AspectResult's MOS.
const (
	SourcePredictor = "predictor"
	SourceWordProbs = "word_probs"
)

// LoadRequest says which model, adapters and predictors the sidecar loads.
type LoadRequest struct {
	ModelDir   string            `json:"model_dir"`
	Family     string            `json:"family"`
	Adapters   map[string]string `json:"adapters,omitempty"`   // aspect -> LoRA adapter dir
	Predictors map[string]string `json:"predictors,omitempty"` // aspect -> xLSTM predictor checkpoint
	Device     string            `json:"device,omitempty"`     // "cpu", "cuda", "cuda:1"
	DType      string            `json:"dtype,omitempty"`      // "f32", "bf16", "f16"
	Threads    int               `json:"threads,omitempty"`    // 0: runtime default
	Options    map[string]string `json:"options,omitempty"`
}

// LoadProgress is one step of a Load. The final step has Stage "done".
type LoadProgress struct {
	Stage      string `json:"stage"`
	DoneBytes  int64  `json:"done_bytes"`
	TotalBytes int64  `json:"total_bytes"`
	Message    string `json:"message,omitempty"`
}

// StageDone is the Stage of the last LoadProgress of a successful Load.
const StageDone = "done"

// Memory is the memory the model process uses.
type Memory struct {
	RSSBytes      int64 `json:"rss_bytes"`
	GPUBytes      int64 `json:"gpu_bytes,omitempty"`
	GPUTotalBytes int64 `json:"gpu_total_bytes,omitempty"`
}

// ModelInfo describes the loaded model.
type ModelInfo struct {
	Family           string            `json:"family,omitempty"`
	ModelDir         string            `json:"model_dir,omitempty"`
	Device           string            `json:"device,omitempty"`
	DType            string            `json:"dtype,omitempty"`
	AdapterAspects   []string          `json:"adapter_aspects,omitempty"`
	PredictorAspects []string          `json:"predictor_aspects,omitempty"`
	Parameters       int64             `json:"parameters,omitempty"`
	Details          map[string]string `json:"details,omitempty"`
}

// Status is what the sidecar reports about itself.
type Status struct {
	State      State        `json:"state"`
	Progress   LoadProgress `json:"progress"`
	Memory     Memory       `json:"memory"`
	Model      ModelInfo    `json:"model"`
	Error      string       `json:"error,omitempty"`
	QueueDepth int          `json:"queue_depth"`
	// Busy is how long the model has been running its current piece of
	// work (a score batch, a load); 0 when idle.
	Busy time.Duration `json:"busy_ns,omitempty"`
}

// ScoreItem is one image to score: encoded bytes (Data) or a file path the
// model process can read (Path), exactly one of the two.
type ScoreItem struct {
	Data   []byte `json:"-"`
	Path   string `json:"path,omitempty"`
	Prompt string `json:"prompt,omitempty"` // generation prompt; empty: the request's Prompt
}

// AspectPrompt holds the question texts of one aspect. Round1 may contain
// "{prompt}", replaced by the generation prompt.
type AspectPrompt struct {
	Round1 string `json:"round1"`
	Round2 string `json:"round2"`
}

// ScoreOptions are the settings shared by all items of a request. Requests
// with equal options can be batched together.
type ScoreOptions struct {
	Aspects         []string                `json:"aspects"`
	Prompts         map[string]AspectPrompt `json:"prompts,omitempty"`
	MaxNewTokens    int                     `json:"max_new_tokens,omitempty"` // 0: scorer default
	SkipDescription bool                    `json:"skip_description,omitempty"`
	Extra           map[string]string       `json:"extra,omitempty"`
}

// ScoreRequest is a batch of images scored with one set of options.
type ScoreRequest struct {
	Items   []ScoreItem  `json:"items"`
	Prompt  string       `json:"prompt,omitempty"`
	Options ScoreOptions `json:"options"`
}

// AspectResult is the score of one image on one aspect.
type AspectResult struct {
	MOS         float64                  `json:"mos"`
	Rating      string                   `json:"rating"`
	WordProbs   map[string]float64       `json:"word_probs,omitempty"`
	Description string                   `json:"description,omitempty"`
	Source      string                   `json:"source"` // SourcePredictor or SourceWordProbs
	Timings     map[string]time.Duration `json:"-"`      // per stage: "encode", "generate", "predict", ...
}

// ItemResult is the outcome for one image: Aspects, or Error when this image
// failed (other images of the batch are unaffected).
type ItemResult struct {
	Index   int                     `json:"index"`
	Error   string                  `json:"error,omitempty"`
	Aspects map[string]AspectResult `json:"aspects,omitempty"`
}

// Scorer is the model process as both sides see it: the sidecar implements
// it (sidecar/service) and the host gets it from the go-plugin client.
type Scorer interface {
	// Load loads a model; progress is called for every step, in order.
	Load(ctx context.Context, req LoadRequest, progress func(LoadProgress)) error
	// Status reports state, progress, memory and model info.
	Status(ctx context.Context) (Status, error)
	// Score scores the request's items; per-image failures are in the results.
	Score(ctx context.Context, req ScoreRequest) ([]ItemResult, error)
	// Unload frees the model.
	Unload(ctx context.Context) error
}
