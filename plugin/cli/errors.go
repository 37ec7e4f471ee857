package cli

import (
	"fmt"
	"strings"
)

// UsageError marks bad flags or arguments (exit code 2).
type UsageError struct{ Err error }

// Error returns the wrapped error's message.
func (e *UsageError) Error() string { return e.Err.Error() }

// Unwrap returns the wrapped error.
func (e *UsageError) Unwrap() error { return e.Err }

// ExitCodeError makes m3gate exit with Code, e.g. to pass on a subprocess's
// exit status. Err, when set, is printed; when nil the subprocess has already
// reported on stderr.
type ExitCodeError struct {
	Code int
	Err  error
}

// Error describes the exit code.
func (e *ExitCodeError) Error() string {
	if e.Err != nil {
		return e.Err.Error()
	}
	return fmt.Sprintf("exit status %d", e.Code)
}

// Unwrap returns the wrapped error.
func (e *ExitCodeError) Unwrap() error { return e.Err }

// isCobraUsageError recognises cobra's argument-validation errors, which
// are plain errors.
func isCobraUsageError(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "accepts ", "requires at least", "requires at most", "received ", "invalid argument", "unknown flag", "unknown shorthand flag", "flag needs an argument", "required flag"} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}
