// Package locktest is the conformance suite every lock.Store must pass: the
// SPEC's poison rules, its worked examples (with readers too), leases,
// shared and slot-capped tenures and their refusals, history and wake-ups.
package locktest

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/xplock/xplock/lock"
)

// Backend opens a new handle (its own connection, as another process would
// have) on one fresh, empty store.
type Backend func(t *testing.T) lock.Store

// Run runs the conformance suite. newBackend makes a fresh store for each
// test and returns how to open handles on it; handles are closed by the
// caller's t.Cleanup.
func Run(t *testing.T, newBackend func(t *testing.T) Backend) {
	tests := []struct {
		name string
		fn   func(t *testing.T, open Backend)
	}{
		{"WorkedExample", testWorkedExample},
		{"ReentrantKeepsTenure", testReentrantKeepsTenure},
		{"TokensIncrease", testTokensIncrease},
		{"ReleaseRefusals", testReleaseRefusals},
		{"RenewRefusals", testRenewRefusals},
		{"BreakIsRecorded", testBreakIsRecorded},
		{"PoisonAcknowledgement", testPoisonAcknowledgement},
		{"UncheckedTenureMadeChecked", testUncheckedTenureMadeChecked},
		{"ClearPoison", testClearPoison},
		{"Snapshot", testSnapshot},
		{"SnapshotShowsKeepers", testSnapshotShowsKeepers},
		{"HistoryAndCursor", testHistoryAndCursor},
		{"SubscribeSeesOtherHandles", testSubscribe},
		{"GuardPoisonError", testGuardPoisonError},
		{"GuardWaitsForRelease", testGuardWaitsForRelease},
		{"GuardWaitRunsOut", testGuardWaitRunsOut},
		{"GuardRenewsAndNoticesBreak", testGuardRenewsAndNoticesBreak},
		{"GuardNoticesBreakBeforeRenewal", testGuardNoticesBreakBeforeRenewal},
		{"ExclusionUnderContention", testExclusion},
		{"ReadersWorkedExample", testReadersWorkedExample},
		{"SlotLimitRefusals", testSlotLimitRefusals},
		{"ModeConflict", testModeConflict},
		{"SlotsFull", testSlotsFull},
		{"BreakEndsEveryReader", testBreakEndsEveryReader},
		{"ReaderExpiryFreesItsSlot", testReaderExpiryFreesItsSlot},
		{"GuardShared", testGuardShared},
		{"GuardWaitsForSlot", testGuardWaitsForSlot},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newBackend(t)) })
	}
}

// longTTL outlives every test; shortTTL is for a lease a test lets run
// out. A live lease never ends earlier, so a lease meant to expire is taken
// short from the start, long enough for the few store calls a test makes
// while it must be live, on a loaded machine.
const (
	longTTL  = time.Hour
	shortTTL = time.Second
)

type client struct {
	t   *testing.T
	s   lock.Store
	ctx context.Context
}

func newClient(t *testing.T, open Backend) *client {
	return &client{t: t, s: open(t), ctx: context.Background()}
}

func (c *client) acquire(key, holder string, checked bool) lock.Grant {
	c.t.Helper()
	return c.acquireFor(key, holder, checked, longTTL)
}

func (c *client) acquireFor(key, holder string, checked bool, ttl time.Duration) lock.Grant {
	c.t.Helper()
	g, err := c.s.Acquire(c.ctx, lock.AcquireRequest{Key: key, Holder: holder, TTL: ttl, Checked: checked})
	if err != nil {
		c.t.Fatalf("acquire %s by %s: %v", key, holder, err)
	}
	return g
}

// mustAcquire expects the lock to be taken with the given generation and
// poison.
func (c *client) mustAcquire(key, holder string, checked bool, generation int64, poisoned bool) lock.Grant {
	c.t.Helper()
	return c.mustAcquireFor(key, holder, checked, generation, poisoned, longTTL)
}

// mustAcquireShort is mustAcquire with a lease that the test lets expire.
func (c *client) mustAcquireShort(key, holder string, checked bool, generation int64, poisoned bool) lock.Grant {
	c.t.Helper()
	return c.mustAcquireFor(key, holder, checked, generation, poisoned, shortTTL)
}

func (c *client) mustAcquireFor(key, holder string, checked bool, generation int64, poisoned bool, ttl time.Duration) lock.Grant {
	c.t.Helper()
	g := c.acquireFor(key, holder, checked, ttl)
	if !g.Acquired || g.Generation != generation || g.Poisoned != poisoned {
		c.t.Fatalf("%s acquire %s: got acquired=%v generation=%d poisoned=%v, want acquired generation=%d poisoned=%v",
			holder, key, g.Acquired, g.Generation, g.Poisoned, generation, poisoned)
	}
	return g
}

func (c *client) release(key, holder string, acknowledge bool) {
	c.t.Helper()
	if _, err := c.s.Release(c.ctx, lock.ReleaseRequest{Key: key, Holder: holder, Acknowledge: acknowledge}); err != nil {
		c.t.Fatalf("%s release %s: %v", holder, key, err)
	}
}

// expire waits until holder's short lease on key has run out, as the
// store's clock sees it.
func (c *client) expire(key, holder string) {
	c.t.Helper()
	deadline := time.Now().Add(shortTTL + 10*time.Second)
	for {
		st := c.state(key)
		if st.State != lock.StateHeld {
			return
		}
		if st.Holder != holder || time.Now().After(deadline) {
			c.t.Fatalf("waiting for %s's lease on %s to run out: %+v", holder, key, st)
		}
		time.Sleep(min(time.Until(st.ExpiresAt)+time.Millisecond, 100*time.Millisecond))
	}
}

func (c *client) state(key string) lock.State {
	c.t.Helper()
	snap, err := c.s.Snapshot(c.ctx, key)
	if err != nil {
		c.t.Fatalf("snapshot %s: %v", key, err)
	}
	if len(snap.Locks) != 1 {
		c.t.Fatalf("snapshot %s: %d locks, want 1", key, len(snap.Locks))
	}
	return snap.Locks[0]
}

func wantNotHeld(t *testing.T, err error, reason string) *lock.NotHeldError {
	t.Helper()
	var nh *lock.NotHeldError
	if !errors.As(err, &nh) || !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("got %v, want a *NotHeldError (%s)", err, reason)
	}
	if nh.Reason != reason {
		t.Fatalf("refusal reason %q (%v), want %q", nh.Reason, err, reason)
	}
	return nh
}

// testWorkedExample follows SPEC.md's worked example step by step.
func testWorkedExample(t *testing.T, open Backend) {
	c := newClient(t, open)
	const k = "worked"
	// 1. first acquisition; alice acknowledges 1 (a short lease: step 4
	// lets it expire)
	g1 := c.mustAcquireShort(k, "alice", true, 1, false)
	// 2. re-entrant, same tenure and token
	g2 := c.mustAcquireShort(k, "alice", true, 1, false)
	if !g2.Reentrant || g2.Token != g1.Token {
		t.Fatalf("step 2: reentrant=%v token %d, want re-entrant with token %d", g2.Reentrant, g2.Token, g1.Token)
	}
	// 3. bob --nowait: held by alice
	if g := c.acquire(k, "bob", true); g.Acquired || g.Current.Holder != "alice" || g.Current.Generation != 1 {
		t.Fatalf("step 3: bob got %+v, want refused with alice holding generation 1", g)
	}
	// 4. alice's lease expires; bob acquires: generation 2, bob is new
	c.expire(k, "alice")
	c.mustAcquire(k, "bob", true, 2, false)
	// 5. bob releases and acknowledges 2
	c.release(k, "bob", true)
	// 6. alice acquires: poisoned at generation 3
	c.mustAcquire(k, "alice", true, 3, true)
	// 7. still poisoned (re-entrant)
	if g := c.mustAcquire(k, "alice", true, 3, true); !g.Reentrant {
		t.Fatal("step 7: want a re-entrant acquisition")
	}
	// 8. alice releases and acknowledges 3
	c.release(k, "alice", true)
	// 9. same holder as last: no new generation, clean
	c.mustAcquire(k, "alice", true, 3, false)
	// 10. bob --unchecked: generation 4, reported poisoned but not refused
	c.release(k, "alice", true)
	c.mustAcquire(k, "bob", false, 4, true)
	// 11. the unchecked tenure acknowledged nothing: bob is poisoned
	c.release(k, "bob", true)
	c.mustAcquire(k, "bob", true, 4, true)
}

func testReentrantKeepsTenure(t *testing.T, open Backend) {
	c := newClient(t, open)
	first, err := c.s.Acquire(c.ctx, lock.AcquireRequest{Key: "k", Holder: "a", TTL: time.Hour, Checked: true})
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.s.Acquire(c.ctx, lock.AcquireRequest{Key: "k", Holder: "a", TTL: time.Minute, KeepTenureTTL: true, Checked: true})
	if err != nil {
		t.Fatal(err)
	}
	if !again.Reentrant || again.Token != first.Token || again.TTL != time.Hour {
		t.Fatalf("re-entrant: reentrant=%v token=%d ttl=%v, want token %d and the tenure's TTL 1h", again.Reentrant, again.Token, again.TTL, first.Token)
	}
	if again.ExpiresAt.Before(first.ExpiresAt) {
		t.Fatalf("re-entrant acquisition moved the lease end back: %v < %v", again.ExpiresAt, first.ExpiresAt)
	}
	// A new TTL becomes the tenure's, but the live lease never ends earlier.
	shorter, err := c.s.Acquire(c.ctx, lock.AcquireRequest{Key: "k", Holder: "a", TTL: time.Minute, Checked: true})
	if err != nil {
		t.Fatal(err)
	}
	if shorter.TTL != time.Minute || !shorter.ExpiresAt.Equal(again.ExpiresAt) {
		t.Fatalf("re-entrant with a shorter TTL: ttl=%v lease end %v, want 1m and the end kept at %v", shorter.TTL, shorter.ExpiresAt, again.ExpiresAt)
	}
	longer, err := c.s.Acquire(c.ctx, lock.AcquireRequest{Key: "k", Holder: "a", TTL: 2 * time.Hour, Checked: true})
	if err != nil || longer.ExpiresAt.Sub(longer.Now) != 2*time.Hour {
		t.Fatalf("re-entrant with a longer TTL: lease %v (%v), want 2h", longer.ExpiresAt.Sub(longer.Now), err)
	}
}

func testTokensIncrease(t *testing.T, open Backend) {
	c := newClient(t, open)
	var last int64
	check := func(g lock.Grant, step string) {
		t.Helper()
		if g.Token <= last {
			t.Fatalf("%s: token %d not above %d", step, g.Token, last)
		}
		last = g.Token
	}
	check(c.mustAcquire("k", "a", true, 1, false), "first")
	c.release("k", "a", true)
	check(c.mustAcquireShort("k", "a", true, 1, false), "same holder again")
	c.expire("k", "a")
	// Retaking one's own expired lease is a new tenure: new token, same generation.
	check(c.mustAcquireShort("k", "a", true, 1, false), "own expired lease")
	c.expire("k", "a")
	check(c.mustAcquire("k", "b", true, 2, false), "other holder after expiry")
	if _, err := c.s.Break(c.ctx, "k", lock.Breaker{Holder: "c"}); err != nil {
		t.Fatal(err)
	}
	check(c.mustAcquire("k", "c", true, 3, false), "after a break")
}

func testReleaseRefusals(t *testing.T, open Backend) {
	c := newClient(t, open)
	ctx := c.ctx
	_, err := c.s.Release(ctx, lock.ReleaseRequest{Key: "never", Holder: "a"})
	wantNotHeld(t, err, lock.ReasonFree)

	c.mustAcquireShort("k", "a", true, 1, false)
	_, err = c.s.Release(ctx, lock.ReleaseRequest{Key: "k", Holder: "b"})
	if nh := wantNotHeld(t, err, lock.ReasonOther); nh.Current.Holder != "a" {
		t.Fatalf("refusal names holder %q, want a", nh.Current.Holder)
	}
	g := c.acquireFor("k", "a", true, shortTTL)
	_, err = c.s.Release(ctx, lock.ReleaseRequest{Key: "k", Holder: "a", Token: g.Token + 1})
	wantNotHeld(t, err, lock.ReasonTenure)

	c.expire("k", "a")
	_, err = c.s.Release(ctx, lock.ReleaseRequest{Key: "k", Holder: "a", Acknowledge: true})
	wantNotHeld(t, err, lock.ReasonExpired)
	// The refusal recorded the expiry, and a second release finds it free.
	_, err = c.s.Release(ctx, lock.ReleaseRequest{Key: "k", Holder: "a"})
	wantNotHeld(t, err, lock.ReasonFree)
	if st := c.state("k"); st.State != lock.StateFree {
		t.Fatalf("after an observed expiry the state is %q, want free", st.State)
	}
}

func testRenewRefusals(t *testing.T, open Backend) {
	c := newClient(t, open)
	ctx := c.ctx
	g := c.mustAcquire("k", "a", true, 1, false)
	r, err := c.s.Renew(ctx, lock.RenewRequest{Key: "k", Holder: "a", Token: g.Token, TTL: 2 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if r.Token != g.Token || r.TTL != 2*time.Hour || !r.ExpiresAt.After(g.ExpiresAt) {
		t.Fatalf("renew: %+v", r)
	}
	_, err = c.s.Renew(ctx, lock.RenewRequest{Key: "k", Holder: "b"})
	wantNotHeld(t, err, lock.ReasonOther)
	// A renewal never moves a live lease's end earlier.
	short, err := c.s.Renew(ctx, lock.RenewRequest{Key: "k", Holder: "a", Token: g.Token, TTL: time.Millisecond})
	if err != nil || !short.ExpiresAt.Equal(r.ExpiresAt) {
		t.Fatalf("renew with a shorter TTL: lease end %v (%v), want it kept at %v", short.ExpiresAt, err, r.ExpiresAt)
	}

	c.release("k", "a", true)
	g = c.mustAcquireShort("k", "a", true, 1, false)
	c.expire("k", "a")
	_, err = c.s.Renew(ctx, lock.RenewRequest{Key: "k", Holder: "a", Token: g.Token})
	wantNotHeld(t, err, lock.ReasonExpired)

	// Renewal never takes a lock back, even when it is free again.
	c.mustAcquire("k", "b", true, 2, false)
	c.release("k", "b", true)
	_, err = c.s.Renew(ctx, lock.RenewRequest{Key: "k", Holder: "a", Token: g.Token})
	wantNotHeld(t, err, lock.ReasonFree)
}

func testBreakIsRecorded(t *testing.T, open Backend) {
	c := newClient(t, open)
	by := lock.Breaker{Holder: "ops", User: "root", Host: "box", PID: 42}
	_, err := c.s.Break(c.ctx, "k", by)
	wantNotHeld(t, err, lock.ReasonFree)

	c.mustAcquire("k", "a", true, 1, false)
	st, err := c.s.Break(c.ctx, "k", by)
	if err != nil {
		t.Fatal(err)
	}
	if st.State != lock.StateFree || st.Holder != "a" {
		t.Fatalf("after break: %+v, want free with a as last holder", st)
	}
	history, err := c.s.History(c.ctx, "k", 0)
	if err != nil {
		t.Fatal(err)
	}
	last := history[len(history)-1]
	if last.Type != lock.EventBroken || last.Holder != "a" || last.By == nil || *last.By != by {
		t.Fatalf("last event %+v (by %+v), want broken a by %+v", last, last.By, by)
	}
	// The broken holder stays the last holder: it comes back without a new
	// generation, and a break by itself acknowledged nothing (rule 7).
	c.mustAcquire("k", "a", true, 1, false)
	c.release("k", "a", true)
	c.mustAcquire("k", "b", true, 2, false)
	_, err = c.s.Break(c.ctx, "k", lock.Breaker{Holder: "b"})
	if err != nil {
		t.Fatal(err)
	}
	c.mustAcquire("k", "a", true, 3, true)
	if _, err := c.s.Break(c.ctx, "k", lock.Breaker{Holder: "a"}); err != nil {
		t.Fatal(err)
	}
	c.mustAcquire("k", "a", true, 3, true)
}

func testPoisonAcknowledgement(t *testing.T, open Backend) {
	c := newClient(t, open)
	c.mustAcquire("k", "a", true, 1, false)
	c.release("k", "a", true)
	c.mustAcquire("k", "b", true, 2, false)
	c.release("k", "b", true)
	// Release keeping poison acknowledges nothing (rule 4).
	c.mustAcquire("k", "a", true, 3, true)
	c.release("k", "a", false)
	c.mustAcquireShort("k", "a", true, 3, true)
	// Expiry acknowledges nothing either.
	c.expire("k", "a")
	c.mustAcquireShort("k", "a", true, 3, true)
	// A refused release acknowledges nothing (rule 6).
	c.expire("k", "a")
	_, err := c.s.Release(c.ctx, lock.ReleaseRequest{Key: "k", Holder: "a", Acknowledge: true})
	wantNotHeld(t, err, lock.ReasonExpired)
	c.mustAcquire("k", "a", true, 3, true)
	// A good release does.
	c.release("k", "a", true)
	c.mustAcquire("k", "a", true, 3, false)
}

func testUncheckedTenureMadeChecked(t *testing.T, open Backend) {
	c := newClient(t, open)
	c.mustAcquire("k", "a", true, 1, false)
	c.release("k", "a", true)
	c.mustAcquire("k", "b", true, 2, false)
	c.release("k", "b", true)
	// Unchecked: reports poison truthfully, sets nothing.
	c.mustAcquire("k", "a", false, 3, true)
	// A checked re-entrant acquisition makes the tenure checked (rule 5).
	c.mustAcquire("k", "a", true, 3, true)
	c.release("k", "a", true)
	c.mustAcquire("k", "a", true, 3, false)
	c.release("k", "a", true)
	// A newcomer's unchecked acquisition sets no acknowledged generation.
	c.mustAcquire("k", "z", false, 4, false)
	c.release("k", "z", true)
	if st := c.state("k"); slices.Contains(st.PoisonedHolders, "z") {
		t.Fatalf("z never acknowledged anything, yet is poisoned: %v", st.PoisonedHolders)
	}
}

func testClearPoison(t *testing.T, open Backend) {
	c := newClient(t, open)
	a, err := lock.New(c.s, "k", "a", lock.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c.mustAcquire("k", "a", true, 1, false)
	c.release("k", "a", true)
	c.mustAcquire("k", "b", true, 2, false)
	c.release("k", "b", true)
	g, err := a.Lock(c.ctx)
	if !errors.Is(err, lock.ErrPoisoned) {
		t.Fatalf("Lock: %v, want poisoned", err)
	}
	var p lock.Poisonable = g
	if err := p.ClearPoison(c.ctx); err != nil || p.Poisoned() {
		t.Fatalf("ClearPoison: %v, poisoned %v", err, p.Poisoned())
	}
	// Cleared poison stays cleared even when the tenure ends badly.
	if err := g.ReleaseKeepPoison(c.ctx); err != nil {
		t.Fatal(err)
	}
	c.mustAcquire("k", "a", true, 3, false)
	c.release("k", "a", true)
	// Only a holder can clear its poison.
	if err := c.s.Acknowledge(c.ctx, "k", "a", 0); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("Acknowledge without holding: %v, want ErrNotHeld", err)
	}
}

func testSnapshot(t *testing.T, open Backend) {
	c := newClient(t, open)
	c.mustAcquire("held", "a", true, 1, false)
	c.mustAcquire("free", "a", true, 1, false)
	c.release("free", "a", true)
	c.mustAcquire("free", "b", true, 2, false)
	c.release("free", "b", true)
	c.mustAcquireShort("expired", "a", true, 1, false)
	c.expire("expired", "a")

	snap, err := c.s.Snapshot(c.ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]lock.State{}
	for _, l := range snap.Locks {
		got[l.Key] = l
	}
	if len(got) != 3 || got["held"].State != lock.StateHeld || got["free"].State != lock.StateFree || got["expired"].State != lock.StateExpired {
		t.Fatalf("snapshot states: %+v", snap.Locks)
	}
	if f := got["free"]; f.Holder != "b" || f.Generation != 2 || !slices.Equal(f.PoisonedHolders, []string{"a"}) {
		t.Fatalf("free lock: %+v, want last holder b, generation 2, a poisoned", f)
	}
	if h := got["held"]; h.ExpiresAt.Sub(snap.Now) < longTTL-time.Minute || len(h.PoisonedHolders) != 0 {
		t.Fatalf("held lock: %+v (now %v)", h, snap.Now)
	}
	one, err := c.s.Snapshot(c.ctx, "free", "missing")
	if err != nil || len(one.Locks) != 1 || one.Locks[0].Key != "free" {
		t.Fatalf("snapshot of named keys: %+v, %v", one.Locks, err)
	}
}

// testSnapshotShowsKeepers: a look shows the processes keeping each
// tenure alive, so that a waiter on their machine can watch them.
func testSnapshotShowsKeepers(t *testing.T, open Backend) {
	c := newClient(t, open)
	// From another boot: no store proves it dead from here.
	keepers := []lock.Keeper{{BootID: "another-boot", PIDNamespace: 4026531836, PID: 4242, Start: 77, Group: 4243}}
	g, err := c.s.Acquire(c.ctx, lock.AcquireRequest{Key: "k", Holder: "a", TTL: longTTL, Keepers: keepers})
	if err != nil || !g.Acquired {
		t.Fatalf("acquire: %+v, %v", g, err)
	}
	if st := c.state("k"); len(st.Holders) != 1 || !slices.Equal(st.Holders[0].Keepers, keepers) {
		t.Fatalf("holders %+v, want a kept alive by %+v", st.Holders, keepers)
	}
}

func testHistoryAndCursor(t *testing.T, open Backend) {
	c := newClient(t, open)
	start, err := c.s.Snapshot(c.ctx)
	if err != nil {
		t.Fatal(err)
	}
	c.mustAcquire("k", "a", true, 1, false)
	c.acquire("k", "a", true) // re-entrant: not a state change
	c.release("k", "a", true)
	c.mustAcquire("other", "x", true, 1, false)
	lease := c.mustAcquireShort("k", "b", true, 2, false)
	c.expire("k", "b")
	c.mustAcquire("k", "c", true, 3, false)
	if _, err := c.s.Break(c.ctx, "k", lock.Breaker{Holder: "ops"}); err != nil {
		t.Fatal(err)
	}

	type ev struct {
		typ, holder string
		gen         int64
	}
	want := []ev{{"acquired", "a", 1}, {"released", "a", 1}, {"acquired", "b", 2}, {"expired", "b", 2}, {"acquired", "c", 3}, {"broken", "c", 3}}
	history, err := c.s.History(c.ctx, "k", 0)
	if err != nil {
		t.Fatal(err)
	}
	var got []ev
	for _, e := range history {
		got = append(got, ev{e.Type, e.Holder, e.Generation})
	}
	if !slices.Equal(got, want) {
		t.Fatalf("history:\n got %v\nwant %v", got, want)
	}
	if exp := history[3]; !exp.Time.Equal(lease.ExpiresAt) {
		t.Fatalf("expiry stamped %v, want the lease's end %v", exp.Time, lease.ExpiresAt)
	}
	for i := 1; i < len(history); i++ {
		if history[i].ID <= history[i-1].ID {
			t.Fatalf("event IDs not increasing: %+v", history)
		}
	}
	lastTwo, err := c.s.History(c.ctx, "k", 2)
	if err != nil || len(lastTwo) != 2 || lastTwo[1].Type != "broken" || lastTwo[0].Type != "acquired" {
		t.Fatalf("History(limit 2) = %+v, %v", lastTwo, err)
	}

	all, err := c.s.EventsAfter(c.ctx, start.Cursor, nil, 0)
	if err != nil || len(all) != 7 {
		t.Fatalf("EventsAfter(all keys) = %d events, %v; want 7", len(all), err)
	}
	onlyK, err := c.s.EventsAfter(c.ctx, history[1].ID, []string{"k"}, 2)
	if err != nil || len(onlyK) != 2 || onlyK[0].ID != history[2].ID || onlyK[1].ID != history[3].ID {
		t.Fatalf("EventsAfter(cursor, k, 2) = %+v, %v", onlyK, err)
	}
	end, err := c.s.Snapshot(c.ctx)
	if err != nil || end.Cursor != all[len(all)-1].ID {
		t.Fatalf("snapshot cursor %d, want the newest event %d (%v)", end.Cursor, all[len(all)-1].ID, err)
	}
}

func testSubscribe(t *testing.T, open Backend) {
	waiter, writer := newClient(t, open), newClient(t, open)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	changes, err := waiter.s.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	writer.mustAcquire("k", "a", true, 1, false)
	select {
	case <-changes:
	case <-time.After(10 * time.Second):
		t.Fatal("no wake-up within 10s of a commit on another handle")
	}
}

func testGuardPoisonError(t *testing.T, open Backend) {
	c := newClient(t, open)
	ctx := c.ctx
	a, _ := lock.New(c.s, "k", "a", lock.Options{})
	b, _ := lock.New(c.s, "k", "b", lock.Options{})
	g, err := a.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Release(ctx); err != nil {
		t.Fatal(err)
	}
	g, err = b.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Release(ctx); err != nil {
		t.Fatal(err)
	}
	g, err = a.Lock(ctx)
	var pe *lock.PoisonError
	if !errors.As(err, &pe) || !errors.Is(err, lock.ErrPoisoned) || pe.Guard != g || g == nil {
		t.Fatalf("Lock after another holder: %v, want a *PoisonError carrying the guard", err)
	}
	if g.Generation() != 3 || !g.Poisoned() || pe.Acknowledged != 1 {
		t.Fatalf("poisoned guard: generation %d, poisoned %v, acknowledged %d", g.Generation(), g.Poisoned(), pe.Acknowledged)
	}
	// The lock is held: b cannot take it.
	if _, err := b.TryLock(ctx); !errors.Is(err, lock.ErrBusy) {
		t.Fatalf("TryLock while a holds the poisoned lock: %v, want ErrBusy", err)
	}
	if err := pe.IntoGuard().Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := g.Err(); !errors.Is(err, lock.ErrReleased) {
		t.Fatalf("guard error after release: %v", err)
	}
	g, err = a.Lock(ctx)
	if err != nil {
		t.Fatalf("Lock after acknowledging: %v", err)
	}
	g.Release(ctx)
}

func testGuardWaitsForRelease(t *testing.T, open Backend) {
	c, other := newClient(t, open), newClient(t, open)
	a, _ := lock.New(c.s, "k", "a", lock.Options{})
	b, _ := lock.New(other.s, "k", "b", lock.Options{})
	ga, err := a.Lock(c.ctx)
	if err != nil {
		t.Fatal(err)
	}
	waiting := make(chan struct{})
	got := make(chan error, 1)
	go func() {
		var once bool
		_, err := b.Acquire(context.Background(), lock.AcquireOptions{OnWait: func(cur lock.State, _ time.Time) {
			if !once && cur.Holder == "a" {
				once = true
				close(waiting)
			}
		}})
		got <- err
	}()
	<-waiting
	if err := ga.Release(c.ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("waiter: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("waiter did not get the lock within 10s of the release")
	}
}

func testGuardWaitRunsOut(t *testing.T, open Backend) {
	c := newClient(t, open)
	c.mustAcquire("k", "a", true, 1, false)
	b, _ := lock.New(c.s, "k", "b", lock.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := b.Lock(ctx)
	var busy *lock.BusyError
	if !errors.As(err, &busy) || !errors.Is(err, context.DeadlineExceeded) || busy.Current.Holder != "a" {
		t.Fatalf("Lock with a deadline: %v, want a *BusyError naming a and wrapping DeadlineExceeded", err)
	}
}

func testGuardRenewsAndNoticesBreak(t *testing.T, open Backend) {
	c := newClient(t, open)
	// Renewal runs every TTL/3: a 3s TTL outlived by half a TTL proves it
	// renewed, and leaves two seconds of slack for a starved process on a
	// loaded machine.
	a, _ := lock.New(c.s, "k", "a", lock.Options{TTL: 3 * time.Second})
	g, err := a.Lock(c.ctx)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(4500 * time.Millisecond)
	if st := c.state("k"); st.State != lock.StateHeld || st.Token != g.Token() || g.Err() != nil {
		t.Fatalf("after 1.5 TTLs the lock is %+v (guard error %v), want held by the renewing guard", st, g.Err())
	}
	breaker := newClient(t, open)
	if _, err := breaker.s.Break(breaker.ctx, "k", lock.Breaker{Holder: "ops"}); err != nil {
		t.Fatal(err)
	}
	// Without a notice, the next renewal (within a second) finds out.
	select {
	case <-g.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("guard did not notice the break within 5s")
	}
	if !errors.Is(g.Err(), lock.ErrLeaseLost) {
		t.Fatalf("guard error %v, want ErrLeaseLost", g.Err())
	}
	if err := g.Release(c.ctx); !errors.Is(err, lock.ErrLeaseLost) {
		t.Fatalf("release of a lost guard: %v, want ErrLeaseLost", err)
	}
}

// testGuardNoticesBreakBeforeRenewal: a break followed by NotifyHolder
// ends the guard long before its next renewal (20s away).
func testGuardNoticesBreakBeforeRenewal(t *testing.T, open Backend) {
	c := newClient(t, open)
	a, _ := lock.New(c.s, "k", "a", lock.Options{TTL: time.Minute})
	g, err := a.Lock(c.ctx)
	if err != nil {
		t.Fatal(err)
	}
	breaker := newClient(t, open)
	if _, err := breaker.s.Break(breaker.ctx, "k", lock.Breaker{Holder: "ops"}); err != nil {
		t.Fatal(err)
	}
	lock.NotifyHolder(breaker.ctx, breaker.s, "k")
	select {
	case <-g.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("guard did not notice the break within 10s")
	}
	var notHeld *lock.NotHeldError
	if !errors.As(g.Err(), &notHeld) || notHeld.Current.State != lock.StateFree {
		t.Fatalf("guard error %v, want a *NotHeldError finding the lock free", g.Err())
	}
}

// testExclusion has several handles fight for one key; at no time may two
// of them believe they hold it.
func testExclusion(t *testing.T, open Backend) {
	const workers, rounds = 4, 15
	inside := make(chan string, 1)
	errs := make(chan error, workers)
	for w := range workers {
		s := open(t)
		holder := string(rune('a' + w))
		go func() {
			l, _ := lock.New(s, "k", holder, lock.Options{})
			for range rounds {
				g, err := l.LockUnchecked(context.Background())
				if err != nil {
					errs <- err
					return
				}
				select {
				case inside <- holder:
				default:
					errs <- errors.New(holder + " entered while another holder was inside")
					return
				}
				<-inside
				if err := g.Release(context.Background()); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
