package lock

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"
)

// DefaultGrace is the Grace of a Lock whose Options give none:
// min(5s, ttl/4).
func DefaultGrace(ttl time.Duration) time.Duration { return min(5*time.Second, ttl/4) }

// DriftMargin is the part of a lease a holder gives up to clock-rate drift
// between its clock and the store's: 1% of the lease plus 5ms. It covers
// clocks that run at slightly different rates, not clocks that are stepped.
func DriftMargin(lease time.Duration) time.Duration { return lease/100 + driftFloor }

const driftFloor = 5 * time.Millisecond

// MinTTL is the shortest TTL that leaves room for grace and the drift
// margin: the smallest ttl, in whole milliseconds, with
// grace + DriftMargin(ttl) < ttl.
func MinTTL(grace time.Duration) time.Duration {
	if grace > math.MaxInt64/2 {
		return math.MaxInt64
	}
	return time.Duration(float64(grace+driftFloor)/0.99).Truncate(time.Millisecond) + time.Millisecond
}

// Guard is one acquisition of a Lock. Unless the Lock has NoRenew, it renews
// the lease in the background and watches for a break, so that a break or
// a lease that could not be renewed ends Context at once. (A break from
// another machine or network namespace, on a store with holders' sockets,
// is noticed at the next renewal; see Rendezvous.)
//
// The lease is a promise the guard keeps by its own clock: Context ends at
// the guard's safe end (see SafeEnd) unless a renewal succeeded before it,
// whatever the store is doing, and every store call the guard makes is
// bounded by it.
type Guard struct {
	lock   *Lock
	key    string
	holder string

	ctx    context.Context
	cancel context.CancelCauseFunc

	mu    sync.Mutex
	grant Grant
	// leaseEnd is the lease's end on this process's monotonic clock: the
	// send time of the request that last granted or renewed it plus the
	// lease it got. margin is the drift margin of that lease.
	leaseEnd time.Time
	margin   time.Duration
	// lastSent is when the last successful request was sent; renewErr is
	// the last renewal's error since then, for the message at the safe end.
	lastSent time.Time
	renewErr error
	// safeEndTimer ends the guard at its safe end.
	safeEndTimer *time.Timer

	stopRenewal func()
	// beacon, when set, is the socket waiters sleep on (see Rendezvous).
	beacon *beacon
}

// newGuard starts a guard for grant, whose request was sent at sent.
func (l *Lock) newGuard(grant Grant, sent time.Time) *Guard {
	ctx, cancel := context.WithCancelCause(context.Background())
	g := &Guard{lock: l, key: l.key, holder: l.holder, ctx: ctx, cancel: cancel, grant: grant}
	g.mu.Lock()
	g.extendLocked(sent, grant)
	g.safeEndTimer = time.AfterFunc(time.Until(g.safeEndLocked()), g.atSafeEnd)
	g.mu.Unlock()
	context.AfterFunc(ctx, func() { g.safeEndTimer.Stop() })
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
			g.keepAlive(renewCtx, b)
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

// LeaseEnd is when the lease ends as this process counts it, on its
// monotonic clock: from when the request that granted or last renewed it
// was sent. The store's clock may reach the end up to the drift margin
// earlier.
func (g *Guard) LeaseEnd() time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.leaseEnd
}

// SafeEnd is the lease's end minus the Lock's grace and the drift margin
// (see DriftMargin). Unless a renewal succeeds before it, Context ends
// then, whatever the store is doing, leaving the grace for the work to
// stop before anyone else can take the lock.
func (g *Guard) SafeEnd() time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.safeEndLocked()
}

// Grace is how long before the end of the lease (less the drift margin)
// Context ends when the lease cannot be renewed: the time the holder has
// to stop.
func (g *Guard) Grace() time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.graceLocked()
}

// graceLocked is the Lock's Grace, or DefaultGrace of the lease this guard
// holds: a re-entrant acquisition keeps its tenure's TTL, which may be far
// shorter than the Lock's, and the default must fit that lease.
func (g *Guard) graceLocked() time.Duration {
	if g.lock.opts.Grace > 0 {
		return g.lock.opts.Grace
	}
	return DefaultGrace(g.leaseLocked())
}

// leaseLocked is the length of the lease as granted or last renewed.
func (g *Guard) leaseLocked() time.Duration {
	if g.grant.TTL > 0 {
		return g.grant.TTL
	}
	return g.lock.opts.TTL
}

func (g *Guard) safeEndLocked() time.Time {
	return g.leaseEnd.Add(-g.graceLocked() - g.margin)
}

// extendLocked moves the lease's end to what grant says, counted from sent.
// It never moves earlier: the store never shortens a live lease.
func (g *Guard) extendLocked(sent time.Time, grant Grant) {
	lease := grant.ExpiresAt.Sub(grant.Now)
	if grant.ExpiresAt.IsZero() || grant.Now.IsZero() || lease <= 0 {
		lease = cmp.Or(grant.TTL, g.lock.opts.TTL)
	}
	if end := sent.Add(lease); end.After(g.leaseEnd) {
		g.leaseEnd, g.margin = end, DriftMargin(lease)
	}
	g.lastSent, g.renewErr = sent, nil
}

// atSafeEnd ends the guard unless a renewal moved the safe end meanwhile.
func (g *Guard) atSafeEnd() {
	g.mu.Lock()
	safeEnd := g.safeEndLocked()
	if wait := time.Until(safeEnd); wait > 0 {
		g.safeEndTimer.Reset(wait)
		g.mu.Unlock()
		return
	}
	lastSent, renewErr := g.lastSent, g.renewErr
	g.mu.Unlock()
	why := "no renewal was tried in time (this process was stopped or starved)"
	if renewErr != nil {
		why = fmt.Sprintf("the last renewal failed: %v", renewErr)
	}
	left := time.Until(g.LeaseEnd()).Round(time.Millisecond)
	end := fmt.Sprintf("its lease ends in %s", left)
	if left <= 0 {
		end = fmt.Sprintf("its lease ended %s ago", -left)
	}
	g.lost(fmt.Errorf("%w (last renewed by a request sent at %s; %s); %s",
		errNotRenewedInTime, lastSent.Format("15:04:05.000"), why, end))
}

// errNotRenewedInTime is the cause of a loss at the safe end.
var errNotRenewedInTime = errors.New("not renewed by its safe end")

// ClearPoison acknowledges the current generation without releasing, for a
// holder that has reloaded its view.
func (g *Guard) ClearPoison(ctx context.Context) error {
	if err := g.Err(); err != nil {
		return err
	}
	ctx, cancel := context.WithDeadline(ctx, g.SafeEnd())
	defer cancel()
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

// Context ends when the guard is released or its lease is lost, at the
// latest at SafeEnd unless renewed; its cause (context.Cause) is
// ErrReleased or wraps ErrLeaseLost.
func (g *Guard) Context() context.Context { return g.ctx }

// Err is nil while the lease is held, then wraps ErrLeaseLost or is
// ErrReleased.
func (g *Guard) Err() error { return context.Cause(g.ctx) }

// ReleaseBound is the longest a Release waits for the store.
const ReleaseBound = 10 * time.Second

// Close releases the guard like Release, so that a Guard is an io.Closer.
func (g *Guard) Close() error { return g.Release(context.Background()) }

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
	// Like sql.Tx.Rollback, a release runs even when the caller's context
	// has ended (a deferred Release after a cancelled wait): otherwise the
	// lock would stay held until its lease ends. It is bounded instead, and
	// past the lease's end there is nothing left to release.
	ctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), earliest(g.LeaseEnd(), time.Now().Add(ReleaseBound)))
	defer cancel()
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
// positive. It gives up at the safe end.
func (g *Guard) Renew(ctx context.Context, ttl time.Duration) error {
	if err := g.Err(); err != nil {
		return err
	}
	ctx, cancel := context.WithDeadline(ctx, g.SafeEnd())
	defer cancel()
	sent := time.Now()
	grant, err := g.lock.store.Renew(ctx, RenewRequest{Key: g.key, Holder: g.holder, Token: g.Token(), TTL: ttl})
	if errors.Is(err, ErrNotHeld) {
		g.lost(err)
		return g.Err()
	}
	g.mu.Lock()
	// An answer after the safe end comes too late: the holder keeps its
	// promise by its own clock.
	late := !time.Now().Before(g.safeEndLocked())
	if err != nil {
		g.renewErr = err
	} else if !late {
		g.grant.ExpiresAt, g.grant.TTL, g.grant.Now = grant.ExpiresAt, grant.TTL, grant.Now
		g.extendLocked(sent, grant)
	}
	g.mu.Unlock()
	switch {
	case err != nil:
		return err
	case late:
		g.atSafeEnd()
		return g.Err()
	}
	return nil
}

func (g *Guard) lost(cause error) {
	g.cancel(fmt.Errorf("%w: %w", ErrLeaseLost, cause))
}

// watchStoreBeyond: a guard whose renewals are further apart than this also
// watches the store, so that a break its beacon does not hear of (made from
// another network namespace) still ends it long before the next renewal.
const watchStoreBeyond = 5 * time.Second

// renewedAt is when the request that granted or last renewed the lease
// was sent.
func (g *Guard) renewedAt() time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.lastSent
}

// renewEvery is the time between renewals: a third of the time from a
// successful renewal to the safe end, so that two more tries fit before it.
func (g *Guard) renewEvery() time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	ttl := g.leaseLocked()
	return max((ttl-g.graceLocked()-DriftMargin(ttl))/3, time.Millisecond)
}

// keepAlive renews the lease every renewEvery until ctx ends or the lease
// is lost; a failed renewal is tried again until the safe end, when the
// safe-end timer ends the guard whatever the store is doing. Between
// renewals it checks the lock when told to through its beacon (see
// NotifyHolder) and, without one or with renewals far apart, after every
// change in the store. Every store call is bounded by the safe end, and a
// check also by the next renewal, so that no check delays one.
func (g *Guard) keepAlive(ctx context.Context, b *beacon) {
	every := g.renewEvery()
	var pokes, changes <-chan struct{}
	if b != nil {
		pokes = b.pokes
	}
	var subscribed chan (<-chan struct{})
	if b == nil || every > watchStoreBeyond {
		// In the background: a store that does not answer must not hold
		// up the renewals.
		subscribed = make(chan (<-chan struct{}), 1)
		go func() {
			if ch, err := g.lock.store.Subscribe(ctx); err == nil {
				subscribed <- ch
			} // else renewal alone still notices a loss
		}()
	}
	// Renewals are counted from when the last successful request was sent.
	due := g.renewedAt().Add(every)
	// A break between the grant and the beacon or the subscription was not
	// heard of.
	look := true
	timer := time.NewTimer(time.Until(due))
	defer timer.Stop()
	for {
		if look {
			if err := g.checkStillHeld(ctx, due); err != nil {
				g.lost(err)
				return
			}
		}
		look = false
		select {
		case <-ctx.Done():
			return
		case ch := <-subscribed:
			// A change before the subscription went unseen.
			changes, subscribed, look = ch, nil, true
			continue
		case <-pokes:
			look = true
			continue
		case <-changes:
			look = true
			continue
		case <-timer.C:
		}
		if !time.Now().Before(g.SafeEnd()) {
			// The process did not run in time (stopped or starved): the
			// safe-end timer ends the guard, if it has not yet.
			g.atSafeEnd()
			return
		}
		err := g.Renew(ctx, 0)
		switch {
		case ctx.Err() != nil || g.Err() != nil:
			return
		case err == nil:
			due = g.renewedAt().Add(every)
			timer.Reset(time.Until(due))
		default:
			// A store error: try again soon, until the safe end.
			retry := max(min(every/4, time.Until(g.SafeEnd())/2), 10*time.Millisecond)
			due = time.Now().Add(retry)
			timer.Reset(retry)
		}
	}
}

// checkStillHeld reads the lock and fails when another tenure replaced ours.
// A read error is not a loss: renewal decides that. It gives up at the
// earlier of the safe end and until.
func (g *Guard) checkStillHeld(ctx context.Context, until time.Time) error {
	ctx, cancel := context.WithDeadline(ctx, earliest(g.SafeEnd(), until))
	defer cancel()
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
