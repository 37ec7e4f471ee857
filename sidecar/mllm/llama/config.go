// Package llama is the Llama decoder-only text model as the model
// families of sidecar/mllm use it: token embeddings, decoder layers
// (RMSNorm, grouped-query attention with rotary positions, SwiGLU MLP), the
// final norm and the LM head, run over a kvcache.Cache.
//
// A family builds a Model inside its own checkpoint namespace (New with
// the module prefix and the head's name), embeds tokens (Embed), replaces
// the rows of its image tokens with its own image embeddings, and runs
// Forward; Step is one decode step for sidecar/mllm/generate.
//
// Functions here panic on a libtorch error (gotch's Must* calls); callers
// run them under torch.Run, which turns the panic into an error.
package llama

import "encoding/json"

// Config is a Llama text model's config.json (LlamaConfig; Idefics3's
// text_config).
type Config struct {
	VocabSize             int             `json:"vocab_size"`
	HiddenSize            int             `json:"hidden_size"`
	IntermediateSize      int             `json:"intermediate_size"`
	NumHiddenLayers       int             `json:"num_hidden_layers"`
	NumAttentionHeads     int             `json:"num_attention_heads"`
	NumKeyValueHeads      int             `json:"num_key_value_heads"`
	HeadDim               int             `json:"head_dim,omitempty"`
	HiddenAct             string          `json:"hidden_act"`
	RMSNormEps            float64         `json:"rms_norm_eps"`
	RopeTheta             float64         `json:"rope_theta"`
	RopeScaling           json.RawMessage `json:"rope_scaling,omitempty"`
	MaxPositionEmbeddings int             `json:"max_position_embeddings"`
	AttentionBias         bool            `json:"attention_bias"`
	MLPBias               bool            `json:"mlp_bias"`
	ModelType             string          `json:"model_type,omitempty"`
	BOSTokenID            *int64          `json:"bos_token_id,omitempty"`
	EOSTokenID            any             `json:"eos_token_id,omitempty"`
	PadTokenID            *int64          `json:"pad_token_id,omitempty"`
}
