package cmd

import (
	"errors"
	"fmt"

	"github.com/xplock/xplock/lock"
)

// Exit codes from SPEC.md.
const (
	exitOK       = 0
	exitRuntime  = 1
	exitUsage    = 2
	exitPoisoned = 3
	exitBusy     = 4
	exitNotHeld  = 5
	exitLost     = 6
)

// usageError is a mistake in how xplock was called (exit 2).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usageErrorf(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// exitError carries an exit code; a nil err means the message was already
// printed (or there is none, as for a child's own exit code).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

// exitCode maps an error to SPEC.md's exit codes.
func exitCode(err error) int {
	var usage *usageError
	var coded *exitError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &coded):
		return coded.code
	case errors.As(err, &usage):
		return exitUsage
	case errors.Is(err, lock.ErrLeaseLost):
		return exitLost
	case errors.Is(err, lock.ErrPoisoned):
		return exitPoisoned
	case errors.Is(err, lock.ErrBusy):
		return exitBusy
	case errors.Is(err, lock.ErrNotHeld):
		return exitNotHeld
	default:
		return exitRuntime
	}
}
