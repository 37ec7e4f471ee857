package nodes

import "github.com/m3gate/m3gate/schemas/api"

// ImageMetadata is the JSON that M3 Save Image writes into each PNG, in an
// iTXt (UTF-8) chunk named PNGInfoKey: the scores of that very image and
// how it was made. Its field names match the metadata `m3gate run` writes
// (pipeline.Metadata), so one reader serves both.
type ImageMetadata struct {
	// Scores maps aspect to the image's score; empty when scoring failed.
	Scores map[string]api.AspectScore `json:"scores"`
	// Error is the daemon's error for this image, if any.
	Error string `json:"error,omitempty"`
	// Passed is the gate result; nil when no M3 Gate judged the image.
	Passed *bool `json:"passed"`
	// Gate is the rule the image was judged by, when a gate ran.
	Gate *GateRule `json:"gate,omitempty"`
	// Attempt is the attempt number of the run (1 for the first run; M3
	// Reroll's attempt input).
	Attempt int `json:"attempt"`
	// Seeds maps the id of each sampler node upstream of the saved images
	// to its seed.
	Seeds map[string]uint64 `json:"seeds"`
	// Prompt is the text prompt the image was scored against.
	Prompt string `json:"prompt"`
	// Node is the id of the M3 Save Image node; Index the image's place in
	// the batch it saved (Batch images) and SourceIndex its place in the
	// batch M3 Score scored.
	Node        string `json:"node"`
	Index       int    `json:"index"`
	SourceIndex int    `json:"source_index"`
	Batch       int    `json:"batch"`
}

// GateRule is how M3 Gate judged an image: the per-aspect thresholds that
// were on and whether all or any had to be met.
type GateRule struct {
	Mode       string             `json:"mode"`
	Thresholds map[string]float64 `json:"thresholds"`
}
