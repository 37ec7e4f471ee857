package header

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
)

// IndexName is the file name of a sharded checkpoint's index.
const IndexName = "model.safetensors.index.json"

// Index is a parsed model.safetensors.index.json.
type Index struct {
	// Metadata holds the index's "metadata" object; string values verbatim,
	// other values (total_size) as their JSON text.
	Metadata map[string]string
	// WeightMap maps tensor names to shard file names.
	WeightMap map[string]string
}

// ParseIndex parses an index file's contents, rejecting duplicate keys and
// shard names that are not plain file names in the index's directory.
func ParseIndex(data []byte) (*Index, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := expectDelim(dec, '{'); err != nil {
		return nil, err
	}
	idx := &Index{Metadata: map[string]string{}}
	seen := map[string]bool{}
	for dec.More() {
		key, err := readKey(dec)
		if err != nil {
			return nil, err
		}
		if seen[key] {
			return nil, fmt.Errorf("duplicate key %q", key)
		}
		seen[key] = true
		switch key {
		case "metadata":
			if err := readRawMap(dec, idx.Metadata); err != nil {
				return nil, fmt.Errorf("metadata: %w", err)
			}
		case "weight_map":
			m, err := readStringMap(dec)
			if err != nil {
				return nil, fmt.Errorf("weight_map: %w", err)
			}
			for name, file := range m {
				if file == "" || file != filepath.Base(file) || strings.ContainsAny(file, `/\`) || file == "." || file == ".." {
					return nil, fmt.Errorf("weight_map: tensor %q names shard %q, which is not a plain file name", name, file)
				}
			}
			idx.WeightMap = m
		default:
			if err := skipValue(dec); err != nil {
				return nil, fmt.Errorf("%s: %w", key, err)
			}
		}
	}
	if err := expectDelim(dec, '}'); err != nil {
		return nil, err
	}
	if idx.WeightMap == nil {
		return nil, errors.New("no weight_map")
	}
	return idx, nil
}

// readRawMap reads a JSON object into m: strings verbatim, other values as
// compact JSON text. Duplicate keys are errors.
func readRawMap(dec *json.Decoder, m map[string]string) error {
	if err := expectDelim(dec, '{'); err != nil {
		return err
	}
	seen := map[string]bool{}
	for dec.More() {
		key, err := readKey(dec)
		if err != nil {
			return err
		}
		if seen[key] {
			return fmt.Errorf("duplicate key %q", key)
		}
		seen[key] = true
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		var s string
		if json.Unmarshal(raw, &s) == nil {
			m[key] = s
			continue
		}
		var buf bytes.Buffer
		if err := json.Compact(&buf, raw); err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
		m[key] = buf.String()
	}
	return expectDelim(dec, '}')
}
