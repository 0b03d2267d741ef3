package sqlite_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/sqlite"
)

// FuzzStoreModel runs byte-driven sequences of store operations on three
// keys and three holders against an in-memory model of SPEC.md's rules, and
// compares every result, every refusal's reason, every snapshot and, at the
// end, every key's history. The seeds in testdata/fuzz/FuzzStoreModel run as
// ordinary tests; `go test -fuzz=FuzzStoreModel ./sqlite` searches further.
//
// Each operation is two bytes: the operation, then an argument that picks
// the key (arg%3), the holder (arg/3%3) and a variant (arg/9). Leases are an
// hour, so nothing expires by itself, except that of the operation that
// takes a free key with a millisecond's lease and waits until it has passed
// (a live lease never ends earlier, so none is shortened).
func FuzzStoreModel(f *testing.F) {
	f.Add([]byte{8, 0, 0, 3, 2, 3, 0, 0, 0, 0, 2, 0, 0, 0, 2, 0, 1, 3, 2, 3, 0, 3, 9, 0})
	f.Add([]byte{0, 0, 6, 3, 0, 0, 9, 0, 4, 9, 4, 18, 7, 0, 5, 9, 5, 18, 1, 3, 0, 3, 3, 3, 0, 3})
	f.Add([]byte{0, 1, 8, 1, 2, 1, 4, 1, 0, 4, 8, 4, 0, 1, 6, 5, 7, 4, 9, 1, 9, 4})
	// Leases that run out: seen by a snapshot, a renewal, a newcomer, a break.
	f.Add([]byte{8, 0, 9, 0, 5, 0, 0, 3, 9, 0, 2, 3, 8, 1, 6, 1, 8, 2, 2, 11, 0, 2, 9, 2})
	// One store for the whole run; each input uses keys of its own.
	store, err := sqlite.Open(context.Background(), filepath.Join(f.TempDir(), "locks.db"), sqlite.Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { store.Close() })
	var run atomic.Int64
	f.Fuzz(func(t *testing.T, ops []byte) {
		m := &storeModel{t: t, s: store, run: run.Add(1), keys: map[string]*modelKey{}}
		for i := 0; i+1 < len(ops) && i < 2*64; i += 2 {
			m.step(ops[i], ops[i+1])
		}
		m.checkHistory()
	})
}

var (
	modelHolders = []string{"alice", "bob", "carol"}
	modelTTL     = time.Hour
)

// modelKey is one key as SPEC.md describes it.
type modelKey struct {
	exists  bool
	holder  string // current or last holder
	gen     int64
	token   int64
	held    bool // a tenure is open...
	expired bool // ...but its lease ran out, and no operation observed it yet
	checked bool
	acks    map[string]int64
	events  []lock.Event
}

func (k *modelKey) live() bool { return k.held && !k.expired }

func (k *modelKey) event(typ string) {
	k.events = append(k.events, lock.Event{Type: typ, Holder: k.holder, Generation: k.gen, Token: k.token})
}

// observeExpiry records a lease that ran out, as the store does when an
// acquisition, release, renewal, break or acknowledgement looks at the key.
func (k *modelKey) observeExpiry() bool {
	if !k.held || !k.expired {
		return false
	}
	k.event(lock.EventExpired)
	k.held, k.expired, k.checked = false, false, false
	return true
}

func (k *modelKey) poisoned() []string {
	var names []string
	for h, g := range k.acks {
		if g != k.gen {
			names = append(names, h)
		}
	}
	slices.Sort(names)
	return names
}

type storeModel struct {
	t    *testing.T
	s    *sqlite.Store
	run  int64
	keys map[string]*modelKey
	log  []string // the operations so far, for failure messages
}

func (m *storeModel) key(i int) (string, *modelKey) {
	name := fmt.Sprintf("run%d/k%d", m.run, i)
	if m.keys[name] == nil {
		m.keys[name] = &modelKey{acks: map[string]int64{}}
	}
	return name, m.keys[name]
}

func (m *storeModel) fatalf(format string, args ...any) {
	m.t.Helper()
	m.t.Fatalf("after %v:\n"+format, append([]any{m.log}, args...)...)
}

// token picks the token an operation names: variant 0 any tenure, 1 the
// current tenure's, 2 an earlier one, 3 a later one.
func tokenVariant(k *modelKey, variant int) int64 {
	switch variant % 4 {
	case 1:
		return k.token
	case 2:
		return k.token - 1
	case 3:
		return k.token + 1
	}
	return 0
}

// holding is the store's decision for release, renew and acknowledge: the
// refusal reason, or "" when holder holds the key in the tenure token.
func (k *modelKey) holding(holder string, token int64) string {
	if k.observeExpiry() && k.holder == holder && (token == 0 || token == k.token) {
		return lock.ReasonExpired
	}
	switch {
	case !k.held:
		return lock.ReasonFree
	case k.holder != holder:
		return lock.ReasonOther
	case token != 0 && token != k.token:
		return lock.ReasonTenure
	}
	return ""
}

func (m *storeModel) step(op, arg byte) {
	m.t.Helper()
	ctx := context.Background()
	name, k := m.key(int(arg % 3))
	holder := modelHolders[arg/3%3]
	variant := int(arg / 9)
	switch op % 10 {
	case 0, 1: // acquire, checked or not
		m.acquire(name, k, holder, op%10 == 0, variant%2 == 1, modelTTL)

	case 2, 3, 4: // release: acknowledging, keeping poison, naming a tenure
		token := int64(0)
		if op%10 == 4 {
			token = tokenVariant(k, variant)
		}
		acknowledge := op%10 != 3
		m.log = append(m.log, fmt.Sprintf("%s release %s token=%d acknowledge=%v", holder, name, token, acknowledge))
		st, err := m.s.Release(ctx, lock.ReleaseRequest{Key: name, Holder: holder, Token: token, Acknowledge: acknowledge})
		if m.refused("Release", err, k.holding(holder, token)) {
			return
		}
		k.event(lock.EventReleased)
		if acknowledge && k.checked {
			k.acks[holder] = k.gen
		}
		k.held, k.checked = false, false
		if st.State != lock.StateFree || st.Holder != holder || st.Generation != k.gen || st.Token != k.token {
			m.fatalf("Release: %+v, want free with the ended tenure (generation %d, token %d)", st, k.gen, k.token)
		}

	case 5: // renew
		token := tokenVariant(k, variant)
		ttl := time.Duration(0)
		if variant%2 == 1 {
			ttl = modelTTL
		}
		m.log = append(m.log, fmt.Sprintf("%s renew %s token=%d", holder, name, token))
		g, err := m.s.Renew(ctx, lock.RenewRequest{Key: name, Holder: holder, Token: token, TTL: ttl})
		if m.refused("Renew", err, k.holding(holder, token)) {
			return
		}
		if g.Generation != k.gen || g.Token != k.token || g.Holder != holder || !g.ExpiresAt.After(g.Now) {
			m.fatalf("Renew: %+v, want generation %d, token %d", g, k.gen, k.token)
		}

	case 6: // break
		m.log = append(m.log, fmt.Sprintf("%s breaks %s", holder, name))
		by := lock.Breaker{Holder: holder, User: "fuzz", Host: "here", PID: 1}
		st, err := m.s.Break(ctx, name, by)
		k.observeExpiry()
		reason := ""
		if !k.held {
			reason = lock.ReasonFree
		}
		if m.refused("Break", err, reason) {
			return
		}
		k.event(lock.EventBroken)
		k.events[len(k.events)-1].By = &by
		k.held, k.checked = false, false
		if st.State != lock.StateFree || st.Holder != k.holder || st.Generation != k.gen || st.Token != k.token {
			m.fatalf("Break: %+v, want free with the broken tenure (%s, generation %d, token %d)", st, k.holder, k.gen, k.token)
		}

	case 7: // acknowledge (Guard.ClearPoison)
		token := tokenVariant(k, variant)
		m.log = append(m.log, fmt.Sprintf("%s acknowledges %s token=%d", holder, name, token))
		err := m.s.Acknowledge(ctx, name, holder, token)
		if m.refused("Acknowledge", err, k.holding(holder, token)) {
			return
		}
		k.acks[holder] = k.gen

	case 8: // a new tenure whose lease runs out at once
		if k.live() {
			return // a live lease never ends earlier
		}
		g, ok := m.acquire(name, k, holder, variant%2 == 0, false, time.Millisecond)
		if !ok {
			return
		}
		m.log = append(m.log, fmt.Sprintf("%s's lease on %s runs out", holder, name))
		for time.Now().Before(g.ExpiresAt.Add(time.Millisecond)) {
			time.Sleep(time.Millisecond)
		}
		k.expired = true

	case 9: // snapshot
		m.log = append(m.log, "snapshot "+name)
		snap, err := m.s.Snapshot(ctx, name)
		if err != nil {
			m.fatalf("Snapshot: %v", err)
		}
		if !k.exists {
			if len(snap.Locks) != 0 {
				m.fatalf("Snapshot of a key never acquired: %+v", snap.Locks)
			}
			return
		}
		state := lock.StateFree
		switch {
		case k.live():
			state = lock.StateHeld
		case k.held:
			state = lock.StateExpired
		}
		if len(snap.Locks) != 1 {
			m.fatalf("Snapshot: %+v, want one lock", snap.Locks)
		}
		s := snap.Locks[0]
		if s.Key != name || s.State != state || s.Holder != k.holder || s.Generation != k.gen || s.Token != k.token ||
			!slices.Equal(s.PoisonedHolders, k.poisoned()) {
			m.fatalf("Snapshot: %+v\nwant %s by %s, generation %d, token %d, poisoned %v",
				s, state, k.holder, k.gen, k.token, k.poisoned())
		}
	}
}

// acquire acquires name for holder with a lease of ttl and checks the grant
// against the model; ok reports a new or re-entrant tenure.
func (m *storeModel) acquire(name string, k *modelKey, holder string, checked, keepTenureTTL bool, ttl time.Duration) (g lock.Grant, ok bool) {
	m.t.Helper()
	m.log = append(m.log, fmt.Sprintf("%s acquire %s checked=%v ttl=%v", holder, name, checked, ttl))
	g, err := m.s.Acquire(context.Background(), lock.AcquireRequest{Key: name, Holder: holder, TTL: ttl,
		KeepTenureTTL: keepTenureTTL, Checked: checked})
	if err != nil {
		m.fatalf("Acquire: %v", err)
	}
	if k.live() && k.holder != holder {
		c := g.Current
		if g.Acquired || c.State != lock.StateHeld || c.Holder != k.holder || c.Generation != k.gen || c.Token != k.token {
			m.fatalf("Acquire while %s holds it: %+v, want not acquired and the holder's state", k.holder, g)
		}
		return g, false
	}
	reentrant := k.live()
	prevToken := k.token
	if reentrant {
		k.checked = k.checked || checked
	} else {
		k.observeExpiry()
		switch {
		case !k.exists:
			k.gen = 1
		case k.holder != holder:
			k.gen++
		}
		if !g.Acquired || g.Token <= prevToken {
			m.fatalf("Acquire: %+v, want a new tenure with a token above %d", g, prevToken)
		}
		k.exists, k.holder, k.token, k.held, k.checked = true, holder, g.Token, true, checked
		k.event(lock.EventAcquired)
	}
	acked := k.acks[holder]
	if acked == 0 && checked {
		acked = k.gen
		k.acks[holder] = acked
	}
	poisoned := acked != 0 && acked != k.gen
	if !g.Acquired || g.Key != name || g.Holder != holder || g.Generation != k.gen || g.Token != k.token ||
		g.Reentrant != reentrant || g.Poisoned != poisoned || g.Acknowledged != acked || g.Checked != k.checked ||
		!g.ExpiresAt.After(g.Now) {
		m.fatalf("Acquire: %+v\nwant generation %d, token %d, reentrant %v, poisoned %v, acknowledged %d, checked %v",
			g, k.gen, k.token, reentrant, poisoned, acked, k.checked)
	}
	return g, true
}

// refused checks a refusal against the model's reason ("" for none) and
// reports whether the operation was refused.
func (m *storeModel) refused(op string, err error, reason string) bool {
	m.t.Helper()
	var nh *lock.NotHeldError
	switch {
	case reason == "" && err == nil:
		return false
	case reason == "":
		m.fatalf("%s: %v, want success", op, err)
	case !errors.As(err, &nh) || !errors.Is(err, lock.ErrNotHeld):
		m.fatalf("%s: %v (%T), want a *lock.NotHeldError (%s)", op, err, err, reason)
	case nh.Reason != reason:
		m.fatalf("%s: refused with reason %q (%v), want %q", op, nh.Reason, err, reason)
	}
	return true
}

// checkHistory compares every key's stored history with the model's.
func (m *storeModel) checkHistory() {
	m.t.Helper()
	for name, k := range m.keys {
		events, err := m.s.History(context.Background(), name, 0)
		if err != nil {
			m.fatalf("History: %v", err)
		}
		got := make([]lock.Event, len(events))
		for i, e := range events {
			got[i] = lock.Event{Type: e.Type, Holder: e.Holder, Generation: e.Generation, Token: e.Token, By: e.By}
			if e.Key != name || (i > 0 && e.ID <= events[i-1].ID) {
				m.fatalf("History of %s: event %d is %+v", name, i, e)
			}
		}
		if !slices.EqualFunc(got, k.events, func(a, b lock.Event) bool {
			return a.Type == b.Type && a.Holder == b.Holder && a.Generation == b.Generation && a.Token == b.Token &&
				(a.By == nil) == (b.By == nil) && (a.By == nil || *a.By == *b.By)
		}) {
			m.fatalf("History of %s:\n got %+v\nwant %+v", name, got, k.events)
		}
	}
}
