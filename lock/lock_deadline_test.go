package lock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/xplock/xplock/lock"
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
