// Package mllm runs the Idefics3 family (SmolVLM-256M/500M-Instruct,
// SmolVLM-Instruct 2.2B) on libtorch through gotch: a SigLIP vision
// encoder, the pixel-shuffle connector and a Llama text model, loaded from
// Hugging Face checkpoints (config.json, safetensors through
// sidecar/tensorio, tokenizer.json), with a KV cache, batched prefill and
// greedy or sampled generation.
//
// The model is built from stage packages a second family reuses:
//
//   - layers: Linear (with the LoRA hook), LayerNorm, RMSNorm, attention
//     (SDPA) and Params, the checkpoint tensors modules declare;
//   - siglip: the SigLIP vision encoder (EncoderLayer, Attention, MLP);
//   - llama: the Llama text model (DecoderLayer, Attention with rotary
//     positions and grouped KV heads, MLP, Embed, Forward over a cache,
//     Step, Logits);
//   - kvcache: the immutable KV cache (Append, Select, Join);
//   - generate: the decode loop (greedy, temperature, top-p) over any
//     generate.Decoder.
//
// This package assembles them into Idefics3 (vision.go: encoder and the
// pixel-shuffle Connector; model.go: checkpoint layout and Load;
// forward.go: left-padded batches whose image tokens take the images'
// feature rows; generate.go: Generate over the Llama model) and holds the
// tokenizer, chat template and tiny-model writer.
//
// Typical use:
//
//	m, err := mllm.Load(dir, mllm.LoadOptions{})           // f32 on CPU
//	img, err := m.EncodeImage(pixels)                      // once per image
//	seq, err := m.EncodeChat([]mllm.Message{mllm.UserMessage(q, true)}, true, []*mllm.ImageFeatures{img})
//	out, cache, err := m.Prefill([]mllm.Sequence{seq}, mllm.ForwardOptions{})
//	gen, err := m.Generate(ctx, cache, out.Logits, mllm.GenerateOptions{MaxTokens: 128, StopTokens: m.Generation.EOSTokenIDs})
//	out2, _, err := m.Extend(cache, []mllm.Sequence{{Tokens: more}}, mllm.ForwardOptions{Hidden: true})
//
// Caches are immutable: Extend and Generate return new caches and leave
// the given one usable, so an image + round-1 prefix can be continued
// several ways (KVCache.Select repeats it across a batch, JoinCaches
// batches caches of different lengths). Batches are left-padded; every
// cache slot carries a validity flag and every sequence its own positions.
//
// LoadOptions.Device puts the weights on a GPU (gotch.CudaBuilder(n);
// torch.ParseDevice reads "cuda:N"). Every tensor a pass builds from Go
// values (pixels, ids, masks, rotary tables) is made on Model.Device, and
// outputs stay there; Generate copies each step's logits to the CPU where
// it reads them, and callers do the same (torch.ToCPU) before reading
// values. On the CPU none of this adds a copy or an op.
//
// Inference runs with autograd off; ForwardOptions.Grad keeps it on for
// LoRA training, where adapters hook into Linear.Delta (Model.Linears maps
// Hugging Face module names to layers). libtorch's grad mode is
// thread-local: build losses and call Backward inside torch.Run(…, true, …).
//
// WriteTiny writes random-weight model directories of the real layout
// ("tiny" for tests, "256m" with SmolVLM-256M's shapes for benchmarks);
// scripts/ref_idefics3.py is an independent plain-torch forward pass the
// tests compare against.
package mllm
