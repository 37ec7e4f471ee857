package nodes

// SchemaBaseURI prefixes the $id of every node schema.
const SchemaBaseURI = "https://m3gate.dev/schemas/nodes/"

// JSONSchemaDraft is the $schema of the generated node schemas.
const JSONSchemaDraft = "https://json-schema.org/draft/2020-12/schema"

// jsonSchema describes one node of an API-format prompt,
// {"class_type": d.Class, "inputs": {...}}: every visible input is either
// its literal widget value or a link [node_id, output_index]; sockets and
// forceInput inputs only take a link; hidden inputs never appear.
func (d Def) jsonSchema() object {
	props := object{}
	required := []any{}
	for _, in := range d.Required {
		props.set(in.Name, in.valueSchema())
		required = append(required, in.Name)
	}
	for _, in := range d.Optional {
		props.set(in.Name, in.valueSchema())
	}
	inputs := object{}
	inputs.set("type", "object")
	inputs.set("properties", props)
	inputs.set("required", required)
	inputs.set("additionalProperties", false)

	classType := object{}
	classType.set("const", d.Class)

	meta := object{}
	meta.set("type", "object")
	meta.set("description", "UI metadata ComfyUI ignores when it runs the prompt (title)")

	top := object{}
	top.set("$schema", JSONSchemaDraft)
	top.set("$id", SchemaBaseURI+d.Class+".schema.json")
	top.set("title", d.DisplayName)
	top.set("description", d.Description)
	top.set("type", "object")
	topProps := object{}
	topProps.set("class_type", classType)
	topProps.set("inputs", inputs)
	topProps.set("_meta", meta)
	top.set("properties", topProps)
	top.set("required", []any{"class_type", "inputs"})

	outs := []any{}
	for i, o := range d.Outputs {
		e := object{}
		e.set("index", pyInt(i))
		e.set("name", o.Name)
		e.set("type", string(o.Type))
		e.set("is_list", o.IsList)
		outs = append(outs, e)
	}
	// Outputs are no part of the prompt; they are kept as an annotation so
	// that a link [id, index] can be checked against the socket type.
	top.set("x-m3gate-outputs", outs)
	top.set("$defs", schemaDefs())
	return top
}

func schemaDefs() object {
	id := object{}
	id.set("type", "string")
	id.set("minLength", pyInt(1))
	idx := object{}
	idx.set("type", "integer")
	idx.set("minimum", pyInt(0))
	link := object{}
	link.set("description", "a link to output index of node id: [\"3\", 0]")
	link.set("type", "array")
	link.set("prefixItems", []any{id, idx})
	link.set("minItems", pyInt(2))
	link.set("maxItems", pyInt(2))
	defs := object{}
	defs.set("link", link)
	return defs
}

func linkRef() object {
	r := object{}
	r.set("$ref", "#/$defs/link")
	return r
}

// valueSchema is the schema of one input's value in a prompt.
func (in Input) valueSchema() object {
	s := object{}
	if in.Tooltip != "" {
		s.set("description", in.Tooltip)
	}
	s.set("x-comfy-type", string(in.Type))
	lit := in.literalSchema()
	if lit == nil || in.ForceInput {
		s.set("$ref", "#/$defs/link")
		return s
	}
	s.set("anyOf", []any{lit, linkRef()})
	if in.Default != nil {
		s.set("default", in.pyValue(in.Default))
	}
	return s
}

// literalSchema is the schema of a widget's literal value, nil for sockets.
func (in Input) literalSchema() object {
	s := object{}
	switch in.Type {
	case TypeBoolean:
		s.set("type", "boolean")
	case TypeString:
		s.set("type", "string")
	case TypeCombo:
		cs := make([]any, len(in.Choices))
		for i, c := range in.Choices {
			cs[i] = c
		}
		s.set("enum", cs)
	case TypeInt, TypeFloat:
		if in.Type == TypeInt {
			s.set("type", "integer")
		} else {
			s.set("type", "number")
		}
		if in.Min != nil {
			s.set("minimum", in.pyValue(*in.Min))
		}
		if in.Max != nil {
			s.set("maximum", in.pyValue(*in.Max))
		}
	default:
		return nil
	}
	return s
}

// SchemaJSON returns d's JSON Schema (draft 2020-12), indented, with a final
// newline: the committed schemas/nodes/<class>.schema.json.
func (d Def) SchemaJSON() []byte { return append(dumps(d.jsonSchema(), 2), '\n') }
