package lock

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"time"
)

// DefaultTTL is the lease length of a Lock whose Options give none. The
// guard renews it in the background, so it only bounds how long a crashed
// holder keeps others waiting.
const DefaultTTL = 10 * time.Second

// Backoff bounds while waiting. Stores wake waiters on every change, so the
// backoff only covers a missed wake-up; it restarts on every call.
const (
	minBackoff = 2 * time.Millisecond
	maxBackoff = 500 * time.Millisecond
)

// Options tune a Lock.
type Options struct {
	// TTL is the lease length; DefaultTTL when zero.
	TTL time.Duration
	// KeepTenureTTL makes a re-entrant acquisition extend the lease by the
	// tenure's TTL instead of TTL.
	KeepTenureTTL bool
	// NoRenew leaves the lease to run out unless renewed or released, as
	// `xplock acquire` without a command does. By default a Guard renews its
	// lease every (TTL - Grace - DriftMargin(TTL))/3 until released.
	NoRenew bool
	// Grace is how long a Guard's Context ends before its lease (less the
	// drift margin) when the lease cannot be renewed: the time the holder
	// has to stop before anyone else can take the lock. DefaultGrace(TTL)
	// when zero. Grace plus DriftMargin(TTL) must be shorter than TTL.
	Grace time.Duration
}

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

// Lock is one holder's handle on one named lock in a Store. It is safe for
// concurrent use; concurrent processes must use different holders.
type Lock struct {
	store  Store
	key    string
	holder string
	opts   Options
}

// New returns a Lock on key for holder. It fails when the key, holder or TTL
// is invalid.
func New(store Store, key, holder string, opts Options) (*Lock, error) {
	if err := ValidateKey(key); err != nil {
		return nil, err
	}
	if err := ValidateHolder(holder); err != nil {
		return nil, err
	}
	if opts.TTL < 0 {
		return nil, errors.New("lease TTL must be positive")
	}
	if opts.TTL == 0 {
		opts.TTL = DefaultTTL
	}
	switch {
	case opts.Grace < 0:
		return nil, errors.New("grace must not be negative")
	case opts.Grace == 0:
		opts.Grace = DefaultGrace(opts.TTL)
	case opts.Grace >= opts.TTL-DriftMargin(opts.TTL):
		return nil, fmt.Errorf("grace %s plus the clock-drift margin (%s) must be shorter than the TTL %s: use a TTL of at least %s",
			opts.Grace, DriftMargin(opts.TTL), opts.TTL, MinTTL(opts.Grace))
	}
	return &Lock{store: store, key: key, holder: holder, opts: opts}, nil
}

// Key returns the lock's name.
func (l *Lock) Key() string { return l.key }

// Holder returns the holder this Lock acquires as.
func (l *Lock) Holder() string { return l.holder }

// Lock blocks until the lock is acquired or ctx ends. When the lock is
// poisoned for this holder it returns the held guard together with a
// *PoisonError: reload whatever was cached, then use the guard as usual.
// When ctx ends first it returns a *BusyError wrapping ctx's error.
func (l *Lock) Lock(ctx context.Context) (*Guard, error) {
	return l.Acquire(ctx, AcquireOptions{})
}

// LockUnchecked blocks like Lock but ignores poison: it never returns a
// *PoisonError and acknowledges nothing (SPEC rule 5).
func (l *Lock) LockUnchecked(ctx context.Context) (*Guard, error) {
	return l.Acquire(ctx, AcquireOptions{Unchecked: true})
}

// TryLock is Lock without waiting: a lock held by another holder gives a
// *BusyError at once.
func (l *Lock) TryLock(ctx context.Context) (*Guard, error) {
	return l.Acquire(ctx, AcquireOptions{NoWait: true})
}

// AcquireOptions choose how Acquire behaves.
type AcquireOptions struct {
	Unchecked bool
	NoWait    bool
	// OnWait, when set, is called with the holder's state before each wait.
	OnWait func(current State, now time.Time)
}

// Acquire is the general form of Lock, LockUnchecked and TryLock.
func (l *Lock) Acquire(ctx context.Context, opts AcquireOptions) (*Guard, error) {
	req := AcquireRequest{
		Key: l.key, Holder: l.holder, TTL: l.opts.TTL,
		KeepTenureTTL: l.opts.KeepTenureTTL, Checked: !opts.Unchecked,
	}
	// w is set up once the lock is found taken: most acquisitions find it
	// free, and waiting costs a store subscription (a connection, a file
	// watch and goroutines).
	var w *waiter
	// current is the holder as last seen, for the BusyError when ctx ends.
	current := State{Key: l.key}
	for {
		sent := time.Now() // the guard's lease is counted from here
		grant, err := l.store.Acquire(ctx, req)
		if err != nil {
			if ctxErr := ctx.Err(); ctxErr != nil {
				// The wait ran out during a try. Stores finish a decision
				// they have begun whatever ctx does, so an error when ctx
				// ended means nothing was decided: not acquired.
				return nil, &BusyError{Current: current, Err: ctxErr}
			}
			return nil, err
		}
		if grant.Acquired {
			g := l.newGuard(grant, sent)
			if grant.Poisoned && !opts.Unchecked {
				return g, &PoisonError{Guard: g, Acknowledged: grant.Acknowledged}
			}
			return g, nil
		}
		if opts.NoWait {
			return nil, &BusyError{Current: grant.Current}
		}
		current = grant.Current
		if w == nil {
			w = &waiter{lock: l, address: rendezvousAddress(l.store, l.key), backoff: minBackoff, onWait: opts.OnWait}
			defer w.stop()
		}
		if err := w.wait(ctx, grant.Current, grant.Now); err != nil {
			return nil, err
		}
	}
}

// waiter is one Acquire call's wait for its turn.
type waiter struct {
	lock *Lock
	// address is the holders' beacon address, when the store has them.
	address string
	onWait  func(State, time.Time)

	// changes is subscribed to only when there is no beacon to sleep on:
	// a subscription costs a store connection, a file watch, goroutines
	// and a wake-up at every change.
	changes     <-chan struct{}
	unsubscribe context.CancelFunc
	timer       *time.Timer
	backoff     time.Duration
}

// wait returns when the lock may be free. While a live holder has a
// beacon, it sleeps on it until the holder lets go, dies or reaches its
// lease end. Otherwise it returns after a change in the store, at the
// lease end, or after a backoff in case a wake-up was missed.
func (w *waiter) wait(ctx context.Context, current State, now time.Time) error {
	if w.onWait != nil {
		w.onWait(current, now)
	}
	if w.address != "" {
		err := sleepOnHolder(ctx, w.address, current, now)
		if err == nil {
			return nil
		}
		if !errors.Is(err, errNoBeacon) {
			return &BusyError{Current: current, Err: err}
		}
	}
	if w.changes == nil {
		subCtx, cancel := context.WithCancel(ctx)
		changes, err := w.lock.store.Subscribe(subCtx)
		if err != nil {
			cancel()
			if ctxErr := ctx.Err(); ctxErr != nil {
				return &BusyError{Current: current, Err: ctxErr}
			}
			return err
		}
		w.changes, w.unsubscribe = changes, cancel
		// Try again before waiting: a release between the try and the
		// subscription would otherwise go unnoticed.
		return nil
	}
	d := w.backoff + rand.N(w.backoff/2+1)
	if untilExpiry := current.ExpiresAt.Sub(now) + time.Millisecond; untilExpiry > 0 && untilExpiry < d {
		d = untilExpiry
	}
	if w.timer == nil {
		w.timer = time.NewTimer(d)
	} else {
		w.timer.Reset(d)
	}
	select {
	case <-ctx.Done():
		return &BusyError{Current: current, Err: ctx.Err()}
	case <-w.changes:
	case <-w.timer.C:
	}
	w.backoff = min(2*w.backoff, maxBackoff)
	return nil
}

func (w *waiter) stop() {
	if w.timer != nil {
		w.timer.Stop()
	}
	if w.unsubscribe != nil {
		w.unsubscribe()
	}
}

// Poisonable is anything that can report and clear poison, like the
// standard library's poisoned mutexes in other languages.
type Poisonable interface {
	// Poisoned reports whether the holder's view may be stale.
	Poisoned() bool
	// ClearPoison records that the holder caught up with the current
	// generation.
	ClearPoison(ctx context.Context) error
}

var _ Poisonable = (*Guard)(nil)
