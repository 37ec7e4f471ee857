package nodes

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"testing"
)

// stockInfo is the /object_info of ComfyUI v0.3.64's stock nodes (the copy
// the fake server answers with) plus m3gate's registry.
func stockInfo(t *testing.T) map[string]map[string]any {
	t.Helper()
	root := repoRoot(t)
	out := map[string]map[string]any{}
	for _, p := range []string{"plugin/comfyui/comfyfake/object_info.json", ObjectInfoPath} {
		data, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(p)))
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range decodeAny(t, data).(map[string]any) {
			out[k] = v.(map[string]any)
		}
	}
	return out
}

// specOf returns the input spec of name in a class's object_info entry.
func specOf(info map[string]any, name string) ([]any, bool) {
	for _, g := range []string{"required", "optional"} {
		if group, ok := info["input"].(map[string]any)[g].(map[string]any); ok {
			if s, ok := group[name].([]any); ok {
				return s, true
			}
		}
	}
	return nil, false
}

// isWidget says whether an input is a widget of the node in the UI (a
// value, not a socket), and whether a "control after generate" value
// follows it in widgets_values.
func isWidget(spec []any) (widget, control bool) {
	if len(spec) == 0 {
		return false, false
	}
	var o map[string]any
	if len(spec) > 1 {
		o, _ = spec[1].(map[string]any)
	}
	if o["forceInput"] == true {
		return false, false
	}
	switch typ := spec[0].(type) {
	case []any:
		widget = true
	case string:
		widget = typ == "INT" || typ == "FLOAT" || typ == "STRING" || typ == "BOOLEAN"
	}
	return widget, widget && o["control_after_generate"] == true
}

// uiToAPI converts a UI-format workflow (what the ComfyUI front end saves)
// to the API format, the way the front end's graphToPrompt does for these
// nodes: linked inputs become [source id, slot], widget values are taken
// in the class's input order.
func uiToAPI(t *testing.T, ui map[string]any, info map[string]map[string]any) map[string]any {
	t.Helper()
	links := map[string][2]any{}
	for _, l := range ui["links"].([]any) {
		l := l.([]any)
		links[l[0].(json.Number).String()] = [2]any{l[1].(json.Number).String(), l[2]}
	}
	out := map[string]any{}
	for _, n := range ui["nodes"].([]any) {
		n := n.(map[string]any)
		id := n["id"].(json.Number).String()
		class := n["type"].(string)
		ci, ok := info[class]
		if !ok {
			t.Fatalf("node %s: class %s is not a stock or m3gate node", id, class)
		}
		inputs := map[string]any{}
		for _, in := range n["inputs"].([]any) {
			in := in.(map[string]any)
			if l, ok := in["link"].(json.Number); ok {
				src := links[l.String()]
				inputs[in["name"].(string)] = []any{src[0], src[1]}
			}
		}
		values := n["widgets_values"].([]any)
		order := ci["input_order"].(map[string]any)
		var names []any
		for _, g := range []string{"required", "optional"} {
			if o, ok := order[g].([]any); ok {
				names = append(names, o...)
			}
		}
		for _, name := range names {
			spec, _ := specOf(ci, name.(string))
			widget, control := isWidget(spec)
			if !widget {
				continue
			}
			if len(values) == 0 {
				t.Fatalf("node %s (%s): no widget value left for %s", id, class, name)
			}
			inputs[name.(string)] = values[0]
			values = values[1:]
			if control {
				values = values[1:]
			}
		}
		if len(values) != 0 {
			t.Errorf("node %s (%s): widget values %v left over", id, class, values)
		}
		out[id] = map[string]any{"class_type": class, "inputs": inputs}
	}
	return out
}

// TestExampleWorkflows: examples/comfyui holds the same graph in API format
// (for /prompt and `m3gate run`) and UI format (for the ComfyUI canvas);
// every node is a stock v0.3.64 or m3gate node with its required inputs,
// the m3gate nodes match their schemas, links point at existing outputs,
// and the UI file converts to the API file.
func TestExampleWorkflows(t *testing.T) {
	root := repoRoot(t)
	info := stockInfo(t)
	read := func(name string) map[string]any {
		data, err := os.ReadFile(filepath.Join(root, "examples", "comfyui", name))
		if err != nil {
			t.Fatal(err)
		}
		return decodeAny(t, data).(map[string]any)
	}
	api := read("m3gate-api.json")
	m3 := 0
	for id, n := range api {
		n := n.(map[string]any)
		class := n["class_type"].(string)
		ci, ok := info[class]
		if !ok {
			t.Fatalf("node %s: unknown class %s", id, class)
		}
		inputs := n["inputs"].(map[string]any)
		if req, ok := ci["input_order"].(map[string]any)["required"].([]any); ok {
			for _, name := range req {
				if _, ok := inputs[name.(string)]; !ok {
					t.Errorf("node %s (%s): required input %s missing", id, class, name)
				}
			}
		}
		for name, v := range inputs {
			link, ok := v.([]any)
			if !ok {
				continue
			}
			src, ok := api[link[0].(string)].(map[string]any)
			if !ok {
				t.Errorf("node %s input %s links missing node %v", id, name, link[0])
				continue
			}
			slot, _ := strconv.Atoi(link[1].(json.Number).String())
			if outs := info[src["class_type"].(string)]["output"].([]any); slot >= len(outs) {
				t.Errorf("node %s input %s links output %d of a %s", id, name, slot, src["class_type"])
			}
		}
		if _, ok := Lookup(class); ok {
			m3++
			data, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(SchemaDir), class+".schema.json"))
			if err != nil {
				t.Fatal(err)
			}
			s := decodeAny(t, data).(map[string]any)
			if err := validate(s, s, n, id); err != nil {
				t.Errorf("node %s: %v", id, err)
			}
		}
	}
	if m3 < 5 {
		t.Errorf("the example uses %d m3gate nodes", m3)
	}
	got := uiToAPI(t, read("m3gate-ui.json"), info)
	want := map[string]any{}
	for id, n := range api {
		n := n.(map[string]any)
		want[id] = map[string]any{"class_type": n["class_type"], "inputs": n["inputs"]}
	}
	if !reflect.DeepEqual(normalize(got), normalize(want)) {
		var ids []string
		for id := range want {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		for _, id := range ids {
			if !reflect.DeepEqual(normalize(got[id]), normalize(want[id])) {
				t.Errorf("node %s: UI file gives %v, API file has %v", id, got[id], want[id])
			}
		}
	}
}

// normalize makes numbers comparable whatever their JSON spelling (7 and 7.0).
func normalize(v any) any {
	switch x := v.(type) {
	case map[string]any:
		out := map[string]any{}
		for k, e := range x {
			out[k] = normalize(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = normalize(e)
		}
		return out
	case json.Number:
		return fmt.Sprint(x)
	}
	return v
}
