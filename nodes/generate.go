package nodes

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

//go:generate go run ./cmd/gennodes -root ..

// Generated file locations, relative to the repository root.
const (
	SchemaDir      = "schemas/nodes"
	ObjectInfoPath = "schemas/nodes/object_info.json"
	PackDefsPath   = "nodes/comfyui/m3gate/node_defs.json"
)

// Files returns every generated file of r keyed by its path relative to the
// repository root: the object_info.json and one schema per node under
// schemas/nodes, and the Python pack's node_defs.json (the same bytes as
// object_info.json).
func (r *Registry) Files() map[string][]byte {
	info := r.ObjectInfoIndented()
	files := map[string][]byte{
		ObjectInfoPath: info,
		PackDefsPath:   info,
	}
	for _, d := range r.Defs() {
		files[SchemaDir+"/"+d.Class+".schema.json"] = d.SchemaJSON()
	}
	return files
}

// WriteFiles writes r's generated files under the repository root and
// returns the paths it changed, sorted.
func (r *Registry) WriteFiles(root string) ([]string, error) {
	files := r.Files()
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	var changed []string
	for _, p := range paths {
		full := filepath.Join(root, filepath.FromSlash(p))
		if old, err := os.ReadFile(full); err == nil && bytes.Equal(old, files[p]) {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return changed, fmt.Errorf("write %s: %w", p, err)
		}
		if err := os.WriteFile(full, files[p], 0o644); err != nil {
			return changed, fmt.Errorf("write %s: %w", p, err)
		}
		changed = append(changed, p)
	}
	return changed, nil
}

// Stale compares r's generated files with those under root and returns the
// paths that are missing or differ, sorted, plus stray schema files that no
// registered node produces.
func (r *Registry) Stale(root string) ([]string, error) {
	files := r.Files()
	var stale []string
	for p, want := range files {
		got, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(p)))
		if err != nil || !bytes.Equal(got, want) {
			stale = append(stale, p)
		}
	}
	entries, err := os.ReadDir(filepath.Join(root, filepath.FromSlash(SchemaDir)))
	if err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("list %s: %w", SchemaDir, err)
	}
	for _, e := range entries {
		p := SchemaDir + "/" + e.Name()
		if _, ok := files[p]; !ok && filepath.Ext(e.Name()) == ".json" {
			stale = append(stale, p)
		}
	}
	sort.Strings(stale)
	return stale, nil
}
