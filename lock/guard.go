package lock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Guard is one acquisition of a Lock. Unless the Lock has NoRenew, it renews
// the lease in the background and watches for a break, so that a break or
// a lease that could not be renewed ends Context at once. (A break from
// another machine or network namespace, on a store with holders' sockets,
// is noticed at the next renewal; see Rendezvous.)
type Guard struct {
	lock   *Lock
	key    string
	holder string

	ctx    context.Context
	cancel context.CancelCauseFunc

	mu    sync.Mutex
	grant Grant

	stopRenewal func()
	// beacon, when set, is the socket waiters sleep on (see Rendezvous).
	beacon *beacon
}

func (l *Lock) newGuard(grant Grant) *Guard {
	granted := time.Now()
	ctx, cancel := context.WithCancelCause(context.Background())
	g := &Guard{lock: l, key: l.key, holder: l.holder, ctx: ctx, cancel: cancel, grant: grant}
	g.stopRenewal = func() {}
	if !l.opts.NoRenew {
		// Only a holder that stays alive can wake waiters by letting go.
		b := newBeacon(l.store, l.key, grant.Token)
		if b != nil {
			g.beacon = b
			context.AfterFunc(ctx, func() { b.close() })
		}
		renewCtx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			g.keepAlive(renewCtx, b, granted)
		}()
		g.stopRenewal = func() { stop(); <-done }
	}
	return g
}

// Grant returns the lease as last granted or renewed.
func (g *Guard) Grant() Grant {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.grant
}

// Generation is the lock's generation when it was acquired.
func (g *Guard) Generation() int64 { return g.Grant().Generation }

// Token is the tenure's fencing token: pass it to the resource you protect.
func (g *Guard) Token() int64 { return g.Grant().Token }

// Poisoned reports whether the acquisition found the lock poisoned and the
// poison was not cleared since.
func (g *Guard) Poisoned() bool { return g.Grant().Poisoned }

// ClearPoison acknowledges the current generation without releasing, for a
// holder that has reloaded its view.
func (g *Guard) ClearPoison(ctx context.Context) error {
	if err := g.Err(); err != nil {
		return err
	}
	err := g.lock.store.Acknowledge(ctx, g.key, g.holder, g.Token())
	if errors.Is(err, ErrNotHeld) {
		g.lost(err)
		return g.Err()
	}
	if err != nil {
		return err
	}
	g.mu.Lock()
	g.grant.Poisoned, g.grant.Acknowledged = false, g.grant.Generation
	g.mu.Unlock()
	return nil
}

// Done is closed when the guard is released or its lease is lost.
func (g *Guard) Done() <-chan struct{} { return g.ctx.Done() }

// Context ends when the guard is released or its lease is lost; its cause
// (context.Cause) is ErrReleased or wraps ErrLeaseLost.
func (g *Guard) Context() context.Context { return g.ctx }

// Err is nil while the lease is held, then wraps ErrLeaseLost or is
// ErrReleased.
func (g *Guard) Err() error { return context.Cause(g.ctx) }

// Release ends the tenure and acknowledges the generation if the tenure was
// checked (SPEC rule 3).
func (g *Guard) Release(ctx context.Context) error { return g.release(ctx, true) }

// ReleaseKeepPoison ends the tenure without acknowledging anything, for a
// holder whose work failed (SPEC rule 4).
func (g *Guard) ReleaseKeepPoison(ctx context.Context) error { return g.release(ctx, false) }

func (g *Guard) release(ctx context.Context, acknowledge bool) error {
	g.stopRenewal()
	if err := g.Err(); err != nil {
		return err
	}
	_, err := g.lock.store.Release(ctx, ReleaseRequest{
		Key: g.key, Holder: g.holder, Token: g.Token(), Acknowledge: acknowledge,
	})
	if errors.Is(err, ErrNotHeld) {
		g.lost(err)
		return g.Err()
	}
	// Another guard of this holder (a re-entrant acquisition in another
	// process) may listen for the tenure: it ended for that guard too.
	shared := g.beacon == nil || g.Grant().Reentrant
	if g.beacon != nil {
		// Now rather than in ctx's AfterFunc, so that the next tenure of
		// this process can listen at once. After a failed release too:
		// nothing renews the lease any more, and its waiters had better
		// watch the store.
		shared = g.beacon.close() || shared
	}
	if shared && err == nil {
		NotifyHolder(ctx, g.lock.store, g.key)
	}
	if err != nil {
		return err
	}
	g.cancel(ErrReleased)
	return nil
}

// Renew extends the lease now by the tenure's TTL, or by ttl when it is
// positive.
func (g *Guard) Renew(ctx context.Context, ttl time.Duration) error {
	if err := g.Err(); err != nil {
		return err
	}
	grant, err := g.lock.store.Renew(ctx, RenewRequest{Key: g.key, Holder: g.holder, Token: g.Token(), TTL: ttl})
	if errors.Is(err, ErrNotHeld) {
		g.lost(err)
		return g.Err()
	}
	if err != nil {
		return err
	}
	g.mu.Lock()
	g.grant.ExpiresAt, g.grant.TTL = grant.ExpiresAt, grant.TTL
	g.mu.Unlock()
	return nil
}

func (g *Guard) lost(cause error) {
	g.cancel(fmt.Errorf("%w: %w", ErrLeaseLost, cause))
}

// watchStoreBeyond: a guard whose renewals are further apart than this also
// watches the store, so that a break its beacon does not hear of (made from
// another network namespace) still ends it long before the next renewal.
const watchStoreBeyond = 5 * time.Second

// keepAlive renews the lease at a third of its TTL until ctx ends or the
// lease is lost. Between renewals it checks the lock when told to through
// its beacon (see NotifyHolder) and, without one or with renewals far
// apart, after every change in the store. granted is when the grant came
// back.
func (g *Guard) keepAlive(ctx context.Context, b *beacon, granted time.Time) {
	grant := g.Grant()
	// The lease is safe until this local deadline, counted from when the
	// grant came back rather than from when this goroutine got to run.
	safeUntil := granted.Add(grant.ExpiresAt.Sub(grant.Now))
	var pokes, changes <-chan struct{}
	if b != nil {
		pokes = b.pokes
	}
	if b == nil || grant.TTL/3 > watchStoreBeyond {
		if ch, err := g.lock.store.Subscribe(ctx); err == nil {
			changes = ch
		} // else renewal alone still notices a loss
	}
	// A break between the grant and the beacon or the subscription was not
	// heard of.
	if err := g.checkStillHeld(ctx); err != nil {
		g.lost(err)
		return
	}
	timer := time.NewTimer(grant.TTL / 3)
	defer timer.Stop()
	for {
		look := false
		select {
		case <-ctx.Done():
			return
		case <-pokes:
			look = true
		case <-changes:
			look = true
		case <-timer.C:
		}
		if look {
			if err := g.checkStillHeld(ctx); err != nil {
				g.lost(err)
				return
			}
			continue
		}
		asked := time.Now()
		if asked.After(safeUntil) {
			// The process did not run in time (stopped, suspended or
			// starved): the lease may have run out and another holder may
			// have the lock. That is a loss, whatever the store would say.
			g.lost(fmt.Errorf("the lease ran out before it could be renewed: the renewal was due by %s, but this process only ran again %s later",
				safeUntil.Format(time.TimeOnly), asked.Sub(safeUntil).Round(time.Millisecond)))
			return
		}
		callCtx, cancel := context.WithDeadline(ctx, safeUntil)
		err := g.Renew(callCtx, 0)
		cancel()
		switch {
		case ctx.Err() != nil || g.Err() != nil:
			return
		case err == nil:
			grant = g.Grant()
			// The store renewed after we asked, so asking time + TTL is
			// never late.
			safeUntil = asked.Add(grant.TTL)
			timer.Reset(grant.TTL / 3)
		case time.Now().After(safeUntil):
			g.lost(fmt.Errorf("could not renew before the lease ran out: %w", err))
			return
		default:
			// A transient store error: try again soon, well before the end.
			timer.Reset(min(grant.TTL/10, time.Until(safeUntil)/2) + time.Millisecond)
		}
	}
}

// checkStillHeld reads the lock and fails when another tenure replaced ours.
// A read error is not a loss: renewal decides that.
func (g *Guard) checkStillHeld(ctx context.Context) error {
	snap, err := g.lock.store.Snapshot(ctx, g.key)
	if err != nil || len(snap.Locks) == 0 {
		return nil
	}
	s := snap.Locks[0]
	token := g.Token()
	switch {
	case s.Token != token && s.Holder == g.holder:
		return &NotHeldError{Key: g.key, Holder: g.holder, Reason: ReasonTenure, Current: s}
	case s.Token != token:
		return &NotHeldError{Key: g.key, Holder: g.holder, Reason: ReasonOther, Current: s}
	case s.State == StateFree:
		return &NotHeldError{Key: g.key, Holder: g.holder, Reason: ReasonFree, Current: s}
	case s.State == StateExpired:
		return &NotHeldError{Key: g.key, Holder: g.holder, Reason: ReasonExpired, Current: s}
	}
	return nil
}
