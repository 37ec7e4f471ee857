package cli

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/schollz/progressbar/v3"

	"github.com/m3gate/m3gate/plugin/config"
)

// TestRunBarAndLogLinesApart drives the progress bar `m3gate run` uses and
// its logger through one status line, as on a terminal: every log line
// starts on a line of its own and the bar comes back below it.
func TestRunBarAndLogLinesApart(t *testing.T) {
	defer func(f func(io.Writer) bool) { isTerminal = f }(isTerminal)
	isTerminal = func(io.Writer) bool { return true }
	var term bytes.Buffer
	status := newStatusLine(&term)
	logger := NewLogger(config.Log{Level: "info", Format: "text"}, status)
	bar := progressbar.NewOptions(3, progressbar.OptionSetWriter(barWriter{status}), progressbar.OptionSetDescription("accepted"),
		progressbar.OptionShowCount(), progressbar.OptionSetRenderBlankState(true), progressbar.OptionThrottle(0))
	bar.Add(1)
	logger.Warn("prompt failed, rerolling", "job", 2)
	bar.Add(1)
	status.Clear()

	out := term.String()
	i := strings.Index(out, "[WARN]")
	if i >= 0 {
		i = strings.LastIndex(out[:i], eraseSeq) + len(eraseSeq)
	}
	if i < 0 {
		t.Fatalf("no log line in %q", out)
	}
	if !strings.HasSuffix(out[:i], eraseSeq) {
		t.Errorf("the log line does not start on a cleared line: %q", out[:i+10])
	}
	after := out[i:]
	nl := strings.IndexByte(after, '\n')
	if nl < 0 || !strings.HasPrefix(after[nl+1:], "accepted") {
		t.Errorf("the bar is not redrawn below the log line: %q", after)
	}
	if !strings.Contains(out, "2/3") {
		t.Errorf("the bar's later state is not shown: %q", out)
	}

	// Off a terminal: the log line alone, no bar.
	isTerminal = func(io.Writer) bool { return false }
	term.Reset()
	status = newStatusLine(&term)
	logger = NewLogger(config.Log{Level: "info", Format: "text"}, status)
	bar = progressbar.NewOptions(3, progressbar.OptionSetWriter(barWriter{status}), progressbar.OptionSetRenderBlankState(true), progressbar.OptionThrottle(0))
	bar.Add(1)
	logger.Warn("x")
	if out := term.String(); strings.Contains(out, "\r") || !strings.Contains(out, "[WARN]  m3gate: x\n") {
		t.Errorf("non-terminal output %q, want the log line only", out)
	}
}
