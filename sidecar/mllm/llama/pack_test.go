package llama

import (
	"path/filepath"
	"testing"

	"github.com/sugarme/gotch"

	"github.com/m3gate/m3gate/sidecar/mllm/kvcache"
	"github.com/m3gate/m3gate/sidecar/mllm/layers"
	"github.com/m3gate/m3gate/sidecar/tensorio"
	"github.com/m3gate/m3gate/sidecar/torch"
)

// tinyModel is a two-layer Llama with random weights (grouped-query
// attention: 4 query heads over 2 KV heads), loaded from a checkpoint as
// the model families load theirs, so its projections are joined
// (layers.Fused).
func tinyModel(t *testing.T) *Model {
	t.Helper()
	c := Config{VocabSize: 50, HiddenSize: 64, IntermediateSize: 96, NumHiddenLayers: 2,
		NumAttentionHeads: 4, NumKeyValueHeads: 2, HeadDim: 16, RMSNormEps: 1e-5, RopeTheta: 10000, MaxPositionEmbeddings: 128}
	p := layers.NewParams()
	m := New(p, c, "model.", "lm_head", false)
	path := filepath.Join(t.TempDir(), "model.safetensors")
	if err := layers.WriteRandom(path, p.List, 7, gotch.Float); err != nil {
		t.Fatal(err)
	}
	ck, err := tensorio.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	if err := p.Load(ck, gotch.CPU, func(layers.Param, tensorio.Info) gotch.DType { return gotch.Float }); err != nil {
		t.Fatal(err)
	}
	if !m.Layers[0].Attn.QKV.Joined() || !m.Layers[0].MLP.GateUp.Joined() {
		t.Fatal("the loaded projections are not joined")
	}
	m.Bind(gotch.Float, gotch.CPU)
	t.Cleanup(p.Drop)
	return m
}

// ragged is a left-padded batch: row i has n[i] valid slots at the end of
// tq.
func ragged(tq int, n ...int) [][]bool {
	v := make([][]bool, len(n))
	for i := range v {
		v[i] = make([]bool, tq)
		for j := tq - n[i]; j < tq; j++ {
			v[i][j] = true
		}
	}
	return v
}

// TestPackedMatchesPadded: a batch of sequences of different lengths, run
// with the per-token ops on the valid tokens only (packed), gives the
// padded layout's hidden states at every valid slot, in a prefill and in
// an extension of its cache (whose keys and values the packed pass
// wrote).
func TestPackedMatchesPadded(t *testing.T) {
	m := tinyModel(t)
	steps := []struct {
		valid [][]bool
		seed  int64
	}{
		{ragged(7, 5, 2, 7), 1}, // a prefill
		{ragged(4, 3, 1, 4), 2}, // an extension after it
	}
	run := func(packed bool) [][]float32 {
		noPacking = !packed
		defer func() { noPacking = false }()
		var out [][]float32
		var cache *kvcache.Cache
		for _, s := range steps {
			if p := newPacking(s.valid, m); p == nil {
				t.Fatal("the batch has padding but no packing")
			} else {
				p.free()
			}
			x := randTensor(s.seed, int64(len(s.valid)), int64(len(s.valid[0])), int64(m.Config.HiddenSize))
			h, next := m.Forward(x, s.valid, cache)
			v := floats(h)
			h.MustDrop()
			// Only the valid slots: the padding slots hold nothing.
			D := m.Config.HiddenSize
			var rows []float32
			for i, row := range s.valid {
				for j, ok := range row {
					if ok {
						k := (i*len(row) + j) * D
						rows = append(rows, v[k:k+D]...)
					}
				}
			}
			out = append(out, rows)
			cache.Free()
			cache = next
		}
		cache.Free()
		return out
	}
	var padded, packed [][]float32
	if err := torch.Run("padded", false, func() error { padded = run(false); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := torch.Run("packed", false, func() error { packed = run(true); return nil }); err != nil {
		t.Fatal(err)
	}
	for i := range steps {
		if d := maxAbsDiff(packed[i], padded[i]); d > 1e-5 {
			t.Errorf("pass %d: packed and padded hidden states differ by %g", i, d)
		}
	}
	if raw := torch.LiveRaw(); raw != 0 {
		t.Errorf("%d raw handles left", raw)
	}
}
