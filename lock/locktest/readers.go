package locktest

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/xplock/xplock/lock"
)

// Readers and semaphores: shared tenures, slot limits and their refusals.

// share asks for a shared tenure of key for holder under slots (0: no
// limit), checked, with a lease of ttl.
func (c *client) share(key, holder string, slots int, ttl time.Duration) (lock.Grant, error) {
	c.t.Helper()
	return c.s.Acquire(c.ctx, lock.AcquireRequest{Key: key, Holder: holder, TTL: ttl, Checked: true,
		Mode: lock.ModeShared, Slots: slots})
}

// mustShare expects a shared tenure with the given generation and poison.
func (c *client) mustShare(key, holder string, slots int, generation int64, poisoned bool) lock.Grant {
	c.t.Helper()
	return c.mustShareFor(key, holder, slots, generation, poisoned, longTTL)
}

func (c *client) mustShareFor(key, holder string, slots int, generation int64, poisoned bool, ttl time.Duration) lock.Grant {
	c.t.Helper()
	g, err := c.share(key, holder, slots, ttl)
	if err != nil {
		c.t.Fatalf("%s shares %s: %v", holder, key, err)
	}
	if !g.Acquired || g.Mode != lock.ModeShared || g.Slots != slots || g.Generation != generation || g.Poisoned != poisoned {
		c.t.Fatalf("%s shares %s: got acquired=%v mode=%s slots=%d generation=%d poisoned=%v, want acquired shared slots=%d generation=%d poisoned=%v",
			holder, key, g.Acquired, g.Mode, g.Slots, g.Generation, g.Poisoned, slots, generation, poisoned)
	}
	return g
}

// wantConflict expects a *ConflictError matching target, and returns it.
func wantConflict(t *testing.T, g lock.Grant, err error, target error) *lock.ConflictError {
	t.Helper()
	var ce *lock.ConflictError
	if !errors.As(err, &ce) || !errors.Is(err, target) {
		t.Fatalf("got %+v, %v; want a *ConflictError (%v)", g, err, target)
	}
	if g.Acquired {
		t.Fatalf("a refused request was granted: %+v", g)
	}
	return ce
}

// holders lists the holders of a state's live tenures, in order.
func holders(s lock.State) []string {
	var names []string
	for _, h := range s.Holders {
		names = append(names, h.Holder)
	}
	return names
}

// testReadersWorkedExample follows the worked example with readers.
func testReadersWorkedExample(t *testing.T, open Backend) {
	c := newClient(t, open)
	const k = "cache"
	// 1. w is the writer; it acknowledges
	c.mustAcquire(k, "w", true, 1, false)
	c.release(k, "w", true)
	// 2. two readers at once; newcomers are clean
	r1 := c.mustShare(k, "r1", 0, 1, false)
	r2 := c.mustShare(k, "r2", 0, 1, false)
	if r1.Token == r2.Token {
		t.Fatalf("step 2: both readers have token %d: each tenure has its own", r1.Token)
	}
	// 3. w --nowait: held shared by r1 and r2
	g := c.acquire(k, "w", true)
	if g.Acquired || g.Current.State != lock.StateHeld || g.Current.Mode != lock.ModeShared ||
		g.Current.Generation != 1 || !slices.Equal(holders(g.Current), []string{"r1", "r2"}) {
		t.Fatalf("step 3: w got %+v, want refused with r1 and r2 holding generation 1 shared", g)
	}
	// 4. both acknowledge
	c.release(k, "r1", true)
	c.release(k, "r2", true)
	// 5. same exclusive holder as last: no new generation, w clean
	c.mustAcquire(k, "w", true, 1, false)
	c.release(k, "w", true)
	// 6. w's tenure of step 5 began after r1's acknowledgement (and r2's)
	c.mustShare(k, "r1", 0, 1, true)
	if st := c.state(k); !slices.Equal(st.PoisonedHolders, []string{"r1", "r2"}) {
		t.Fatalf("step 6: poisoned holders %v, want [r1 r2]", st.PoisonedHolders)
	}
	// 7. acknowledged, then clean
	c.release(k, "r1", true)
	c.mustShare(k, "r1", 0, 1, false)
	c.release(k, "r1", true)
	// 8. r1 now writes: a new exclusive holder, clean
	if g := c.mustAcquire(k, "r1", true, 2, false); g.Mode != lock.ModeExclusive {
		t.Fatalf("step 8: mode %q, want exclusive", g.Mode)
	}
	// 9. r1's exclusive tenure began after w's acknowledgement
	c.release(k, "r1", true)
	c.mustAcquire(k, "w", true, 3, true)
}

// testSlotLimitRefusals: a shared request naming another limit than the
// one in force (another number, none where one is, one where none is) is
// refused with ErrSlotLimit and changes nothing.
func testSlotLimitRefusals(t *testing.T, open Backend) {
	c := newClient(t, open)
	c.mustShare("pool", "a", 2, 1, false)
	before := c.state("pool")
	for _, slots := range []int{3, 1, 0} {
		g, err := c.share("pool", "b", slots, longTTL)
		ce := wantConflict(t, g, err, lock.ErrSlotLimit)
		if ce.Limit != 2 || ce.Slots != slots || ce.Queued || ce.Holder != "b" || ce.Key != "pool" {
			t.Fatalf("--slots %d beside a limit of 2: %+v", slots, ce)
		}
	}
	if after := c.state("pool"); after.Token != before.Token || !slices.Equal(holders(after), []string{"a"}) {
		t.Fatalf("refusals changed the key: %+v, was %+v", after, before)
	}
	// Re-entrant under the same limit is fine; under another, refused too.
	if g := c.mustShare("pool", "a", 2, 1, false); !g.Reentrant {
		t.Fatalf("a again: %+v, want re-entrant", g)
	}
	g, err := c.share("pool", "a", 3, longTTL)
	wantConflict(t, g, err, lock.ErrSlotLimit)

	// A limit where none is in force.
	c.mustShare("open", "a", 0, 1, false)
	g, err = c.share("open", "b", 2, longTTL)
	if ce := wantConflict(t, g, err, lock.ErrSlotLimit); ce.Limit != 0 || ce.Slots != 2 {
		t.Fatalf("--slots 2 beside no limit: %+v", ce)
	}

	// The limit of the queued shared requests is in force when no reader
	// holds the key: the queue never holds two limits.
	c.mustAcquire("q", "w", true, 1, false)
	g, err = c.s.Acquire(c.ctx, lock.AcquireRequest{Key: "q", Holder: "r1", TTL: longTTL, Checked: true,
		Mode: lock.ModeShared, Slots: 2, Wait: true, WaitLease: longTTL})
	if err != nil || g.Acquired || g.Seq == 0 {
		t.Fatalf("r1 queues behind the writer: %+v, %v", g, err)
	}
	g, err = c.share("q", "r2", 3, longTTL)
	if ce := wantConflict(t, g, err, lock.ErrSlotLimit); ce.Limit != 2 || !ce.Queued {
		t.Fatalf("--slots 3 beside a queued limit of 2: %+v", ce)
	}
	// Once the limit's readers are gone, another limit may come.
	c.release("open", "a", true)
	c.mustShare("open", "b", 5, 1, false)
}

// testModeConflict: a holder asking for the other mode than the one it
// holds the key in is refused at once (no upgrades, no downgrades), and
// nothing changes.
func testModeConflict(t *testing.T, open Backend) {
	c := newClient(t, open)
	r := c.mustShare("k", "a", 0, 1, false)
	g, err := c.s.Acquire(c.ctx, lock.AcquireRequest{Key: "k", Holder: "a", TTL: longTTL, Checked: true})
	if ce := wantConflict(t, g, err, lock.ErrModeConflict); ce.Held != lock.ModeShared || ce.Mode != lock.ModeExclusive {
		t.Fatalf("upgrade: %+v", ce)
	}
	// Waiting does not help: it can never be granted as asked.
	g, err = c.s.Acquire(c.ctx, lock.AcquireRequest{Key: "k", Holder: "a", TTL: longTTL, Checked: true, Wait: true})
	wantConflict(t, g, err, lock.ErrModeConflict)
	if st := c.state("k"); st.Token != r.Token || st.Mode != lock.ModeShared || len(st.Waiters) != 0 {
		t.Fatalf("the refusals changed the key: %+v", st)
	}
	c.release("k", "a", true)

	c.mustAcquire("k", "a", true, 1, false)
	g, err = c.share("k", "a", 0, longTTL)
	if ce := wantConflict(t, g, err, lock.ErrModeConflict); ce.Held != lock.ModeExclusive || ce.Mode != lock.ModeShared {
		t.Fatalf("downgrade: %+v", ce)
	}
	// Another holder asking shared beside a writer is only refused for now.
	if g, err := c.share("k", "b", 0, longTTL); err != nil || g.Acquired || g.Current.Holder != "a" {
		t.Fatalf("b shares beside the writer: %+v, %v; want refused, no error", g, err)
	}
}

// testSlotsFull: a semaphore admits at most its limit of readers at once,
// and a reader's release frees its slot only.
func testSlotsFull(t *testing.T, open Backend) {
	c := newClient(t, open)
	c.mustShare("pool", "a", 2, 1, false)
	b := c.mustShare("pool", "b", 2, 1, false)
	g, err := c.share("pool", "c", 2, longTTL)
	if err != nil || g.Acquired || g.Current.Slots != 2 || !slices.Equal(holders(g.Current), []string{"a", "b"}) {
		t.Fatalf("c beside a full semaphore: %+v, %v; want refused naming a and b", g, err)
	}
	// Each reader renews and releases its own tenure.
	if _, err := c.s.Renew(c.ctx, lock.RenewRequest{Key: "pool", Holder: "b", Token: b.Token, TTL: 2 * longTTL}); err != nil {
		t.Fatalf("b renews: %v", err)
	}
	c.release("pool", "a", true)
	c.mustShare("pool", "c", 2, 1, false)
	if st := c.state("pool"); !slices.Equal(holders(st), []string{"b", "c"}) || st.Slots != 2 {
		t.Fatalf("after a left and c came: %+v", st)
	}
}

// testBreakEndsEveryReader: a break ends every shared tenure at once, each
// recorded with who broke it; the generation stays.
func testBreakEndsEveryReader(t *testing.T, open Backend) {
	c := newClient(t, open)
	by := lock.Breaker{Holder: "ops", User: "root", Host: "box", PID: 7}
	c.mustAcquire("k", "w", true, 1, false)
	c.release("k", "w", true)
	for _, h := range []string{"r1", "r2", "r3"} {
		c.mustShare("k", h, 3, 1, false)
	}
	st, err := c.s.Break(c.ctx, "k", by)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != lock.StateFree || len(st.Holders) != 0 || st.Generation != 1 || st.Holder != "w" {
		t.Fatalf("after the break: %+v, want free at generation 1, w the last writer", st)
	}
	history, err := c.s.History(c.ctx, "k", 0)
	if err != nil {
		t.Fatal(err)
	}
	var broken []string
	for _, e := range history {
		// Every event says how its holder held the key: w exclusive, the
		// readers shared.
		want := lock.ModeShared
		if e.Holder == "w" {
			want = lock.ModeExclusive
		}
		if e.Mode != want {
			t.Fatalf("event %+v has mode %q, want %q", e, e.Mode, want)
		}
		if e.Type == lock.EventBroken {
			if e.By == nil || *e.By != by {
				t.Fatalf("broken event %+v by %+v, want by %+v", e, e.By, by)
			}
			broken = append(broken, e.Holder)
		}
	}
	if !slices.Equal(broken, []string{"r1", "r2", "r3"}) {
		t.Fatalf("broken events for %v, want one each for r1, r2, r3", broken)
	}
	for _, h := range []string{"r1", "r2", "r3"} {
		_, err := c.s.Release(c.ctx, lock.ReleaseRequest{Key: "k", Holder: h, Acknowledge: true})
		wantNotHeld(t, err, lock.ReasonFree)
	}
	// A break acknowledged nothing, and the readers wrote nothing.
	c.mustAcquire("k", "w", true, 1, false)
}

// testReaderExpiryFreesItsSlot: one reader's lease running out frees its
// slot only; the others hold on.
func testReaderExpiryFreesItsSlot(t *testing.T, open Backend) {
	c := newClient(t, open)
	c.mustShareFor("pool", "short", 2, 1, false, shortTTL)
	c.mustShare("pool", "long", 2, 1, false)
	deadline := time.Now().Add(shortTTL + 10*time.Second)
	for {
		g, err := c.share("pool", "next", 2, longTTL)
		if err != nil {
			t.Fatal(err)
		}
		if g.Acquired {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("short's slot never freed: %+v", g.Current)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st := c.state("pool"); !slices.Equal(holders(st), []string{"long", "next"}) {
		t.Fatalf("after short expired: %+v, want long and next", st)
	}
	history, err := c.s.History(c.ctx, "pool", 0)
	if err != nil {
		t.Fatal(err)
	}
	var expired []string
	for _, e := range history {
		if e.Type == lock.EventExpired {
			expired = append(expired, e.Holder)
		}
	}
	if !slices.Equal(expired, []string{"short"}) {
		t.Fatalf("expiries recorded for %v, want short only", expired)
	}
	// Its expiry was observed by next's acquisition: short holds nothing.
	_, err = c.s.Release(c.ctx, lock.ReleaseRequest{Key: "pool", Holder: "short", Acknowledge: true})
	wantNotHeld(t, err, lock.ReasonOther)
}

// testGuardShared: the library's options reach the store: readers share, a
// full semaphore is busy, and a conflict is returned at once, not waited
// on.
func testGuardShared(t *testing.T, open Backend) {
	ctx := context.Background()
	newLock := func(holder string, opts lock.Options) *lock.Lock {
		opts.TTL = longTTL
		l, err := lock.New(open(t), "pool", holder, opts)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	if _, err := lock.New(open(t), "pool", "x", lock.Options{Slots: -1}); err == nil {
		t.Fatal("Slots -1: no error")
	}
	a, err := newLock("a", lock.Options{Slots: 2}).Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Release(ctx)
	b, err := newLock("b", lock.Options{Shared: true, Slots: 2}).TryLock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Release(ctx)
	if a.Mode() != lock.ModeShared || a.Slots() != 2 || b.Mode() != lock.ModeShared || a.Token() == b.Token() {
		t.Fatalf("guards: a %s/%d token %d, b %s/%d token %d", a.Mode(), a.Slots(), a.Token(), b.Mode(), b.Slots(), b.Token())
	}
	_, err = newLock("c", lock.Options{Slots: 2}).TryLock(ctx)
	var busy *lock.BusyError
	if !errors.As(err, &busy) || len(busy.Current.Holders) != 2 {
		t.Fatalf("c beside a full semaphore: %v, want a *BusyError naming two holders", err)
	}
	// A conflict is never waited on: Lock with a long wait returns at once.
	waitCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	start := time.Now()
	_, err = newLock("c", lock.Options{Slots: 3}).Lock(waitCtx)
	if !errors.Is(err, lock.ErrSlotLimit) || time.Since(start) > 30*time.Second {
		t.Fatalf("c with another limit: %v after %s, want ErrSlotLimit at once", err, time.Since(start))
	}
	_, err = newLock("w", lock.Options{}).TryLock(ctx)
	if !errors.As(err, &busy) {
		t.Fatalf("a writer beside readers: %v, want a *BusyError", err)
	}
	// A reader's Do sees the same guard.
	err = newLock("d", lock.Options{Shared: true}).Do(ctx, func(context.Context, *lock.Guard) error { return nil })
	if !errors.Is(err, lock.ErrSlotLimit) {
		t.Fatalf("Do without the limit in force: %v, want ErrSlotLimit", err)
	}
}

// testGuardWaitsForSlot: a reader waiting on a full semaphore takes the
// slot that one reader frees, while the other still holds its own.
func testGuardWaitsForSlot(t *testing.T, open Backend) {
	ctx := context.Background()
	c := newClient(t, open)
	c.mustShare("pool", "a", 2, 1, false)
	c.mustShare("pool", "b", 2, 1, false)
	l, err := lock.New(open(t), "pool", "c", lock.Options{TTL: longTTL, Slots: 2})
	if err != nil {
		t.Fatal(err)
	}
	waiting := make(chan struct{})
	got := make(chan error, 1)
	go func() {
		waitCtx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		g, err := l.Acquire(waitCtx, lock.AcquireOptions{OnWait: func(lock.State, time.Time) {
			select {
			case <-waiting:
			default:
				close(waiting)
			}
		}})
		if err == nil {
			defer g.Release(ctx)
		}
		got <- err
	}()
	<-waiting
	c.release("pool", "a", true)
	if err := <-got; err != nil {
		t.Fatalf("c waiting for a slot: %v", err)
	}
	if st := c.state("pool"); !slices.Contains(holders(st), "b") {
		t.Fatalf("b lost its slot: %+v", st)
	}
}
