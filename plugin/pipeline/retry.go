package pipeline

import (
	"context"
	"errors"
	"time"
)

// retryPolicy says how one step of a run retries a failing call.
type retryPolicy struct {
	// timeout is how long a streak of failures may last, from its first
	// failure, before the step gives up.
	timeout time.Duration
	// delay is the wait after the n-th failure (n from 1).
	delay func(n int) time.Duration
	// giveUp turns the last error into the step's error once the
	// failures have lasted past timeout.
	giveUp func(err error) error
	// onRetry, when set, is called with each error that will be retried
	// (to log it).
	onRetry func(err error)
}

// permanentError marks an error that retry returns at once.
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// permanent marks err as not worth retrying.
func permanent(err error) error { return permanentError{err} }

// retry calls try (with the 1-based attempt number) until it returns nil.
// An error marked permanent is returned at once, unwrapped. When ctx ends,
// during a call or a wait, retry returns ctx.Err(). Other errors are
// retried after p.delay(n) until they have lasted past p.timeout; then
// retry returns p.giveUp(err).
func retry(ctx context.Context, p retryPolicy, try func(n int) error) error {
	var since time.Time
	for n := 1; ; n++ {
		err := try(n)
		if err == nil {
			return nil
		}
		var pe permanentError
		if errors.As(err, &pe) {
			return pe.err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if since.IsZero() {
			since = time.Now()
		}
		if time.Since(since) > p.timeout {
			return p.giveUp(err)
		}
		if p.onRetry != nil {
			p.onRetry(err)
		}
		if !sleep(ctx, p.delay(n)) {
			return ctx.Err()
		}
	}
}

// retryDelay is the exponential backoff of calls to a ComfyUI server:
// 50 ms doubling per failure, at most 5 s.
func retryDelay(n int) time.Duration {
	d := 50 * time.Millisecond << min(n-1, 7)
	return min(d, 5*time.Second)
}

// scoreRetryDelay is the backoff of calls to the scorer: 500 ms more per
// failure, at most 2 s.
func scoreRetryDelay(n int) time.Duration {
	return min(time.Duration(n)*500*time.Millisecond, 2*time.Second)
}

// sleep waits for d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
