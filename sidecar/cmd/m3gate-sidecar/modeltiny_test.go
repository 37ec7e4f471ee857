package main

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"testing"

	"github.com/sugarme/gotch"

	"github.com/m3gate/m3gate/schemas"
	"github.com/m3gate/m3gate/sidecar/lora"
	"github.com/m3gate/m3gate/sidecar/m3"
	"github.com/m3gate/m3gate/sidecar/mllm/minicpmv"
	"github.com/m3gate/m3gate/sidecar/xlstm"
)

// TestModelTinyMiniCPMBundle writes the minicpmv25 bundle and loads each
// part the way a user's real files load: the adapters (LoRA plus
// modules_to_save) and the Lightning predictor checkpoints, then the whole
// bundle in the engine.
func TestModelTinyMiniCPMBundle(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	if err := modelTiny(context.Background(), []string{"--family", "minicpmv25", "--out", dir}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	base, _, _ := minicpmv.BundleLayout(dir, "")
	req := schemas.LoadRequest{ModelDir: base, Family: m3.FamilyMiniCPMV25, Adapters: map[string]string{}, Predictors: map[string]string{}}
	for _, aspect := range minicpmv.BundleAspects {
		_, ad, pr := minicpmv.BundleLayout(dir, aspect)
		a, err := lora.Load(ad, aspect)
		if err != nil {
			t.Fatal(err)
		}
		if len(a.Layers) == 0 || len(a.Saved) == 0 || len(a.Config.ModulesToSave) != 3 {
			t.Errorf("%s: %d LoRA layers, %d saved tensors, modules_to_save %v", aspect, len(a.Layers), len(a.Saved), a.Config.ModulesToSave)
		}
		if filepath.Ext(pr) != ".ckpt" {
			t.Errorf("predictor %s is not a .ckpt", pr)
		}
		if _, err := xlstm.Load(pr, gotch.CPU); err != nil {
			t.Fatal(err)
		}
		req.Adapters[aspect], req.Predictors[aspect] = ad, pr
	}
	e := m3.NewEngine()
	if err := e.Load(context.Background(), req, nil); err != nil {
		t.Fatal(err)
	}
	defer e.Unload(context.Background())
	if info := e.Info(); len(info.PredictorAspects) != 3 || len(info.AdapterAspects) != 3 {
		t.Errorf("info %+v", info)
	}
}
