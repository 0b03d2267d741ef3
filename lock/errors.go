package lock

import (
	"errors"
	"fmt"
	"time"
)

var (
	// ErrBusy means another holder has a live lease.
	ErrBusy = errors.New("lock is held by another holder")
	// ErrNotHeld means the holder does not hold a live lease.
	ErrNotHeld = errors.New("lock is not held by this holder")
	// ErrPoisoned means the lock was acquired, but its generation moved on
	// since the holder last acknowledged it.
	ErrPoisoned = errors.New("lock is poisoned")
	// ErrLeaseLost means a held lease was taken over, broken, or could not be
	// renewed before it ran out.
	ErrLeaseLost = errors.New("lease lost")
	// ErrReleased is a Guard's error after it was released.
	ErrReleased = errors.New("lock released")
	// ErrUnsupportedSchema means a store's schema is newer than this program.
	ErrUnsupportedSchema = errors.New("unsupported schema version")
)

// BusyError reports that a lock could not be acquired because another
// holder has it. Err is the context's error when a wait ran out.
type BusyError struct {
	Current State
	Err     error
}

func (e *BusyError) Error() string {
	c := e.Current
	msg := fmt.Sprintf("lock %q is held by %q (generation %d)", c.Key, c.Holder, c.Generation)
	if !c.ExpiresAt.IsZero() {
		msg += fmt.Sprintf(", lease ends %s", c.ExpiresAt.Local().Format(time.RFC3339))
	}
	return msg
}

func (e *BusyError) Is(target error) bool { return target == ErrBusy }
func (e *BusyError) Unwrap() error        { return e.Err }

// Reasons a store refuses a renewal or release.
const (
	ReasonFree    = "free"       // nobody holds it
	ReasonExpired = "expired"    // the holder's lease ran out
	ReasonOther   = "held"       // another holder has it
	ReasonTenure  = "new-tenure" // the holder holds it, but in a later tenure
)

// NotHeldError reports why a holder does not hold a lock.
type NotHeldError struct {
	Key, Holder string
	Reason      string
	Current     State
}

func (e *NotHeldError) Error() string {
	c := e.Current
	switch e.Reason {
	case ReasonExpired:
		return fmt.Sprintf("lock %q: the lease of %q expired at %s; the critical section ran unprotected after that",
			e.Key, c.Holder, c.ExpiresAt.Local().Format(time.RFC3339))
	case ReasonOther:
		return fmt.Sprintf("lock %q is held by %q (generation %d), not by %q", e.Key, c.Holder, c.Generation, e.Holder)
	case ReasonTenure:
		return fmt.Sprintf("lock %q: %q holds it in a newer tenure (token %d); this tenure already ended", e.Key, e.Holder, c.Token)
	default:
		if c.Holder == "" {
			return fmt.Sprintf("lock %q is not held by anyone", e.Key)
		}
		return fmt.Sprintf("lock %q is not held by anyone (last holder %q, generation %d)", e.Key, c.Holder, c.Generation)
	}
}

func (e *NotHeldError) Is(target error) bool { return target == ErrNotHeld }

// PoisonError is returned by Lock when the lock was acquired but is
// poisoned for this holder. The lock is held: Guard must be used and
// released like any other guard.
type PoisonError struct {
	Guard *Guard
	// Acknowledged is the generation the holder had caught up with.
	Acknowledged int64
}

func (e *PoisonError) Error() string {
	g := e.Guard
	return fmt.Sprintf("lock %q acquired by %q but poisoned: generation is %d, another holder had it since this holder last did",
		g.key, g.holder, g.grant.Generation)
}

func (e *PoisonError) Is(target error) bool { return target == ErrPoisoned }

// IntoGuard returns the held guard, accepting the poison.
func (e *PoisonError) IntoGuard() *Guard { return e.Guard }
