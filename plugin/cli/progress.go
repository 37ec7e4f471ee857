package cli

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"
)

// isTerminal reports whether w is a terminal; tests swap it.
var isTerminal = func(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// statusLine is a writer for stderr that keeps one redrawable status line
// (a progress bar) at the bottom of a terminal: every write of other text
// (log lines, messages) first erases the status line and draws it again
// after the text's last newline, so the two never share a line. On a
// writer that is not a terminal the status line is never drawn and writes
// pass through unchanged.
type statusLine struct {
	mu   sync.Mutex
	w    io.Writer
	tty  bool
	line string // the status line as last set; "" when none
	// pending is text written without a final newline: the status line
	// is not redrawn until the line is complete.
	pending bool
}

// newStatusLine wraps w; the status line is drawn only when w is a terminal.
func newStatusLine(w io.Writer) *statusLine {
	return &statusLine{w: w, tty: isTerminal(w)}
}

// eraseSeq moves to the start of the line and clears it.
const eraseSeq = "\r\x1b[K"

// Write writes p above the status line.
func (s *statusLine) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.tty || s.line == "" {
		return s.w.Write(p)
	}
	if !s.pending {
		if _, err := io.WriteString(s.w, eraseSeq); err != nil {
			return 0, err
		}
	}
	n, err := s.w.Write(p)
	if err != nil {
		return n, err
	}
	s.pending = len(p) > 0 && p[len(p)-1] != '\n'
	if !s.pending {
		_, err = io.WriteString(s.w, s.line)
	}
	return n, err
}

// Above returns a writer for w that keeps w's lines off the status line
// when both go to terminals (the table of `score` on stdout while stderr
// shows the bar); otherwise w itself.
func (s *statusLine) Above(w io.Writer) io.Writer {
	if !s.tty || !isTerminal(w) {
		return w
	}
	return aboveWriter{s: s, w: w}
}

// aboveWriter writes to another terminal stream above the status line.
type aboveWriter struct {
	s *statusLine
	w io.Writer
}

// Write implements io.Writer.
func (a aboveWriter) Write(p []byte) (int, error) {
	s := a.s
	s.mu.Lock()
	defer s.mu.Unlock()
	shown := s.line != "" && !s.pending
	if shown {
		io.WriteString(s.w, eraseSeq)
	}
	n, err := a.w.Write(p)
	if shown && len(p) > 0 && p[len(p)-1] == '\n' {
		io.WriteString(s.w, s.line)
	}
	return n, err
}

// Set draws line as the status line (terminals only).
func (s *statusLine) Set(line string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.tty {
		return
	}
	s.line = line
	if !s.pending {
		io.WriteString(s.w, eraseSeq+line)
	}
}

// Clear erases the status line; later writes pass through.
func (s *statusLine) Clear() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tty && s.line != "" && !s.pending {
		io.WriteString(s.w, eraseSeq)
	}
	s.line = ""
}

// scoreBar renders the progress of a score run: count, bar, rate and
// estimated time left.
type scoreBar struct {
	line  *statusLine
	total int
	start time.Time
	now   func() time.Time
}

// barWidth is the number of cells of the bar itself.
const barWidth = 24

// update shows done of total images scored.
func (b *scoreBar) update(done int) {
	if !b.line.tty {
		return
	}
	b.line.Set(b.render(done))
}

// render formats the status line for done of total images.
func (b *scoreBar) render(done int) string {
	filled := 0
	if b.total > 0 {
		filled = barWidth * done / b.total
	}
	var sb bytes.Buffer
	fmt.Fprintf(&sb, "scored %d/%d [%s%s]", done, b.total, strings.Repeat("=", filled), strings.Repeat(" ", barWidth-filled))
	elapsed := b.now().Sub(b.start)
	if done > 0 && elapsed > 0 {
		rate := float64(done) / elapsed.Seconds()
		left := time.Duration(float64(b.total-done) / rate * float64(time.Second))
		if rate >= 1 {
			fmt.Fprintf(&sb, " %.1f img/s", rate)
		} else {
			fmt.Fprintf(&sb, " %.1f s/img", 1/rate)
		}
		fmt.Fprintf(&sb, " ETA %s", left.Round(time.Second))
	}
	return sb.String()
}

// barWriter takes the output of a progress bar that redraws its line with
// "\r" (schollz/progressbar) and shows its latest state as the status line.
type barWriter struct{ s *statusLine }

// Write implements io.Writer.
func (b barWriter) Write(p []byte) (int, error) {
	text := string(p)
	if i := strings.LastIndexByte(text, '\r'); i >= 0 {
		text = text[i+1:]
	}
	text = strings.TrimRight(text, "\n")
	if strings.TrimSpace(text) != "" {
		b.s.Set(text)
	}
	return len(p), nil
}
