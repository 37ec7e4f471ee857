// Command gennodes writes the files generated from m3gate's node registry:
// schemas/nodes/*.schema.json, schemas/nodes/object_info.json and the Python
// pack's nodes/comfyui/m3gate/node_defs.json.
//
//	go run ./nodes/cmd/gennodes [-root DIR] [-check]
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/m3gate/m3gate/nodes"
)

func main() {
	root := flag.String("root", ".", "repository root to write under")
	check := flag.Bool("check", false, "only report stale files; exit 1 when any")
	flag.Parse()
	if err := run(*root, *check); err != nil {
		fmt.Fprintln(os.Stderr, "gennodes:", err)
		os.Exit(1)
	}
}

func run(root string, check bool) error {
	if _, err := os.Stat(root + "/go.mod"); err != nil {
		return fmt.Errorf("root %s is not the repository root (no go.mod): %w", root, err)
	}
	reg := nodes.Default()
	if check {
		stale, err := reg.Stale(root)
		if err != nil {
			return err
		}
		for _, p := range stale {
			fmt.Println("stale:", p)
		}
		if len(stale) > 0 {
			return fmt.Errorf("%d generated files are stale; run scripts/gen-nodes.sh", len(stale))
		}
		return nil
	}
	changed, err := reg.WriteFiles(root)
	for _, p := range changed {
		fmt.Println("wrote", p)
	}
	return err
}
