package config

import (
	"fmt"
	"strings"
)

// FieldError is one problem with one configuration key.
type FieldError struct {
	// Key is the dotted key, e.g. "scoring.thresholds.quality" or "comfyui.servers[1]".
	Key string
	// Source is the file or "$ENV_VAR" that set the key; "" for defaults.
	Source string
	// Line is the 1-based line in Source when Source is a file; 0 otherwise.
	Line int
	// Msg says what is wrong.
	Msg string
}

// Error returns "file:line: key: msg" (or "$VAR: key: msg", or "key: msg").
func (e *FieldError) Error() string {
	switch {
	case e.Line > 0:
		return fmt.Sprintf("%s:%d: %s: %s", e.Source, e.Line, e.Key, e.Msg)
	case e.Source != "":
		return fmt.Sprintf("%s: %s: %s", e.Source, e.Key, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.Key, e.Msg)
}

// Errors is every problem found in a configuration.
type Errors []*FieldError

// Error lists the problems, one per line.
func (es Errors) Error() string {
	var sb strings.Builder
	if len(es) > 1 {
		fmt.Fprintf(&sb, "invalid config (%d problems):", len(es))
		for _, e := range es {
			sb.WriteString("\n  ")
			sb.WriteString(e.Error())
		}
		return sb.String()
	}
	sb.WriteString("invalid config: ")
	if len(es) == 1 {
		sb.WriteString(es[0].Error())
	}
	return sb.String()
}
