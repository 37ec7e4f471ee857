package mllm

import (
	"github.com/m3gate/m3gate/sidecar/mllm/kvcache"
	"github.com/m3gate/m3gate/sidecar/mllm/layers"
)

// LinearDelta is an adapter added to a Linear layer's output (LoRA); see
// layers.LinearDelta.
type LinearDelta = layers.LinearDelta

// Linear is one Hugging Face nn.Linear module with its adapter hook; see
// layers.Linear.
type Linear = layers.Linear

// KVCache holds the keys and values of every text layer for a batch of
// sequences; see kvcache.Cache. It is immutable: forward passes return a
// new cache and leave the old one valid.
type KVCache = kvcache.Cache

// JoinCaches stacks caches of possibly different lengths into one batch,
// left-padding the shorter ones with hidden slots.
func JoinCaches(caches ...*KVCache) (*KVCache, error) { return kvcache.Join(caches...) }
