package lock_test

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/sqlite"
)

func openDoStore(t *testing.T) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "locks.db"), sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newDoLock(t *testing.T, s lock.Store, holder string) *lock.Lock {
	t.Helper()
	l, err := lock.New(s, "k", holder, lock.Options{TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// holdAndRelease gives the key to holder for one clean tenure.
func holdAndRelease(t *testing.T, l *lock.Lock) {
	t.Helper()
	ctx := context.Background()
	g, err := l.Lock(ctx)
	if g == nil {
		t.Fatalf("%s: Lock: %v", l.Holder(), err)
	}
	if err := g.Release(ctx); err != nil {
		t.Fatalf("%s: Release: %v", l.Holder(), err)
	}
}

// Do acknowledges the poison only when fn succeeds, and releases always.
func TestDoAcknowledgesOnlyOnSuccess(t *testing.T) {
	ctx := context.Background()
	s := openDoStore(t)
	alice, bob := newDoLock(t, s, "alice"), newDoLock(t, s, "bob")
	holdAndRelease(t, alice)
	holdAndRelease(t, bob) // alice is poisoned now

	errWork := errors.New("work failed")
	var sawPoison bool
	err := alice.Do(ctx, func(ctx context.Context, g *lock.Guard) error {
		sawPoison = g.Poisoned()
		return errWork
	})
	if !errors.Is(err, errWork) || !sawPoison {
		t.Fatalf("failed fn: Do = %v, poisoned seen %v; want the fn's error and poison", err, sawPoison)
	}
	// Released, and still poisoned: bob can take it, alice's next Do sees poison.
	err = alice.Do(ctx, func(ctx context.Context, g *lock.Guard) error {
		sawPoison = g.Poisoned()
		return nil
	})
	if err != nil || !sawPoison {
		t.Fatalf("second Do = %v, poisoned seen %v; want nil and still poisoned", err, sawPoison)
	}
	err = alice.Do(ctx, func(ctx context.Context, g *lock.Guard) error {
		sawPoison = g.Poisoned()
		return nil
	})
	if err != nil || sawPoison {
		t.Fatalf("third Do = %v, poisoned seen %v; want nil and clean after a successful fn", err, sawPoison)
	}
	if g, err := bob.TryLock(ctx); err != nil && !errors.Is(err, lock.ErrPoisoned) {
		t.Fatalf("after Do the lock should be free: %v", err)
	} else {
		g.Release(ctx)
	}
}

// A lease lost while fn runs ends fn's context and is Do's error, whatever
// fn returned.
func TestDoReportsLostLease(t *testing.T) {
	ctx := context.Background()
	s := openDoStore(t)
	alice := newDoLock(t, s, "alice")
	err := alice.Do(ctx, func(fnCtx context.Context, g *lock.Guard) error {
		if _, err := s.Break(ctx, "k", lock.Breaker{Holder: "ops"}); err != nil {
			t.Errorf("Break: %v", err)
		}
		lock.NotifyHolder(ctx, s, "k")
		select {
		case <-fnCtx.Done():
		case <-time.After(30 * time.Second):
			t.Error("fn's context did not end after the break")
		}
		return nil
	})
	if !errors.Is(err, lock.ErrLeaseLost) {
		t.Fatalf("Do = %v, want ErrLeaseLost", err)
	}
}

// A lock held by someone else until ctx ends gives a *BusyError and fn
// never runs.
func TestDoBusy(t *testing.T) {
	ctx := context.Background()
	s := openDoStore(t)
	bob := newDoLock(t, s, "bob")
	g, err := bob.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Release(ctx)
	waitCtx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	ran := false
	err = newDoLock(t, s, "alice").Do(waitCtx, func(context.Context, *lock.Guard) error {
		ran = true
		return nil
	})
	var busy *lock.BusyError
	if !errors.As(err, &busy) || ran || busy.Current.Holder != "bob" {
		t.Fatalf("Do = %v (ran %v), want a *BusyError naming bob and fn not run", err, ran)
	}
}

// A release after the caller's context ended still releases, as
// sql.Tx.Rollback does; a Guard is an io.Closer.
func TestReleaseAfterContextEnded(t *testing.T) {
	s := openDoStore(t)
	alice, bob := newDoLock(t, s, "alice"), newDoLock(t, s, "bob")
	ctx, cancel := context.WithCancel(context.Background())
	g, err := alice.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := g.Release(ctx); err != nil {
		t.Fatalf("Release with an ended context: %v", err)
	}
	g, err = bob.TryLock(context.Background())
	if err != nil {
		t.Fatalf("the lock should be free after the release: %v", err)
	}
	var closer io.Closer = g
	if err := closer.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if !errors.Is(g.Err(), lock.ErrReleased) {
		t.Fatalf("after Close, Err = %v, want ErrReleased", g.Err())
	}
}
