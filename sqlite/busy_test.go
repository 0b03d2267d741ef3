package sqlite_test

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/sqlite"
)

// TestBusyWaitIsFine: a write that finds the write lock taken gets it soon
// after the other transaction ends, not after SQLite's default busy
// handler's next sleep (1, 2, 5, 10 ms...: 6 ms late for a 12 ms
// transaction).
func TestBusyWaitIsFine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.db")
	s := open(t, path, sqlite.Options{})
	raw, err := sql.Open("sqlite3", "file:"+path+"?_busy_timeout=5000")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetMaxOpenConns(1)
	ctx := context.Background()
	const hold = 12 * time.Millisecond
	var late []time.Duration
	for i := range 7 {
		conn, err := raw.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
			t.Fatal(err)
		}
		done := make(chan time.Time)
		go func() {
			holder := []string{"a", "b"}[i%2]
			if _, err := s.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: holder, TTL: time.Millisecond, Checked: true}); err != nil {
				t.Error(err)
			}
			done <- time.Now()
		}()
		time.Sleep(hold)
		if _, err := conn.ExecContext(ctx, "COMMIT"); err != nil {
			t.Fatal(err)
		}
		released := time.Now()
		conn.Close()
		late = append(late, (<-done).Sub(released))
	}
	slices.Sort(late)
	t.Logf("write got the lock this long after the other transaction ended: %v", late)
	if med := late[len(late)/2]; med > 4500*time.Microsecond {
		t.Errorf("median wait after the release %v, want under 4.5ms (2ms steps)", med)
	}
}

// holdWriteLock takes the database's write lock on a connection of its own,
// as an application sharing the file might, until the test ends.
func holdWriteLock(t *testing.T, path, begin string) {
	t.Helper()
	raw := rawOpen(t, path)
	t.Cleanup(func() { raw.Close() })
	conn, err := raw.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	for _, q := range []string{begin, "SELECT count(*) FROM sqlite_master"} {
		if _, err := conn.ExecContext(context.Background(), q); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { conn.ExecContext(context.Background(), "ROLLBACK") })
}

// busyBound is how long past its deadline a call may return on a loaded
// machine; the old busy handler waited out 5 s steps and never gave up.
const busyBound = 2 * time.Second

func checkGaveUp(t *testing.T, what string, err error, took, deadline time.Duration) {
	t.Helper()
	if !errors.Is(err, sqlite.ErrLocked) {
		t.Errorf("%s: %v, want an error wrapping ErrLocked", what, err)
	}
	if took > deadline+busyBound {
		t.Errorf("%s returned after %v; its deadline was %v", what, took, deadline)
	}
	t.Logf("%s gave up after %v (deadline %v): %v", what, took, deadline, err)
}

// TestBusyWaitKeepsDeadline: while another connection holds the database
// locked, a call returns at its context's deadline or cancellation, and at
// Options.BusyLimit without either.
func TestBusyWaitKeepsDeadline(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.db")
	s := open(t, path, sqlite.Options{})
	ctx := context.Background()
	if _, err := s.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: "a", TTL: time.Hour, Checked: true}); err != nil {
		t.Fatal(err)
	}
	holdWriteLock(t, path, "BEGIN IMMEDIATE")
	const deadline = 300 * time.Millisecond

	dctx, cancel := context.WithTimeout(ctx, deadline)
	start := time.Now()
	_, err := s.Acquire(dctx, lock.AcquireRequest{Key: "k", Holder: "b", TTL: time.Hour, Checked: true})
	cancel()
	checkGaveUp(t, "acquire with a deadline", err, time.Since(start), deadline)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("acquire with a deadline: %v, want it to wrap context.DeadlineExceeded", err)
	}

	cctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(deadline, cancel)
	start = time.Now()
	_, err = s.Release(cctx, lock.ReleaseRequest{Key: "k", Holder: "a"})
	checkGaveUp(t, "cancelled release", err, time.Since(start), deadline)

	bounded := open(t, path, sqlite.Options{BusyLimit: deadline})
	start = time.Now()
	_, err = bounded.Renew(ctx, lock.RenewRequest{Key: "k", Holder: "a"})
	checkGaveUp(t, "renew under BusyLimit", err, time.Since(start), deadline)
}

// TestCommitWaitKeepsDeadline: in an application's rollback-journal
// database, a commit waits for the application's readers; that wait keeps
// the deadline too, and what gave up is not committed.
func TestCommitWaitKeepsDeadline(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.db")
	rawExec(t, path, "CREATE TABLE notes (body TEXT)")
	s := open(t, path, sqlite.Options{})
	holdWriteLock(t, path, "BEGIN") // a reader: SHARED until it ends
	const deadline = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	start := time.Now()
	_, err := s.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: "b", TTL: time.Hour, Checked: true})
	checkGaveUp(t, "acquire", err, time.Since(start), deadline)
	ro := open(t, path, sqlite.Options{ReadOnly: true})
	snap, err := ro.Snapshot(context.Background(), "k")
	if err != nil || len(snap.Locks) != 0 {
		t.Fatalf("after the acquisition gave up: %+v, %v; want nothing committed", snap, err)
	}
}
