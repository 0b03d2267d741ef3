package lock

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"
)

// DefaultTTL is the lease length of a Lock whose Options give none. The
// guard renews it in the background, so it only bounds how long a crashed
// holder keeps others waiting.
const DefaultTTL = 10 * time.Second

// Waiting. A waiter sleeps on the holder's socket once the holder greeted
// it as the tenure's; until then (a socket that does not greet soon, or
// none), on the store's changes, and on the exit of the processes that keep
// the tenure alive. Either way it also looks at the key in the store every
// lookEvery, so that a change nobody tells it of (a break of a stopped
// holder, an expiry, a release by name) wakes it within a second. It tries
// to take the lock only once a look shows a change: a wake-up that changed
// nothing costs a read, never a write. A socket that keeps waking it for
// nothing is dialled again only after a backoff, from minBackoff to
// maxBackoff, which restarts on every call.
const (
	lookEvery  = 400 * time.Millisecond
	minBackoff = 2 * time.Millisecond
	maxBackoff = 500 * time.Millisecond
)

// After a holder's socket hangs up with its tenure still standing, the
// waiter looks (a read) every minRecheck for tightRechecks looks, then at
// doubling pauses: see waiter.wait.
const (
	minRecheck    = time.Millisecond
	tightRechecks = 5
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
	// has to stop before anyone else can take the lock. When zero, each
	// Guard takes DefaultGrace of the lease it holds (a re-entrant
	// acquisition may keep a shorter tenure TTL). Grace plus DriftMargin(TTL)
	// must be shorter than TTL.
	Grace time.Duration
	// Shared takes the lock as a reader: any number of shared holders may
	// hold it at once, never beside an exclusive one.
	Shared bool
	// Slots, when above zero, caps the shared holders at Slots at once (a
	// counting semaphore) and implies Shared. Every shared holder of a key
	// must name the same limit: another one fails with a *ConflictError.
	Slots int
}

// Lock is one holder's handle on one named lock in a Store. It is safe for
// concurrent use; concurrent processes must use different holders.
//
// A Lock counts the guards it gave out that are still live: an acquisition
// while another guard of the same Lock is live joins that guard's tenure,
// and the tenure ends in the store only when the last of them is released
// (see Guard). Two Locks with the same key and holder, in one process or
// two, do not count each other's guards: their acquisitions share a tenure
// too (re-entrant ones), and releasing either ends it for both.
type Lock struct {
	store  Store
	key    string
	holder string
	opts   Options

	// turn is taken around each acquisition's store call and the release
	// that ends a tenure, so that a guard never joins a tenure that is
	// being ended in the store.
	turn chan struct{}
	mu   sync.Mutex
	// live is the tenure of the Lock's live guards; nil or ended when
	// there are none.
	live *tenure
}

// takeTurn waits for the Lock's turn, or until ctx ends.
func (l *Lock) takeTurn(ctx context.Context) error {
	select {
	case l.turn <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l *Lock) giveTurn() { <-l.turn }

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
		// Left at zero: each Guard takes DefaultGrace of the lease it
		// holds, which a re-entrant acquisition keeping its tenure's TTL
		// may make shorter than TTL.
	case opts.Grace >= opts.TTL-DriftMargin(opts.TTL):
		return nil, fmt.Errorf("grace %s plus the clock-drift margin (%s) must be shorter than the TTL %s: use a TTL of at least %s",
			opts.Grace, DriftMargin(opts.TTL), opts.TTL, MinTTL(opts.Grace))
	}
	if opts.Slots < 0 {
		return nil, fmt.Errorf("slots must be 1 or more (got %d): the number of shared holders admitted at once", opts.Slots)
	}
	return &Lock{store: store, key: key, holder: holder, opts: opts, turn: make(chan struct{}, 1)}, nil
}

// mode is how the Lock's acquisitions hold the key.
func (o Options) mode() Mode {
	if o.Shared || o.Slots > 0 {
		return ModeShared
	}
	return ModeExclusive
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
// *PoisonError, and the release of a tenure taken only by unchecked
// acquisitions acknowledges nothing. The guard's Poisoned still tells the
// truth.
func (l *Lock) LockUnchecked(ctx context.Context) (*Guard, error) {
	return l.Acquire(ctx, AcquireOptions{Unchecked: true})
}

// TryLock is Lock without waiting: a lock held by another holder (in a
// conflicting mode, or with its slots full) gives a *BusyError at once.
//
// Lock, LockUnchecked and TryLock return a *ConflictError at once, without
// waiting, when the key can never grant the request as asked: another slot
// limit is in force (errors.Is ErrSlotLimit), or this holder holds the key
// in the other mode (ErrModeConflict).
func (l *Lock) TryLock(ctx context.Context) (*Guard, error) {
	return l.Acquire(ctx, AcquireOptions{NoWait: true})
}

// AcquireOptions choose how Acquire behaves.
type AcquireOptions struct {
	Unchecked bool
	NoWait    bool
	// OnWait, when set, is called with the holder's state before each wait.
	OnWait func(current State, now time.Time)
	// Keepers are the processes whose death ends the tenure at once (see
	// Keeper). When nil, a renewing Lock records this process (Self) and a
	// NoRenew one none: its tenure outlives it, until its lease ends.
	Keepers []Keeper
}

// Acquire is the general form of Lock, LockUnchecked and TryLock.
//
// An acquisition that waits joins the key's queue in the store and is
// served in arrival order. It keeps its place by trying again at least
// every DefaultWaitLease/3, which renews its entry's waiting lease, and
// leaves the queue at once when ctx ends. Its entry is kept alive by this
// process (Self), whatever keeps the tenure: a waiter that dies is skipped
// as soon as another process in its boot and PID namespace proves it gone,
// and stops blocking the queue within DefaultWaitLease wherever it cannot
// be proved.
func (l *Lock) Acquire(ctx context.Context, opts AcquireOptions) (*Guard, error) {
	req := AcquireRequest{
		Key: l.key, Holder: l.holder, TTL: l.opts.TTL,
		KeepTenureTTL: l.opts.KeepTenureTTL, Checked: !opts.Unchecked, Keepers: opts.Keepers,
		Mode: l.opts.mode(), Slots: l.opts.Slots,
		Wait: !opts.NoWait, WaitLease: DefaultWaitLease,
	}
	if self, err := Self(); err == nil {
		if req.Keepers == nil && !l.opts.NoRenew {
			req.Keepers = []Keeper{self}
		}
		// This process waits and renews the queue entry, even when
		// nothing will keep the tenure alive.
		req.WaitKeepers = []Keeper{self}
	}
	// w is set up once the lock is found taken: most acquisitions find it
	// free.
	var w *waiter
	// current is the holder as last seen, for the BusyError when ctx ends;
	// ahead is how many were queued ahead of this request then.
	current, ahead := State{Key: l.key}, 0
	for {
		if err := l.takeTurn(ctx); err != nil {
			l.leaveQueue(ctx, req)
			return nil, &BusyError{Current: current, Ahead: ahead, Err: err}
		}
		sent := time.Now() // the guard's lease is counted from here
		grant, err := l.store.Acquire(ctx, req)
		var g *Guard
		if err == nil && grant.Acquired {
			g = l.join(grant, sent)
		}
		l.giveTurn()
		if err != nil {
			if ctxErr := ctx.Err(); ctxErr != nil {
				// The wait ran out during a try. Stores finish a decision
				// they have begun whatever ctx does, so an error when ctx
				// ended means nothing was decided: not acquired.
				l.leaveQueue(ctx, req)
				return nil, &BusyError{Current: current, Ahead: ahead, Err: ctxErr}
			}
			// A store that failed would fail the leave too: the entry
			// lapses with its waiting lease.
			return nil, err
		}
		if g != nil {
			if grant.Poisoned && !opts.Unchecked {
				return g, &PoisonError{Guard: g, Acknowledged: grant.Acknowledged}
			}
			return g, nil
		}
		current, ahead = grant.Current, grant.Ahead
		if opts.NoWait {
			return nil, &BusyError{Current: current, Ahead: ahead}
		}
		// Keep the place: the next try names the entry, and a waiter whose
		// entry lapsed rejoins at the tail still counting from its arrival.
		req.Seq, req.QueuedSince = grant.Seq, grant.QueuedSince
		if w == nil {
			w = &waiter{lock: l, onWait: opts.OnWait, backoff: minBackoff, mode: req.mode(), slots: req.Slots}
			defer w.stop()
		}
		renewBy := sent.Add(req.WaitLease / 3)
		if err := w.wait(ctx, grant.Current, grant.Now, renewBy); err != nil {
			l.leaveQueue(ctx, req)
			var busy *BusyError
			if errors.As(err, &busy) {
				busy.Ahead = ahead
			}
			return nil, err
		}
	}
}

// leaveBound bounds the request that takes a waiter that gave up out of
// the queue, sent even though the caller's ctx has ended: short, since the
// caller's wait is over, and an entry left behind lapses anyway.
const leaveBound = 250 * time.Millisecond

// QueueLeaver is a Store whose waiters can leave the key's queue at once.
// A waiter in a store without it leaves when its waiting lease lapses.
type QueueLeaver interface {
	LeaveQueue(ctx context.Context, req LeaveQueueRequest) error
}

// leaveQueue takes req's entry, if it has one, out of the queue: a waiter
// that gave up must not keep the ones behind it waiting.
func (l *Lock) leaveQueue(ctx context.Context, req AcquireRequest) {
	q, ok := l.store.(QueueLeaver)
	if !ok || req.Seq == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), leaveBound)
	defer cancel()
	// An entry that could not be removed lapses within its waiting lease.
	_ = q.LeaveQueue(ctx, LeaveQueueRequest{Key: l.key, Holder: l.holder, Seq: req.Seq})
}

// waiter is one Acquire call's wait for its turn.
type waiter struct {
	lock   *Lock
	onWait func(State, time.Time)
	// mode and slots are the request's, to judge when its turn comes.
	mode  Mode
	slots int

	// nextLook is when the waiter looks at the store next however quiet
	// everything is; lookedAt is when it last looked.
	nextLook, lookedAt time.Time
	// conn is the connection to the current holder's socket, when there is
	// one to sleep on.
	conn *beaconConn
	// tenure is the token of the tenure waited on; noBeacon is set when it
	// has no socket to sleep on (a detached holder, or one that does not
	// answer), and the waiter sleeps on the store's changes instead.
	tenure   int64
	noBeacon bool
	// dialAfter: no dialling before then (a young holder may not listen
	// yet; a socket that woke the waiter for nothing is left alone for a
	// backoff). dialPause is the next pause for a young tenure.
	dialAfter time.Time
	dialPause time.Duration
	// backoff is the pause after a wake-up by a socket that changed nothing.
	backoff time.Duration
	// recheck, when not zero, is the pause before the next look after the
	// holder's socket hung up without a change; it doubles up to lookEvery.
	// After the tenure's first hang-up (hungUp was false) it stays at
	// minRecheck for tightRechecks looks first.
	recheck  time.Duration
	rechecks int
	hungUp   bool

	// changes is subscribed to only while no socket has greeted the
	// waiter for the tenure: a subscription costs a store connection, a
	// file watch, goroutines and a wake-up at every change.
	changes     <-chan struct{}
	unsubscribe context.CancelFunc
	timer       *time.Timer
	// exits receives a value when a process keeping the tenure alive
	// exits (see watchKeepers), while no socket would tell of its death;
	// unwatch ends the watch.
	exits   <-chan struct{}
	unwatch func()
}

// wake is what ended a waiter's sleep.
type wake int

const (
	wakeLook   wake = iota // a look is due, or the lease ended
	wakeAgain              // nothing to look at yet: sleep again (a dial may be due)
	wakeStore              // the store changed
	wakeSocket             // the holder's socket hung up (or greeted as a later tenure)
	wakeKeeper             // a process keeping the tenure alive exited
)

// wait returns once a look at the store shows that the request may be
// granted (its turn came: the holders and the waiters ahead of it let it
// in, or its queue entry lapsed and it must rejoin), or at renewBy, when
// the request must be sent again to keep its place in the queue. current
// is the key as the last try saw it, at the store's time now. Until then
// it sleeps on the holder's socket, or on the store's changes when there
// is none, and looks when woken, at the lease's end and every lookEvery.
func (w *waiter) wait(ctx context.Context, current State, now, renewBy time.Time) error {
	if w.onWait != nil {
		w.onWait(current, now)
	}
	w.lookedAt = time.Now()
	w.nextLook = earliest(w.lookedAt.Add(lookEvery), renewBy)
	for {
		woken, err := w.sleep(ctx, current, now)
		if err != nil {
			return &BusyError{Current: current, Err: err}
		}
		if woken == wakeAgain {
			continue
		}
		if !time.Now().Before(renewBy) {
			return nil // trying again renews the place in the queue
		}
		snap, err := w.lock.store.Snapshot(ctx, w.lock.key)
		w.lookedAt = time.Now()
		w.nextLook = earliest(w.lookedAt.Add(lookEvery), renewBy)
		switch {
		case ctx.Err() != nil:
			return &BusyError{Current: current, Err: ctx.Err()}
		case err != nil || len(snap.Locks) == 0:
			return nil // let the try report what is wrong
		case w.mayBeGranted(snap.Locks[0]) && !sameLine(current, snap.Locks[0]):
			// (On the very state the last try was refused on, it may not:
			// another process of the same holder is queued ahead.)
			return nil
		}
		was := current
		current, now = snap.Locks[0], snap.Now
		if woken == wakeLook {
			// A holder that was slow to listen may listen by now.
			w.noBeacon = false
		}
		if woken == wakeSocket {
			// The socket has said all it will: the holder let go (another
			// waiter's turn) or it woke the waiter for nothing. Only the
			// latter is backed off from, so that a waiter further back
			// dials the next holder at once.
			w.dropConn()
			w.dialAfter = time.Now()
			if !changed(was, current) {
				w.dialAfter = w.dialAfter.Add(w.backoff + rand.N(w.backoff/2+1))
				w.recheck, w.rechecks = w.backoff, tightRechecks
				if !w.hungUp {
					w.recheck, w.rechecks, w.hungUp = minRecheck, 0, true
				}
				w.backoff = min(2*w.backoff, maxBackoff)
			}
		}
		if woken == wakeKeeper && !changed(was, current) {
			// A process keeping the tenure alive exited, yet the tenure
			// stands: the rest of its group may end a moment after it.
			w.recheck, w.rechecks = minRecheck, 0
		}
		if w.recheck > 0 {
			// The holder hung up, yet its tenure stands: a dead holder is
			// proved dead once its last process is gone, which no socket
			// tells of (its group's other processes die a moment after it).
			// Look again soon: every minRecheck for a few looks, as a
			// death is proved within milliseconds, then at growing pauses.
			// A socket that hangs up again (a squatter, not a dead
			// holder, which hangs up once) gets the growing pauses alone.
			w.nextLook = earliest(w.nextLook, w.lookedAt.Add(w.recheck))
			if w.rechecks++; w.rechecks >= tightRechecks {
				w.recheck *= 2
			}
			if w.recheck >= lookEvery {
				w.recheck = 0
			}
		}
	}
}

// changed reports whether the key's state now differs from the one a
// waiter waited on in a way that may let it in.
func changed(was, now State) bool {
	// A reader leaving frees a slot without changing the key's token.
	return now.State != StateHeld || now.Token != was.Token || len(now.Holders) < len(was.Holders)
}

// sameLine reports whether a and b show the same holders and the same
// queue.
func sameLine(a, b State) bool {
	return a.State == b.State && a.Token == b.Token &&
		slices.EqualFunc(a.Holders, b.Holders, func(x, y HolderState) bool { return x.Token == y.Token }) &&
		slices.EqualFunc(a.Waiters, b.Waiters, func(x, y WaiterState) bool { return x.Holder == y.Holder && x.Since.Equal(y.Since) })
}

// mayBeGranted reports whether the waiter's request may be granted on the
// key as s shows it, judged as Decide judges it: by the live holders and
// the requests queued ahead of the waiter's entry. A waiter whose entry is
// not in the queue (it lapsed) must try at once to rejoin.
func (w *waiter) mayBeGranted(s State) bool {
	i := slices.IndexFunc(s.Waiters, func(q WaiterState) bool { return q.Holder == w.lock.holder })
	if i < 0 {
		return true
	}
	var k KeyState
	for _, h := range s.Holders {
		k.Tenures = append(k.Tenures, Tenure{Holder: h.Holder, Mode: h.Mode})
	}
	ahead := make([]QueueEntry, i)
	for j, q := range s.Waiters[:i] {
		ahead[j] = QueueEntry{Holder: q.Holder, Mode: q.Mode}
	}
	return k.grantable(w.mode, w.slots, ahead)
}

// sleep blocks until something may have changed or a look or a dial is due.
func (w *waiter) sleep(ctx context.Context, current State, now time.Time) (wake, error) {
	if w.tenure != current.Token {
		w.tenure, w.noBeacon, w.dialPause, w.hungUp = current.Token, false, minDialPause, false
		w.dropConn()
		w.stopWatch()
	}
	if w.conn == nil && !w.noBeacon && !time.Now().Before(w.dialAfter) {
		w.dial(ctx, current, now)
	}
	if w.unwatch == nil && (w.hungUp || w.unheard()) {
		// No socket will tell of the death of a process keeping the tenure
		// alive: it has hung up already, or none answers for the tenure.
		w.exits, w.unwatch = watchKeepers(current.Holders)
	}
	until := w.nextLook
	if !current.ExpiresAt.IsZero() {
		until = earliest(until, time.Now().Add(current.ExpiresAt.Sub(now)+time.Millisecond))
	}
	// Only a socket that greeted as this tenure's holder tells of every
	// change. Until one has, the store's changes wake the waiter too: a
	// stopped process whose tenure is over may still listen at the key's
	// endpoint, and it never greets nor hangs up.
	if w.changes == nil && w.unheard() {
		subCtx, cancel := context.WithCancel(ctx)
		changes, err := w.lock.store.Subscribe(subCtx)
		if err != nil {
			cancel()
			if ctx.Err() != nil {
				return 0, ctx.Err()
			}
		} else {
			w.changes, w.unsubscribe = changes, cancel
			// Look before sleeping: a release between the last look and
			// the subscription would otherwise go unnoticed.
			return wakeStore, nil
		}
	}
	woken := wakeLook
	if w.conn == nil && !w.noBeacon && w.dialAfter.Before(until) {
		until, woken = w.dialAfter, wakeAgain
	}
	d := time.Until(until)
	if d <= 0 {
		return woken, ctx.Err()
	}
	if w.timer == nil {
		w.timer = time.NewTimer(d)
	} else {
		w.timer.Reset(d)
	}
	defer w.timer.Stop()
	var events <-chan beaconEvent
	if w.conn != nil {
		events = w.conn.events
	}
	select {
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-w.changes:
		return wakeStore, nil
	case <-w.exits:
		return wakeKeeper, nil
	case <-w.timer.C:
		return woken, nil
	case ev := <-events:
		switch ev {
		case beaconSlow:
			w.conn.slow = true
		case beaconGreeted:
			// The holder will hang up when it lets go.
			w.unsubscribeChanges()
		case beaconWoke:
			return wakeSocket, nil
		case beaconStale:
			// The socket is not (or no longer) this tenure's.
			w.dropConn()
			w.retryOrGiveUp(current, now)
		}
		return wakeAgain, nil
	}
}

// unheard reports whether the waiter has no socket to tell it of the
// tenure's end: none answers, or the one it dialled has not greeted soon.
func (w *waiter) unheard() bool {
	return w.noBeacon || w.conn != nil && w.conn.slow
}

// dial connects to the current holder's socket, or notes when to try
// again, or that there is none to sleep on.
func (w *waiter) dial(ctx context.Context, current State, now time.Time) {
	r, ok := w.lock.store.(Rendezvous)
	if !ok || !rendezvousSupported {
		w.noBeacon = true
		return
	}
	e, err := r.RendezvousEndpoint(w.lock.key)
	if err != nil {
		w.noBeacon = true
		return
	}
	c, err := dialEndpoint(ctx, e)
	switch {
	case err == nil:
		// A subscription is kept until the socket greets.
		w.conn = newBeaconConn(c, current.Token)
	case errors.Is(err, errNoEndpoint):
		w.retryOrGiveUp(current, now)
	default:
		w.noBeacon = true
	}
}

// retryOrGiveUp: nobody answers for the current tenure (read at the store's
// time now). A young one's holder may not listen yet (see beaconDelay): the
// waiter looks again and dials again soon, as the holder may also have let
// go already. An older one has no socket.
func (w *waiter) retryOrGiveUp(current State, now time.Time) {
	if now.Sub(current.Since)+time.Since(w.lookedAt) >= youngTenure {
		w.noBeacon = true
		return
	}
	w.dialAfter = time.Now().Add(w.dialPause)
	w.nextLook = earliest(w.nextLook, w.dialAfter)
	w.dialPause = min(2*w.dialPause, maxDialPause)
}

func (w *waiter) dropConn() {
	if w.conn != nil {
		w.conn.close()
		w.conn = nil
	}
}

func (w *waiter) unsubscribeChanges() {
	if w.unsubscribe != nil {
		w.unsubscribe()
		w.changes, w.unsubscribe = nil, nil
	}
}

func (w *waiter) stopWatch() {
	if w.unwatch != nil {
		w.unwatch()
		w.exits, w.unwatch = nil, nil
	}
}

func (w *waiter) stop() {
	w.dropConn()
	w.stopWatch()
	w.unsubscribeChanges()
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
