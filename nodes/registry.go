// Package nodes holds the one registry of m3gate's ComfyUI node definitions
// and renders it to the JSON a ComfyUI v0.3.x server answers on
// GET /object_info, to JSON Schemas (draft 2020-12) of each node's inputs in
// an API-format prompt, and to the node_defs.json that the thin Python pack
// under nodes/comfyui/m3gate reads.
//
// Node definitions register themselves caddy-style: a type implementing Node
// calls Register from an init function.
package nodes

import (
	"fmt"
	"math"
	"regexp"
	"sort"
	"sync"
)

// Type is a ComfyUI socket or widget type ("IMAGE", "FLOAT", ...), or the
// value type of a hidden input ("PROMPT", "UNIQUE_ID", "EXTRA_PNGINFO").
type Type string

// The types m3gate's nodes use.
const (
	TypeImage   Type = "IMAGE"
	TypeString  Type = "STRING"
	TypeFloat   Type = "FLOAT"
	TypeInt     Type = "INT"
	TypeBoolean Type = "BOOLEAN"
	// TypeCombo marks a choice widget; ComfyUI renders it as the list of
	// choices in place of a type name.
	TypeCombo Type = "COMBO"

	// TypePrompt is the hidden input holding the whole API-format prompt.
	TypePrompt Type = "PROMPT"
	// TypeUniqueID is the hidden input holding the node's own id.
	TypeUniqueID Type = "UNIQUE_ID"
	// TypeExtraPNGInfo is the hidden input holding the prompt's
	// extra_pnginfo dict, which SaveImage writes into its PNG text chunks.
	TypeExtraPNGInfo Type = "EXTRA_PNGINFO"
)

// PythonModule is the python_module ComfyUI reports for the pack when it is
// installed as custom_nodes/m3gate.
const PythonModule = "custom_nodes.m3gate"

// Category is the menu category of every m3gate node.
const Category = "m3gate"

// Input is one input of a node. Default, Min, Max and Step only apply to the
// widget types they make sense for; nil pointers and zero values are left
// out of the rendered options.
type Input struct {
	Name string
	Type Type
	// Choices lists the values of a TypeCombo input.
	Choices []string
	// Default is a bool, string, float64 or int64 matching Type; nil for none.
	Default any
	// Min, Max and Step bound an INT or FLOAT widget.
	Min, Max, Step *float64
	// Multiline makes a STRING widget a text area.
	Multiline bool
	// ForceInput makes a widget type a socket that must be linked.
	ForceInput bool
	Tooltip    string
}

// Output is one output socket of a node.
type Output struct {
	Name    string
	Type    Type
	IsList  bool
	Tooltip string
}

// Def is the full definition of one node class.
type Def struct {
	// Class is the key in NODE_CLASS_MAPPINGS and the class_type in prompts.
	Class       string
	DisplayName string
	Description string
	Category    string
	// Function names the Python method ComfyUI calls.
	Function string
	// PythonModule overrides the reported python_module; empty means the
	// m3gate pack (PythonModule).
	PythonModule string
	OutputNode   bool
	Required     []Input
	Optional     []Input
	Hidden       []Input
	Outputs      []Output
}

// Node is implemented by anything that contributes a node definition.
type Node interface {
	// NodeDef returns the node's definition.
	NodeDef() Def
}

// Registry is an ordered set of node definitions keyed by class.
type Registry struct {
	mu   sync.RWMutex
	defs map[string]Def
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{defs: map[string]Def{}} }

// Add validates n's definition and adds it; a duplicate class is an error.
func (r *Registry) Add(n Node) error {
	d := n.NodeDef()
	if err := d.Validate(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.defs[d.Class]; dup {
		return fmt.Errorf("node %s: already registered", d.Class)
	}
	r.defs[d.Class] = d
	return nil
}

// Defs returns the registered definitions sorted by class.
func (r *Registry) Defs() []Def {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]Def, 0, len(r.defs))
	for _, d := range r.defs {
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Class < out[j].Class })
	return out
}

// Lookup returns the definition of class.
func (r *Registry) Lookup(class string) (Def, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	d, ok := r.defs[class]
	return d, ok
}

var defaultRegistry = NewRegistry()

// Register adds n to the default registry. It is meant for init functions
// and panics on an invalid or duplicate definition, which is a programming
// error caught by the package's tests.
func Register(n Node) {
	if err := defaultRegistry.Add(n); err != nil {
		panic("nodes.Register: " + err.Error())
	}
}

// Default returns the registry that Register fills.
func Default() *Registry { return defaultRegistry }

// Defs returns the definitions of the default registry sorted by class.
func Defs() []Def { return defaultRegistry.Defs() }

// Lookup returns the definition of class from the default registry.
func Lookup(class string) (Def, bool) { return defaultRegistry.Lookup(class) }

// NodeDef lets a Def register itself.
func (d Def) NodeDef() Def { return d }

var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Validate reports the first problem that would make ComfyUI reject or
// misread the definition.
func (d Def) Validate() error {
	if !identRE.MatchString(d.Class) {
		return fmt.Errorf("node %q: class must be a Python identifier", d.Class)
	}
	if d.Function == "" || !identRE.MatchString(d.Function) {
		return fmt.Errorf("node %s: function %q must be a Python identifier", d.Class, d.Function)
	}
	if d.DisplayName == "" || d.Category == "" {
		return fmt.Errorf("node %s: display name and category are required", d.Class)
	}
	seen := map[string]bool{}
	groups := []struct {
		name   string
		inputs []Input
	}{{"required", d.Required}, {"optional", d.Optional}, {"hidden", d.Hidden}}
	for _, g := range groups {
		for _, in := range g.inputs {
			if !identRE.MatchString(in.Name) {
				return fmt.Errorf("node %s: input %q must be a Python identifier", d.Class, in.Name)
			}
			if seen[in.Name] {
				return fmt.Errorf("node %s: input %s declared twice", d.Class, in.Name)
			}
			seen[in.Name] = true
			if err := in.validate(g.name == "hidden"); err != nil {
				return fmt.Errorf("node %s: input %s: %w", d.Class, in.Name, err)
			}
		}
	}
	for i, o := range d.Outputs {
		if o.Name == "" || o.Type == "" || o.Type == TypeCombo {
			return fmt.Errorf("node %s: output %d needs a name and a socket type", d.Class, i)
		}
	}
	return nil
}

func (in Input) validate(hidden bool) error {
	if hidden {
		switch in.Type {
		case TypePrompt, TypeUniqueID, TypeExtraPNGInfo:
			return nil
		}
		return fmt.Errorf("hidden input type %q is not PROMPT, UNIQUE_ID or EXTRA_PNGINFO", in.Type)
	}
	switch in.Type {
	case TypePrompt, TypeUniqueID, TypeExtraPNGInfo:
		return fmt.Errorf("type %s is only valid for a hidden input", in.Type)
	case "":
		return fmt.Errorf("missing type")
	}
	if (in.Type == TypeCombo) != (len(in.Choices) > 0) {
		return fmt.Errorf("choices go with type COMBO and only with it")
	}
	switch v := in.Default.(type) {
	case nil:
	case bool:
		if in.Type != TypeBoolean {
			return fmt.Errorf("bool default on a %s input", in.Type)
		}
	case string:
		if in.Type != TypeString && in.Type != TypeCombo {
			return fmt.Errorf("string default on a %s input", in.Type)
		}
		if in.Type == TypeCombo && !contains(in.Choices, v) {
			return fmt.Errorf("default %q is not one of the choices", v)
		}
	case float64:
		if in.Type != TypeFloat || math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("float default on a %s input", in.Type)
		}
	case int64:
		if in.Type != TypeInt {
			return fmt.Errorf("int default on a %s input", in.Type)
		}
	default:
		return fmt.Errorf("default of unsupported Go type %T", in.Default)
	}
	if in.Min != nil || in.Max != nil || in.Step != nil {
		if in.Type != TypeInt && in.Type != TypeFloat {
			return fmt.Errorf("min/max/step on a %s input", in.Type)
		}
		for _, p := range []*float64{in.Min, in.Max, in.Step} {
			if p != nil && in.Type == TypeInt && *p != math.Trunc(*p) {
				return fmt.Errorf("fractional bound %v on an INT input", *p)
			}
		}
	}
	if in.Min != nil && in.Max != nil && *in.Min > *in.Max {
		return fmt.Errorf("min %v above max %v", *in.Min, *in.Max)
	}
	if d, ok := number(in.Default); ok {
		if (in.Min != nil && d < *in.Min) || (in.Max != nil && d > *in.Max) {
			return fmt.Errorf("default %v outside [min, max]", d)
		}
	}
	if in.Multiline && in.Type != TypeString {
		return fmt.Errorf("multiline on a %s input", in.Type)
	}
	return nil
}

func number(v any) (float64, bool) {
	switch n := v.(type) {
	case float64:
		return n, true
	case int64:
		return float64(n), true
	}
	return 0, false
}

func contains(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}

// F returns a pointer to v, for Input bounds.
func F(v float64) *float64 { return &v }
