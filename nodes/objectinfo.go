package nodes

import "math"

// objectInfo builds the ordered value ComfyUI's server.py node_info returns
// for d (v0.3.64: input, input_order, output, output_is_list, output_name,
// name, display_name, description, python_module, category, output_node,
// and output_tooltips when the class declares OUTPUT_TOOLTIPS).
func (d Def) objectInfo() object {
	input := object{}
	order := object{}
	for _, g := range []struct {
		key    string
		inputs []Input
	}{{"required", d.Required}, {"optional", d.Optional}, {"hidden", d.Hidden}} {
		if len(g.inputs) == 0 {
			continue
		}
		grp := object{}
		names := []any{}
		for _, in := range g.inputs {
			if g.key == "hidden" {
				grp.set(in.Name, string(in.Type))
			} else {
				grp.set(in.Name, in.spec())
			}
			names = append(names, in.Name)
		}
		input.set(g.key, grp)
		order.set(g.key, names)
	}
	types, isList, names, tips := []any{}, []any{}, []any{}, []any{}
	anyTip := false
	for _, o := range d.Outputs {
		types = append(types, string(o.Type))
		isList = append(isList, o.IsList)
		names = append(names, o.Name)
		tips = append(tips, o.Tooltip)
		anyTip = anyTip || o.Tooltip != ""
	}
	info := object{}
	info.set("input", input)
	info.set("input_order", order)
	info.set("output", types)
	info.set("output_is_list", isList)
	info.set("output_name", names)
	info.set("name", d.Class)
	info.set("display_name", d.DisplayName)
	info.set("description", d.Description)
	module := d.PythonModule
	if module == "" {
		module = PythonModule
	}
	info.set("python_module", module)
	info.set("category", d.Category)
	info.set("output_node", d.OutputNode)
	if anyTip {
		info.set("output_tooltips", tips)
	}
	return info
}

// spec renders a required or optional input: [TYPE] or [TYPE, {options}],
// with the list of choices in place of TYPE for a combo.
func (in Input) spec() []any {
	var head any = string(in.Type)
	if in.Type == TypeCombo {
		cs := make([]any, len(in.Choices))
		for i, c := range in.Choices {
			cs[i] = c
		}
		head = cs
	}
	opts := object{}
	if in.Default != nil {
		opts.set("default", in.pyValue(in.Default))
	}
	if in.Min != nil {
		opts.set("min", in.pyValue(*in.Min))
	}
	if in.Max != nil {
		opts.set("max", in.pyValue(*in.Max))
	}
	if in.Step != nil {
		opts.set("step", in.pyValue(*in.Step))
	}
	if in.Multiline {
		opts.set("multiline", true)
	}
	if in.ForceInput {
		opts.set("forceInput", true)
	}
	if in.Tooltip != "" {
		opts.set("tooltip", in.Tooltip)
	}
	if len(opts) == 0 {
		return []any{head}
	}
	return []any{head, opts}
}

// pyValue gives a number the Python type of the input (int for INT, float
// for FLOAT) so that it renders as ComfyUI would send it.
func (in Input) pyValue(v any) any {
	f, ok := number(v)
	if !ok {
		return v
	}
	if in.Type == TypeInt && f == math.Trunc(f) {
		return pyInt(int64(f))
	}
	return pyFloat(f)
}

// allObjectInfo is the GET /object_info body for defs: class → node info.
func allObjectInfo(defs []Def) object {
	o := object{}
	for _, d := range defs {
		o.set(d.Class, d.objectInfo())
	}
	return o
}

// ObjectInfoJSON returns d exactly as a ComfyUI v0.3.x server sends it on
// GET /object_info/{class}: {class: info}, with Python's separators.
func (d Def) ObjectInfoJSON() []byte {
	return dumps(allObjectInfo([]Def{d}), 0)
}

// ObjectInfoJSON returns the GET /object_info body for every node of the
// registry as a ComfyUI v0.3.x server sends it.
func (r *Registry) ObjectInfoJSON() []byte { return dumps(allObjectInfo(r.Defs()), 0) }

// ObjectInfoIndented returns the same value as ObjectInfoJSON formatted like
// Python's json.dumps(v, indent=2) plus a final newline: the committed
// schemas/nodes/object_info.json and the pack's node_defs.json.
func (r *Registry) ObjectInfoIndented() []byte {
	return append(dumps(allObjectInfo(r.Defs()), 2), '\n')
}
