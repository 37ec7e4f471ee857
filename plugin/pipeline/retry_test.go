package pipeline

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestRetry(t *testing.T) {
	errDown := errors.New("connection refused")
	errBad := errors.New("rejected")
	fast := func(int) time.Duration { return time.Millisecond }
	giveUp := func(err error) error { return fmt.Errorf("gave up: %w", err) }
	for _, tc := range []struct {
		name      string
		timeout   time.Duration
		results   []error // what successive tries return; the last repeats
		wantErr   string  // "" for success
		wantTries int
	}{
		{"first try", time.Minute, []error{nil}, "", 1},
		{"recovers", time.Minute, []error{errDown, errDown, nil}, "", 3},
		{"permanent", time.Minute, []error{errDown, permanent(errBad)}, "rejected", 2},
		{"gives up", 20 * time.Millisecond, []error{errDown}, "gave up: connection refused", -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tries, retried := 0, 0
			err := retry(context.Background(), retryPolicy{timeout: tc.timeout, delay: fast, giveUp: giveUp,
				onRetry: func(error) { retried++ }}, func(n int) error {
				tries++
				if n != tries {
					t.Errorf("attempt number %d on try %d", n, tries)
				}
				return tc.results[min(tries, len(tc.results))-1]
			})
			if got := fmt.Sprint(err); (tc.wantErr == "" && err != nil) || (tc.wantErr != "" && got != tc.wantErr) {
				t.Errorf("err = %v, want %q", err, tc.wantErr)
			}
			if tc.wantTries > 0 && tries != tc.wantTries {
				t.Errorf("tries = %d, want %d", tries, tc.wantTries)
			}
			if tc.wantTries < 0 && tries < 2 {
				t.Errorf("gave up after %d tries, want several within the timeout", tries)
			}
			if tc.wantErr == "rejected" && !errors.Is(err, errBad) {
				t.Errorf("permanent error not returned as is: %v", err)
			}
			if want := tries - 1; tc.wantErr == "" && retried != want {
				t.Errorf("onRetry called %d times, want %d", retried, want)
			}
		})
	}
}

// TestRetryStopsWithContext checks that a wait ends when ctx does, with
// ctx's error rather than the call's.
func TestRetryStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	start := time.Now()
	go func() { time.Sleep(30 * time.Millisecond); cancel() }()
	err := retry(ctx, retryPolicy{timeout: time.Hour, delay: func(int) time.Duration { return time.Hour },
		giveUp: func(err error) error { return err }}, func(int) error { return errors.New("down") })
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("retry waited %v after cancel", d)
	}
}

func TestRetryDelays(t *testing.T) {
	var got []time.Duration
	for n := 1; n <= 9; n++ {
		got = append(got, retryDelay(n))
	}
	want := []time.Duration{50, 100, 200, 400, 800, 1600, 3200, 5000, 5000}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("retryDelay(1..9) = %v, want %v ms", got, want)
		}
	}
	if scoreRetryDelay(1) != 500*time.Millisecond || scoreRetryDelay(3) != 1500*time.Millisecond || scoreRetryDelay(10) != 2*time.Second {
		t.Errorf("scoreRetryDelay = %v %v %v", scoreRetryDelay(1), scoreRetryDelay(3), scoreRetryDelay(10))
	}
}
