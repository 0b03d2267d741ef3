package cmd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/xplock/xplock/lock"
)

// eventState is the `event` of watch's opening lines.
const eventState = "state"

// Human output's narrowest key and holder columns; they widen for the
// opening keys and for longer names as they appear.
const (
	minKeyWidth    = 10
	minHolderWidth = 8
)

// watchPage is how many events one EventsAfter call reads.
const watchPage = 512

// settleLooks are the extra looks after a wake-up from the store.
var settleLooks = []time.Duration{5 * time.Millisecond, 50 * time.Millisecond, 500 * time.Millisecond, 2 * time.Second}

type watchOptions struct {
	*globalOptions
	// Keys are the watched keys, in the order given; none means all.
	Keys    []string
	Until   string
	Count   int
	Timeout time.Duration
	JSON    bool

	countSet, timeoutSet bool
}

func newWatchCmd(g *globalOptions) *cobra.Command {
	opts := &watchOptions{globalOptions: g}
	c := &cobra.Command{
		Use:   "watch [KEY...] [--until free|held] [--count N] [--timeout DURATION]",
		Short: "Follow locks: their state now, then every change as it happens",
		Long: `Print the current state of each KEY (every lock in the store when no KEY
is given; a key never acquired shows as free), then one line per change as
it happens: acquired, released, expired or broken, with time, key, holder,
generation and token. Renewals and re-entrant acquisitions are not changes.

Every change is shown once and in order, however fast changes come. A lease
that runs out is shown as expired within a second of its end, at the
lease's end, even when no process touches the store.

watch runs until interrupted (SIGINT or SIGTERM, exit 0), or:
  --until free   every watched lock is free (or its lease expired): exit 0
  --until held   every watched lock is held: exit 0
  --count N      N changes were shown (the opening lines do not count): exit 0
  --timeout D    D passed first: exit 4
--until is checked against the opening state too.

watch only reads: a store that does not exist yet (or a database without
xplock's tables) shows no locks, and watch waits for it to appear.

A watch that falls so far behind (stopped, say) that history it had not
read yet was pruned says so with a gap line, naming how many changes it
missed, then shows the key's current state and goes on. A gap line does
not count toward --count. When the database file is deleted or replaced,
watch exits 1.`,
		Example: `  xplock watch deploy --until free --timeout 10m
  xplock watch --json | jq -c 'select(.event == "broken")'`,
		ValidArgsFunction: completeKeys(g),
		RunE: func(c *cobra.Command, args []string) error {
			seen := map[string]bool{}
			for _, k := range args {
				if err := lock.ValidateKey(k); err != nil {
					return usageErrorf("%v", err)
				}
				if !seen[k] {
					seen[k] = true
					opts.Keys = append(opts.Keys, k)
				}
			}
			opts.countSet, opts.timeoutSet = c.Flags().Changed("count"), c.Flags().Changed("timeout")
			if err := opts.check(); err != nil {
				return err
			}
			return runWatch(c.Context(), opts)
		},
	}
	f := c.Flags()
	f.StringVar(&opts.Until, "until", "", "exit 0 once every watched lock is in `STATE`: free (expired counts) or held")
	if err := c.RegisterFlagCompletionFunc("until", cobra.FixedCompletions(
		[]string{lock.StateFree, lock.StateHeld}, cobra.ShellCompDirectiveNoFileComp)); err != nil {
		panic(err) // only a programming mistake: the flag was just registered
	}
	f.IntVar(&opts.Count, "count", 0, "exit 0 after `N` changes (opening lines do not count)")
	f.DurationVar(&opts.Timeout, "timeout", 0, "exit 4 if still watching after this long")
	f.BoolVar(&opts.JSON, "json", false, "print one JSON object per line")
	return c
}

func (o *watchOptions) check() error {
	switch o.Until {
	case "", lock.StateFree, lock.StateHeld:
	default:
		return usageErrorf("--until %q: give --until free (wait until no watched lock is held) or --until held (wait until every watched lock is held)", o.Until)
	}
	if o.countSet && o.Count < 1 {
		return usageErrorf("--count must be 1 or more: the number of changes to show before exiting (leave it out to watch until interrupted)")
	}
	if o.timeoutSet {
		if err := positiveDuration("timeout", o.Timeout); err != nil {
			return err
		}
	}
	return nil
}

var errWatchTimeout = errors.New("watch timed out")

func runWatch(ctx context.Context, opts *watchOptions) error {
	// The timeout runs from the start but never cuts off the opening lines:
	// a slow start on a loaded machine still shows the state it timed out on.
	following := ctx
	if opts.timeoutSet {
		var cancel context.CancelFunc
		following, cancel = context.WithTimeoutCause(ctx, opts.Timeout, errWatchTimeout)
		defer cancel()
	}
	w := &watcher{opts: opts, keys: map[string]*watchedKey{}, color: useColor(opts),
		keyWidth: minKeyWidth, holderWidth: minHolderWidth}
	err := w.run(ctx, following)
	switch {
	case err == nil:
		return nil
	case errors.Is(context.Cause(following), errWatchTimeout):
		return &exitError{code: exitBusy, err: w.timeoutError()}
	case ctx.Err() != nil:
		return nil // SIGINT or SIGTERM: a watch ends by being interrupted
	}
	return err
}

// useColor is true when stdout is a terminal and NO_COLOR is not set.
func useColor(opts *watchOptions) bool {
	return !opts.JSON && os.Getenv("NO_COLOR") == "" && isTerminal(opts.Out)
}

// watcher follows the watched keys through the store's events.
type watcher struct {
	opts  *watchOptions
	store lock.Store
	color bool

	// order lists the watched keys as shown; keys tracks each one's state as
	// of the last line printed.
	order []string
	keys  map[string]*watchedKey
	// cursor is the newest event already accounted for.
	cursor int64
	// shown counts the change lines printed.
	shown int
	// wake is when the earliest watched lease ends (zero: none held).
	wake time.Time
	// snap is the latest look's snapshot, which a gap line's state line
	// shows.
	snap lock.Snapshot
	// modes are the modes of the tenures live in snap, by key and token.
	modes map[string]map[int64]lock.Mode

	keyWidth, holderWidth int
}

type watchedKey struct {
	lock.State
	// live are the key's live tenures by token, as of the last line
	// printed: one for an exclusive lock, every reader of a shared one.
	live map[int64]lock.HolderState
	// shownExpiries are the tokens of tenures whose expiry was already
	// shown, so that the store's later record of it is not shown again.
	shownExpiries map[int64]bool
	// skipThrough is the cursor up to which the key's events are already
	// summed up by a state line shown after a gap.
	skipThrough int64
}

// Each tenure of a key has a token one above the last tenure's, and two
// events in the key's history: acquired, then one ending event (released,
// expired or broken). So the events of a key have positions, and a watch
// can tell that it missed some: the positions of the last change it showed
// and of the next one it reads are not consecutive when history between
// them was pruned.

// newWatchedKey tracks a key from its state s.
func newWatchedKey(s lock.State) *watchedKey {
	k := &watchedKey{}
	k.reset(s)
	return k
}

// reset makes s the key's tracked state. An expired state is shown as it
// is read: the store records the expiry later, when someone observes it.
func (k *watchedKey) reset(s lock.State) {
	k.State, k.live, k.shownExpiries = s, map[int64]lock.HolderState{}, map[int64]bool{}
	for _, h := range s.Holders {
		k.live[h.Token] = h
	}
	if s.State == lock.StateExpired {
		k.shownExpiries[s.Token] = true
	}
}

// missedBefore is how many of the key's changes before e (of a tenure in
// mode, "" when not known) this watch has not seen (pruned from history
// before it read them), at least: every tenure has a token one above the
// last one's, and an acquired event and one ending event (released,
// expired or broken).
func (k *watchedKey) missedBefore(e lock.Event, mode lock.Mode) int64 {
	if e.Type != lock.EventAcquired {
		if _, ok := k.live[e.Token]; ok || e.Token <= k.Token {
			return 0
		}
		return e.Token - k.Token // its own acquisition, and those between
	}
	missed := max(e.Token-k.Token-1, 0)
	// Modes never overlap: an exclusive tenure's end came before any other
	// acquisition, and every tenure's end before an exclusive one. A
	// tenure whose mode is not known is given the benefit of the doubt.
	for _, h := range k.live {
		if h.Mode == lock.ModeExclusive || mode == lock.ModeExclusive {
			missed++
		}
	}
	return missed
}

// position is where k's state stands in its key's history: -1 before the
// first acquisition.
func (k *watchedKey) position() int64 {
	if k.State.State == lock.StateHeld {
		return 2*k.Token - 2
	}
	return 2*k.Token - 1
}

// storePoll is how often watch looks for a store that does not exist yet.
const storePoll = 250 * time.Millisecond

// fileCheck is how often an idle watch checks that the database file it
// follows is still the one at its path (every look checks it too).
const fileCheck = time.Second

// replaceable is a store whose file can be deleted or replaced under it.
type replaceable interface {
	// Replaced says how the file at the store's path stopped being the
	// store's, or returns nil.
	Replaced() error
}

// run shows the opening state under ctx, then follows changes until
// following ends.
func (w *watcher) run(ctx, following context.Context) error {
	missing, err := w.open(ctx)
	if err != nil {
		return err
	}
	defer func() { w.store.Close() }()
	// Subscribe before the first look so that no commit after it goes
	// unnoticed.
	changes, err := w.store.Subscribe(ctx)
	if err != nil {
		return err
	}
	if done, err := w.opening(ctx); done || err != nil {
		return err
	}
	if missing {
		if changes, err = w.awaitStore(following); err != nil {
			return err
		}
		if done, err := w.look(following); done || err != nil {
			return err
		}
	}
	file, _ := w.store.(replaceable)
	nextCheck := time.Now().Add(fileCheck)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	// SQLite wakes subscribers when the WAL file is written, which can be a
	// moment before the commit is visible to readers; a few looks after each
	// wake-up make sure that a commit is seen even when it was the last one.
	var settle []time.Time
	for {
		next := w.wake
		if len(settle) > 0 && (next.IsZero() || settle[0].Before(next)) {
			next = settle[0]
		}
		if file != nil && (next.IsZero() || nextCheck.Before(next)) {
			next = nextCheck
		}
		timer.Stop()
		if !next.IsZero() {
			timer.Reset(max(time.Until(next), 0))
		}
		select {
		case <-following.Done():
			return following.Err()
		case <-changes:
			now := time.Now()
			settle = settle[:0]
			for _, d := range settleLooks {
				settle = append(settle, now.Add(d))
			}
		case now := <-timer.C:
			lookDue := !w.wake.IsZero() && !w.wake.After(now)
			for len(settle) > 0 && !settle[0].After(now) {
				settle, lookDue = settle[1:], true
			}
			if file != nil && !nextCheck.After(now) {
				// A deleted file sends no event: check it now and then.
				nextCheck = now.Add(fileCheck)
				if err := file.Replaced(); err != nil {
					return replacedError(err)
				}
			}
			if !lookDue {
				continue
			}
		}
		if done, err := w.look(following); done || err != nil {
			return err
		}
	}
}

// replacedError says that watch stopped because its file went away.
func replacedError(err error) error {
	return fmt.Errorf("%w; stopped watching it (start watch again to follow the file now at that path)", err)
}

// open opens the store read-only. A store that does not exist yet reads as
// one without locks until it appears (see awaitStore): watch never creates
// one.
func (w *watcher) open(ctx context.Context) (missing bool, err error) {
	store, err := w.opts.openStore(ctx, storeWatch)
	if errors.Is(err, errNoStore) {
		fmt.Fprintf(w.opts.Err, "xplock: no lock store at %s yet; watching for it to appear\n", w.opts.dbLocation())
		w.store = absentStore{}
		return true, nil
	}
	if err != nil {
		return false, err
	}
	w.store = store
	return false, nil
}

// awaitStore waits for a missing store to appear, opens it and subscribes
// to its changes. Every change in it is news: the cursor is still 0.
func (w *watcher) awaitStore(ctx context.Context) (<-chan struct{}, error) {
	ticker := time.NewTicker(storePoll)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-ticker.C:
		}
		store, err := w.opts.openStore(ctx, storeWatch)
		if errors.Is(err, errNoStore) {
			continue
		}
		if err != nil {
			return nil, err
		}
		w.store = store
		return store.Subscribe(ctx)
	}
}

// opening prints the state of each watched key and sets the cursor: changes
// from before it are not shown.
func (w *watcher) opening(ctx context.Context) (bool, error) {
	snap, err := w.store.Snapshot(ctx, w.opts.Keys...)
	if err != nil {
		return false, err
	}
	w.cursor = snap.Cursor
	found := map[string]lock.State{}
	for _, s := range snap.Locks {
		found[s.Key] = s
		if len(w.opts.Keys) == 0 {
			w.order = append(w.order, s.Key)
		}
	}
	if len(w.opts.Keys) > 0 {
		w.order = w.opts.Keys
	}
	for _, k := range w.order {
		s, ok := found[k]
		if !ok {
			s = lock.State{Key: k, State: lock.StateFree}
		}
		w.keyWidth = max(w.keyWidth, width(k))
		w.holderWidth = max(w.holderWidth, width(s.Holder))
		w.keys[k] = newWatchedKey(s)
	}
	for _, k := range w.order {
		if err := w.printState(w.keys[k].State, snap.Now); err != nil {
			return false, err
		}
	}
	w.rearm(snap)
	return w.untilHolds(), nil
}

// look reads what changed since the cursor: the store's events, then the
// leases that ran out with nobody writing. It reports whether watch is done.
func (w *watcher) look(ctx context.Context) (bool, error) {
	if r, ok := w.store.(replaceable); ok {
		if err := r.Replaced(); err != nil {
			return false, replacedError(err)
		}
	}
	// The snapshot and its cursor are one consistent read: every event up
	// to the cursor is reflected in the states, none after it.
	snap, err := w.store.Snapshot(ctx, w.opts.Keys...)
	if err != nil {
		return false, err
	}
	w.snap = snap
	w.modes = liveModes(snap)
	for w.cursor < snap.Cursor {
		events, err := w.store.EventsAfter(ctx, w.cursor, w.opts.Keys, watchPage)
		if err != nil {
			return false, err
		}
		last := len(events) < watchPage
		for _, e := range events {
			if e.ID > snap.Cursor {
				// Not in the snapshot yet: the next look takes it.
				last = true
				break
			}
			w.cursor = e.ID
			if done, err := w.event(e); done || err != nil {
				return done, err
			}
		}
		if last {
			// The rest up to the snapshot's cursor concern other keys.
			w.cursor = snap.Cursor
		}
	}
	for _, s := range snap.Locks {
		k := w.keys[s.Key]
		if k == nil || k.State.State != lock.StateHeld || k.Token != s.Token {
			continue
		}
		if done, err := w.unseenExpiries(k, s); done || err != nil {
			return done, err
		}
	}
	w.rearm(snap)
	return false, nil
}

// liveModes returns the modes of the tenures live in snap, by key and
// token. An event line shows the mode the store recorded with the event;
// where it recorded none, watch still needs the mode to track the key (an
// acquisition beside live readers is no sign of a missed change when both
// are readers), and the snapshot knows it for tenures still live.
func liveModes(snap lock.Snapshot) map[string]map[int64]lock.Mode {
	modes := map[string]map[int64]lock.Mode{}
	for _, s := range snap.Locks {
		for _, h := range s.Holders {
			if modes[s.Key] == nil {
				modes[s.Key] = map[int64]lock.Mode{}
			}
			modes[s.Key][h.Token] = h.Mode
		}
	}
	return modes
}

// unseenExpiries compares the key's tracked live tenures with its state s in
// a snapshot that reflects every event already read: a tenure no longer
// live there ran out (or its holder was proved dead) and nobody has written
// since. Its expiry is shown now, at the lease's end. It reports whether
// watch is done.
func (w *watcher) unseenExpiries(k *watchedKey, s lock.State) (bool, error) {
	still := map[int64]bool{}
	for _, h := range s.Holders {
		still[h.Token] = true
		if t, ok := k.live[h.Token]; ok {
			t.ExpiresAt = h.ExpiresAt // renewals are not events
			k.live[h.Token] = t
		}
	}
	if s.State == lock.StateHeld {
		k.ExpiresAt = s.ExpiresAt
	}
	var ended []lock.HolderState
	for token, t := range k.live {
		if !still[token] {
			if s.State == lock.StateExpired && len(k.live) == 1 {
				t.ExpiresAt = s.ExpiresAt // the end the store judged
			}
			ended = append(ended, t)
		}
	}
	slices.SortFunc(ended, func(a, b lock.HolderState) int { return a.ExpiresAt.Compare(b.ExpiresAt) })
	for _, t := range ended {
		e := lock.Event{Key: s.Key, Type: lock.EventExpired, Holder: t.Holder, Mode: t.Mode,
			Generation: s.Generation, Token: t.Token, Time: t.ExpiresAt}
		if done, err := w.event(e); done || err != nil {
			return done, err
		}
	}
	return false, nil
}

// event shows one change and tracks the key's state; it reports whether
// watch is done.
func (w *watcher) event(e lock.Event) (bool, error) {
	k := w.keys[e.Key]
	if k == nil {
		if len(w.opts.Keys) > 0 {
			return false, nil
		}
		k = newWatchedKey(lock.State{Key: e.Key})
		w.keys[e.Key] = k
		w.order = append(w.order, e.Key)
	}
	if e.Type == lock.EventExpired && k.shownExpiries[e.Token] || e.ID != 0 && e.ID <= k.skipThrough {
		delete(k.shownExpiries, e.Token)
		return false, nil // already shown when the lease ran out, or summed up after a gap
	}
	mode := e.Mode // as the store recorded it, else as far as watch knows
	if mode == "" {
		mode = w.modes[e.Key][e.Token]
	}
	if mode == "" {
		mode = k.live[e.Token].Mode
	}
	if missed := k.missedBefore(e, mode); missed > 0 {
		return w.gap(k, missed)
	}
	k.Generation, k.Token = e.Generation, max(k.Token, e.Token)
	if mode != lock.ModeShared {
		k.Holder = e.Holder // the holder the generation counts
	}
	switch e.Type {
	case lock.EventAcquired:
		k.live[e.Token] = lock.HolderState{Holder: e.Holder, Mode: mode, Token: e.Token, Since: e.Time}
		if len(k.live) == 1 {
			k.Since = e.Time
		}
		k.State.State, k.Mode = lock.StateHeld, mode
	default:
		delete(k.live, e.Token)
		if e.Type == lock.EventExpired {
			k.shownExpiries[e.Token] = true
		}
		if len(k.live) == 0 {
			k.State.State, k.Since, k.ExpiresAt = lock.StateFree, e.Time, time.Time{}
			if e.Type == lock.EventExpired {
				k.State.State = lock.StateExpired
			}
		}
	}
	if err := w.print(e, nil); err != nil {
		return false, err
	}
	w.shown++
	return (w.opts.countSet && w.shown >= w.opts.Count) || w.untilHolds(), nil
}

// gap says that history of k's key was pruned before this watch read it,
// then shows the key's state as of the latest look, which sums up the
// changes up to that look's cursor. It reports whether watch is done.
func (w *watcher) gap(k *watchedKey, missed int64) (bool, error) {
	now := lock.State{Key: k.Key, State: lock.StateFree}
	for _, s := range w.snap.Locks {
		if s.Key == k.Key {
			now = s
		}
	}
	// The changes between the last one shown and the state now.
	missed = max(missed, (&watchedKey{State: now}).position()-k.position())
	fmt.Fprintf(w.opts.Err, "xplock: watch fell behind on %s: %d changes were pruned from the store's history before they could be shown (see xplock config); its current state follows\n",
		k.Key, missed)
	at := w.snap.Now
	if err := w.printGap(k.Key, missed, at); err != nil {
		return false, err
	}
	k.reset(now)
	k.skipThrough = w.snap.Cursor
	if err := w.printState(now, at); err != nil {
		return false, err
	}
	return w.untilHolds(), nil
}

// rearm sets the wake-up for the earliest end of a watched lease, in local
// time from the store's clock at snap.
func (w *watcher) rearm(snap lock.Snapshot) {
	var earliest time.Time
	for _, k := range w.keys {
		for _, t := range k.live {
			if !t.ExpiresAt.IsZero() && (earliest.IsZero() || t.ExpiresAt.Before(earliest)) {
				earliest = t.ExpiresAt
			}
		}
	}
	w.wake = time.Time{}
	if !earliest.IsZero() {
		// A lease is live while now < its end: wake just after, or sooner
		// to look for a holder that died, which nobody writes to the
		// store: a look proves it.
		w.wake = time.Now().Add(min(earliest.Sub(snap.Now)+time.Millisecond, deathLook))
	}
}

// deathLook is how often watch looks at keys that are held, so that a
// holder proved dead shows within about that long.
const deathLook = time.Second

// untilHolds reports whether every watched key is in --until's state.
func (w *watcher) untilHolds() bool {
	if w.opts.Until == "" {
		return false
	}
	if len(w.order) == 0 {
		return w.opts.Until == lock.StateFree // no locks at all: none is held
	}
	for _, k := range w.order {
		held := w.keys[k].State.State == lock.StateHeld
		if held != (w.opts.Until == lock.StateHeld) {
			return false
		}
	}
	return true
}

func (w *watcher) timeoutError() error {
	msg := fmt.Sprintf("watch timed out after %s", w.opts.Timeout)
	if w.opts.Until != "" {
		var not []string
		for _, k := range w.order {
			s := w.keys[k].State
			if (s.State == lock.StateHeld) != (w.opts.Until == lock.StateHeld) {
				desc := fmt.Sprintf("%s is %s", k, s.State)
				if s.State == lock.StateHeld {
					desc += fmt.Sprintf(" by %q (generation %d)", s.Holder, s.Generation)
				}
				not = append(not, desc)
			}
		}
		if len(not) == 0 {
			not = []string{"no lock exists yet"}
		}
		msg += fmt.Sprintf(" before --until %s held: %s", w.opts.Until, strings.Join(not, ", "))
	}
	if w.opts.countSet {
		msg += fmt.Sprintf("; saw %d of --count %d changes", w.shown, w.opts.Count)
	}
	return errors.New(msg)
}

// watchLineJSON is one line of `watch --json`: a history event, and for the
// opening lines also the key's state and, while there is one, its lease end.
type watchLineJSON struct {
	eventJSON
	State     *string       `json:"state,omitempty"`
	Slots     int           `json:"slots,omitempty"`
	Holders   *[]tenureJSON `json:"holders,omitempty"` // on state lines only
	ExpiresAt time.Time     `json:"expires_at,omitzero"`
}

// printState writes a line with a key's state s: the opening lines, and
// after a gap. A key never acquired is free as of now.
func (w *watcher) printState(s lock.State, now time.Time) error {
	e := lock.Event{Key: s.Key, Type: eventState, Holder: s.Holder, Mode: s.Mode, Generation: s.Generation,
		Token: s.Token, Time: s.Since}
	if e.Time.IsZero() {
		e.Time = now
	}
	return w.print(e, &s)
}

// print writes one line in a single write, so that it is flushed as it is
// written and lines from one watcher never interleave. A state line (state
// not nil) also shows the key's state.
func (w *watcher) print(e lock.Event, state *lock.State) error {
	if w.opts.JSON {
		line := watchLineJSON{eventJSON: newEventJSON(e)}
		if state != nil {
			j := newLockJSON(*state)
			line.State, line.Slots, line.ExpiresAt = &j.State, j.Slots, j.ExpiresAt
			line.Holders = &j.Holders
		}
		return writeJSON(w.opts.Out, line)
	}
	w.keyWidth = max(w.keyWidth, width(e.Key))
	w.holderWidth = max(w.holderWidth, width(e.Holder))
	holder := e.Holder
	if holder == "" {
		holder = "-"
	}
	var detail string
	switch {
	case state == nil:
		detail = eventDetail(e)
	case state.State == lock.StateHeld && state.Mode == lock.ModeShared:
		detail = heldBy(*state) + ", lease ends " + clock(state.ExpiresAt)
	case state.State == lock.StateHeld:
		detail = "held, lease ends " + clock(state.ExpiresAt)
	case state.State == lock.StateExpired:
		detail = "expired: lease ended " + clock(state.ExpiresAt)
	case e.Generation == 0:
		detail = "free, never acquired"
	default:
		detail = "free"
	}
	line := fmt.Sprintf("%s  %s  %s  %s  gen %-3d  token %-4d  %s",
		clock(e.Time), w.paint(e.Type, pad(e.Type, 8)), pad(e.Key, min(w.keyWidth, 32)),
		pad(holder, min(w.holderWidth, 24)), e.Generation, e.Token, detail)
	_, err := fmt.Fprintln(w.opts.Out, strings.TrimRight(line, " "))
	return err
}

// eventGap is the `event` of the line that says changes were missed.
const eventGap = "gap"

// gapLineJSON is the gap line of `watch --json`.
type gapLineJSON struct {
	Event  string    `json:"event"`
	Key    string    `json:"key"`
	Missed int64     `json:"missed"`
	Time   time.Time `json:"time"`
}

// printGap writes a gap line.
func (w *watcher) printGap(key string, missed int64, at time.Time) error {
	if w.opts.JSON {
		return writeJSON(w.opts.Out, gapLineJSON{Event: eventGap, Key: key, Missed: missed, Time: at.UTC()})
	}
	line := fmt.Sprintf("%s  %s  %s  missed %d changes: pruned from history before they were shown",
		clock(at), w.paint(eventGap, pad(eventGap, 8)), pad(key, min(w.keyWidth, 32)), missed)
	_, err := fmt.Fprintln(w.opts.Out, line)
	return err
}

// ANSI colours of the event column.
var eventColors = map[string]string{
	lock.EventAcquired: "\x1b[32m", // green
	lock.EventReleased: "\x1b[36m", // cyan
	lock.EventExpired:  "\x1b[33m", // yellow
	lock.EventBroken:   "\x1b[1;31m",
	eventState:         "\x1b[2m", // faint
	eventGap:           "\x1b[1;33m",
}

func (w *watcher) paint(event, s string) string {
	if !w.color {
		return s
	}
	return eventColors[event] + s + "\x1b[0m"
}

func width(s string) int { return utf8.RuneCountInString(s) }

// pad left-aligns s in n columns.
func pad(s string, n int) string {
	if w := width(s); w < n {
		return s + strings.Repeat(" ", n-w)
	}
	return s
}
