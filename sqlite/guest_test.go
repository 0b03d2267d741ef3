package sqlite_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/sqlite"
)

// appDatabase makes an application's database: its own table, its own
// user_version, the rollback journal (SQLite's default).
func appDatabase(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "app.db")
	rawExec(t, path, "CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('mine'); PRAGMA user_version = 7")
	return path
}

func pragma(t *testing.T, path, name string) string {
	t.Helper()
	db := rawOpen(t, path)
	defer db.Close()
	var v string
	if err := db.QueryRow("PRAGMA " + name).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// TestGuestInApplicationDatabase: xplock works inside an application's
// database whatever its user_version, and leaves user_version and the
// journal mode as the application set them.
func TestGuestInApplicationDatabase(t *testing.T) {
	path := appDatabase(t)
	ctx := context.Background()
	s := open(t, path, sqlite.Options{})
	g, err := s.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: "app", TTL: time.Hour, Checked: true})
	if err != nil || !g.Acquired {
		t.Fatalf("acquire in an application's database: %+v, %v", g, err)
	}
	if _, err := s.Release(ctx, lock.ReleaseRequest{Key: "k", Holder: "app", Acknowledge: true}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if v := pragma(t, path, "user_version"); v != "7" {
		t.Errorf("user_version is %s, want the application's 7", v)
	}
	if m := pragma(t, path, "journal_mode"); m != "delete" {
		t.Errorf("journal_mode is %s, want the application's delete", m)
	}
	if names := dirNames(t, filepath.Dir(path)); !slices.Equal(names, []string{"app.db"}) {
		t.Errorf("files beside the application's database: %v", names)
	}
}

// TestNewFileIsWAL: a database xplock creates itself is in WAL mode.
func TestNewFileIsWAL(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.db")
	open(t, path, sqlite.Options{}).Close()
	if m := pragma(t, path, "journal_mode"); m != "wal" {
		t.Errorf("journal_mode of a new store is %s, want wal", m)
	}
	if v := pragma(t, path, "user_version"); v != "0" {
		t.Errorf("user_version of a new store is %s, want 0: it is not xplock's", v)
	}
}

// TestLookingNeverWrites: a read-only store changes nothing in a database
// without xplock tables, reads it as empty, and sees the tables once
// someone creates them.
func TestLookingNeverWrites(t *testing.T) {
	path := appDatabase(t)
	dir := filepath.Dir(path)
	before, names := readAll(t, path), dirNames(t, dir)
	ctx := context.Background()
	ro := open(t, path, sqlite.Options{ReadOnly: true})
	snap, err := ro.Snapshot(ctx)
	if err != nil || len(snap.Locks) != 0 || snap.Cursor != 0 {
		t.Fatalf("snapshot of a database without xplock tables: %+v, %v", snap, err)
	}
	if h, err := ro.History(ctx, "k", 0); err != nil || len(h) != 0 {
		t.Fatalf("history: %v, %v", h, err)
	}
	if ev, err := ro.EventsAfter(ctx, 0, []string{"k"}, 10); err != nil || len(ev) != 0 {
		t.Fatalf("events: %v, %v", ev, err)
	}
	if st, err := ro.Settings(ctx); err != nil || st.HistoryLimit != sqlite.DefaultHistoryLimit {
		t.Fatalf("settings: %+v, %v", st, err)
	}
	if _, err := ro.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: "a", TTL: time.Hour}); !errors.Is(err, sqlite.ErrReadOnly) {
		t.Fatalf("acquire on a read-only store: %v, want ErrReadOnly", err)
	}
	if !bytes.Equal(before, readAll(t, path)) {
		t.Error("looking changed the database file")
	}
	if after := dirNames(t, dir); !slices.Equal(after, names) {
		t.Errorf("looking changed the directory: %v, was %v", after, names)
	}

	rw := open(t, path, sqlite.Options{})
	if _, err := rw.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: "a", TTL: time.Hour, Checked: true}); err != nil {
		t.Fatal(err)
	}
	snap, err = ro.Snapshot(ctx)
	if err != nil || len(snap.Locks) != 1 || snap.Locks[0].State != lock.StateHeld {
		t.Fatalf("the looker does not see the tables that appeared: %+v, %v", snap, err)
	}
}

// TestNoCreateCreatesNothing: a store for changing what is held creates
// neither a missing file nor xplock's tables in a database without them.
func TestNoCreateCreatesNothing(t *testing.T) {
	path := appDatabase(t)
	before := readAll(t, path)
	_, err := sqlite.Open(context.Background(), path, sqlite.Options{NoCreate: true})
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("NoCreate on a database without xplock tables: %v, want ErrNotExist", err)
	}
	if !bytes.Equal(before, readAll(t, path)) {
		t.Error("the database was changed")
	}
	missing := filepath.Join(t.TempDir(), "missing", "locks.db")
	for _, opts := range []sqlite.Options{{NoCreate: true}, {ReadOnly: true}} {
		if _, err := sqlite.Open(context.Background(), missing, opts); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("%+v on a missing file: %v, want ErrNotExist", opts, err)
		}
	}
	if _, err := os.Stat(filepath.Dir(missing)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("a directory was created")
	}
}

// TestRefusesNonRegularFiles: a named pipe or a directory is refused at
// once; opening a pipe must not block.
func TestRefusesNonRegularFiles(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "pipe")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{fifo, dir} {
		for _, opts := range []sqlite.Options{{}, {ReadOnly: true}, {NoCreate: true}} {
			done := make(chan error, 1)
			go func() {
				_, err := sqlite.Open(context.Background(), path, opts)
				done <- err
			}()
			select {
			case err := <-done:
				if !errors.Is(err, sqlite.ErrNotSQLite) {
					t.Errorf("%s %+v: %v, want ErrNotSQLite", path, opts, err)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("opening %s blocked", path)
			}
		}
	}
}

// TestSnapshotOfManyKeys: more keys than SQLite takes variables in one
// statement.
func TestSnapshotOfManyKeys(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "locks.db"), sqlite.Options{})
	ctx := context.Background()
	for _, k := range []string{"k1", "k39999"} {
		if _, err := s.Acquire(ctx, lock.AcquireRequest{Key: k, Holder: "a", TTL: time.Hour, Checked: true}); err != nil {
			t.Fatal(err)
		}
	}
	keys := make([]string, 40000)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%d", i)
	}
	snap, err := s.Snapshot(ctx, keys...)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Locks) != 2 {
		t.Fatalf("snapshot of 40000 keys found %d locks, want 2", len(snap.Locks))
	}
	if _, err := s.EventsAfter(ctx, 0, keys, 10); err != nil {
		t.Fatal(err)
	}
}

// TestHistoryLimitBelongsToTheStore: the limit is set when the tables are
// created and changed only by SetHistoryLimit, which every process using
// the store then follows.
func TestHistoryLimitBelongsToTheStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.db")
	ctx := context.Background()
	a := open(t, path, sqlite.Options{HistoryLimit: 50})
	b := open(t, path, sqlite.Options{HistoryLimit: 3}) // too late: the store has its limit
	if st, err := b.Settings(ctx); err != nil || st.HistoryLimit != 50 {
		t.Fatalf("settings: %+v, %v; want the limit the store was created with", st, err)
	}
	cycle := func(s *sqlite.Store, n int) {
		for i := range n {
			holder := []string{"a", "b"}[i%2]
			if _, err := s.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: holder, TTL: time.Hour, Checked: true}); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Release(ctx, lock.ReleaseRequest{Key: "k", Holder: holder, Acknowledge: true}); err != nil {
				t.Fatal(err)
			}
		}
	}
	cycle(b, 10)
	if h, _ := a.History(ctx, "k", 0); len(h) != 20 {
		t.Fatalf("history kept %d events, want all 20 under the store's limit of 50", len(h))
	}
	if err := b.SetHistoryLimit(ctx, 0); err == nil {
		t.Fatal("a limit of 0 was accepted")
	}
	if err := b.SetHistoryLimit(ctx, 4); err != nil {
		t.Fatal(err)
	}
	cycle(a, 1) // a, opened before, follows the new limit
	h, err := a.History(ctx, "k", 0)
	if err != nil || len(h) != 4 || h[3].Generation != 11 {
		t.Fatalf("history after the limit went down to 4: %d events, %v", len(h), err)
	}
	if st, err := a.Settings(ctx); err != nil || st.HistoryLimit != 4 {
		t.Fatalf("settings: %+v, %v", st, err)
	}
}
