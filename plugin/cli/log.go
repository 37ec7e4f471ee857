package cli

import (
	"context"
	"io"
	"log/slog"

	"github.com/hashicorp/go-hclog"

	"github.com/m3gate/m3gate/plugin/config"
)

// NewLogger returns a slog logger writing to w at the configured level
// (debug, info, warn, error) and format (text or json). Its lines look like
// those of hclog, which the supervisor and the model process log through,
// so one terminal shows one log format.
func NewLogger(c config.Log, w io.Writer) *slog.Logger {
	return slog.New(&hclogHandler{l: newHCLogger(c, w)})
}

// newHCLogger is the hclog logger of the configuration, named m3gate.
func newHCLogger(c config.Log, w io.Writer) hclog.Logger {
	level := hclog.LevelFromString(c.Level)
	if level == hclog.NoLevel {
		level = hclog.Info
	}
	return hclog.New(&hclog.LoggerOptions{
		Name:       "m3gate",
		Level:      level,
		JSONFormat: c.Format == "json",
		Output:     w,
	})
}

// hclogHandler is a slog.Handler that writes through an hclog logger.
type hclogHandler struct {
	l      hclog.Logger
	attrs  []any  // key, value pairs of WithAttrs
	prefix string // the WithGroup names, each followed by "."
}

var _ slog.Handler = (*hclogHandler)(nil)

// hclogLevel maps a slog level to hclog's.
func hclogLevel(l slog.Level) hclog.Level {
	switch {
	case l < slog.LevelInfo:
		return hclog.Debug
	case l < slog.LevelWarn:
		return hclog.Info
	case l < slog.LevelError:
		return hclog.Warn
	}
	return hclog.Error
}

// Enabled implements slog.Handler.
func (h *hclogHandler) Enabled(_ context.Context, l slog.Level) bool {
	return hclogLevel(l) >= h.l.GetLevel()
}

// Handle implements slog.Handler.
func (h *hclogHandler) Handle(_ context.Context, r slog.Record) error {
	args := append([]any(nil), h.attrs...)
	r.Attrs(func(a slog.Attr) bool {
		args = appendAttr(args, h.prefix, a)
		return true
	})
	h.l.Log(hclogLevel(r.Level), r.Message, args...)
	return nil
}

// appendAttr appends a as key, value pairs, groups flattened to a.b keys.
func appendAttr(args []any, prefix string, a slog.Attr) []any {
	v := a.Value.Resolve()
	if v.Kind() == slog.KindGroup {
		p := prefix
		if a.Key != "" {
			p += a.Key + "."
		}
		for _, g := range v.Group() {
			args = appendAttr(args, p, g)
		}
		return args
	}
	if a.Key == "" {
		return args
	}
	return append(args, prefix+a.Key, v.Any())
}

// WithAttrs implements slog.Handler.
func (h *hclogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append([]any(nil), h.attrs...)
	for _, a := range attrs {
		c.attrs = appendAttr(c.attrs, h.prefix, a)
	}
	return &c
}

// WithGroup implements slog.Handler.
func (h *hclogHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := *h
	c.prefix += name + "."
	return &c
}
