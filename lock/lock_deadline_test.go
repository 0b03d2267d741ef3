package lock_test

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/sqlite"
)

// slowStore answers the first tries busy, then blocks every later try
// until its context ends, like a store waiting for a busy database.
type slowStore struct {
	lock.Store // only Acquire, Subscribe and Snapshot are called
	busyTries  int
	tries      int
}

func (s *slowStore) Acquire(ctx context.Context, req lock.AcquireRequest) (lock.Grant, error) {
	s.tries++
	if s.tries <= s.busyTries {
		return lock.Grant{Key: req.Key, Holder: req.Holder, Now: time.Now(), Current: lock.State{
			Key: req.Key, State: lock.StateHeld, Holder: "other", Generation: 7, Token: 9,
			ExpiresAt: time.Now().Add(time.Hour),
		}}, nil
	}
	<-ctx.Done()
	return lock.Grant{}, ctx.Err()
}

func (s *slowStore) Subscribe(ctx context.Context) (<-chan struct{}, error) {
	ch := make(chan struct{}, 1)
	ch <- struct{}{} // wake the waiter at once
	return ch, nil
}

// Snapshot finds the lock free, so that a woken waiter tries again.
func (s *slowStore) Snapshot(ctx context.Context, keys ...string) (lock.Snapshot, error) {
	return lock.Snapshot{Locks: []lock.State{{Key: "k", State: lock.StateFree}}, Now: time.Now()}, nil
}

// A wait that runs out while a try is still in the store is "not acquired"
// (a *BusyError wrapping ctx's error, exit 4 in the CLI), as Lock's
// documentation says, not a raw context error (exit 1). Found by the
// reliability suite: `xplock acquire --wait 300ms` under contention exited 1
// with "context deadline exceeded".
func TestWaitEndsDuringATry(t *testing.T) {
	for _, busyTries := range []int{0, 1} {
		store := &slowStore{busyTries: busyTries}
		l, err := lock.New(store, "k", "me", lock.Options{})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		g, err := l.Lock(ctx)
		cancel()
		var busy *lock.BusyError
		if g != nil || !errors.As(err, &busy) || !errors.Is(err, lock.ErrBusy) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("after %d busy tries: Lock = %v, %v (%T); want a *BusyError wrapping context.DeadlineExceeded",
				busyTries, g, err, err)
		}
		if busy.Current.Key != "k" {
			t.Errorf("BusyError.Current.Key = %q, want k", busy.Current.Key)
		}
		if busyTries > 0 && (busy.Current.Holder != "other" || busy.Current.Generation != 7) {
			t.Errorf("BusyError.Current = %+v, want the holder seen by the last answered try", busy.Current)
		}
	}
}

// hungStore grants every acquisition, then hangs in every other call,
// ignoring its context, as a store behind a network partition can.
type hungStore struct {
	lock.Store
	ttl  time.Duration
	hang chan struct{} // closed at the end of the test
}

func (s *hungStore) Acquire(_ context.Context, req lock.AcquireRequest) (lock.Grant, error) {
	now := time.Now()
	return lock.Grant{Acquired: true, Key: req.Key, Holder: req.Holder, Generation: 1, Token: 1,
		AcquiredAt: now, ExpiresAt: now.Add(s.ttl), TTL: s.ttl, Now: now}, nil
}

func (s *hungStore) block() { <-s.hang }

func (s *hungStore) Renew(context.Context, lock.RenewRequest) (lock.Grant, error) {
	s.block()
	return lock.Grant{}, errors.New("hung")
}

func (s *hungStore) Snapshot(context.Context, ...string) (lock.Snapshot, error) {
	s.block()
	return lock.Snapshot{}, errors.New("hung")
}

func (s *hungStore) Subscribe(context.Context) (<-chan struct{}, error) {
	s.block()
	return nil, errors.New("hung")
}

// A guard keeps its lease by its own clock: when the store hangs in every
// call (ignoring contexts), its Context still ends at its safe end, before
// the lease does, with ErrLeaseLost. Before, the renewal loop blocked in a
// check of the lock and the guard never ended.
func TestGuardEndsAtSafeEndWhileStoreHangs(t *testing.T) {
	const ttl = 1 * time.Second
	store := &hungStore{ttl: ttl, hang: make(chan struct{})}
	defer close(store.hang)
	l, err := lock.New(store, "k", "me", lock.Options{TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	g, err := l.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// Grace defaults to TTL/4, the margin is 1% + 5ms: the safe end is
	// 735ms after the request was sent.
	wantSafeEnd := ttl - lock.DefaultGrace(ttl) - lock.DriftMargin(ttl)
	if d := g.SafeEnd().Sub(sent); d < wantSafeEnd || d > wantSafeEnd+100*time.Millisecond {
		t.Errorf("SafeEnd is %s after the request, want %s", d, wantSafeEnd)
	}
	select {
	case <-g.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the guard's context did not end within 10s of a hung store")
	}
	ended := time.Now()
	if ended.Before(g.SafeEnd()) {
		t.Errorf("the guard ended %s before its safe end", g.SafeEnd().Sub(ended))
	}
	if !ended.Before(g.LeaseEnd()) {
		t.Errorf("the guard ended %s after its lease's end, want before it", ended.Sub(g.LeaseEnd()))
	}
	if !errors.Is(g.Err(), lock.ErrLeaseLost) || !strings.Contains(g.Err().Error(), "safe end") {
		t.Errorf("guard error %v, want ErrLeaseLost at the safe end", g.Err())
	}
}

// The same with a real SQLite store that another connection keeps locked
// for longer than the TTL (BEGIN IMMEDIATE, as an application sharing the
// file can): the guard ends before the lease recorded in the store does.
// Before, it ended only when SQLite's busy wait gave up, seconds after the
// lease's end.
func TestGuardEndsAtSafeEndWhileSQLiteIsLocked(t *testing.T) {
	const ttl = 1 * time.Second
	path := filepath.Join(t.TempDir(), "locks.db")
	store, err := sqlite.Open(context.Background(), path, sqlite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	l, err := lock.New(store, "k", "me", lock.Options{TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	g, err := l.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	other, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	conn, err := other.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(context.Background(), "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	defer conn.ExecContext(context.Background(), "ROLLBACK")
	// No renewal can commit from here on: the lease ends where it is now.
	var expiresAt int64
	if err := conn.QueryRowContext(context.Background(),
		"SELECT expires_at FROM xplock_tenures WHERE key = 'k'").Scan(&expiresAt); err != nil {
		t.Fatal(err)
	}
	leaseEnd := time.UnixMicro(expiresAt)
	select {
	case <-g.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the guard's context did not end within 10s of the store being locked")
	}
	if ended := time.Now(); !ended.Before(leaseEnd) {
		t.Errorf("the guard ended %s after the lease's end in the store, want before it", ended.Sub(leaseEnd))
	}
	if !errors.Is(g.Err(), lock.ErrLeaseLost) {
		t.Errorf("guard error %v, want ErrLeaseLost", g.Err())
	}
}

// An explicit grace that leaves no lease to hold is refused, naming the
// shortest TTL that works.
func TestGraceTooLongForTTL(t *testing.T) {
	_, err := lock.New(&hungStore{}, "k", "me", lock.Options{TTL: 2 * time.Second, Grace: 2 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "at least 2.026s") {
		t.Fatalf("New with grace = TTL: %v, want an error naming the TTL 2.026s", err)
	}
	if lock.MinTTL(2*time.Second)-lock.DriftMargin(lock.MinTTL(2*time.Second)) <= 2*time.Second {
		t.Errorf("MinTTL(2s) = %s leaves no room for the grace", lock.MinTTL(2*time.Second))
	}
	if _, err := lock.New(&hungStore{}, "k", "me", lock.Options{TTL: 2026 * time.Millisecond, Grace: 2 * time.Second}); err != nil {
		t.Errorf("New with the shortest TTL: %v", err)
	}
}
