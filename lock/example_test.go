package lock_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/sqlite"
)

// openExampleStore opens a SQLite store in a fresh directory. A real
// program opens one file that every process sharing the lock uses.
func openExampleStore() (*sqlite.Store, func()) {
	dir, err := os.MkdirTemp("", "xplock-example")
	if err != nil {
		log.Fatal(err)
	}
	store, err := sqlite.Open(context.Background(), filepath.Join(dir, "locks.db"), sqlite.Options{})
	if err != nil {
		log.Fatal(err)
	}
	return store, func() { store.Close(); os.RemoveAll(dir) }
}

// Do is the safe pattern: the lock is always released, and the poison is
// acknowledged only when the work succeeds.
func ExampleLock_Do() {
	store, done := openExampleStore()
	defer done()
	ctx := context.Background()

	l, err := lock.New(store, "event-cache", "app", lock.Options{TTL: 10 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	err = l.Do(ctx, func(ctx context.Context, g *lock.Guard) error {
		if g.Poisoned() {
			fmt.Println("someone else held the lock since: reload the cache")
		}
		fmt.Println("working with token", g.Token())
		return nil // ctx ends if the lease is lost: stop working then
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output: working with token 1
}

// Lock returns the held guard together with a *PoisonError when someone
// else held the lock since this holder last did: the lock IS held, so
// release it whatever happens.
func ExampleLock_Lock() {
	store, done := openExampleStore()
	defer done()
	ctx := context.Background()

	for _, holder := range []string{"app", "helper", "app"} {
		l, err := lock.New(store, "event-cache", holder, lock.Options{})
		if err != nil {
			log.Fatal(err)
		}
		g, err := l.Lock(ctx)
		var poisoned *lock.PoisonError
		switch {
		case errors.As(err, &poisoned):
			fmt.Printf("%s: poisoned at generation %d, reloading\n", holder, g.Generation())
		case err != nil:
			log.Fatal(err)
		default:
			fmt.Printf("%s: clean at generation %d\n", holder, g.Generation())
		}
		if err := g.Release(ctx); err != nil { // acknowledges the generation
			log.Fatal(err)
		}
	}
	// Output:
	// app: clean at generation 1
	// helper: clean at generation 2
	// app: poisoned at generation 3, reloading
}

// TryLock never waits: a lock held by another holder is a *BusyError.
func ExampleLock_TryLock() {
	store, done := openExampleStore()
	defer done()
	ctx := context.Background()

	app, _ := lock.New(store, "deploy", "app", lock.Options{})
	cron, _ := lock.New(store, "deploy", "cron", lock.Options{})
	g, err := app.Lock(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer g.Release(ctx)

	_, err = cron.TryLock(ctx)
	var busy *lock.BusyError
	if errors.As(err, &busy) {
		fmt.Printf("busy: held by %s\n", busy.Current.Holder)
	}
	// Output: busy: held by app
}

// LockUnchecked is for a holder that does not cache anything: it never
// reports poison as an error and acknowledges nothing.
func ExampleLock_LockUnchecked() {
	store, done := openExampleStore()
	defer done()
	ctx := context.Background()

	l, _ := lock.New(store, "metrics", "scraper", lock.Options{})
	g, err := l.LockUnchecked(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer g.Release(ctx)
	fmt.Println("generation", g.Generation(), "token", g.Token())
	// Output: generation 1 token 1
}

// Options.Shared takes a reader's lock: readers share it, a writer waits
// for them all. Options.Slots caps the readers (a counting semaphore), and
// every holder must ask for the same limit.
func ExampleOptions_shared() {
	store, done := openExampleStore()
	defer done()
	ctx := context.Background()

	var readers []*lock.Guard
	for _, holder := range []string{"reader-1", "reader-2"} {
		l, err := lock.New(store, "device-farm", holder, lock.Options{Slots: 2})
		if err != nil {
			log.Fatal(err)
		}
		g, err := l.Lock(ctx)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(holder, g.Mode(), "token", g.Token())
		readers = append(readers, g)
	}

	third, _ := lock.New(store, "device-farm", "reader-3", lock.Options{Slots: 2})
	_, err := third.TryLock(ctx)
	var busy *lock.BusyError
	if errors.As(err, &busy) {
		fmt.Println("reader-3:", len(busy.Current.Holders), "of", busy.Current.Slots, "slots taken")
	}
	other, _ := lock.New(store, "device-farm", "reader-4", lock.Options{Slots: 3})
	if _, err := other.Lock(ctx); errors.Is(err, lock.ErrSlotLimit) {
		fmt.Println("reader-4: refused at once, another limit is in force")
	}
	writer, _ := lock.New(store, "device-farm", "writer", lock.Options{})
	if _, err := writer.TryLock(ctx); errors.Is(err, lock.ErrBusy) {
		fmt.Println("writer: busy while readers hold it")
	}
	for _, g := range readers {
		g.Release(ctx)
	}
	// Output:
	// reader-1 shared token 1
	// reader-2 shared token 2
	// reader-3: 2 of 2 slots taken
	// reader-4: refused at once, another limit is in force
	// writer: busy while readers hold it
}
