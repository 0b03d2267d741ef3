package lock

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
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
	// ErrSlotLimit means a shared acquisition named another slot limit than
	// the one in force (or none where one is, or one where none is).
	ErrSlotLimit = errors.New("slot limit differs from the one in force")
	// ErrModeConflict means a holder asked for the key in the other mode
	// than the one it holds it in: no upgrades, no downgrades.
	ErrModeConflict = errors.New("holder holds the lock in the other mode")
)

// BusyError reports that a lock could not be acquired because another
// holder has it. Err is the context's error when a wait ran out.
type BusyError struct {
	Current State
	// Ahead is how many requests were queued ahead at the last try.
	Ahead int
	Err   error
}

func (e *BusyError) Error() string {
	c := e.Current
	msg := fmt.Sprintf("lock %q is %s (generation %d)", c.Key, c.HeldBy(), c.Generation)
	if c.State != StateHeld {
		msg = fmt.Sprintf("lock %q is free (generation %d)", c.Key, c.Generation) // but others wait for it
	}
	if !c.ExpiresAt.IsZero() {
		msg += fmt.Sprintf(", lease ends %s", c.ExpiresAt.Local().Format(time.RFC3339))
	}
	if e.Ahead > 0 {
		msg += fmt.Sprintf(", %d queued ahead", e.Ahead)
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
			e.Key, e.Holder, c.ExpiresAt.Local().Format(time.RFC3339))
	case ReasonOther:
		return fmt.Sprintf("lock %q is %s (generation %d), not by %q", e.Key, c.HeldBy(), c.Generation, e.Holder)
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

// HeldBy names who holds the key, for messages: `held by "a"` for an
// exclusive lock, `held shared by "r1", "r2" (2 of 3 slots)` for readers,
// naming the first few of many.
func (s State) HeldBy() string {
	if s.Mode != ModeShared || len(s.Holders) == 0 {
		return fmt.Sprintf("held by %q", s.Holder)
	}
	const named = 3
	var names []string
	for _, h := range s.Holders[:min(len(s.Holders), named)] {
		names = append(names, strconv.Quote(h.Holder))
	}
	msg := "held shared by " + strings.Join(names, ", ")
	if len(s.Holders) > named {
		msg = fmt.Sprintf("held shared by %d holders (%s, ...)", len(s.Holders), strings.Join(names, ", "))
	}
	if s.Slots > 0 {
		msg += fmt.Sprintf(" (%d of %d slots)", len(s.Holders), s.Slots)
	}
	return msg
}

// ConflictError refuses, on arrival and changing nothing, an acquisition the
// key can never grant as asked: a shared request whose slot limit is not the
// one in force (ErrSlotLimit), or a holder asking for the other mode than
// the one it holds the key in (ErrModeConflict). The command line reports
// it as a usage error.
type ConflictError struct {
	Key, Holder string
	// Mode and Slots are what the request asked for.
	Mode  Mode
	Slots int
	// Held is the mode the holder holds the key in, for ErrModeConflict.
	Held Mode
	// Limit is the limit in force, 0 for none, for ErrSlotLimit; Queued
	// says it is the queued shared requests' (nobody holds the key shared).
	Limit  int
	Queued bool
	// Err is ErrSlotLimit or ErrModeConflict.
	Err     error
	Current State
}

func (e *ConflictError) Error() string {
	if e.Err == ErrModeConflict {
		return fmt.Sprintf("lock %q: %q holds it %s and asked for it %s; release it first (a holder cannot change mode while it holds the key)",
			e.Key, e.Holder, e.Held, e.Mode)
	}
	who := "its shared holders hold it"
	if e.Queued {
		who = "the shared requests queued for it wait"
	}
	return fmt.Sprintf("lock %q: %s with %s, and %q asked for %s; ask with the limit in force",
		e.Key, who, slotLimit(e.Limit), e.Holder, slotLimit(e.Slots))
}

func (e *ConflictError) Unwrap() error { return e.Err }

func slotLimit(slots int) string {
	if slots == 0 {
		return "no slot limit"
	}
	return fmt.Sprintf("a limit of %d slots", slots)
}

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
