package lock_test

import (
	"cmp"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/xplock/xplock/lock"
)

// t0 is the judged clock's start in these tests.
var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// judged is a store in memory: it keeps what Decide returns the way a real
// store does, by saving only the difference, and checks that the difference
// is the whole change.
type judged struct {
	t      testing.TB
	k      lock.KeyState
	acks   map[string]lock.Ack
	events []lock.Event
	now    time.Time
}

func newJudged(t testing.TB, key string) *judged {
	return &judged{t: t, k: lock.KeyState{Key: key}, acks: map[string]lock.Ack{}, now: t0}
}

// requester is whose acknowledgement a request loads, "" for none.
func requester(req lock.Request) string {
	switch r := req.(type) {
	case lock.AcquireRequest:
		return r.Holder
	case lock.RenewRequest:
		return r.Holder
	case lock.ReleaseRequest:
		return r.Holder
	case lock.AcknowledgeRequest:
		return r.Holder
	}
	return ""
}

func (j *judged) do(req lock.Request) lock.Decision {
	j.t.Helper()
	holder := requester(req)
	var ack *lock.Ack
	if a, ok := j.acks[holder]; ok && holder != "" {
		ack = &a
	}
	before := j.k
	d := lock.Decide(before, ack, req, j.now)
	if saved := saveDifference(before, d.Changes, d.Next.Row); !sameState(saved, d.Next) {
		j.t.Fatalf("%+v: saving the changes gives\n%+v\nwant Next\n%+v", req, saved, d.Next)
	}
	if d.Changes.Ack != nil {
		if holder == "" {
			j.t.Fatalf("%+v: an acknowledgement without a requester", req)
		}
		j.acks[holder] = *d.Changes.Ack
	}
	for _, e := range d.Events {
		if e.Key != j.k.Key {
			j.t.Fatalf("%+v: event %+v for another key", req, e)
		}
	}
	j.k = d.Next
	j.events = append(j.events, d.Events...)
	return d
}

// saveDifference is what a store does with a decision: write the row when
// it changed, delete, update and insert tenures by token and queue entries
// by Seq.
func saveDifference(k lock.KeyState, c lock.Changes, row lock.KeyRow) lock.KeyState {
	if c.Row {
		k.Row = row
	}
	k.Tenures = saveRecords(k.Tenures, c.Added, c.Updated, c.Removed, func(t lock.Tenure) int64 { return t.Token })
	k.Queue = saveRecords(k.Queue, c.QueueAdded, c.QueueUpdated, c.QueueRemoved, func(q lock.QueueEntry) int64 { return q.Seq })
	slices.SortFunc(k.Queue, func(a, b lock.QueueEntry) int { return cmp.Compare(a.Seq, b.Seq) })
	return k
}

func saveRecords[T any](stored, added, updated, removed []T, id func(T) int64) []T {
	var saved []T
	for _, r := range stored {
		if slices.ContainsFunc(removed, func(x T) bool { return id(x) == id(r) }) {
			continue
		}
		if i := slices.IndexFunc(updated, func(u T) bool { return id(u) == id(r) }); i >= 0 {
			r = updated[i]
		}
		saved = append(saved, r)
	}
	return append(saved, added...)
}

func sameState(a, b lock.KeyState) bool {
	byToken := func(x, y lock.Tenure) int { return cmp.Compare(x.Token, y.Token) }
	at, bt := slices.Clone(a.Tenures), slices.Clone(b.Tenures)
	slices.SortFunc(at, byToken)
	slices.SortFunc(bt, byToken)
	deepEqual := func(x, y any) bool { return reflect.DeepEqual(x, y) }
	return a.Key == b.Key && a.Row == b.Row &&
		slices.EqualFunc(at, bt, func(x, y lock.Tenure) bool { return deepEqual(x, y) }) &&
		slices.EqualFunc(a.Queue, b.Queue, func(x, y lock.QueueEntry) bool { return deepEqual(x, y) })
}

func (j *judged) acquire(holder string, checked bool, ttl time.Duration) lock.Grant {
	j.t.Helper()
	return j.do(lock.AcquireRequest{Key: j.k.Key, Holder: holder, TTL: ttl, Checked: checked}).Grant
}

// mustAcquire acquires and checks the grant's generation and poison.
func (j *judged) mustAcquire(holder string, checked bool, generation int64, poisoned bool) lock.Grant {
	j.t.Helper()
	g := j.acquire(holder, checked, time.Hour)
	if !g.Acquired || g.Generation != generation || g.Poisoned != poisoned {
		j.t.Fatalf("%s acquires: %+v, want acquired at generation %d, poisoned %v", holder, g, generation, poisoned)
	}
	return g
}

func (j *judged) release(holder string, acknowledge bool) {
	j.t.Helper()
	if d := j.do(lock.ReleaseRequest{Key: j.k.Key, Holder: holder, Acknowledge: acknowledge}); d.Err != nil {
		j.t.Fatalf("%s releases: %v", holder, d.Err)
	}
}

func (j *judged) view() lock.State { return lock.View(j.k, j.acks, j.now) }

// lastEvents returns the types of the last n events recorded.
func (j *judged) lastEvents(n int) []string {
	var types []string
	for _, e := range j.events[max(len(j.events)-n, 0):] {
		types = append(types, e.Type)
	}
	return types
}

func wantReason(t *testing.T, d lock.Decision, reason string) *lock.NotHeldError {
	t.Helper()
	var nh *lock.NotHeldError
	if !errors.As(d.Err, &nh) || !errors.Is(d.Err, lock.ErrNotHeld) || nh.Reason != reason {
		t.Fatalf("got %v, want a *NotHeldError (%s)", d.Err, reason)
	}
	return nh
}

// TestDecideWorkedExample is the contract's first worked example, step by
// step.
func TestDecideWorkedExample(t *testing.T) {
	j := newJudged(t, "worked")
	// 1. first acquisition; alice acknowledges 1
	g1 := j.mustAcquire("alice", true, 1, false)
	// 2. re-entrant, same tenure and token
	if g := j.mustAcquire("alice", true, 1, false); !g.Reentrant || g.Token != g1.Token {
		t.Fatalf("step 2: %+v, want re-entrant with token %d", g, g1.Token)
	}
	// 3. bob --nowait: held by alice
	if g := j.acquire("bob", true, time.Hour); g.Acquired || g.Current.State != lock.StateHeld ||
		g.Current.Holder != "alice" || g.Current.Generation != 1 {
		t.Fatalf("step 3: %+v, want refused with alice holding generation 1", g)
	}
	// 4. alice's lease expires; bob acquires: generation 2, bob is new
	j.now = g1.ExpiresAt
	j.mustAcquire("bob", true, 2, false)
	if got := j.lastEvents(2); !slices.Equal(got, []string{lock.EventExpired, lock.EventAcquired}) {
		t.Fatalf("step 4 recorded %v", got)
	}
	// 5. bob releases and acknowledges 2
	j.release("bob", true)
	// 6. alice acquires: poisoned at generation 3
	if g := j.mustAcquire("alice", true, 3, true); g.Acknowledged != 1 {
		t.Fatalf("step 6: acknowledged %d, want 1", g.Acknowledged)
	}
	// 7. still poisoned (re-entrant)
	if g := j.mustAcquire("alice", true, 3, true); !g.Reentrant {
		t.Fatal("step 7: want a re-entrant acquisition")
	}
	// 8. alice releases and acknowledges 3
	j.release("alice", true)
	// 9. same holder as last: no new generation, clean
	j.mustAcquire("alice", true, 3, false)
	// 10. bob --unchecked: generation 4, reported poisoned but not refused
	j.release("alice", true)
	j.mustAcquire("bob", false, 4, true)
	// 11. the unchecked tenure acknowledged nothing: bob is poisoned
	j.release("bob", true)
	j.mustAcquire("bob", true, 4, true)
	// alice acknowledged at step 10, before bob's unchecked tenure.
	if v := j.view(); !slices.Equal(v.PoisonedHolders, []string{"alice", "bob"}) {
		t.Fatalf("poisoned holders %v, want [alice bob]", v.PoisonedHolders)
	}
}

func TestDecideGeneration(t *testing.T) {
	for _, tc := range []struct {
		name string
		// between runs after a's tenure, then b or a (next) acquires.
		between func(j *judged)
		next    string
		want    int64
	}{
		{"same holder after release", func(j *judged) { j.release("a", true) }, "a", 1},
		{"other holder after release", func(j *judged) { j.release("a", true) }, "b", 2},
		{"same holder after expiry", func(j *judged) { j.now = j.now.Add(2 * time.Hour) }, "a", 1},
		{"other holder after expiry", func(j *judged) { j.now = j.now.Add(2 * time.Hour) }, "b", 2},
		{"broken holder comes back", func(j *judged) { j.do(lock.BreakRequest{Key: "k", By: lock.Breaker{Holder: "b"}}) }, "a", 1},
		{"breaker takes it", func(j *judged) { j.do(lock.BreakRequest{Key: "k", By: lock.Breaker{Holder: "b"}}) }, "b", 2},
		{"re-entrant", func(*judged) {}, "a", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := newJudged(t, "k")
			j.mustAcquire("a", true, 1, false)
			tc.between(j)
			j.mustAcquire(tc.next, true, tc.want, false)
		})
	}

	t.Run("first exclusive tenure after shared ones", func(t *testing.T) {
		j := newJudged(t, "k")
		// Readers took the key first: generation 1, no exclusive holder yet.
		j.k.Row = lock.KeyRow{Generation: 1, Token: 2, ChangedAt: t0}
		j.mustAcquire("w", true, 1, false)
		j.release("w", true)
		j.mustAcquire("x", true, 2, false)
	})

	t.Run("never decreases across a long history", func(t *testing.T) {
		j := newJudged(t, "k")
		var last int64
		for i, h := range []string{"a", "b", "b", "a", "c", "a"} {
			g := j.acquire(h, i%2 == 0, time.Hour)
			if g.Generation < last {
				t.Fatalf("generation went from %d to %d", last, g.Generation)
			}
			last = g.Generation
			j.release(h, true)
		}
		if last != 5 {
			t.Fatalf("generation %d after a b b a c a, want 5", last)
		}
	})
}

func TestDecideTokens(t *testing.T) {
	j := newJudged(t, "k")
	first := j.mustAcquire("a", true, 1, false)
	if again := j.mustAcquire("a", true, 1, false); again.Token != first.Token {
		t.Fatalf("re-entrant token %d, want the tenure's %d", again.Token, first.Token)
	}
	// Retaking one's own expired lease: a new tenure, a new token, the same
	// generation, and the expiry recorded first.
	j.now = first.ExpiresAt.Add(time.Second)
	retaken := j.mustAcquire("a", true, 1, false)
	if retaken.Token <= first.Token || retaken.Reentrant || !retaken.AcquiredAt.Equal(j.now) {
		t.Fatalf("retaking one's own expired lease: %+v, want a new tenure with a token above %d", retaken, first.Token)
	}
	if got := j.lastEvents(2); !slices.Equal(got, []string{lock.EventExpired, lock.EventAcquired}) {
		t.Fatalf("recorded %v, want expired then acquired", got)
	}
	j.do(lock.BreakRequest{Key: "k", By: lock.Breaker{Holder: "c"}})
	if after := j.mustAcquire("c", true, 2, false); after.Token != retaken.Token+1 {
		t.Fatalf("token after a break %d, want %d", after.Token, retaken.Token+1)
	}
}

func TestDecideLease(t *testing.T) {
	j := newJudged(t, "k")
	g := j.acquire("a", true, time.Hour)
	if !g.ExpiresAt.Equal(t0.Add(time.Hour)) || g.TTL != time.Hour {
		t.Fatalf("new lease %+v, want an hour from now", g)
	}
	j.now = t0.Add(10 * time.Minute)
	for _, tc := range []struct {
		name    string
		req     lock.Request
		wantEnd time.Time
		wantTTL time.Duration
	}{
		{"re-entrant shorter TTL never shortens", lock.AcquireRequest{Key: "k", Holder: "a", TTL: time.Minute, Checked: true},
			t0.Add(time.Hour), time.Minute},
		{"renew with the tenure's TTL", lock.RenewRequest{Key: "k", Holder: "a"},
			t0.Add(time.Hour), time.Minute},
		{"renew with a longer TTL extends", lock.RenewRequest{Key: "k", Holder: "a", TTL: 2 * time.Hour},
			t0.Add(130 * time.Minute), 2 * time.Hour},
		{"renew with a shorter TTL never shortens", lock.RenewRequest{Key: "k", Holder: "a", TTL: time.Second},
			t0.Add(130 * time.Minute), time.Second},
		{"re-entrant keeping the tenure's TTL", lock.AcquireRequest{Key: "k", Holder: "a", TTL: 3 * time.Hour, KeepTenureTTL: true},
			t0.Add(130 * time.Minute), time.Second},
		{"re-entrant longer TTL extends", lock.AcquireRequest{Key: "k", Holder: "a", TTL: 3 * time.Hour},
			t0.Add(190 * time.Minute), 3 * time.Hour},
	} {
		d := j.do(tc.req)
		if d.Err != nil || !d.Grant.ExpiresAt.Equal(tc.wantEnd) || d.Grant.TTL != tc.wantTTL || len(d.Events) != 0 {
			t.Fatalf("%s: %+v, %v, events %v; want the lease to end at %v with TTL %v, nothing recorded",
				tc.name, d.Grant, d.Err, d.Events, tc.wantEnd, tc.wantTTL)
		}
	}
}

func TestDecideExpiry(t *testing.T) {
	j := newJudged(t, "k")
	g := j.acquire("a", true, time.Minute)
	j.now = g.ExpiresAt.Add(-time.Microsecond)
	if v := j.view(); v.State != lock.StateHeld || !v.Since.Equal(t0) || !v.ExpiresAt.Equal(g.ExpiresAt) {
		t.Fatalf("just before the lease's end: %+v, want held since %v", v, t0)
	}
	// A lease whose end is now has expired.
	j.now = g.ExpiresAt
	if v := j.view(); v.State != lock.StateExpired || !v.Since.Equal(g.ExpiresAt) || v.Holder != "a" {
		t.Fatalf("at the lease's end: %+v, want expired since then", v)
	}
	// Seen much later, the expiry is stamped with the lease's end.
	j.now = g.ExpiresAt.Add(time.Hour)
	d := j.do(lock.ObserveRequest{Key: "k"})
	want := lock.Event{Key: "k", Type: lock.EventExpired, Holder: "a", Mode: lock.ModeExclusive, Generation: 1, Token: g.Token, Time: g.ExpiresAt}
	if len(d.Events) != 1 || d.Events[0] != want || len(d.Changes.Removed) != 1 || !d.Changes.Row {
		t.Fatalf("observing: events %+v, changes %+v; want %+v, the tenure removed and the row saved", d.Events, d.Changes, want)
	}
	if v := d.State; v.State != lock.StateFree || !v.Since.Equal(g.ExpiresAt) || v.Holder != "a" || !v.ExpiresAt.IsZero() {
		t.Fatalf("after observing: %+v, want free since the lease's end", v)
	}
	if d := j.do(lock.ObserveRequest{Key: "k"}); len(d.Events) != 0 || d.Changes.Row {
		t.Fatalf("a second look recorded %+v, changed the row: %v", d.Events, d.Changes.Row)
	}
}

func TestDecideProvedDead(t *testing.T) {
	j := newJudged(t, "k")
	g := j.acquire("a", true, time.Hour)
	j.now = t0.Add(time.Minute)
	j.k.Tenures[0].ProvedDeadAt = j.now // the store proved a's processes gone
	if v := j.view(); v.State != lock.StateExpired || !v.Since.Equal(j.now) {
		t.Fatalf("a dead holder shows %+v, want expired since the proof", v)
	}
	b := j.mustAcquire("b", true, 2, false)
	want := lock.Event{Key: "k", Type: lock.EventExpired, Holder: "a", Mode: lock.ModeExclusive, Generation: 1, Token: g.Token, Time: j.now,
		Detail: lock.DetailHolderDied}
	if j.events[1] != want || b.Token != g.Token+1 {
		t.Fatalf("recorded %+v, want %+v stamped with the proof", j.events[1], want)
	}
}

func TestDecideRefusals(t *testing.T) {
	j := newJudged(t, "k")
	ops := map[string]func(holder string, token int64) lock.Decision{
		"renew": func(h string, tok int64) lock.Decision {
			return j.do(lock.RenewRequest{Key: "k", Holder: h, Token: tok})
		},
		"release": func(h string, tok int64) lock.Decision {
			return j.do(lock.ReleaseRequest{Key: "k", Holder: h, Token: tok})
		},
		"acknowledge": func(h string, tok int64) lock.Decision {
			return j.do(lock.AcknowledgeRequest{Key: "k", Holder: h, Token: tok})
		},
	}
	for name, op := range ops {
		j = newJudged(t, "k")
		// Never acquired: free, nobody named.
		if nh := wantReason(t, op("a", 0), lock.ReasonFree); nh.Current.Holder != "" || nh.Current.Generation != 0 {
			t.Fatalf("%s on a key never acquired: current %+v", name, nh.Current)
		}
		g := j.acquire("a", true, time.Minute)
		if nh := wantReason(t, op("b", 0), lock.ReasonOther); nh.Current.Holder != "a" || nh.Current.State != lock.StateHeld {
			t.Fatalf("%s by another holder: current %+v", name, nh.Current)
		}
		wantReason(t, op("a", g.Token+1), lock.ReasonTenure)
		wantReason(t, op("a", g.Token+5), lock.ReasonTenure)
		// The holder's lease ran out: expired, once, and the expiry is saved
		// with the refusal.
		j.now = g.ExpiresAt.Add(time.Second)
		d := op("a", g.Token)
		nh := wantReason(t, d, lock.ReasonExpired)
		if !nh.Current.ExpiresAt.Equal(g.ExpiresAt) || nh.Current.State != lock.StateFree || len(d.Changes.Removed) != 1 ||
			len(d.Events) != 1 || d.Events[0].Type != lock.EventExpired || d.Changes.Ack != nil {
			t.Fatalf("%s after expiry: %+v, changes %+v, events %+v", name, nh.Current, d.Changes, d.Events)
		}
		wantReason(t, op("a", 0), lock.ReasonFree)
		// Another holder's expiry observed by this request: free.
		g = j.acquire("b", true, time.Minute)
		j.now = g.ExpiresAt
		wantReason(t, op("a", 0), lock.ReasonFree)
		// The holder's expired tenure named by an older token: free.
		g = j.acquire("a", true, time.Minute)
		j.now = g.ExpiresAt
		wantReason(t, op("a", g.Token-1), lock.ReasonFree)
		if len(j.acks) != 2 {
			t.Fatalf("%s: acknowledgements %v, want only the newcomers'", name, j.acks)
		}
	}

	j = newJudged(t, "k")
	d := j.do(lock.BreakRequest{Key: "k", By: lock.Breaker{Holder: "z"}})
	if nh := wantReason(t, d, lock.ReasonFree); nh.Holder != "z" || d.State.State != lock.StateFree {
		t.Fatalf("break of a free key: %+v, state %+v", nh, d.State)
	}
	g := j.acquire("a", true, time.Minute)
	j.now = g.ExpiresAt
	if d := j.do(lock.BreakRequest{Key: "k", By: lock.Breaker{Holder: "z"}}); d.Err == nil || len(d.Events) != 1 || len(d.Changes.Removed) != 1 {
		t.Fatalf("break of an expired lease: %v, events %+v, want refused with the expiry saved", d.Err, d.Events)
	}
}

func TestDecideBreak(t *testing.T) {
	j := newJudged(t, "k")
	g := j.acquire("a", true, time.Hour)
	j.now = t0.Add(time.Minute)
	by := lock.Breaker{Holder: "a", User: "u", Host: "h", PID: 7}
	d := j.do(lock.BreakRequest{Key: "k", By: by})
	want := lock.Event{Key: "k", Type: lock.EventBroken, Holder: "a", Generation: 1, Token: g.Token, Time: j.now}
	if d.Err != nil || len(d.Events) != 1 || d.Events[0].By == nil || *d.Events[0].By != by {
		t.Fatalf("break: %v, events %+v", d.Err, d.Events)
	}
	if e := d.Events[0]; e.Type != want.Type || e.Holder != want.Holder || e.Token != want.Token || !e.Time.Equal(want.Time) {
		t.Fatalf("break recorded %+v, want %+v", e, want)
	}
	if s := d.State; s.State != lock.StateFree || s.Holder != "a" || !s.Since.Equal(j.now) {
		t.Fatalf("after the break: %+v, want free since now, a the last holder", s)
	}
}

// TestDecidePoisonRules follows the contract's poison rules one by one.
func TestDecidePoisonRules(t *testing.T) {
	// handover: a holds and releases (acknowledging), b holds and releases.
	handover := func(t *testing.T) *judged {
		j := newJudged(t, "k")
		j.mustAcquire("a", true, 1, false)
		j.release("a", true)
		j.mustAcquire("b", true, 2, false)
		j.release("b", true)
		return j
	}
	t.Run("1 a checked newcomer acknowledges and is clean", func(t *testing.T) {
		j := handover(t)
		d := j.do(lock.AcquireRequest{Key: "k", Holder: "c", TTL: time.Hour, Checked: true})
		if d.Grant.Poisoned || d.Changes.Ack == nil || d.Changes.Ack.Token != d.Grant.Token {
			t.Fatalf("newcomer: %+v, ack %+v", d.Grant, d.Changes.Ack)
		}
	})
	t.Run("2 poison is sticky until acknowledged", func(t *testing.T) {
		j := handover(t)
		j.mustAcquire("a", true, 3, true)
		j.mustAcquire("a", true, 3, true)
		if d := j.do(lock.AcknowledgeRequest{Key: "k", Holder: "a"}); d.Err != nil || d.Changes.Ack == nil {
			t.Fatalf("acknowledge: %v", d.Err)
		}
		j.mustAcquire("a", true, 3, false)
	})
	t.Run("3 a checked tenure released well acknowledges", func(t *testing.T) {
		j := handover(t)
		j.mustAcquire("a", true, 3, true)
		j.release("a", true)
		j.mustAcquire("a", true, 3, false)
	})
	for name, end := range map[string]func(j *judged){
		"expiry":       func(j *judged) { j.now = j.now.Add(2 * time.Hour) },
		"forced break": func(j *judged) { j.do(lock.BreakRequest{Key: "k", By: lock.Breaker{Holder: "z"}}) },
		"keep-poison":  func(j *judged) { j.release("a", false) },
	} {
		t.Run("4 "+name+" acknowledges nothing", func(t *testing.T) {
			j := handover(t)
			j.mustAcquire("a", true, 3, true)
			end(j)
			j.mustAcquire("a", true, 3, true)
		})
	}
	t.Run("5 unchecked reports but never acknowledges", func(t *testing.T) {
		j := handover(t)
		// A newcomer's unchecked acquisition sets nothing...
		if d := j.do(lock.AcquireRequest{Key: "k", Holder: "c", TTL: time.Hour}); d.Changes.Ack != nil || d.Grant.Poisoned {
			t.Fatalf("unchecked newcomer: %+v, ack %+v", d.Grant, d.Changes.Ack)
		}
		j.release("c", true)
		if _, ok := j.acks["c"]; ok {
			t.Fatal("an unchecked tenure's release acknowledged")
		}
		// ...and a poisoned holder's unchecked tenure reports it truthfully.
		j.mustAcquire("a", false, 4, true)
		j.release("a", true)
		j.mustAcquire("a", true, 4, true)
		// A tenure made checked by a later acquisition stays checked and
		// acknowledges on release.
		j.release("a", false)
		j.mustAcquire("a", false, 4, true)
		j.mustAcquire("a", true, 4, true)
		if g := j.mustAcquire("a", false, 4, true); !g.Checked {
			t.Fatal("an unchecked re-entrant acquisition unchecked the tenure")
		}
		j.release("a", true)
		j.mustAcquire("a", false, 4, false)
	})
	t.Run("6 a refused release acknowledges nothing", func(t *testing.T) {
		j := handover(t)
		g := j.mustAcquire("a", true, 3, true)
		if d := j.do(lock.ReleaseRequest{Key: "k", Holder: "a", Token: g.Token + 1, Acknowledge: true}); d.Err == nil || d.Changes.Ack != nil {
			t.Fatalf("refused release: %v, ack %+v", d.Err, d.Changes.Ack)
		}
		j.now = g.ExpiresAt
		if d := j.do(lock.ReleaseRequest{Key: "k", Holder: "a", Acknowledge: true}); d.Err == nil || d.Changes.Ack != nil {
			t.Fatalf("release after expiry: %v, ack %+v", d.Err, d.Changes.Ack)
		}
		j.mustAcquire("a", true, 3, true)
	})
	t.Run("7 force by the holder itself is a break", func(t *testing.T) {
		j := handover(t)
		j.mustAcquire("a", true, 3, true)
		d := j.do(lock.BreakRequest{Key: "k", By: lock.Breaker{Holder: "a"}})
		if d.Changes.Ack != nil || d.Events[0].Type != lock.EventBroken {
			t.Fatalf("self-break: %+v, ack %+v", d.Events, d.Changes.Ack)
		}
		// a stays the last exclusive holder: same generation, still poisoned.
		j.mustAcquire("a", true, 3, true)
	})
}

// TestViewPoison checks the poison rule in its token form on states that
// shared tenures will produce: a writer's second tenure poisons a reader
// although the generation did not move.
func TestViewPoison(t *testing.T) {
	k := lock.KeyState{Key: "cache", Row: lock.KeyRow{Generation: 1, Token: 5, LastHolder: "w", LastToken: 5, ChangedAt: t0}}
	acks := map[string]lock.Ack{
		"w":  {Token: 1, Generation: 1}, // w's own tenures never poison it
		"r1": {Token: 4, Generation: 1}, // acknowledged before w's tenure 5
		"r2": {Token: 5, Generation: 1}, // acknowledged after it
	}
	if got := lock.View(k, acks, t0).PoisonedHolders; !slices.Equal(got, []string{"r1"}) {
		t.Fatalf("poisoned %v, want [r1]", got)
	}
	// r1 writes (token 6) without having caught up with w's tenure 5.
	k.Row.LastHolder, k.Row.OtherToken, k.Row.LastToken = "r1", 5, 6
	if got := lock.View(k, acks, t0).PoisonedHolders; !slices.Equal(got, []string{"r1", "r2", "w"}) {
		t.Fatalf("after r1 writes: poisoned %v, want [r1 r2 w]", got)
	}
}

func TestMigrate(t *testing.T) {
	for _, tc := range []struct {
		name                     string
		last                     string
		generation, token, acked int64
		holder                   string
		poisoned                 bool
	}{
		{"last holder, current generation", "a", 3, 7, 3, "a", false},
		{"last holder, older generation", "a", 3, 7, 1, "a", true},
		{"other holder, older generation", "a", 3, 7, 2, "b", true},
		{"only holder so far", "a", 1, 4, 1, "a", false},
		{"other holder, current generation", "a", 3, 7, 3, "b", false},
	} {
		row := lock.MigrateRow(tc.last, tc.generation, tc.token, t0)
		ack := lock.MigrateAck(row, tc.acked)
		k := lock.KeyState{Key: "k", Row: row}
		got := slices.Contains(lock.View(k, map[string]lock.Ack{tc.holder: ack}, t0).PoisonedHolders, tc.holder)
		if got != tc.poisoned || ack.Generation != tc.acked {
			t.Errorf("%s: poisoned %v, ack %+v; want poisoned %v", tc.name, got, ack, tc.poisoned)
		}
		// Later decisions go on from the migrated state: the last holder
		// comes back clean only if it was clean.
		j := &judged{t: t, k: k, acks: map[string]lock.Ack{tc.holder: ack}, now: t0}
		if g := j.acquire(tc.holder, true, time.Hour); g.Poisoned != tc.poisoned && tc.holder == tc.last {
			t.Errorf("%s: the last holder's next acquisition reports poisoned %v", tc.name, g.Poisoned)
		}
	}
}

func BenchmarkDecideAcquire(b *testing.B) {
	k := lock.KeyState{Key: "bench", Row: lock.KeyRow{Generation: 3, Token: 9, LastHolder: "a", LastToken: 9, OtherToken: 8, ChangedAt: t0}}
	ack := &lock.Ack{Token: 9, Generation: 3}
	req := lock.AcquireRequest{Key: "bench", Holder: "a", TTL: time.Minute, Checked: true}
	b.ReportAllocs()
	for b.Loop() {
		if d := lock.Decide(k, ack, req, t0); !d.Grant.Acquired {
			b.Fatal("not acquired")
		}
	}
}

// share asks for holder's shared tenure (checked, an hour) under slots.
func (j *judged) share(holder string, slots int) lock.Decision {
	j.t.Helper()
	return j.do(lock.AcquireRequest{Key: j.k.Key, Holder: holder, TTL: time.Hour, Checked: true, Mode: lock.ModeShared, Slots: slots})
}

// mustShare takes holder's shared tenure and checks the grant.
func (j *judged) mustShare(holder string, generation int64, poisoned bool) lock.Grant {
	j.t.Helper()
	g := j.share(holder, 0).Grant
	if !g.Acquired || g.Mode != lock.ModeShared || g.Generation != generation || g.Poisoned != poisoned {
		j.t.Fatalf("%s acquires shared: %+v, want acquired at generation %d, poisoned %v", holder, g, generation, poisoned)
	}
	return g
}

// names lists who holds (or waits for) a key, in order.
func names[T any](of []T, name func(T) string) []string {
	var names []string
	for _, x := range of {
		names = append(names, name(x))
	}
	return names
}

func holderNames(s lock.State) []string {
	return names(s.Holders, func(h lock.HolderState) string { return h.Holder })
}

func waiterNames(s lock.State) []string {
	return names(s.Waiters, func(w lock.WaiterState) string { return w.Holder })
}

// TestDecideReadersWorkedExample is the contract's worked example with
// readers, step by step.
func TestDecideReadersWorkedExample(t *testing.T) {
	j := newJudged(t, "cache")
	// 1. w is the writer; acknowledges
	j.mustAcquire("w", true, 1, false)
	j.release("w", true)
	// 2. two readers at once; newcomers are clean
	j.mustShare("r1", 1, false)
	j.mustShare("r2", 1, false)
	// 3. w --nowait: held shared by r1 and r2
	if g := j.acquire("w", true, time.Hour); g.Acquired || g.Current.Mode != lock.ModeShared ||
		!slices.Equal(holderNames(g.Current), []string{"r1", "r2"}) || g.Current.Generation != 1 {
		t.Fatalf("step 3: %+v, want refused, held shared by r1 and r2 at generation 1", g)
	}
	// 4. both acknowledge
	j.release("r1", true)
	j.release("r2", true)
	// 5. same exclusive holder as last: no new generation, w clean
	j.mustAcquire("w", true, 1, false)
	j.release("w", true)
	// 6. w's tenure of step 5 began after r1's acknowledgement
	j.mustShare("r1", 1, true)
	// 7. acknowledged, then clean
	j.release("r1", true)
	j.mustShare("r1", 1, false)
	j.release("r1", true)
	// 8. r1 now writes: a new exclusive holder, clean
	j.mustAcquire("r1", true, 2, false)
	// 9. r1's exclusive tenure began after w's acknowledgement
	j.release("r1", true)
	j.mustAcquire("w", true, 3, true)
	// w is writing again: both readers have something stale.
	if v := j.view(); !slices.Equal(v.PoisonedHolders, []string{"r1", "r2", "w"}) {
		t.Fatalf("poisoned holders %v, want [r1 r2 w]", v.PoisonedHolders)
	}
}

// hold makes the checked acquisitions reqs (an hour unless they say), each
// of which must be granted.
func (j *judged) hold(reqs []lock.AcquireRequest) {
	j.t.Helper()
	for _, r := range reqs {
		r.Key, r.Checked, r.TTL = j.k.Key, true, cmp.Or(r.TTL, time.Hour)
		if d := j.do(r); !d.Grant.Acquired {
			j.t.Fatalf("setting up %+v: %+v %v", r, d.Grant, d.Err)
		}
	}
}

// TestDecideSharedGrants follows the grant rules of both modes.
func TestDecideSharedGrants(t *testing.T) {
	for _, tc := range []struct {
		name string
		held []lock.AcquireRequest // see hold
		req  lock.AcquireRequest
		want bool
	}{
		{"readers together", []lock.AcquireRequest{{Holder: "r1", Mode: lock.ModeShared}},
			lock.AcquireRequest{Holder: "r2", Mode: lock.ModeShared}, true},
		{"writer waits for readers", []lock.AcquireRequest{{Holder: "r1", Mode: lock.ModeShared}},
			lock.AcquireRequest{Holder: "w"}, false},
		{"reader waits for a writer", []lock.AcquireRequest{{Holder: "w"}},
			lock.AcquireRequest{Holder: "r1", Mode: lock.ModeShared}, false},
		{"slots imply shared", []lock.AcquireRequest{{Holder: "r1", Slots: 2}},
			lock.AcquireRequest{Holder: "r2", Mode: lock.ModeExclusive, Slots: 2}, true},
		{"slots full", []lock.AcquireRequest{{Holder: "r1", Slots: 2}, {Holder: "r2", Slots: 2}},
			lock.AcquireRequest{Holder: "r3", Slots: 2}, false},
		{"one slot is a mutex among readers", []lock.AcquireRequest{{Holder: "r1", Slots: 1}},
			lock.AcquireRequest{Holder: "r2", Slots: 1}, false},
		{"re-entrant within full slots", []lock.AcquireRequest{{Holder: "r1", Slots: 2}, {Holder: "r2", Slots: 2}},
			lock.AcquireRequest{Holder: "r2", Slots: 2}, true},
		{"writer after the readers' leases ran out", []lock.AcquireRequest{{Holder: "r1", Mode: lock.ModeShared, TTL: time.Second}},
			lock.AcquireRequest{Holder: "w"}, true},
		{"other limit after the readers' leases ran out", []lock.AcquireRequest{{Holder: "r1", Slots: 1, TTL: time.Second}},
			lock.AcquireRequest{Holder: "r2", Slots: 5}, true},
		{"own expired reader comes back a writer", []lock.AcquireRequest{{Holder: "r1", Mode: lock.ModeShared, TTL: time.Second}},
			lock.AcquireRequest{Holder: "r1"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := newJudged(t, "k")
			j.hold(tc.held)
			j.now = t0.Add(time.Minute)
			tc.req.Key, tc.req.Checked, tc.req.TTL = "k", true, time.Hour
			d := j.do(tc.req)
			if d.Err != nil || d.Grant.Acquired != tc.want {
				t.Fatalf("%+v: %+v, %v; want acquired %v", tc.req, d.Grant, d.Err, tc.want)
			}
			if !tc.want && (len(d.Changes.Added)+len(d.Changes.Updated) != 0 || d.Changes.Ack != nil || len(d.Events) != 0) {
				t.Fatalf("a refusal changed %+v, recorded %+v", d.Changes, d.Events)
			}
		})
	}
}

// TestDecideConflicts checks the refusals on arrival: they are
// *ConflictErrors naming what is in force, and change nothing.
func TestDecideConflicts(t *testing.T) {
	for _, tc := range []struct {
		name     string
		held     []lock.AcquireRequest
		req      lock.AcquireRequest
		want     error
		inForce  int
		message  string
		heldMode lock.Mode
	}{
		{"other limit", []lock.AcquireRequest{{Holder: "r1", Slots: 2}},
			lock.AcquireRequest{Holder: "r2", Slots: 3}, lock.ErrSlotLimit, 2, "with a limit of 2 slots", ""},
		{"a limit where none is", []lock.AcquireRequest{{Holder: "r1", Mode: lock.ModeShared}},
			lock.AcquireRequest{Holder: "r2", Slots: 3}, lock.ErrSlotLimit, 0, "with no slot limit", ""},
		{"none where one is", []lock.AcquireRequest{{Holder: "r1", Slots: 2}},
			lock.AcquireRequest{Holder: "r2", Mode: lock.ModeShared}, lock.ErrSlotLimit, 2, "asked for no slot limit", ""},
		{"re-entrant with another limit", []lock.AcquireRequest{{Holder: "r1", Slots: 2}},
			lock.AcquireRequest{Holder: "r1", Slots: 3}, lock.ErrSlotLimit, 2, "with a limit of 2 slots", ""},
		{"a full semaphore with another limit", []lock.AcquireRequest{{Holder: "r1", Slots: 1}},
			lock.AcquireRequest{Holder: "r2", Slots: 2}, lock.ErrSlotLimit, 1, "a limit of 1 slots", ""},
		{"reader asks to write", []lock.AcquireRequest{{Holder: "r1", Mode: lock.ModeShared}},
			lock.AcquireRequest{Holder: "r1"}, lock.ErrModeConflict, 0, `"r1" holds it shared and asked for it exclusive`, lock.ModeShared},
		{"writer asks to read", []lock.AcquireRequest{{Holder: "w"}},
			lock.AcquireRequest{Holder: "w", Slots: 4}, lock.ErrModeConflict, 0, `"w" holds it exclusive and asked for it shared`, lock.ModeExclusive},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := newJudged(t, "k")
			j.hold(tc.held)
			before := j.k
			tc.req.Key, tc.req.Checked, tc.req.TTL = "k", true, 2*time.Hour
			d := j.do(tc.req)
			var ce *lock.ConflictError
			if !errors.As(d.Err, &ce) || !errors.Is(d.Err, tc.want) || d.Grant.Acquired {
				t.Fatalf("got %+v, %v; want a *ConflictError (%v)", d.Grant, d.Err, tc.want)
			}
			if ce.Limit != tc.inForce || ce.Held != tc.heldMode || !strings.Contains(ce.Error(), tc.message) ||
				ce.Current.State != lock.StateHeld {
				t.Fatalf("%+v: %q, want the limit %d and the mode %q in force named (%q)", ce, ce.Error(), tc.inForce, tc.heldMode, tc.message)
			}
			if !sameState(before, d.Next) || d.Changes.Row || d.Changes.Ack != nil || len(d.Events) != 0 {
				t.Fatalf("a refusal on arrival changed %+v, recorded %+v", d.Changes, d.Events)
			}
		})
	}
}

// TestDecideSharedTenures checks that each reader has its own tenure, token
// and lease, and what lookers see of them.
func TestDecideSharedTenures(t *testing.T) {
	j := newJudged(t, "k")
	a := j.share("a", 3).Grant
	j.now = t0.Add(time.Minute)
	b := j.share("b", 3).Grant
	if a.Token == b.Token || a.Slots != 3 || b.Generation != 1 || !b.ExpiresAt.After(a.ExpiresAt) {
		t.Fatalf("two readers: %+v and %+v, want their own tokens and leases", a, b)
	}
	if got := j.lastEvents(1); j.events[len(j.events)-1].Mode != lock.ModeShared || got[0] != lock.EventAcquired {
		t.Fatalf("recorded %+v, want a shared acquisition", j.events[len(j.events)-1])
	}
	v := j.view()
	want := []lock.HolderState{
		{Holder: "a", Mode: lock.ModeShared, Token: a.Token, Since: t0, ExpiresAt: a.ExpiresAt},
		{Holder: "b", Mode: lock.ModeShared, Token: b.Token, Since: j.now, ExpiresAt: b.ExpiresAt},
	}
	if v.State != lock.StateHeld || v.Mode != lock.ModeShared || v.Slots != 3 || v.Holder != "" || !sameHolders(v.Holders, want) ||
		!v.Since.Equal(t0) || !v.ExpiresAt.Equal(b.ExpiresAt) || v.Token != b.Token {
		t.Fatalf("view %+v, want held shared by a and b since a began, until b's lease ends", v)
	}
	if msg := (&lock.BusyError{Current: v}).Error(); !strings.Contains(msg, `held shared by "a", "b" (2 of 3 slots)`) {
		t.Fatalf("busy message %q names neither reader", msg)
	}

	// a renews its own lease only; a stranger's renewal is refused.
	j.now = t0.Add(2 * time.Minute)
	if d := j.do(lock.RenewRequest{Key: "k", Holder: "a", Token: a.Token}); d.Err != nil || !d.Grant.ExpiresAt.Equal(j.now.Add(time.Hour)) ||
		d.Grant.Mode != lock.ModeShared || len(d.Changes.Updated) != 1 || d.Changes.Updated[0].Holder != "a" {
		t.Fatalf("a renews: %+v, %v, changes %+v", d.Grant, d.Err, d.Changes)
	}
	if nh := wantReason(t, j.do(lock.RenewRequest{Key: "k", Holder: "c"}), lock.ReasonOther); !strings.Contains(nh.Error(), `held shared by "a", "b"`) {
		t.Fatalf("refusal %q names neither reader", nh.Error())
	}
	// b's lease runs out: b alone is expired, a still holds.
	j.now = b.ExpiresAt
	wantReason(t, j.do(lock.ReleaseRequest{Key: "k", Holder: "b", Acknowledge: true}), lock.ReasonExpired)
	if v := j.view(); !slices.Equal(holderNames(v), []string{"a"}) || v.State != lock.StateHeld {
		t.Fatalf("after b's expiry: %+v, want a holding", v)
	}
	// a releases: free, with no exclusive holder to name.
	j.release("a", true)
	if v := j.view(); v.State != lock.StateFree || v.Mode != "" || v.Slots != 0 || v.Holders != nil || v.Holder != "" || !v.Since.Equal(j.now) {
		t.Fatalf("after the last reader left: %+v, want free since now", v)
	}
	// A writer's first tenure after readers keeps the generation.
	j.mustAcquire("w", true, 1, false)
	if v := j.view(); v.Holder != "w" || v.Mode != lock.ModeExclusive || len(v.Holders) != 1 {
		t.Fatalf("held by the writer: %+v", v)
	}
}

// TestDecideSharedExpiredView: readers whose leases ran out unseen show as
// expired at the latest lease's end, the last writer still named.
func TestDecideSharedExpiredView(t *testing.T) {
	j := newJudged(t, "k")
	j.mustAcquire("w", true, 1, false)
	j.release("w", true)
	r1 := j.do(lock.AcquireRequest{Key: "k", Holder: "r1", TTL: time.Minute, Mode: lock.ModeShared}).Grant
	r2 := j.do(lock.AcquireRequest{Key: "k", Holder: "r2", TTL: 2 * time.Minute, Mode: lock.ModeShared}).Grant
	j.now = t0.Add(time.Hour)
	if v := j.view(); v.State != lock.StateExpired || v.Mode != lock.ModeShared || v.Holder != "w" || len(v.Holders) != 0 ||
		!v.Since.Equal(r2.ExpiresAt) || !v.ExpiresAt.Equal(r2.ExpiresAt) {
		t.Fatalf("view %+v, want expired since r2's lease ended, w the last writer", v)
	}
	d := j.do(lock.ObserveRequest{Key: "k"})
	if len(d.Events) != 2 || !d.Events[0].Time.Equal(r1.ExpiresAt) || !d.Events[1].Time.Equal(r2.ExpiresAt) ||
		d.Events[1].Mode != lock.ModeShared || d.State.State != lock.StateFree || !d.State.Since.Equal(r2.ExpiresAt) {
		t.Fatalf("observed %+v, state %+v; want both expiries stamped with their leases' ends", d.Events, d.State)
	}
}

// TestDecideBreakShared: a break ends every shared tenure at once, one
// broken event each, and acknowledges nobody.
func TestDecideBreakShared(t *testing.T) {
	j := newJudged(t, "k")
	for _, h := range []string{"a", "b", "c"} {
		j.share(h, 0)
	}
	by := lock.Breaker{Holder: "z", User: "u", Host: "h", PID: 9}
	d := j.do(lock.BreakRequest{Key: "k", By: by})
	if d.Err != nil || len(d.Events) != 3 || len(d.Changes.Removed) != 3 || d.State.State != lock.StateFree || d.Changes.Ack != nil {
		t.Fatalf("break: %v, events %+v, changes %+v", d.Err, d.Events, d.Changes)
	}
	for i, e := range d.Events {
		if e.Type != lock.EventBroken || e.Holder != []string{"a", "b", "c"}[i] || e.Mode != lock.ModeShared || e.By == nil || *e.By != by {
			t.Fatalf("event %d: %+v", i, e)
		}
	}
}

// waiter is a process waiting for the key, as the library keeps it: the
// queue entry and since when it waits.
type waiter struct {
	holder string
	mode   lock.Mode
	slots  int
	seq    int64
	since  time.Time
	// lease is the waiting lease each attempt asks for, an hour if zero.
	lease time.Duration
}

// try is one attempt of w, waiting: granted, or keeping its place.
func (j *judged) try(w *waiter) lock.Decision {
	j.t.Helper()
	d := j.do(lock.AcquireRequest{Key: j.k.Key, Holder: w.holder, TTL: time.Hour, Checked: true, Mode: w.mode, Slots: w.slots,
		Wait: true, Seq: w.seq, QueuedSince: w.since, WaitLease: cmp.Or(w.lease, time.Hour)})
	w.seq, w.since = d.Grant.Seq, d.Grant.QueuedSince
	return d
}

// mustWait tries w and checks that it waits with ahead requests ahead.
func (j *judged) mustWait(w *waiter, ahead int) {
	j.t.Helper()
	if d := j.try(w); d.Err != nil || d.Grant.Acquired || d.Grant.Seq == 0 || d.Grant.Ahead != ahead {
		j.t.Fatalf("%s tries: %+v, %v; want it queued with %d ahead", w.holder, d.Grant, d.Err, ahead)
	}
}

// mustTake tries w and checks that it is granted.
func (j *judged) mustTake(w *waiter) lock.Grant {
	j.t.Helper()
	d := j.try(w)
	if d.Err != nil || !d.Grant.Acquired {
		j.t.Fatalf("%s tries: %+v, %v; want it granted", w.holder, d.Grant, d.Err)
	}
	return d.Grant
}

// TestDecideQueueOrder: waiters are served in arrival order, whoever tries
// first, and each grant says how long it waited.
func TestDecideQueueOrder(t *testing.T) {
	j := newJudged(t, "k")
	j.mustAcquire("a", true, 1, false)
	b, c, d := &waiter{holder: "b"}, &waiter{holder: "c"}, &waiter{holder: "d"}
	for i, w := range []*waiter{b, c, d} {
		j.now = t0.Add(time.Duration(i+1) * time.Second)
		j.mustWait(w, i)
	}
	v := j.view()
	if !slices.Equal(waiterNames(v), []string{"b", "c", "d"}) || !v.Waiters[1].Since.Equal(t0.Add(2*time.Second)) ||
		v.Waiters[0].Mode != lock.ModeExclusive {
		t.Fatalf("waiters %+v, want b, c, d in arrival order", v.Waiters)
	}
	if len(j.events) != 1 {
		t.Fatalf("queueing recorded %+v; queue changes are not events", j.events[1:])
	}
	j.now = t0.Add(time.Minute)
	j.release("a", true)
	j.mustWait(d, 2) // d and c wake first, but b is ahead
	j.mustWait(c, 1)
	if g := j.mustTake(b); g.Waited != time.Minute-time.Second || j.events[len(j.events)-1].Waited != g.Waited {
		t.Fatalf("b waited %v (event %+v), want 59s", g.Waited, j.events[len(j.events)-1])
	}
	j.now = t0.Add(2 * time.Minute)
	j.release("b", true)
	j.mustWait(d, 1)
	j.mustTake(c)
	j.release("c", true)
	if g := j.mustTake(d); g.Waited != 2*time.Minute-3*time.Second || g.Generation != 4 {
		t.Fatalf("d: %+v, want waited 117s at generation 4", g)
	}
	if v := j.view(); v.Waiters != nil || len(j.k.Queue) != 0 {
		t.Fatalf("queue %+v after everyone was served", j.k.Queue)
	}
}

// TestDecideNoBarging: a request that does not wait is refused while anyone
// is queued, even on a free lock, unless it is re-entrant.
func TestDecideNoBarging(t *testing.T) {
	j := newJudged(t, "k")
	j.mustAcquire("a", true, 1, false)
	b := &waiter{holder: "b"}
	j.mustWait(b, 0)
	if g := j.mustAcquire("a", true, 1, false); !g.Reentrant {
		t.Fatalf("re-entrant with a queue: %+v", g)
	}
	j.release("a", true)
	d := j.do(lock.AcquireRequest{Key: "k", Holder: "c", TTL: time.Hour, Checked: true})
	if d.Grant.Acquired || d.Grant.Ahead != 1 || d.Grant.Seq != 0 || d.Grant.Current.State != lock.StateFree ||
		len(d.Changes.QueueAdded) != 0 || !slices.Equal(waiterNames(d.Grant.Current), []string{"b"}) {
		t.Fatalf("--nowait on a free lock with b queued: %+v, changes %+v", d.Grant, d.Changes)
	}
	if msg := (&lock.BusyError{Current: d.Grant.Current, Ahead: d.Grant.Ahead}).Error(); !strings.Contains(msg, `lock "k" is free (generation 1), 1 queued ahead`) {
		t.Fatalf("busy message %q", msg)
	}
	// Readers do not barge past queued readers either.
	j = newJudged(t, "k")
	j.share("r1", 2)
	j.share("r2", 2)
	r3 := &waiter{holder: "r3", slots: 2}
	j.mustWait(r3, 0)
	j.release("r1", true)
	if d := j.share("r4", 2); d.Grant.Acquired || d.Grant.Ahead != 1 {
		t.Fatalf("a reader without waiting passed a queued one: %+v", d.Grant)
	}
	j.mustTake(r3)
}

// TestDecideReadersAndWriters: a reader never overtakes a queued writer,
// and consecutive readers at the head are granted together as slots allow.
func TestDecideReadersAndWriters(t *testing.T) {
	j := newJudged(t, "k")
	j.share("r1", 2)
	w := &waiter{holder: "w"}
	j.mustWait(w, 0)
	r2 := &waiter{holder: "r2", slots: 2}
	j.mustWait(r2, 1) // behind the writer, although a slot is free
	j.release("r1", true)
	j.mustWait(r2, 1)
	j.mustTake(w)
	r3, r4 := &waiter{holder: "r3", slots: 2}, &waiter{holder: "r4", slots: 2}
	w2 := &waiter{holder: "w2"}
	j.mustWait(r3, 1)
	j.mustWait(r4, 2)
	j.mustWait(w2, 3)
	j.release("w", true)
	j.mustTake(r3) // r2 is ahead, but shared and under the limit
	j.mustWait(r4, 1)
	j.mustTake(r2)
	j.mustWait(r4, 0) // both slots taken
	j.release("r3", true)
	j.mustTake(r4)
	j.mustWait(w2, 0)
	if v := j.view(); !slices.Equal(holderNames(v), []string{"r2", "r4"}) || !slices.Equal(waiterNames(v), []string{"w2"}) {
		t.Fatalf("view %+v", v)
	}
}

// TestDecideQueueLeases: entries that lapsed or whose waiters are proved
// dead are skipped and dropped by the next decision; leaving is at once; a
// lapsed waiter rejoins at the tail still counting; breaks keep the queue.
func TestDecideQueueLeases(t *testing.T) {
	j := newJudged(t, "k")
	j.mustAcquire("a", true, 1, false)
	lease := 5 * time.Second
	b, c, d := &waiter{holder: "b", lease: lease}, &waiter{holder: "c", lease: lease}, &waiter{holder: "d", lease: lease}
	j.mustWait(b, 0)
	j.mustWait(c, 1)
	j.mustWait(d, 2)
	j.now = t0.Add(4 * time.Second) // c and d renew their places
	j.mustWait(c, 1)
	j.mustWait(d, 2)
	j.now = t0.Add(5 * time.Second) // b's waiting lease ends
	if v := j.view(); !slices.Equal(waiterNames(v), []string{"c", "d"}) {
		t.Fatalf("waiters %v once b lapsed, want c d", waiterNames(v))
	}
	j.k.Queue[1].ProvedDeadAt = j.now // c's process is proved gone
	dec := j.do(lock.ObserveRequest{Key: "k"})
	if len(dec.Changes.QueueRemoved) != 2 || len(dec.Events) != 0 || !slices.Equal(waiterNames(dec.State), []string{"d"}) {
		t.Fatalf("observing: %+v, events %+v, state %+v; want b and c dropped", dec.Changes, dec.Events, dec.State)
	}
	j.mustWait(d, 0)
	// b comes back: it rejoins at the tail, with a new place, still counting.
	j.mustWait(b, 1)
	if b.seq <= 3 || !b.since.Equal(t0) {
		t.Fatalf("b rejoined as %+v, want a new place and its first since", b)
	}
	// A break ends a's tenure; the queue keeps its order.
	j.do(lock.BreakRequest{Key: "k", By: lock.Breaker{Holder: "z"}})
	j.mustWait(b, 1)
	// d gives up: it leaves at once, and b is the head.
	leave := j.do(lock.LeaveQueueRequest{Key: "k", Holder: "d", Seq: d.seq})
	if len(leave.Changes.QueueRemoved) != 1 || !slices.Equal(waiterNames(leave.State), []string{"b"}) {
		t.Fatalf("leaving: %+v", leave.Changes)
	}
	if g := j.mustTake(b); g.Waited != j.now.Sub(t0) {
		t.Fatalf("b waited %v, want %v counted from its first arrival", g.Waited, j.now.Sub(t0))
	}
	// Leaving a place that is gone, or someone else's, changes nothing.
	if dec := j.do(lock.LeaveQueueRequest{Key: "k", Holder: "x", Seq: b.seq}); len(dec.Changes.QueueRemoved) != 0 || dec.Err != nil {
		t.Fatalf("leaving a place that is not there: %+v, %v", dec.Changes, dec.Err)
	}
}

// TestDecideQueueLimit: with no reader holding the key, the queued readers'
// limit is the one in force; a conflict met at an entry's turn drops it.
func TestDecideQueueLimit(t *testing.T) {
	j := newJudged(t, "k")
	j.mustAcquire("w", true, 1, false)
	r1 := &waiter{holder: "r1", slots: 2}
	j.mustWait(r1, 0)
	before := j.k
	d := j.do(lock.AcquireRequest{Key: "k", Holder: "r2", TTL: time.Hour, Slots: 3, Wait: true})
	var ce *lock.ConflictError
	if !errors.As(d.Err, &ce) || !errors.Is(d.Err, lock.ErrSlotLimit) || !ce.Queued || ce.Limit != 2 ||
		!strings.Contains(ce.Error(), "the shared requests queued for it wait with a limit of 2 slots") || !sameState(before, d.Next) {
		t.Fatalf("another limit than the queue's: %v (%+v), changes %+v", d.Err, ce, d.Changes)
	}
	// An entry whose limit is no longer the one in force (a store written
	// otherwise) can never be granted: its turn drops it.
	j.k.Tenures = []lock.Tenure{{Holder: "r0", Mode: lock.ModeShared, Token: 9, AcquiredAt: t0, ExpiresAt: t0.Add(time.Hour), Slots: 5}}
	if d := j.try(r1); !errors.Is(d.Err, lock.ErrSlotLimit) || len(d.Changes.QueueRemoved) != 1 || len(j.k.Queue) != 0 {
		t.Fatalf("a conflict at the entry's turn: %v, changes %+v", d.Err, d.Changes)
	}
}

// TestDecideKeepers: a tenure's and an entry's keepers are the union over
// the request's attempts.
func TestDecideKeepers(t *testing.T) {
	j := newJudged(t, "k")
	k1, k2 := lock.Keeper{BootID: "b", PID: 1, Start: 10}, lock.Keeper{BootID: "b", PID: 2, Start: 20, Group: 2}
	acquire := func(holder string, wait bool, k lock.Keeper) lock.Decision {
		return j.do(lock.AcquireRequest{Key: "k", Holder: holder, TTL: time.Hour, Wait: wait, Seq: 1, Keepers: []lock.Keeper{k}})
	}
	acquire("a", false, k1)
	acquire("a", false, k2)
	acquire("a", false, k1)
	acquire("b", true, k2)
	acquire("b", true, k1)
	if got := j.k.Tenures[0].Keepers; !slices.Equal(got, []lock.Keeper{k1, k2}) {
		t.Fatalf("tenure keepers %+v", got)
	}
	if got := j.k.Queue[0].Keepers; !slices.Equal(got, []lock.Keeper{k2, k1}) {
		t.Fatalf("entry keepers %+v", got)
	}
}

// provedGone is a Prover for which the keepers it names are gone.
type provedGone []lock.Keeper

func (p provedGone) ProveDead(keepers []lock.Keeper) bool {
	for _, k := range keepers {
		if !slices.Contains(p, k) {
			return false
		}
	}
	return true
}

// TestDecideWaitKeepers: a queue entry is kept alive by the request's
// WaitKeepers, the waiting process, even when its tenure would have no
// keepers (a detached acquisition): a waiter proved dead is skipped at
// once, and the next one granted, long before its waiting lease lapses.
// The tenure a waiter is granted keeps only the request's Keepers.
func TestDecideWaitKeepers(t *testing.T) {
	j := newJudged(t, "k")
	j.mustAcquire("a", true, 1, false)
	kb, kc := lock.Keeper{BootID: "b", PID: 2, Start: 20}, lock.Keeper{BootID: "b", PID: 3, Start: 30}
	waits := func(holder string, seq int64, k lock.Keeper) lock.Grant {
		d := j.do(lock.AcquireRequest{Key: "k", Holder: holder, TTL: time.Hour, Checked: true, Wait: true, Seq: seq,
			WaitLease: time.Hour, WaitKeepers: []lock.Keeper{k}})
		if d.Err != nil {
			t.Fatalf("%s: %v", holder, d.Err)
		}
		return d.Grant
	}
	b := waits("b", 0, kb)
	c := waits("c", 0, kc)
	if got := j.k.Queue[0].Keepers; !slices.Equal(got, []lock.Keeper{kb}) {
		t.Fatalf("b's entry keepers %+v, want its waiting process", got)
	}
	j.now = t0.Add(time.Second)
	waits("b", b.Seq, kb) // b renews its place: still one keeper
	if got := j.k.Queue[0].Keepers; !slices.Equal(got, []lock.Keeper{kb}) {
		t.Fatalf("b's entry keepers after renewal %+v", got)
	}
	j.release("a", true)
	// b is killed: the store proves its waiting process gone.
	lock.ProveDeaths(provedGone{kb}, &j.k, j.now)
	g := waits("c", c.Seq, kc)
	if !g.Acquired {
		t.Fatalf("c behind a dead b: %+v, want it granted", g)
	}
	if len(j.k.Queue) != 0 {
		t.Fatalf("queue %+v, want b's dead entry dropped", j.k.Queue)
	}
	if got := j.k.Tenures[0].Keepers; got != nil {
		t.Fatalf("c's detached tenure has keepers %+v, want none", got)
	}
}
