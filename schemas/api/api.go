// Package api is the one definition of the m3gate daemon's HTTP API: the
// routes, the JSON bodies of POST /v1/score and POST /v1/reroll, the error
// body of every refusal and the /v1/events websocket messages. The daemon
// (plugin/server), its Go client (plugin/pipeline) and the node-pack
// generator (nodes) all use these types; schemas/daemon_api.schema.json
// describes the same messages for other languages.
//
// The package is pure Go and imports nothing else of m3gate's.
package api

import (
	"encoding/json"
	"time"
)

// Routes, environment variables and the default address of the daemon.
const (
	// PathScore takes a ScoreRequest and answers a ScoreResponse.
	PathScore = "/v1/score"
	// PathReroll takes a RerollRequest and answers a RerollResponse.
	PathReroll = "/v1/reroll"
	// PathEvents is the websocket of Event messages.
	PathEvents = "/v1/events"

	// EnvDaemonURL names the environment variable clients read the daemon's
	// base URL from; DefaultDaemonURL applies when it is unset.
	EnvDaemonURL     = "M3GATE_URL"
	DefaultDaemonURL = "http://127.0.0.1:8190"
	// EnvDaemonToken names the environment variable that holds the bearer
	// token the daemon requires (daemon.token) and its clients send as
	// "Authorization: Bearer <token>".
	EnvDaemonToken = "M3GATE_DAEMON_TOKEN"
)

// ScoreRequest is the JSON body of POST /v1/score. The same request may be
// sent as multipart/form-data (fields image, prompt, aspects,
// max_new_tokens).
type ScoreRequest struct {
	// Images are the images to score, at least one.
	Images []Image `json:"images"`
	// Prompt is the generation prompt the images are judged against.
	Prompt string `json:"prompt"`
	// Aspects to score; empty means the daemon's default aspects.
	Aspects []string `json:"aspects,omitempty"`
	// MaxNewTokens bounds a generated description; 0 means the daemon's
	// default, more than its configured maximum is refused.
	MaxNewTokens int64 `json:"max_new_tokens,omitempty"`
	// Attempt (1 for the first) and Seed (the first sampler's) say how the
	// images were made; the daemon's review page shows them. The pack sends
	// them when it has the graph.
	Attempt int     `json:"attempt,omitempty"`
	Seed    *uint64 `json:"seed,omitempty"`
}

// Image is one image of a ScoreRequest: encoded image bytes (base64 in
// JSON), or an absolute path the daemon reads itself when its operator
// allows paths, and optionally its own generation prompt.
type Image struct {
	Data   []byte `json:"data,omitempty"`
	Path   string `json:"path,omitempty"`
	Prompt string `json:"prompt,omitempty"`
}

// ScoreResponse answers POST /v1/score with one result per image.
type ScoreResponse struct {
	RequestID string   `json:"request_id"`
	Results   []Result `json:"results"`
}

// Result is the outcome for the image at Index: Aspects, or Error when this
// image failed.
type Result struct {
	Index   int                    `json:"index"`
	Error   string                 `json:"error"`
	Aspects map[string]AspectScore `json:"aspects,omitempty"`
}

// AspectScore is one image's score on one aspect.
type AspectScore struct {
	// MOS is the predicted mean opinion score, 0..5.
	MOS float64 `json:"mos"`
	// Rating is the rating word (bad, poor, fair, good, excellent).
	Rating string `json:"rating"`
	// WordProbs are the rating-word probabilities, when known.
	WordProbs map[string]float64 `json:"word_probs,omitempty"`
	// Description is the model's analysis, when generated.
	Description string `json:"description,omitempty"`
	// Source names what produced MOS ("predictor", "word_probs").
	Source string `json:"source"`
	// TimingsMS are the model process's stage timings in milliseconds.
	TimingsMS map[string]float64 `json:"timings_ms,omitempty"`
}

// ErrorResponse is the body of every refusal (a non-2xx status).
type ErrorResponse struct {
	Error string `json:"error"`
}

// RerollRequest is the body of POST /v1/reroll: M3 Reroll asks the daemon to
// queue Prompt (the API-format prompt that just ran) again on the ComfyUI
// server with new seeds, as attempt Attempt+1.
type RerollRequest struct {
	// Prompt is the API-format prompt {id: {class_type, inputs}} that ran.
	Prompt json.RawMessage `json:"prompt"`
	// NodeID is the id of the M3 Reroll node in Prompt.
	NodeID string `json:"node_id"`
	// SeedNodes names the nodes whose seeds change; empty: every node with a
	// seed or noise_seed input.
	SeedNodes []string `json:"seed_nodes"`
	// Attempt is the attempt that just ran (1 for the first run).
	Attempt int `json:"attempt"`
	// MaxTries is the most attempts the M3 Reroll node allows.
	MaxTries int `json:"max_tries"`
	// Passed and Wanted are how many images passed the gate and how many
	// were wanted.
	Passed int `json:"passed"`
	Wanted int `json:"wanted"`
	// ClientID is the websocket client that queued the prompt; the re-queued
	// prompt is sent with it so that client sees its progress.
	ClientID string `json:"client_id"`
	// ComfyUIURL is the base URL of the ComfyUI server that ran the prompt
	// (the pack reads its own address); the daemon queues the next attempt
	// there. Empty: the daemon's first comfyui.servers entry.
	ComfyUIURL string `json:"comfyui_url,omitempty"`
	// ExtraPNGInfo is the prompt's extra_pnginfo (the UI workflow, m3gate's
	// keys), or null when the prompt was queued without one.
	ExtraPNGInfo json.RawMessage `json:"extra_pnginfo"`
}

// RerollResponse answers POST /v1/reroll.
type RerollResponse struct {
	Queued   bool   `json:"queued"`
	PromptID string `json:"prompt_id"`
	// Attempt is the number of the attempt that was queued.
	Attempt int `json:"attempt"`
	// Seeds maps "node_id.input" to the new seed.
	Seeds map[string]uint64 `json:"seeds,omitempty"`
	// Server is the base URL of the ComfyUI server the attempt was queued on.
	Server string `json:"server,omitempty"`
}

// Event types of the /v1/events websocket.
const (
	EventState  = "state"
	EventScore  = "score"
	EventReroll = "reroll"
)

// Event is a /v1/events websocket message: {"type": "state"|"score"|"reroll",
// "data": StateEvent|ScoreEvent|RerollEvent}.
type Event struct {
	Type string `json:"type"`
	Data any    `json:"data"`
}

// StateEvent is the data of a "state" event: the model process changed
// state (also sent first, on connect).
type StateEvent struct {
	State string `json:"state"`
	Error string `json:"error,omitempty"`
}

// ScoreEvent is the data of a "score" event: a score request was answered.
type ScoreEvent struct {
	RequestID string   `json:"request_id"`
	Prompt    string   `json:"prompt"`
	Results   []Result `json:"results"`
	// Time is when the request was answered.
	Time time.Time `json:"time,omitzero"`
	// Prompts are the images' own prompts by index, when any image had one.
	Prompts []string `json:"prompts,omitempty"`
	// Attempt and Seed are what the request said about how its images were
	// made; Seed in decimal, as a 64-bit seed does not fit a JavaScript
	// number.
	Attempt int    `json:"attempt,omitempty"`
	Seed    string `json:"seed,omitempty"`
	// Thumbs are the thumbnail URLs (GET /v1/thumbs/{id}) by result, ""
	// for an image that has none.
	Thumbs []string `json:"thumbs,omitempty"`
}

// RerollEvent is the data of a "reroll" event: a prompt was re-queued.
type RerollEvent struct {
	PromptID string            `json:"prompt_id"`
	Attempt  int               `json:"attempt"`
	MaxTries int               `json:"max_tries"`
	Seeds    map[string]uint64 `json:"seeds"`
}
