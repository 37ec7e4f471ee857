package nodes

import (
	"strings"

	"github.com/m3gate/m3gate/schemas/iqa"
)

// The class names of m3gate's nodes.
const (
	ClassScore   = "M3Score"
	ClassGate    = "M3Gate"
	ClassReroll  = "M3Reroll"
	ClassBestOfN = "M3BestOfN"
	ClassSave    = "M3SaveImage"
)

// MOS bounds: scores are mean opinion scores on 0..5.
const (
	mosMin = 0.0
	mosMax = 5.0
)

func init() {
	Register(scoreDef())
	Register(gateDef())
	Register(rerollDef())
	Register(bestOfNDef())
	Register(saveDef())
}

func imagesIn(tip string) Input { return Input{Name: "images", Type: TypeImage, Tooltip: tip} }

func promptIn() Input {
	return Input{Name: "prompt", Type: TypeString, ForceInput: true,
		Tooltip: "The text prompt the images were generated from (link a STRING); correspondence is judged against it."}
}

func scoresIn() Input {
	return Input{Name: "scores", Type: TypeString, ForceInput: true,
		Tooltip: "Per-image scores JSON from M3 Score; when not linked the node asks the daemon to score the batch."}
}

var (
	hiddenPrompt = Input{Name: "api_prompt", Type: TypePrompt}
	hiddenID     = Input{Name: "unique_id", Type: TypeUniqueID}
	hiddenPNG    = Input{Name: "extra_pnginfo", Type: TypeExtraPNGInfo}
)

func scoreDef() Def {
	d := Def{
		Class:       ClassScore,
		DisplayName: "M3 Score",
		Description: "Scores every image of the batch with M3-AGIQA through the m3gate daemon: a mean opinion score (0-5) and a rating word per aspect. Shows the scores on the node; link scores to M3 Save Image (directly or through M3 Gate) to store each image's scores in its PNG. Also adds them to the metadata a plain SaveImage writes, but only when this node runs in the same execution (not when ComfyUI replays it from its cache).",
		Category:    Category,
		Function:    "score",
		// An output node runs even when nothing is linked to it, so a Score
		// node placed only to see the scores still runs.
		OutputNode: true,
		Required:   []Input{imagesIn("The images to score.")},
		Optional:   []Input{promptIn()},
		Hidden:     []Input{hiddenPrompt, hiddenID, hiddenPNG},
	}
	defaults := map[string]bool{iqa.Quality: true, iqa.Correspondence: true, iqa.Authenticity: false}
	for _, a := range iqa.Aspects {
		d.Required = append(d.Required, Input{Name: a, Type: TypeBoolean, Default: defaults[a],
			Tooltip: "Score the " + a + " aspect."})
	}
	d.Outputs = append(d.Outputs, Output{Name: "images", Type: TypeImage, Tooltip: "The input images, unchanged."})
	for _, a := range iqa.Aspects {
		d.Outputs = append(d.Outputs, Output{Name: a, Type: TypeFloat,
			Tooltip: "Batch mean " + a + " MOS (0-5); NaN when the aspect was not scored."})
	}
	d.Outputs = append(d.Outputs, Output{Name: "scores", Type: TypeString,
		Tooltip: "Per-image scores as JSON, for M3 Gate and M3 Best-of-N."})
	return d
}

func gateDef() Def {
	d := Def{
		Class:       ClassGate,
		DisplayName: "M3 Gate",
		Description: "Splits a batch into the images whose scores reach the thresholds and the rest. A threshold of 0 turns its aspect off; mode all needs every enabled aspect to pass, any needs one. An empty side is blocked instead of sent on as an empty batch.",
		Category:    Category,
		Function:    "gate",
		Required: []Input{
			imagesIn("The images to gate."),
			{Name: "mode", Type: TypeCombo, Choices: []string{"all", "any"}, Default: "all",
				Tooltip: "all: every enabled aspect must reach its threshold; any: one is enough."},
		},
		Optional: []Input{scoresIn(), promptIn()},
		Hidden:   []Input{hiddenID},
		Outputs: []Output{
			{Name: "passed", Type: TypeImage, Tooltip: "Images that reached the thresholds (blocked when none did)."},
			{Name: "rejected", Type: TypeImage, Tooltip: "Images that fell short (blocked when none did)."},
			{Name: "passed_count", Type: TypeInt, Tooltip: "How many images passed."},
			{Name: "rejected_count", Type: TypeInt, Tooltip: "How many images were rejected."},
			{Name: "passed_scores", Type: TypeString, Tooltip: "Scores JSON of the passed images, each with its gate result (blocked when none passed); link to M3 Save Image."},
			{Name: "rejected_scores", Type: TypeString, Tooltip: "Scores JSON of the rejected images, each with its gate result (blocked when none was rejected); link to M3 Save Image."},
		},
	}
	defaults := map[string]float64{iqa.Quality: 3.0}
	for _, a := range iqa.Aspects {
		d.Required = append(d.Required, Input{Name: a + "_min", Type: TypeFloat, Default: defaults[a],
			Min: F(mosMin), Max: F(mosMax), Step: F(0.05),
			Tooltip: "Lowest " + a + " MOS that passes (0-5); 0 turns the aspect off."})
	}
	return d
}

func rerollDef() Def {
	return Def{
		Class:       ClassReroll,
		DisplayName: "M3 Reroll",
		Description: "When fewer images passed than wanted, asks the m3gate daemon to queue this prompt again, on this ComfyUI server, with new seeds on the sampler nodes (all seed inputs, or those of the listed nodes), up to max_tries attempts. M3 Save Image stores the attempt number in each PNG.",
		Category:    Category,
		Function:    "reroll",
		OutputNode:  true,
		Required: []Input{
			{Name: "passed_count", Type: TypeInt, ForceInput: true, Min: F(0),
				Tooltip: "Link passed_count of M3 Gate."},
			{Name: "wanted", Type: TypeInt, Default: int64(1), Min: F(1), Max: F(4096), Step: F(1),
				Tooltip: "How many images must pass for the run to be accepted."},
			{Name: "max_tries", Type: TypeInt, Default: int64(3), Min: F(1), Max: F(100), Step: F(1),
				Tooltip: "Most attempts in all, the first run included."},
			{Name: "seed_nodes", Type: TypeString, Default: "",
				Tooltip: "Comma-separated ids of the nodes whose seed to change (e.g. 3,12); empty: every node with a seed or noise_seed input."},
			{Name: "attempt", Type: TypeInt, Default: int64(1), Min: F(1), Max: F(100), Step: F(1),
				Tooltip: "Which attempt this run is; the daemon sets it when it re-queues. Leave at 1."},
		},
		Hidden: []Input{hiddenPrompt, hiddenID, hiddenPNG},
		Outputs: []Output{
			{Name: "attempt", Type: TypeInt, Tooltip: "The attempt number of this run."},
			{Name: "requeued", Type: TypeBoolean, Tooltip: "True when another attempt was queued."},
		},
	}
}

func bestOfNDef() Def {
	d := Def{
		Class:       ClassBestOfN,
		DisplayName: "M3 Best-of-N",
		Description: "Keeps the top K images of the batch by the weighted mean of their aspect scores, best first.",
		Category:    Category,
		Function:    "best_of_n",
		Required: []Input{
			imagesIn("The images to choose from."),
			{Name: "top_k", Type: TypeInt, Default: int64(1), Min: F(1), Max: F(4096), Step: F(1),
				Tooltip: "How many images to keep."},
		},
		Optional: []Input{scoresIn(), promptIn()},
		Hidden:   []Input{hiddenID},
		Outputs: []Output{
			{Name: "images", Type: TypeImage, Tooltip: "The top K images, best first."},
			{Name: "scores", Type: TypeString, Tooltip: "Scores JSON of the kept images."},
			{Name: "best_score", Type: TypeFloat, Tooltip: "Weighted score of the best image."},
		},
	}
	defaults := map[string]float64{iqa.Quality: 1.0}
	for _, a := range iqa.Aspects {
		d.Required = append(d.Required, Input{Name: a + "_weight", Type: TypeFloat, Default: defaults[a],
			Min: F(0), Max: F(10), Step: F(0.05),
			Tooltip: "Weight of " + a + " in the ranking score; 0 ignores it."})
	}
	return d
}

func saveDef() Def {
	return Def{
		Class:       ClassSave,
		DisplayName: "M3 Save Image",
		Description: "Saves images as PNG like SaveImage (prompt and workflow metadata included) and writes into each file an iTXt chunk m3gate with that image's own scores, gate result, attempt number and sampler seeds. The scores come through the scores input, so the chunk is right whether ComfyUI ran M3 Score or replayed it from its cache, whatever order output nodes run in, and with or without extra_pnginfo.",
		Category:    Category,
		Function:    "save_images",
		OutputNode:  true,
		Required: []Input{
			imagesIn("The images to save."),
			{Name: "filename_prefix", Type: TypeString, Default: "m3gate",
				Tooltip: "The prefix of the file names; may name a subfolder of the output folder (e.g. passed/m3gate) and use %date:yyyy-MM-dd% like SaveImage."},
		},
		Optional: []Input{
			{Name: "scores", Type: TypeString, ForceInput: true,
				Tooltip: "Per-image scores JSON for these very images: scores of M3 Score, or passed_scores / rejected_scores of M3 Gate, or scores of M3 Best-of-N. When not linked the node asks the daemon to score the batch."},
			promptIn(),
		},
		Hidden: []Input{hiddenPrompt, hiddenID, hiddenPNG},
	}
}

// SeedInputNames are the input names M3 Reroll (and the daemon) treat as
// sampler seeds when no nodes are named.
var SeedInputNames = []string{"seed", "noise_seed"}

// ParseSeedNodes splits M3 Reroll's seed_nodes text ("3, 12") into node ids.
func ParseSeedNodes(s string) []string {
	return append([]string{}, strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == ';' })...)
}
