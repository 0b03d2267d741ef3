package lock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/xplock/xplock/lock"
)

// storeState reads key k's row from the store.
func storeState(t *testing.T, s lock.Store) lock.State {
	t.Helper()
	snap, err := s.Snapshot(context.Background(), "k")
	if err != nil || len(snap.Locks) != 1 {
		t.Fatalf("Snapshot: %v (%d rows)", err, len(snap.Locks))
	}
	return snap.Locks[0]
}

// lockOrFail takes l, accepting poison.
func lockOrFail(t *testing.T, l *lock.Lock) *lock.Guard {
	t.Helper()
	g, err := l.Lock(context.Background())
	if g == nil {
		t.Fatalf("%s: Lock: %v", l.Holder(), err)
	}
	return g
}

// Two guards of one Lock share one tenure: releasing one leaves the other
// held, in the store and in its context, and its renewal goes on; the
// tenure ends with the last release.
func TestGuardsOfOneLockAreCounted(t *testing.T) {
	ctx := context.Background()
	s := openDoStore(t)
	// A lease short enough that the wait below outlives it: only renewal
	// keeps the second guard held.
	const ttl = 2 * time.Second
	l, err := lock.New(s, "k", "app", lock.Options{TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	first, second := lockOrFail(t, l), lockOrFail(t, l)
	if first.Token() != second.Token() {
		t.Fatalf("tokens %d and %d, want one tenure", first.Token(), second.Token())
	}
	if err := first.Release(ctx); err != nil {
		t.Fatalf("release of the first guard: %v", err)
	}
	if err := first.Err(); !errors.Is(err, lock.ErrReleased) {
		t.Errorf("first guard's error %v, want ErrReleased", err)
	}
	if err := first.Release(ctx); !errors.Is(err, lock.ErrReleased) {
		t.Errorf("second release of the first guard: %v, want ErrReleased", err)
	}
	if st := storeState(t, s); st.State != lock.StateHeld || st.Token != second.Token() {
		t.Fatalf("after releasing one of two guards the store shows %+v, want held in token %d", st, second.Token())
	}
	select {
	case <-second.Context().Done():
		t.Fatalf("the second guard ended with the first: %v", context.Cause(second.Context()))
	case <-time.After(ttl + ttl/2):
	}
	if st := storeState(t, s); st.State != lock.StateHeld || st.Token != second.Token() || second.Err() != nil {
		t.Fatalf("1.5 TTLs after releasing the first guard the store shows %+v (second guard's error %v), want held and renewed", st, second.Err())
	}
	if err := second.Release(ctx); err != nil {
		t.Fatalf("release of the last guard: %v", err)
	}
	if st := storeState(t, s); st.State != lock.StateFree {
		t.Fatalf("after releasing both guards the store shows %+v, want free", st)
	}
	if err := second.Err(); !errors.Is(err, lock.ErrReleased) {
		t.Errorf("second guard's error %v, want ErrReleased", err)
	}
	// The next acquisition is a tenure of its own.
	third := lockOrFail(t, l)
	defer third.Release(ctx)
	if third.Token() == second.Token() || third.Err() != nil {
		t.Errorf("after the last release Lock gave token %d (error %v), want a new tenure", third.Token(), third.Err())
	}
}

// The last release of a tenure acknowledges the poison only when every
// guard of the tenure was released cleanly: one ReleaseKeepPoison keeps
// it, whichever guard went last.
func TestGuardsAcknowledgeOnlyIfAllReleasedCleanly(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name          string
		first, second func(*lock.Guard, context.Context) error
		wantPoisoned  bool
	}{
		{"both clean", (*lock.Guard).Release, (*lock.Guard).Release, false},
		{"first keeps poison", (*lock.Guard).ReleaseKeepPoison, (*lock.Guard).Release, true},
		{"last keeps poison", (*lock.Guard).Release, (*lock.Guard).ReleaseKeepPoison, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openDoStore(t)
			alice, bob := newDoLock(t, s, "alice"), newDoLock(t, s, "bob")
			holdAndRelease(t, alice)
			holdAndRelease(t, bob) // alice is poisoned now
			first, second := lockOrFail(t, alice), lockOrFail(t, alice)
			if !first.Poisoned() || !second.Poisoned() {
				t.Fatal("alice's guards are not poisoned")
			}
			if err := tc.first(first, ctx); err != nil {
				t.Fatal(err)
			}
			if err := tc.second(second, ctx); err != nil {
				t.Fatal(err)
			}
			next, err := alice.Lock(ctx)
			if next == nil {
				t.Fatal(err)
			}
			defer next.Release(ctx)
			if got := errors.Is(err, lock.ErrPoisoned); got != tc.wantPoisoned {
				t.Errorf("alice's next Lock: %v, want poisoned %v", err, tc.wantPoisoned)
			}
		})
	}
}

// A break ends every guard of the tenure.
func TestGuardsAllLoseABrokenTenure(t *testing.T) {
	ctx := context.Background()
	s := openDoStore(t)
	l := newDoLock(t, s, "app")
	first, second := lockOrFail(t, l), lockOrFail(t, l)
	if _, err := s.Break(ctx, "k", lock.Breaker{Holder: "ops"}); err != nil {
		t.Fatal(err)
	}
	lock.NotifyHolder(ctx, s, "k")
	for i, g := range []*lock.Guard{first, second} {
		select {
		case <-g.Done():
		case <-time.After(10 * time.Second):
			t.Fatalf("guard %d did not notice the break within 10s", i+1)
		}
		if err := g.Release(ctx); !errors.Is(err, lock.ErrLeaseLost) {
			t.Errorf("release of guard %d after the break: %v, want ErrLeaseLost", i+1, err)
		}
	}
}

// Goroutines that share one Lock take and release guards at random
// moments: while any guard is live the store shows the tenure held, and
// after the last release it is free.
func TestGuardsOfOneLockConcurrently(t *testing.T) {
	ctx := context.Background()
	s := openDoStore(t)
	l := newDoLock(t, s, "app")
	const workers, rounds = 4, 20
	errs := make(chan error, workers)
	for range workers {
		go func() {
			for range rounds {
				g, err := l.Lock(ctx)
				if err != nil {
					errs <- err
					return
				}
				snap, err := s.Snapshot(ctx, "k")
				if err == nil && (snap.Locks[0].State != lock.StateHeld || snap.Locks[0].Token != g.Token()) {
					err = errors.New("a live guard's tenure is not held in the store")
				}
				if err == nil {
					err = g.Release(ctx)
				}
				if err != nil {
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
	if st := storeState(t, s); st.State != lock.StateFree {
		t.Fatalf("after every guard was released the store shows %+v, want free", st)
	}
}
