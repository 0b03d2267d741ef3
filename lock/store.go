// Package lock is the store-independent core of xplock: named cross-process
// locks that count generations and report poison to a holder whose cached
// view may be stale.
//
// The safe pattern is Lock.Do: it waits for the lock, runs a function with
// the guard, always releases, and acknowledges the poison only when the
// function succeeds:
//
//	l, err := lock.New(store, "event-cache", "app", lock.Options{})
//	if err != nil {
//		return err
//	}
//	return l.Do(ctx, func(ctx context.Context, g *lock.Guard) error {
//		if g.Poisoned() {
//			reloadCache() // another holder had the lock since this one did
//		}
//		return work(ctx, g.Token()) // ctx ends if the lease is lost
//	})
//
// Lock, LockUnchecked and TryLock return a Guard to release yourself. When
// the lock is poisoned, Lock returns the held guard together with a
// *PoisonError: the lock is held even though err is not nil, so release it
// (or defer the release before checking err).
//
// A Store keeps the lock rows and makes each decision atomically; Lock and
// Guard wrap it with waiting, lease renewal and the poison contract.
package lock

import (
	"context"
	"time"
)

// Store is what a backend must do. Every method is one atomic decision
// judged by the store's own clock.
type Store interface {
	// Acquire takes a free or expired lock, or extends the holder's own live
	// tenure (re-entrant). When the lock is held in a conflicting mode or
	// its slots are full it returns a Grant with Acquired false and Current
	// describing the holders, and no error. A request the key can never
	// grant as asked (a limit other than the one in force, the other mode
	// than the holder's own tenure) fails with a *ConflictError.
	Acquire(ctx context.Context, req AcquireRequest) (Grant, error)

	// Renew extends the holder's live lease. It fails with a *NotHeldError
	// when the lease is lost or expired, and never takes a lock back.
	Renew(ctx context.Context, req RenewRequest) (Grant, error)

	// Release ends the holder's tenure, acknowledging the generation when
	// asked to and the tenure was checked. It fails with a *NotHeldError when
	// the holder does not hold a live lease.
	Release(ctx context.Context, req ReleaseRequest) (State, error)

	// Break ends whatever tenure is live, recording who broke it. A lock
	// nobody holds gives a *NotHeldError.
	Break(ctx context.Context, key string, by Breaker) (State, error)

	// Acknowledge sets the holder's acknowledged generation to the key's
	// current one while it holds the lock in the tenure token, clearing its
	// poison; otherwise it fails with a *NotHeldError.
	Acknowledge(ctx context.Context, key, holder string, token int64) error

	// Snapshot reads the state of the named keys (every key when none is
	// named) and the cursor of the newest event, in one consistent read.
	Snapshot(ctx context.Context, keys ...string) (Snapshot, error)

	// History returns the key's stored events, oldest first; limit > 0 keeps
	// only the newest limit of them.
	History(ctx context.Context, key string, limit int) ([]Event, error)

	// EventsAfter returns up to limit events with an ID above cursor, oldest
	// first, for the named keys (every key when none is named).
	EventsAfter(ctx context.Context, cursor int64, keys []string, limit int) ([]Event, error)

	// Subscribe returns a channel that receives a value (coalesced, never
	// blocking the store) whenever the store may have changed after the call,
	// until ctx ends.
	Subscribe(ctx context.Context) (<-chan struct{}, error)

	Close() error
}

// AcquireRequest asks a store to take or extend a lease.
type AcquireRequest struct {
	Key, Holder string
	// TTL is the lease length of a new tenure, and of a re-entrant
	// acquisition unless KeepTenureTTL is set.
	TTL time.Duration
	// KeepTenureTTL makes a re-entrant acquisition extend the lease by the
	// tenure's own TTL rather than TTL.
	KeepTenureTTL bool
	// Checked acquisitions set and report poison; unchecked ones only report
	// it (SPEC rule 5).
	Checked bool
	// Mode is ModeShared for a reader; the zero Mode is exclusive.
	Mode Mode
	// Slots, when above zero, caps the key's shared tenures (a counting
	// semaphore) and makes the request shared whatever Mode says.
	Slots int
	// Wait makes a request that cannot be granted now join the key's queue,
	// or keep its place there, instead of only being refused. A request
	// that does not wait is refused while anyone is queued, unless it is
	// re-entrant.
	Wait bool
	// Seq names the queue entry an earlier attempt of this request got
	// (Grant.Seq), 0 for none. Each attempt renews the entry's lease.
	Seq int64
	// WaitLease is how long the queue entry stays without another attempt;
	// zero means DefaultWaitLease.
	WaitLease time.Duration
	// QueuedSince is when the request first queued (Grant.QueuedSince): a
	// waiter whose entry lapsed rejoins at the tail and keeps counting its
	// wait from then. Zero means now.
	QueuedSince time.Time
	// Keepers are the processes that keep the tenure alive, for proving
	// them dead; none for a detached acquisition, whose tenure outlives the
	// process that took it until its lease ends.
	Keepers []Keeper
	// WaitKeepers are the processes that keep the queue entry alive while
	// the request waits: the process that renews it by trying again, even
	// when the tenure it waits for will have no keepers. A waiter proved
	// dead is skipped at once rather than when its waiting lease lapses.
	// Nil means Keepers.
	WaitKeepers []Keeper
}

// DefaultWaitLease is how long a queue entry stays without its waiter's
// next attempt when the request does not say: a waiter that died stops
// blocking the queue within it.
const DefaultWaitLease = 3 * time.Second

// LeaveQueueRequest asks to remove a waiter's queue entry at once (its wait
// ran out, a signal, a cancelled context).
type LeaveQueueRequest struct {
	Key, Holder string
	Seq         int64
}

// RenewRequest asks a store to extend a live lease.
type RenewRequest struct {
	Key, Holder string
	// Token, when not zero, must be the live tenure's token.
	Token int64
	// TTL is the new lease length; zero keeps the tenure's TTL.
	TTL time.Duration
}

// ReleaseRequest asks a store to end a tenure.
type ReleaseRequest struct {
	Key, Holder string
	// Token, when not zero, must be the live tenure's token.
	Token int64
	// Acknowledge clears the holder's poison if the tenure was checked.
	Acknowledge bool
}

// Grant is the outcome of an acquisition or renewal.
type Grant struct {
	Acquired bool
	Key      string
	Holder   string
	// Mode and Slots are the tenure's (the request's when not acquired).
	Mode       Mode
	Slots      int
	Generation int64
	Token      int64
	Reentrant  bool
	Poisoned   bool
	// Acknowledged is the holder's acknowledged generation after the
	// decision; zero when it has none.
	Acknowledged int64
	// Checked is true when any acquisition of the tenure was checked.
	Checked    bool
	AcquiredAt time.Time
	ExpiresAt  time.Time
	TTL        time.Duration
	// Now is the store's clock at the decision.
	Now time.Time
	// Waited is how long the request waited in the queue before this
	// acquisition, zero when it never queued.
	Waited time.Duration
	// Current is the lock's state when Acquired is false.
	Current State
	// Seq names the request's queue entry when it is not acquired and
	// waits (0 when it does not), QueuedSince is when it first queued, and
	// Ahead is how many live requests are queued ahead of it (for a request
	// that does not wait: how many are queued).
	Seq         int64
	QueuedSince time.Time
	Ahead       int
}

// Lock states as reported by Snapshot.
const (
	StateHeld    = "held"
	StateFree    = "free"
	StateExpired = "expired"
)

// State is one lock row as seen at one moment.
type State struct {
	Key string
	// State is StateHeld, StateFree or StateExpired.
	State string
	// Mode is how the key is held (or was held, when expired); "" when
	// free. Slots is the shared tenures' limit, 0 for none.
	Mode  Mode
	Slots int
	// Holder is the current exclusive holder, or the last one: the holder
	// the generation counts. "" before the key's first exclusive tenure.
	Holder string
	// Holders are the live tenures, oldest first: one for an exclusive
	// lock, every reader for a shared one.
	Holders    []HolderState
	Generation int64
	// Token is the key's highest token.
	Token int64
	// Since is when the lock entered its state: for a held lock, when its
	// oldest live tenure began.
	Since time.Time
	// ExpiresAt is the latest live lease's end (an expired lock's lease
	// end); zero when the lock is free.
	ExpiresAt       time.Time
	PoisonedHolders []string
	// Waiters is the queue, head first.
	Waiters []WaiterState
}

// WaiterState is one queued request as lookers see it.
type WaiterState struct {
	Holder string
	Mode   Mode
	// Since is when the request first queued.
	Since time.Time
}

// HolderState is one live tenure as lookers see it.
type HolderState struct {
	Holder    string
	Mode      Mode
	Token     int64
	Since     time.Time
	ExpiresAt time.Time
	// Keepers are the processes that keep the tenure alive (see Keeper):
	// a waiter on their machine wakes when one of them exits, to look.
	Keepers []Keeper
}

// Snapshot is the state of some keys at one moment of the store's clock.
type Snapshot struct {
	Locks []State
	// Cursor is the ID of the newest event at that moment.
	Cursor int64
	Now    time.Time
}

// Event types recorded in history.
const (
	EventAcquired = "acquired"
	EventReleased = "released"
	EventExpired  = "expired"
	EventBroken   = "broken"
)

// Event is one recorded state change of a key.
type Event struct {
	ID   int64
	Key  string
	Type string
	// Holder is whose tenure the change concerns, and Mode how it held.
	Holder     string
	Mode       Mode
	Generation int64
	Token      int64
	Time       time.Time
	// By is who broke the lock, for EventBroken.
	By *Breaker
	// Waited is how long the holder waited in the queue, for EventAcquired.
	Waited time.Duration
	// Detail says more about the change where there is more to say:
	// DetailHolderDied for an expiry that a death proof brought.
	Detail string
}

// DetailHolderDied is the Detail of an EventExpired recorded because every
// process keeping the tenure alive was proved gone, before its lease ended.
const DetailHolderDied = "the holder died: every process keeping it alive is gone"

// Breaker identifies who forced a lock open.
type Breaker struct {
	Holder string `json:"holder"`
	User   string `json:"user"`
	Host   string `json:"host"`
	PID    int    `json:"pid"`
}

// Settings are a store's own settings, kept in the store and shared by
// every process that uses it: no single command's flag changes them.
type Settings struct {
	// HistoryLimit is how many events are kept per key.
	HistoryLimit int
}

// Configurable is a Store whose settings live in the store itself
// (`xplock config`).
type Configurable interface {
	// Settings reads the store's settings.
	Settings(ctx context.Context) (Settings, error)
	// SetHistoryLimit sets how many events are kept per key (n > 0); the
	// excess is pruned as each key's history next grows.
	SetHistoryLimit(ctx context.Context, n int) error
}
