package lock

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
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

// Guard is one acquisition of a Lock. Unless the Lock has NoRenew, its
// lease is renewed in the background and a break is watched for, so that a
// break or a lease that could not be renewed ends Context at once. (A break
// from another machine or network namespace, on a store with holders'
// sockets, is noticed at the next renewal; see Rendezvous.) A tenure
// released within a few milliseconds of its acquisition never starts that
// work: it is not needed before the first renewal, nor a break check before
// waiters can reach the holder.
//
// The lease is a promise the guard keeps by its own clock: Context ends at
// the guard's safe end (see SafeEnd) unless a renewal succeeded before it,
// whatever the store is doing, and every store call the guard makes is
// bounded by it.
//
// Guards of one Lock that are live at the same time share one tenure in
// the store (each later acquisition is re-entrant) and the Lock counts
// them. Releasing a guard ends its own Context with ErrReleased; the tenure
// itself, its renewal and the other guards go on until the last live guard
// is released. That last release acknowledges the generation only if every
// guard of the tenure was released with Release: a single ReleaseKeepPoison
// among them keeps the poison, whichever guard went last. A lost lease ends
// every guard of the tenure.
type Guard struct {
	t      *tenure
	key    string
	holder string

	// ctx ends with the tenure, or when this guard is released first.
	ctx    context.Context
	cancel context.CancelCauseFunc

	mu sync.Mutex
	// grant is this acquisition's; the lease's fields are the tenure's.
	grant Grant
	// left is set once the guard is released (guarded by the Lock's mu).
	left bool
}

// tenure is one store tenure as a Lock holds it, shared by the Lock's
// live guards.
type tenure struct {
	lock  *Lock
	token int64
	// reentrant: the tenure began in another process (or another Lock),
	// which may listen for it too.
	reentrant bool

	// ctx ends when the lease is lost or the last guard is released.
	ctx    context.Context
	cancel context.CancelCauseFunc

	// guards and keepPoison are guarded by the Lock's mu: the live guards
	// (the last one until the store has its release), and whether any
	// released guard kept the poison.
	guards     int
	keepPoison bool

	mu sync.Mutex
	// lease is the grant or renewal that last moved the lease's end.
	lease Grant
	// leaseEnd is the lease's end on this process's monotonic clock: the
	// send time of the request that last granted or renewed it plus the
	// lease it got. margin is the drift margin of that lease.
	leaseEnd time.Time
	margin   time.Duration
	// lastSent is when the last successful request was sent; renewErr is
	// the last renewal's error since then, for the message at the safe end.
	lastSent time.Time
	renewErr error
	// safeEndTimer ends the tenure at its safe end.
	safeEndTimer *time.Timer
	// startTimer starts the renewal and the beacon once the tenure has
	// lasted beaconDelay; halted keeps them stopped while the tenure is
	// being released. stopRenewal is set while the renewal runs.
	startTimer  *time.Timer
	halted      bool
	stopRenewal func()
	// beacon, when set, is the socket waiters sleep on (see Rendezvous).
	beacon *beacon
}

// newTenure starts the in-process side of the tenure that grant began,
// whose request was sent at sent.
func (l *Lock) newTenure(grant Grant, sent time.Time) *tenure {
	ctx, cancel := context.WithCancelCause(context.Background())
	t := &tenure{lock: l, token: grant.Token, reentrant: grant.Reentrant, ctx: ctx, cancel: cancel}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.extendLocked(sent, grant)
	t.safeEndTimer = time.AfterFunc(time.Until(t.safeEndLocked()), t.atSafeEnd)
	if !l.opts.NoRenew {
		// Only a holder that stays alive can wake waiters by letting go.
		// A short tenure is over before anyone needs either: waiters
		// expect no socket before beaconDelay, and the first renewal is
		// far later.
		t.startTimer = time.AfterFunc(beaconDelay, t.start)
	}
	return t
}

// start starts the renewal and the beacon, unless they run, the tenure is
// being released or it ended.
func (t *tenure) start() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.halted || t.stopRenewal != nil || t.ctx.Err() != nil {
		return
	}
	if t.beacon == nil {
		t.beacon = newBeacon(t.lock.store, t.lock.key, t.token)
	}
	renewCtx, stop := context.WithCancel(t.ctx)
	done := make(chan struct{})
	b := t.beacon
	go func() {
		defer close(done)
		t.keepAlive(renewCtx, b)
	}()
	t.stopRenewal = func() { stop(); <-done }
}

// halt stops the renewal (for good, unless resume is called), so that it
// cannot race the release; the beacon keeps listening until the store has
// the lock released.
func (t *tenure) halt() {
	t.mu.Lock()
	t.halted = true
	if t.startTimer != nil {
		t.startTimer.Stop()
	}
	stop := t.stopRenewal
	t.stopRenewal = nil
	t.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// resume restarts the renewal after a release that failed.
func (t *tenure) resume() {
	t.mu.Lock()
	t.halted = false
	t.mu.Unlock()
	if !t.lock.opts.NoRenew {
		t.start()
	}
}

// end ends the tenure with cause: every guard's Context, its timers, and
// its beacon, which wakes the waiters.
func (t *tenure) end(cause error) {
	t.cancel(cause)
	t.mu.Lock()
	t.safeEndTimer.Stop()
	if t.startTimer != nil {
		t.startTimer.Stop()
	}
	b := t.beacon
	t.mu.Unlock()
	if b != nil {
		b.close()
	}
}

func (t *tenure) lost(cause error) {
	t.end(fmt.Errorf("%w: %w", ErrLeaseLost, cause))
}

// err is nil while the lease is held.
func (t *tenure) err() error { return context.Cause(t.ctx) }

// join adds a guard for grant, whose request was sent at sent, to the
// Lock's live tenure when grant continues it, or starts a new one.
func (l *Lock) join(grant Grant, sent time.Time) *Guard {
	l.mu.Lock()
	t := l.live
	switch {
	case t != nil && t.token == grant.Token && t.err() == nil:
		t.mu.Lock()
		t.extendLocked(sent, grant)
		t.mu.Unlock()
	default:
		if t != nil && t.token != grant.Token {
			// The store gave this holder a new tenure: the old one ended
			// without its guards hearing of it yet.
			t.lost(&NotHeldError{Key: l.key, Holder: l.holder, Reason: ReasonTenure,
				Current: State{Key: l.key, State: StateHeld, Holder: l.holder, Generation: grant.Generation, Token: grant.Token}})
		}
		t = l.newTenure(grant, sent)
		l.live = t
	}
	t.guards++
	l.mu.Unlock()
	ctx, cancel := context.WithCancelCause(t.ctx)
	return &Guard{t: t, key: l.key, holder: l.holder, ctx: ctx, cancel: cancel, grant: grant}
}

// Grant returns this acquisition's grant, with the lease as last granted
// or renewed for the tenure.
func (g *Guard) Grant() Grant {
	g.mu.Lock()
	grant := g.grant
	g.mu.Unlock()
	t := g.t
	t.mu.Lock()
	grant.ExpiresAt, grant.TTL, grant.Now = t.lease.ExpiresAt, t.lease.TTL, t.lease.Now
	t.mu.Unlock()
	return grant
}

// Waited is how long the acquisition waited in the key's queue, by the
// store's clock: zero when it was granted at its first try.
func (g *Guard) Waited() time.Duration { return g.grant.Waited }

// Generation is the lock's generation when it was acquired.
func (g *Guard) Generation() int64 { return g.grant.Generation }

// Mode is how the tenure holds the key: ModeExclusive or ModeShared.
func (g *Guard) Mode() Mode { return g.grant.Mode }

// Slots is the limit of shared holders the tenure was granted under, 0 for
// none.
func (g *Guard) Slots() int { return g.grant.Slots }

// Token is the tenure's fencing token: pass it to the resource you protect.
func (g *Guard) Token() int64 { return g.t.token }

// Poisoned reports whether the acquisition found the lock poisoned and the
// poison was not cleared since through this guard.
func (g *Guard) Poisoned() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.grant.Poisoned
}

// LeaseEnd is when the lease ends as this process counts it, on its
// monotonic clock: from when the request that granted or last renewed it
// was sent. The store's clock may reach the end up to the drift margin
// earlier.
func (g *Guard) LeaseEnd() time.Time { return g.t.leaseEndTime() }

func (t *tenure) leaseEndTime() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.leaseEnd
}

// SafeEnd is the lease's end minus the Lock's grace and the drift margin
// (see DriftMargin). Unless a renewal succeeds before it, Context ends
// then, whatever the store is doing, leaving the grace for the work to
// stop before anyone else can take the lock.
func (g *Guard) SafeEnd() time.Time { return g.t.safeEnd() }

func (t *tenure) safeEnd() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.safeEndLocked()
}

// Grace is how long before the end of the lease (less the drift margin)
// Context ends when the lease cannot be renewed: the time the holder has
// to stop.
func (g *Guard) Grace() time.Duration {
	t := g.t
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.graceLocked()
}

// graceLocked is the Lock's Grace, or DefaultGrace of the lease the tenure
// holds: a re-entrant acquisition keeps its tenure's TTL, which may be far
// shorter than the Lock's, and the default must fit that lease.
func (t *tenure) graceLocked() time.Duration {
	if t.lock.opts.Grace > 0 {
		return t.lock.opts.Grace
	}
	return DefaultGrace(t.leaseLocked())
}

// leaseLocked is the length of the lease as granted or last renewed.
func (t *tenure) leaseLocked() time.Duration {
	if t.lease.TTL > 0 {
		return t.lease.TTL
	}
	return t.lock.opts.TTL
}

func (t *tenure) safeEndLocked() time.Time {
	return t.leaseEnd.Add(-t.graceLocked() - t.margin)
}

// extendLocked moves the lease's end to what grant says, counted from sent.
// It never moves earlier: the store never shortens a live lease.
func (t *tenure) extendLocked(sent time.Time, grant Grant) {
	lease := grant.ExpiresAt.Sub(grant.Now)
	if grant.ExpiresAt.IsZero() || grant.Now.IsZero() || lease <= 0 {
		lease = cmp.Or(grant.TTL, t.lock.opts.TTL)
	}
	if end := sent.Add(lease); end.After(t.leaseEnd) {
		t.leaseEnd, t.margin = end, DriftMargin(lease)
		t.lease.ExpiresAt, t.lease.TTL, t.lease.Now = grant.ExpiresAt, grant.TTL, grant.Now
	}
	t.lastSent, t.renewErr = sent, nil
}

// atSafeEnd ends the tenure unless a renewal moved the safe end meanwhile.
func (t *tenure) atSafeEnd() {
	t.mu.Lock()
	safeEnd := t.safeEndLocked()
	if wait := time.Until(safeEnd); wait > 0 {
		t.safeEndTimer.Reset(wait)
		t.mu.Unlock()
		return
	}
	lastSent, renewErr := t.lastSent, t.renewErr
	t.mu.Unlock()
	why := "no renewal was tried in time (this process was stopped or starved)"
	if renewErr != nil {
		why = fmt.Sprintf("the last renewal failed: %v", renewErr)
	}
	left := time.Until(t.leaseEndTime()).Round(time.Millisecond)
	end := fmt.Sprintf("its lease ends in %s", left)
	if left <= 0 {
		end = fmt.Sprintf("its lease ended %s ago", -left)
	}
	t.lost(fmt.Errorf("%w (last renewed by a request sent at %s; %s); %s",
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
	t := g.t
	ctx, cancel := context.WithDeadline(ctx, t.safeEnd())
	defer cancel()
	err := t.lock.store.Acknowledge(ctx, g.key, g.holder, t.token)
	if errors.Is(err, ErrNotHeld) {
		t.lost(err)
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

// Release releases the guard. When it is the last live guard of its Lock's
// tenure, it ends the tenure in the store and acknowledges the generation,
// clearing this holder's poison, if any acquisition of the tenure was
// checked (not LockUnchecked) and no guard of the tenure was released with
// ReleaseKeepPoison.
func (g *Guard) Release(ctx context.Context) error { return g.release(ctx, true) }

// ReleaseKeepPoison releases the guard like Release, but the tenure's end
// acknowledges nothing, for a holder whose work failed: the poison stays
// for the next acquisition to report.
func (g *Guard) ReleaseKeepPoison(ctx context.Context) error { return g.release(ctx, false) }

func (g *Guard) release(ctx context.Context, acknowledge bool) error {
	if err := g.Err(); err != nil {
		return err
	}
	t, l := g.t, g.t.lock
	l.mu.Lock()
	if g.left {
		// A release of this guard is under way in another goroutine.
		l.mu.Unlock()
		return ErrReleased
	}
	g.left = true
	if g.leaveUnlessLastLocked(acknowledge) {
		l.mu.Unlock()
		return nil
	}
	l.mu.Unlock()
	// Like sql.Tx.Rollback, a release runs even when the caller's context
	// has ended (a deferred Release after a cancelled wait): otherwise the
	// lock would stay held until its lease ends. It is bounded instead, and
	// past the lease's end there is nothing left to release.
	ctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), earliest(t.leaseEndTime(), time.Now().Add(ReleaseBound)))
	defer cancel()
	err := g.endTenure(ctx, acknowledge)
	if err != nil && g.Err() == nil {
		// Still held: the guard may be released again.
		l.mu.Lock()
		g.left = false
		l.mu.Unlock()
	}
	return err
}

// leaveUnlessLastLocked releases g when another guard of its tenure is
// live, and reports whether it did. The Lock's mu is held.
func (g *Guard) leaveUnlessLastLocked(acknowledge bool) bool {
	t := g.t
	if t.guards == 1 {
		return false
	}
	t.guards--
	t.keepPoison = t.keepPoison || !acknowledge
	g.cancel(ErrReleased)
	return true
}

// endTenure ends the tenure in the store for its last live guard g, unless
// another acquisition joined it meanwhile. Holding the Lock's turn, it
// cannot race a join.
func (g *Guard) endTenure(ctx context.Context, acknowledge bool) error {
	t, l := g.t, g.t.lock
	if err := l.takeTurn(ctx); err != nil {
		return err
	}
	defer l.giveTurn()
	l.mu.Lock()
	joined := g.leaveUnlessLastLocked(acknowledge)
	acknowledge = acknowledge && !t.keepPoison
	l.mu.Unlock()
	if joined {
		return nil
	}
	t.halt()
	if err := t.err(); err != nil {
		return err
	}
	_, err := l.store.Release(ctx, ReleaseRequest{
		Key: g.key, Holder: g.holder, Token: t.token, Acknowledge: acknowledge,
	})
	if errors.Is(err, ErrNotHeld) {
		t.lost(err)
		return g.Err()
	}
	if err != nil {
		t.resume()
		return err
	}
	l.mu.Lock()
	t.guards = 0
	if l.live == t {
		l.live = nil
	}
	l.mu.Unlock()
	// Another guard of this holder (a re-entrant acquisition in another
	// process) may listen for the tenure: it ended for that guard too.
	// A guard that never listens cannot tell, so it always looks.
	shared := t.reentrant || l.opts.NoRenew
	t.mu.Lock()
	b := t.beacon
	t.mu.Unlock()
	if b != nil {
		// Now rather than when the tenure ends, so that the next tenure
		// of this process can listen at once.
		shared = b.close() || shared
	}
	if shared {
		NotifyHolder(ctx, l.store, g.key)
	}
	t.end(ErrReleased)
	return nil
}

// Renew extends the lease now by the tenure's TTL, or by ttl when it is
// positive. It gives up at the safe end.
func (g *Guard) Renew(ctx context.Context, ttl time.Duration) error {
	if err := g.Err(); err != nil {
		return err
	}
	if err := g.t.renew(ctx, ttl); err != nil {
		return cmp.Or(g.Err(), err)
	}
	return nil
}

func (t *tenure) renew(ctx context.Context, ttl time.Duration) error {
	ctx, cancel := context.WithDeadline(ctx, t.safeEnd())
	defer cancel()
	sent := time.Now()
	grant, err := t.lock.store.Renew(ctx, RenewRequest{Key: t.lock.key, Holder: t.lock.holder, Token: t.token, TTL: ttl})
	if errors.Is(err, ErrNotHeld) {
		t.lost(err)
		return t.err()
	}
	t.mu.Lock()
	// An answer after the safe end comes too late: the holder keeps its
	// promise by its own clock.
	late := !time.Now().Before(t.safeEndLocked())
	if err != nil {
		t.renewErr = err
	} else if !late {
		t.extendLocked(sent, grant)
		t.lease.ExpiresAt, t.lease.TTL, t.lease.Now = grant.ExpiresAt, grant.TTL, grant.Now
	}
	t.mu.Unlock()
	switch {
	case err != nil:
		return err
	case late:
		t.atSafeEnd()
		return t.err()
	}
	return nil
}

// watchStoreBeyond: a tenure whose renewals are further apart than this
// also watches the store, so that a break its beacon does not hear of
// (made from another network namespace) still ends it long before the next
// renewal.
const watchStoreBeyond = 5 * time.Second

// renewedAt is when the request that granted or last renewed the lease
// was sent.
func (t *tenure) renewedAt() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lastSent
}

// renewEvery is the time between renewals: a third of the time from a
// successful renewal to the safe end, so that two more tries fit before it.
func (t *tenure) renewEvery() time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	ttl := t.leaseLocked()
	return max((ttl-t.graceLocked()-DriftMargin(ttl))/3, time.Millisecond)
}

// keepAlive renews the lease every renewEvery until ctx ends or the lease
// is lost; a failed renewal is tried again until the safe end, when the
// safe-end timer ends the tenure whatever the store is doing. Between
// renewals it checks the lock when told to through its beacon (see
// NotifyHolder) and, without one or with renewals far apart, after every
// change in the store. Every store call is bounded by the safe end, and a
// check also by the next renewal, so that no check delays one.
func (t *tenure) keepAlive(ctx context.Context, b *beacon) {
	every := t.renewEvery()
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
			if ch, err := t.lock.store.Subscribe(ctx); err == nil {
				subscribed <- ch
			} // else renewal alone still notices a loss
		}()
	}
	// Renewals are counted from when the last successful request was sent.
	due := t.renewedAt().Add(every)
	// A break before the beacon or the subscription was not heard of.
	look := true
	timer := time.NewTimer(time.Until(due))
	defer timer.Stop()
	for {
		if look {
			if err := t.checkStillHeld(ctx, due); err != nil {
				t.lost(err)
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
		if !time.Now().Before(t.safeEnd()) {
			// The process did not run in time (stopped or starved): the
			// safe-end timer ends the tenure, if it has not yet.
			t.atSafeEnd()
			return
		}
		err := t.renew(ctx, 0)
		switch {
		case ctx.Err() != nil || t.err() != nil:
			return
		case err == nil:
			due = t.renewedAt().Add(every)
			timer.Reset(time.Until(due))
		default:
			// A store error: try again soon, until the safe end.
			retry := max(min(every/4, time.Until(t.safeEnd())/2), 10*time.Millisecond)
			due = time.Now().Add(retry)
			timer.Reset(retry)
		}
	}
}

// checkStillHeld reads the lock and fails when another tenure replaced ours.
// A read error is not a loss: renewal decides that. It gives up at the
// earlier of the safe end and until.
func (t *tenure) checkStillHeld(ctx context.Context, until time.Time) error {
	ctx, cancel := context.WithDeadline(ctx, earliest(t.safeEnd(), until))
	defer cancel()
	key, holder := t.lock.key, t.lock.holder
	snap, err := t.lock.store.Snapshot(ctx, key)
	if err != nil || len(snap.Locks) == 0 {
		return nil
	}
	s := snap.Locks[0]
	if slices.ContainsFunc(s.Holders, func(h HolderState) bool { return h.Holder == holder && h.Token == t.token }) {
		return nil // a reader's tenure is one of several: the key's token may be another's
	}
	switch {
	case s.Token != t.token && s.Holder == holder:
		return &NotHeldError{Key: key, Holder: holder, Reason: ReasonTenure, Current: s}
	case s.Token != t.token:
		return &NotHeldError{Key: key, Holder: holder, Reason: ReasonOther, Current: s}
	case s.State == StateFree:
		return &NotHeldError{Key: key, Holder: holder, Reason: ReasonFree, Current: s}
	case s.State == StateExpired:
		return &NotHeldError{Key: key, Holder: holder, Reason: ReasonExpired, Current: s}
	}
	return nil
}
