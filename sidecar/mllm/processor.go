package mllm

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// ProcessorConfig is what preprocessor_config.json and
// processor_config.json say about image preprocessing, with the Idefics3
// processor's defaults for omitted fields. The runtime's default is still
// one Size×Size image; Split reports the checkpoint's own preference.
type ProcessorConfig struct {
	Size          int       // tile side (max_image_size.longest_edge), = vision image_size
	LongestEdge   int       // first resize target of split mode (size.longest_edge)
	Split         bool      // do_image_splitting
	Mean, Std     []float64 // per channel
	RescaleFactor float64
	ImageSeqLen   int // image tokens per tile
}

func loadProcessorConfig(dir string, cfg Config) (ProcessorConfig, error) {
	p := ProcessorConfig{
		Size: cfg.Vision.ImageSize, LongestEdge: 4 * cfg.Vision.ImageSize,
		Mean: []float64{0.5, 0.5, 0.5}, Std: []float64{0.5, 0.5, 0.5},
		RescaleFactor: 1.0 / 255, ImageSeqLen: cfg.ImageSeqLen(),
	}
	raw, err := os.ReadFile(filepath.Join(dir, "preprocessor_config.json"))
	if err == nil {
		var doc struct {
			Split  *bool          `json:"do_image_splitting"`
			Mean   []float64      `json:"image_mean"`
			Std    []float64      `json:"image_std"`
			Factor *float64       `json:"rescale_factor"`
			Max    map[string]int `json:"max_image_size"`
			Size   map[string]int `json:"size"`
		}
		if err := json.Unmarshal(raw, &doc); err != nil {
			return p, fmt.Errorf("load preprocessor config: %w", err)
		}
		if doc.Split != nil {
			p.Split = *doc.Split
		}
		if len(doc.Mean) == 3 {
			p.Mean = doc.Mean
		}
		if len(doc.Std) == 3 {
			p.Std = doc.Std
		}
		if doc.Factor != nil {
			p.RescaleFactor = *doc.Factor
		}
		if v := doc.Max["longest_edge"]; v > 0 {
			p.Size = v
		}
		if v := doc.Size["longest_edge"]; v > 0 {
			p.LongestEdge = v
		}
	} else if !os.IsNotExist(err) {
		return p, fmt.Errorf("load preprocessor config: %w", err)
	}
	if p.Size != cfg.Vision.ImageSize {
		return p, fmt.Errorf("load preprocessor config: tile size %d differs from vision image_size %d", p.Size, cfg.Vision.ImageSize)
	}
	raw, err = os.ReadFile(filepath.Join(dir, "processor_config.json"))
	if err == nil {
		var doc struct {
			SeqLen int `json:"image_seq_len"`
		}
		if err := json.Unmarshal(raw, &doc); err != nil {
			return p, fmt.Errorf("load processor config: %w", err)
		}
		if doc.SeqLen > 0 && doc.SeqLen != p.ImageSeqLen {
			return p, fmt.Errorf("load processor config: image_seq_len %d, the model makes %d tokens per tile", doc.SeqLen, p.ImageSeqLen)
		}
	} else if !os.IsNotExist(err) {
		return p, fmt.Errorf("load processor config: %w", err)
	}
	return p, nil
}
