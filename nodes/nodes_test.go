package nodes

import (
	"bufio"
	"bytes"
	"flag"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the generated golden files under the repository root")

// repoRoot is the repository root, one level above this package.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repository root %s has no go.mod: %v", root, err)
	}
	return root
}

func TestGeneratedFilesAreCurrent(t *testing.T) {
	root := repoRoot(t)
	if *update {
		changed, err := Default().WriteFiles(root)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range changed {
			t.Logf("wrote %s", p)
		}
	}
	stale, err := Default().Stale(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range stale {
		t.Errorf("%s differs from the registry; run scripts/gen-nodes.sh (or go test ./nodes -run TestGeneratedFilesAreCurrent -update)", p)
	}
}

func TestRegistryHasTheFourNodes(t *testing.T) {
	var got []string
	for _, d := range Defs() {
		got = append(got, d.Class)
		if d.Category != Category {
			t.Errorf("%s: category %q, want %q", d.Class, d.Category, Category)
		}
		if d.Description == "" {
			t.Errorf("%s: no description", d.Class)
		}
	}
	want := []string{ClassBestOfN, ClassGate, ClassReroll, ClassSave, ClassScore}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("classes %v, want %v", got, want)
	}
}

// TestRenderMatchesRecordedServer renders the nodes of a live ComfyUI
// v0.3.64 server's /object_info answers (recorded in the fixtures) from
// registry definitions and compares the bytes.
func TestRenderMatchesRecordedServer(t *testing.T) {
	probe := Def{
		Class: "QualityProbe", DisplayName: "Quality Probe (research)",
		Description: "Research probe: mean-brightness score", Category: "quality/probe",
		Function: "probe", OutputNode: true, PythonModule: "custom_nodes.quality_probe",
		Required: []Input{
			{Name: "images", Type: TypeImage},
			{Name: "threshold", Type: TypeFloat, Default: 0.5, Min: F(0), Max: F(1), Step: F(0.01)},
		},
		Optional: []Input{
			{Name: "sleep_s", Type: TypeFloat, Default: 0.0, Min: F(0), Max: F(60)},
			{Name: "fail", Type: TypeBoolean, Default: false},
		},
		Hidden: []Input{{Name: "unique_id", Type: TypeUniqueID}, {Name: "prompt", Type: TypePrompt}, {Name: "extra_pnginfo", Type: TypeExtraPNGInfo}},
		Outputs: []Output{
			{Name: "images", Type: TypeImage, Tooltip: "pass-through images"},
			{Name: "score", Type: TypeFloat, Tooltip: "mean score"},
			{Name: "passed", Type: TypeBoolean, Tooltip: "score >= threshold"},
		},
	}
	save := Def{
		Class: "SaveImage", DisplayName: "Save Image",
		Description: "Saves the input images to your ComfyUI output directory.", Category: "image",
		Function: "save_images", OutputNode: true, PythonModule: "nodes",
		Required: []Input{
			{Name: "images", Type: TypeImage, Tooltip: "The images to save."},
			{Name: "filename_prefix", Type: TypeString, Default: "ComfyUI", Tooltip: "The prefix for the file to save. This may include formatting information such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes."},
		},
		Hidden: []Input{{Name: "prompt", Type: TypePrompt}, {Name: "extra_pnginfo", Type: TypeExtraPNGInfo}},
	}
	preview := save
	preview.Class, preview.DisplayName = "PreviewImage", "Preview Image"
	preview.Required = []Input{{Name: "images", Type: TypeImage}}

	want := readFixtureLines(t)
	for _, d := range []Def{probe, save, preview} {
		if err := d.Validate(); err != nil {
			t.Fatalf("%s: %v", d.Class, err)
		}
		got := string(d.ObjectInfoJSON())
		if got != want[d.Class] {
			t.Errorf("%s:\n got %s\nwant %s", d.Class, got, want[d.Class])
		}
	}
}

func readFixtureLines(t *testing.T) map[string]string {
	t.Helper()
	f, err := os.Open("testdata/objectinfo-v0.3.64.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		v, err := parseOrdered([]byte(line))
		if err != nil {
			t.Fatal(err)
		}
		o := v.(object)
		// The writer reproduces Python's bytes for what it parsed.
		if again := string(dumps(v, 0)); again != line {
			t.Fatalf("re-encoding differs:\n got %s\nwant %s", again, line)
		}
		out[o[0].key] = line
	}
	return out
}

func TestFormatPyFloat(t *testing.T) {
	tests := []struct {
		in   float64
		want string
	}{
		{0, "0.0"}, {math.Copysign(0, -1), "-0.0"}, {1, "1.0"}, {3, "3.0"}, {0.05, "0.05"},
		{0.01, "0.01"}, {0.30000000000000004, "0.30000000000000004"}, {1e-4, "0.0001"}, {1e-5, "1e-05"},
		{1.5e-7, "1.5e-07"}, {123456.789, "123456.789"}, {1e15, "1000000000000000.0"},
		{1e16, "1e+16"}, {1.25e22, "1.25e+22"}, {-2.5, "-2.5"}, {4096, "4096.0"},
		{math.NaN(), "NaN"}, {math.Inf(1), "Infinity"}, {math.Inf(-1), "-Infinity"},
	}
	for _, tt := range tests {
		if got := formatPyFloat(tt.in); got != tt.want {
			t.Errorf("formatPyFloat(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestWriteStringEscapesLikePython(t *testing.T) {
	tests := []struct{ in, want string }{
		{`a"b\c`, `"a\"b\\c"`},
		{"tab\tnl\n", `"tab\tnl\n"`},
		{"\x01\x7f", `"\u0001` + "\x7f" + `"`},
		{"<&>", `"<&>"`},
		{"é", `"\u00e9"`},
		{"😀", `"\ud83d\ude00"`},
	}
	for _, tt := range tests {
		var b bytes.Buffer
		writeString(&b, tt.in)
		if got := b.String(); got != tt.want {
			t.Errorf("writeString(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

func TestValidateRejectsBadDefinitions(t *testing.T) {
	base := func() Def {
		return Def{Class: "X", DisplayName: "X", Category: "c", Function: "run",
			Required: []Input{{Name: "n", Type: TypeInt, Default: int64(1), Min: F(0), Max: F(9)}}}
	}
	tests := []struct {
		name   string
		mutate func(*Def)
		want   string
	}{
		{"class not identifier", func(d *Def) { d.Class = "M3 Score" }, "Python identifier"},
		{"no function", func(d *Def) { d.Function = "" }, "function"},
		{"duplicate input", func(d *Def) { d.Optional = []Input{{Name: "n", Type: TypeString}} }, "declared twice"},
		{"hidden type visible", func(d *Def) { d.Required[0] = Input{Name: "p", Type: TypePrompt} }, "only valid for a hidden"},
		{"visible type hidden", func(d *Def) { d.Hidden = []Input{{Name: "p", Type: TypeString}} }, "hidden input type"},
		{"default out of range", func(d *Def) { d.Required[0].Default = int64(10) }, "outside [min, max]"},
		{"min above max", func(d *Def) { d.Required[0].Min = F(10) }, "above max"},
		{"fractional int bound", func(d *Def) { d.Required[0].Step = F(0.5) }, "fractional"},
		{"wrong default type", func(d *Def) { d.Required[0].Default = 1.5 }, "float default"},
		{"combo without choices", func(d *Def) { d.Required[0] = Input{Name: "m", Type: TypeCombo} }, "choices"},
		{"combo default not a choice", func(d *Def) {
			d.Required[0] = Input{Name: "m", Type: TypeCombo, Choices: []string{"a"}, Default: "b"}
		}, "not one of the choices"},
		{"output without type", func(d *Def) { d.Outputs = []Output{{Name: "x"}} }, "socket type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := base()
			if err := d.Validate(); err != nil {
				t.Fatalf("base definition invalid: %v", err)
			}
			tt.mutate(&d)
			err := d.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestRegistryRejectsDuplicates(t *testing.T) {
	r := NewRegistry()
	d := Def{Class: "X", DisplayName: "X", Category: "c", Function: "run"}
	if err := r.Add(d); err != nil {
		t.Fatal(err)
	}
	if err := r.Add(d); err == nil || !strings.Contains(err.Error(), "already registered") {
		t.Fatalf("second Add = %v, want already registered", err)
	}
	if _, ok := r.Lookup("X"); !ok {
		t.Fatal("Lookup(X) missing")
	}
}

// TestSchemaFollowsInputs checks each node schema against its definition:
// every visible input is a property, required ones are required, sockets
// and forceInput inputs only accept links, hidden inputs are absent.
func TestSchemaFollowsInputs(t *testing.T) {
	for _, d := range Defs() {
		s := d.jsonSchema()
		inputs := lookup(t, s, "properties", "inputs")
		props := lookup(t, inputs, "properties").(object)
		if len(props) != len(d.Required)+len(d.Optional) {
			t.Errorf("%s: %d properties, want %d", d.Class, len(props), len(d.Required)+len(d.Optional))
		}
		req := lookup(t, inputs, "required").([]any)
		if len(req) != len(d.Required) {
			t.Errorf("%s: %d required, want %d", d.Class, len(req), len(d.Required))
		}
		for _, in := range append(append([]Input{}, d.Required...), d.Optional...) {
			p := lookup(t, props, in.Name).(object)
			_, linkOnly := get(p, "$ref")
			wantLinkOnly := in.ForceInput || in.Type == TypeImage
			if linkOnly != wantLinkOnly {
				t.Errorf("%s.%s: link-only %v, want %v", d.Class, in.Name, linkOnly, wantLinkOnly)
			}
		}
		for _, in := range d.Hidden {
			if _, ok := get(props, in.Name); ok {
				t.Errorf("%s: hidden input %s in the schema", d.Class, in.Name)
			}
		}
	}
}

func get(o object, key string) (any, bool) {
	for _, m := range o {
		if m.key == key {
			return m.val, true
		}
	}
	return nil, false
}

func lookup(t *testing.T, v any, path ...string) any {
	t.Helper()
	for _, k := range path {
		o, ok := v.(object)
		if !ok {
			t.Fatalf("lookup %v: %s is not in an object", path, k)
		}
		if v, ok = get(o, k); !ok {
			t.Fatalf("lookup %v: no %s", path, k)
		}
	}
	return v
}
