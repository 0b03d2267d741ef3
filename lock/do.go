package lock

import (
	"context"
	"errors"
	"fmt"
)

// Do runs fn while holding the lock, the library's form of run mode: it
// waits for the lock like Lock, calls fn with a context that ends when the
// lease is lost (or ctx ends) and with the guard (g.Poisoned() says whether
// what fn cached may be stale, g.Token() is the fencing token), and always
// releases. The poison is acknowledged only when fn returns nil; a failed fn
// leaves it for the next holder to see, as a failed CMD does.
//
// Do returns fn's error, or a *BusyError when the lock was not acquired
// before ctx ended, or an error wrapping ErrLeaseLost when the lease was
// lost while fn ran, whatever fn returned: its work may then have overlapped
// another holder's.
func (l *Lock) Do(ctx context.Context, fn func(ctx context.Context, g *Guard) error) error {
	g, err := l.Lock(ctx)
	if err != nil && !errors.Is(err, ErrPoisoned) {
		return err
	}
	runCtx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	// The guard's end (a lost lease) ends fn's context too.
	defer context.AfterFunc(g.Context(), func() { stop(context.Cause(g.Context())) })()

	fnErr := fn(runCtx, g)
	if lost := g.Err(); lost != nil && !errors.Is(lost, ErrReleased) {
		return fmt.Errorf("the lock was lost while the function ran: %w", lost)
	}
	var releaseErr error
	if fnErr == nil {
		releaseErr = g.Release(ctx)
	} else {
		releaseErr = g.ReleaseKeepPoison(ctx)
	}
	if fnErr != nil {
		return fnErr
	}
	return releaseErr
}
