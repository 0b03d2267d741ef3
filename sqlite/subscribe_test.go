package sqlite_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/sqlite"
)

// TestSharedSubscription: the subscribers of one store share a
// subscription, and each of them hears of every change after its call,
// including subscribers that come while another one is leaving.
func TestSharedSubscription(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.db")
	watcher := open(t, path, sqlite.Options{})
	writer := open(t, path, sqlite.Options{})
	ctx := context.Background()
	write := func(holder string) {
		t.Helper()
		if _, err := writer.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: holder, TTL: time.Minute, Checked: true}); err != nil {
			t.Fatal(err)
		}
		if _, err := writer.Release(ctx, lock.ReleaseRequest{Key: "k", Holder: holder, Acknowledge: true}); err != nil {
			t.Fatal(err)
		}
	}
	hears := func(name string, ch <-chan struct{}) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s heard of no change", name)
		}
	}
	drain := func(ch <-chan struct{}) {
		for {
			select {
			case <-ch:
			case <-time.After(50 * time.Millisecond):
				return
			}
		}
	}

	ctxA, cancelA := context.WithCancel(ctx)
	a, err := watcher.Subscribe(ctxA)
	if err != nil {
		t.Fatal(err)
	}
	ctxB, cancelB := context.WithCancel(ctx)
	defer cancelB()
	b, err := watcher.Subscribe(ctxB)
	if err != nil {
		t.Fatal(err)
	}
	write("one")
	hears("a", a)
	hears("b", b)

	cancelA()
	drain(b)
	write("two")
	hears("b after a left", b)

	// Everyone leaves; a subscriber that comes back within the linger
	// reuses the subscription, one that comes later gets a new one: both
	// hear of the next change.
	cancelB()
	for _, pause := range []time.Duration{0, 3 * time.Second} {
		time.Sleep(pause)
		ctxC, cancelC := context.WithCancel(ctx)
		c, err := watcher.Subscribe(ctxC)
		if err != nil {
			t.Fatal(err)
		}
		drain(c)
		write("three")
		hears("a subscriber after "+pause.String(), c)
		cancelC()
	}

	watcher.Close()
	if _, err := watcher.Subscribe(ctx); err == nil {
		t.Fatal("Subscribe on a closed store succeeded")
	}
}
