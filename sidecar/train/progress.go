package train

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// progress writes a throttled one-line status (what, step/total, the given
// fields, items/s and ETA) to w.
type progress struct {
	w       io.Writer
	what    string
	total   int
	start   time.Time
	startAt int // step count when this process started
	items   int
	last    time.Time
	every   time.Duration
}

func newProgress(w io.Writer, what string, done, total int) *progress {
	if w == nil {
		w = io.Discard
	}
	return &progress{w: w, what: what, total: total, start: time.Now(), startAt: done, every: time.Second}
}

// update reports step (1-based count of finished steps) after items more
// items; force writes even inside the throttle interval.
func (p *progress) update(step, items int, force bool, fields string) {
	p.items += items
	now := time.Now()
	if !force && now.Sub(p.last) < p.every {
		return
	}
	p.last = now
	el := now.Sub(p.start).Seconds()
	rate := 0.0
	if el > 0 {
		rate = float64(p.items) / el
	}
	eta := "?"
	if done := step - p.startAt; done > 0 && p.total >= step {
		per := el / float64(done)
		eta = time.Duration(per * float64(p.total-step) * float64(time.Second)).Round(time.Second).String()
	}
	fmt.Fprintf(p.w, "%s %d/%d %s %.2f items/s ETA %s\n", p.what, step, p.total, strings.TrimSpace(fields), rate, eta)
}

// jsonlLog appends one JSON object per line to a file.
type jsonlLog struct{ f *os.File }

func openJSONL(path string) (*jsonlLog, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open metrics log: %w", err)
	}
	return &jsonlLog{f: f}, nil
}

func (l *jsonlLog) write(v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("metrics log: %w", err)
	}
	_, err = l.f.Write(append(raw, '\n'))
	return err
}

func (l *jsonlLog) Close() error { return l.f.Close() }
