package cli

import (
	"io"
	"log/slog"

	"github.com/m3gate/m3gate/plugin/config"
)

// NewLogger returns a slog logger writing to w at the configured level
// (debug, info, warn, error) and format (text or json).
func NewLogger(c config.Log, w io.Writer) *slog.Logger {
	var level slog.Level
	switch c.Level {
	case "debug":
		level = slog.LevelDebug
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	default:
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
