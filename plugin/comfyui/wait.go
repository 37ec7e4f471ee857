package comfyui

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// PromptResult is a finished prompt: its outputs and how it ended.
type PromptResult struct {
	PromptID string
	// Outputs maps output node id → ui dict (images etc.).
	Outputs map[string]NodeOutput
	// Cached lists the nodes whose outputs were reused (from
	// execution_cached, or from the history's messages).
	Cached []string
	// Status is the history status when the result came from /history.
	Status HistoryStatus
	// FromHistory reports whether outputs were read from /history (always
	// after a normal end; events only when /history was unreachable).
	FromHistory bool
}

// Images lists every output image, nodes in id order.
func (r *PromptResult) Images() []NodeImage { return outputImages(r.Outputs) }

// ExecutionError is a prompt that ended with execution_error.
type ExecutionError struct{ Event ExecutionErrorEvent }

// Error implements error.
func (e *ExecutionError) Error() string {
	return fmt.Sprintf("prompt %s failed in node %s (%s): %s: %s", e.Event.PromptID, e.Event.NodeID,
		e.Event.NodeType, e.Event.ExceptionType, trimNL(e.Event.ExceptionMessage))
}

// InterruptedError is a prompt that ended with execution_interrupted.
type InterruptedError struct{ Event ExecutionInterruptedEvent }

// Error implements error.
func (e *InterruptedError) Error() string {
	return fmt.Sprintf("prompt %s interrupted in node %s (%s)", e.Event.PromptID, e.Event.NodeID, e.Event.NodeType)
}

// ErrPromptLost means the server knows the prompt neither in its queue nor
// in its history (it was restarted): queue it again.
var ErrPromptLost = errors.New("prompt lost by the server (restarted?)")

// ErrServerDown means the server stayed unreachable longer than the
// client's down timeout (WithDownTimeout) while a prompt was awaited.
var ErrServerDown = errors.New("comfyui server unreachable")

func trimNL(s string) string {
	for len(s) > 0 && (s[len(s)-1] == '\n' || s[len(s)-1] == '\r') {
		s = s[:len(s)-1]
	}
	return s
}

// WaitPrompt waits until the prompt has finished and returns its outputs.
// The end is `executing` with node null for this prompt; the outputs are
// then read from /history. Because events are lost while the websocket is
// down, it also checks /history (and /queue) when it starts, after every
// reconnection, and when nothing was heard for the poll interval: a prompt
// known to neither yields ErrPromptLost. A failed prompt yields
// *ExecutionError, an interrupted one *InterruptedError (with the partial
// result).
func (c *Client) WaitPrompt(ctx context.Context, promptID string) (*PromptResult, error) {
	sub := c.Subscribe()
	defer sub.Close()

	// Outputs and the end state gathered from events, for when /history is
	// unreachable at the end.
	evOut := map[string]NodeOutput{}
	var evCached []string
	var evErr error

	res, done, err := c.checkPrompt(ctx, promptID)
	if done {
		return res, err
	}
	lastCheck := time.Now()
	for {
		wait := c.opts.historyPoll - time.Since(lastCheck)
		var ev Event
		var nerr error = context.DeadlineExceeded
		if wait > 0 {
			wctx, cancel := context.WithTimeout(ctx, wait)
			ev, nerr = sub.Next(wctx)
			cancel()
		}
		if nerr != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("wait prompt %s: %w", promptID, ctx.Err())
			}
			if errors.Is(nerr, ErrClosed) {
				return nil, fmt.Errorf("wait prompt %s: %w", promptID, nerr)
			}
			// A poll interval went by: ask the server, in case an event
			// was missed.
			lastCheck = time.Now()
			if res, done, err := c.checkPrompt(ctx, promptID); done {
				return res, err
			}
			if d := c.DownFor(); c.opts.downTimeout > 0 && d > c.opts.downTimeout {
				return nil, fmt.Errorf("wait prompt %s: %w (down for %v)", promptID, ErrServerDown, d.Round(time.Millisecond))
			}
			continue
		}
		switch e := ev.(type) {
		case *Reconnected:
			lastCheck = time.Now()
			if res, done, err := c.checkPrompt(ctx, promptID); done {
				return res, err
			}
		case *ExecutionCachedEvent:
			if e.PromptID == promptID {
				evCached = e.Nodes
			}
		case *ExecutedEvent:
			if e.PromptID == promptID {
				evOut[e.Node] = e.Output
			}
		case *ExecutionErrorEvent:
			if e.PromptID == promptID {
				evErr = &ExecutionError{Event: *e}
			}
		case *ExecutionInterruptedEvent:
			if e.PromptID == promptID {
				evErr = &InterruptedError{Event: *e}
			}
		case *ExecutingEvent:
			if e.PromptID != promptID || !e.Done() {
				continue
			}
			h, herr := c.History(ctx, promptID)
			if herr == nil {
				return resultFromHistory(promptID, h)
			}
			if ctx.Err() != nil {
				return nil, fmt.Errorf("wait prompt %s: %w", promptID, ctx.Err())
			}
			return &PromptResult{PromptID: promptID, Outputs: evOut, Cached: evCached}, evErr
		}
	}
}

// checkPrompt asks /history and /queue where the prompt is. done is true
// when the prompt has ended (res, err final) or is lost.
func (c *Client) checkPrompt(ctx context.Context, promptID string) (*PromptResult, bool, error) {
	h, err := c.History(ctx, promptID)
	if err == nil {
		res, rerr := resultFromHistory(promptID, h)
		return res, true, rerr
	}
	if !errors.Is(err, ErrNotFound) {
		return nil, false, nil // server unreachable: wait for reconnection
	}
	q, err := c.Queue(ctx)
	if err != nil || q.Has(promptID) {
		return nil, false, nil
	}
	// It may have finished between the two calls.
	h, err = c.History(ctx, promptID)
	if err == nil {
		res, rerr := resultFromHistory(promptID, h)
		return res, true, rerr
	}
	if errors.Is(err, ErrNotFound) {
		return nil, true, fmt.Errorf("prompt %s: %w", promptID, ErrPromptLost)
	}
	return nil, false, nil
}

func resultFromHistory(promptID string, h *HistoryEntry) (*PromptResult, error) {
	res := &PromptResult{PromptID: promptID, Outputs: h.Outputs, Status: h.Status, FromHistory: true}
	if res.Outputs == nil {
		res.Outputs = map[string]NodeOutput{}
	}
	var err error
	for _, m := range h.Status.Messages {
		switch m.Type {
		case TypeExecutionCached:
			var e ExecutionCachedEvent
			if json.Unmarshal(m.Data, &e) == nil {
				res.Cached = e.Nodes
			}
		case TypeExecutionError:
			var e ExecutionErrorEvent
			if json.Unmarshal(m.Data, &e) == nil {
				err = &ExecutionError{Event: e}
			}
		case TypeExecutionInterrupted:
			var e ExecutionInterruptedEvent
			if json.Unmarshal(m.Data, &e) == nil {
				err = &InterruptedError{Event: e}
			}
		}
	}
	if err == nil && h.Status.StatusStr == "error" {
		err = fmt.Errorf("prompt %s ended with status error", promptID)
	}
	return res, err
}

// RunPrompt queues a prompt and waits for it (QueuePrompt + WaitPrompt).
func (c *Client) RunPrompt(ctx context.Context, req PromptRequest) (*PromptResult, error) {
	pr, err := c.QueuePrompt(ctx, req)
	if err != nil {
		return nil, err
	}
	return c.WaitPrompt(ctx, pr.PromptID)
}
