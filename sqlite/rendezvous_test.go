package sqlite_test

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/sqlite"
)

// watchedStore counts the calls by which a waiter could watch the store.
type watchedStore struct {
	*sqlite.Store
	subscribes, snapshots, acquires atomic.Int32
}

func (s *watchedStore) Subscribe(ctx context.Context) (<-chan struct{}, error) {
	s.subscribes.Add(1)
	return s.Store.Subscribe(ctx)
}

func (s *watchedStore) Snapshot(ctx context.Context, keys ...string) (lock.Snapshot, error) {
	s.snapshots.Add(1)
	return s.Store.Snapshot(ctx, keys...)
}

func (s *watchedStore) Acquire(ctx context.Context, req lock.AcquireRequest) (lock.Grant, error) {
	s.acquires.Add(1)
	return s.Store.Acquire(ctx, req)
}

// TestWaiterSleepsOnLiveHolder: while a live holder (a renewing Guard) has
// the lock, a waiter on another store handle sleeps on the holder's socket
// without subscribing to or reading the store, however many changes other
// keys make, and takes the lock once the holder releases it.
func TestWaiterSleepsOnLiveHolder(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("holders' sockets are in Linux's abstract namespace")
	}
	path := filepath.Join(t.TempDir(), "locks.db")
	ctx := context.Background()
	holderLock, err := lock.New(open(t, path, sqlite.Options{}), "k", "alice", lock.Options{TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	held, err := holderLock.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}

	waiterStore := &watchedStore{Store: open(t, path, sqlite.Options{})}
	// NoRenew: bob's guard, once it has the lock, watches nothing itself.
	waiterLock, err := lock.New(waiterStore, "k", "bob", lock.Options{TTL: time.Minute, NoRenew: true})
	if err != nil {
		t.Fatal(err)
	}
	waiting := make(chan struct{})
	acquired := make(chan *lock.Guard, 1)
	go func() {
		g, err := waiterLock.Acquire(ctx, lock.AcquireOptions{OnWait: func(lock.State, time.Time) {
			select {
			case <-waiting:
			default:
				close(waiting)
			}
		}})
		if err != nil {
			t.Error(err)
		}
		acquired <- g
	}()
	<-waiting

	// Changes to other keys would wake a waiter that watches the store.
	other := open(t, path, sqlite.Options{})
	for i := range 20 {
		if _, err := other.Acquire(ctx, lock.AcquireRequest{Key: "other", Holder: "carol", TTL: time.Minute, Checked: true}); err != nil {
			t.Fatal(err)
		}
		if _, err := other.Release(ctx, lock.ReleaseRequest{Key: "other", Holder: "carol", Acknowledge: i%2 == 0}); err != nil {
			t.Fatal(err)
		}
	}
	if err := held.Release(ctx); err != nil {
		t.Fatal(err)
	}
	g := <-acquired
	if g == nil {
		t.FailNow()
	}
	defer g.Release(ctx)
	if g.Generation() != 2 {
		t.Errorf("bob got generation %d, want 2", g.Generation())
	}
	if n := waiterStore.subscribes.Load(); n != 0 {
		t.Errorf("the waiter subscribed to the store %d times", n)
	}
	if n := waiterStore.snapshots.Load(); n != 0 {
		t.Errorf("the waiter read the store %d times", n)
	}
	if n := waiterStore.acquires.Load(); n != 2 {
		t.Errorf("the waiter tried %d times, want 2 (before and after the release)", n)
	}
}

// TestReentrantReleaseEndsOwnersGuard: a re-entrant acquisition in another
// process (here another store handle) cannot listen on the key's socket, so
// when it releases the tenure it tells the guard that does: that guard ends
// at once, not at its next renewal 5s away. (With a TTL of 15s it does
// not also watch the store.)
func TestReentrantReleaseEndsOwnersGuard(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("holders' sockets are in Linux's abstract namespace")
	}
	path := filepath.Join(t.TempDir(), "locks.db")
	ctx := context.Background()
	outer, _ := lock.New(open(t, path, sqlite.Options{}), "k", "alice", lock.Options{TTL: 15 * time.Second})
	g, err := outer.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	inner, _ := lock.New(open(t, path, sqlite.Options{}), "k", "alice", lock.Options{TTL: 15 * time.Second})
	g2, err := inner.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if g2.Token() != g.Token() {
		t.Fatalf("the inner acquisition got token %d, want the outer tenure's %d", g2.Token(), g.Token())
	}
	if err := g2.Release(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-g.Done():
	case <-time.After(3 * time.Second):
		t.Fatal("the outer guard did not notice within 3s that its tenure ended")
	}
}

// TestSquatterDoesNotSpinWaiters: a process that takes a key's socket name
// and hangs up on every connection makes waiters fall back to watching the
// store, not try again and again.
func TestSquatterDoesNotSpinWaiters(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("holders' sockets are in Linux's abstract namespace")
	}
	path := filepath.Join(t.TempDir(), "locks.db")
	ctx := context.Background()
	holderStore := open(t, path, sqlite.Options{})
	squatter, err := net.Listen("unix", "@"+holderStore.RendezvousAddress("k"))
	if err != nil {
		t.Fatal(err)
	}
	defer squatter.Close()
	go func() {
		for {
			c, err := squatter.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	holder, _ := lock.New(holderStore, "k", "alice", lock.Options{TTL: time.Minute})
	held, err := holder.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waiterStore := &watchedStore{Store: open(t, path, sqlite.Options{})}
	waiter, _ := lock.New(waiterStore, "k", "bob", lock.Options{TTL: time.Minute, NoRenew: true})
	waitCtx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	if _, err := waiter.Lock(waitCtx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiting on a held lock: %v, want the deadline", err)
	}
	// Watching the store with its backoff makes about ten tries in 500ms;
	// trying again at once would make thousands.
	if n := waiterStore.acquires.Load(); n > 50 {
		t.Errorf("the waiter tried %d times in 500ms", n)
	}
	if err := held.Release(ctx); err != nil {
		t.Fatal(err)
	}
}
