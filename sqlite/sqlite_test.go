package sqlite_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/lock/locktest"
	"github.com/xplock/xplock/sqlite"
)

func TestConformance(t *testing.T) {
	locktest.Run(t, func(t *testing.T) locktest.Backend {
		path := filepath.Join(t.TempDir(), "locks.db")
		return func(t *testing.T) lock.Store {
			s, err := sqlite.Open(context.Background(), path, sqlite.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		}
	})
}

func open(t *testing.T, path string, opts sqlite.Options) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(context.Background(), path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestNewFilesArePrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "xplock")
	path := filepath.Join(dir, "locks.db")
	open(t, path, sqlite.Options{})
	for p, want := range map[string]os.FileMode{dir: 0o700 | os.ModeDir, path: 0o600} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode(), want)
		}
	}
}

func TestExistingModeLeftAlone(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.db")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	open(t, path, sqlite.Options{})
	if fi, _ := os.Stat(path); fi.Mode() != 0o644 {
		t.Fatalf("mode changed to %v", fi.Mode())
	}
}

func TestRefusesFilesUntouched(t *testing.T) {
	dir := t.TempDir()
	notDB := filepath.Join(dir, "notes.txt")
	content := []byte("these are my notes, not a database\n")
	if err := os.WriteFile(notDB, content, 0o640); err != nil {
		t.Fatal(err)
	}
	newer := filepath.Join(dir, "newer.db")
	s := open(t, newer, sqlite.Options{})
	s.Close()
	rawExec(t, newer, "UPDATE xplock_store SET schema_version = 99")

	for _, tc := range []struct {
		path string
		want error
	}{{notDB, sqlite.ErrNotSQLite}, {newer, lock.ErrUnsupportedSchema}} {
		before := readAll(t, tc.path)
		entries, _ := os.ReadDir(dir)
		for _, opts := range []sqlite.Options{{}, {ReadOnly: true}, {NoCreate: true}} {
			_, err := sqlite.Open(context.Background(), tc.path, opts)
			if !errors.Is(err, tc.want) {
				t.Errorf("%s %+v: %v, want %v", tc.path, opts, err, tc.want)
			}
		}
		if !bytes.Equal(before, readAll(t, tc.path)) {
			t.Errorf("%s was modified", tc.path)
		}
		if after, _ := os.ReadDir(dir); len(after) != len(entries) {
			t.Errorf("%s: files appeared beside it: %v", tc.path, after)
		}
	}
}

func TestNoCreate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing", "locks.db")
	_, err := sqlite.Open(context.Background(), path, sqlite.Options{NoCreate: true})
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("got %v, want ErrNotExist", err)
	}
	if _, err := os.Stat(filepath.Dir(path)); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("NoCreate created the directory")
	}
}

func TestHistoryIsBounded(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "locks.db"), sqlite.Options{HistoryLimit: 5})
	ctx := context.Background()
	for i := range 10 {
		holder := []string{"a", "b"}[i%2]
		if _, err := s.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: holder, TTL: time.Hour, Checked: true}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Release(ctx, lock.ReleaseRequest{Key: "k", Holder: holder, Acknowledge: true}); err != nil {
			t.Fatal(err)
		}
	}
	history, err := s.History(ctx, "k", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(history) != 5 || history[4].Type != lock.EventReleased || history[4].Generation != 10 {
		t.Fatalf("history kept %d events ending %+v; want the newest 5", len(history), history[len(history)-1])
	}
}

// rawExec runs SQL on a database through go-sqlite3, bypassing the store.
func rawExec(t *testing.T, path string, query string) {
	t.Helper()
	db := rawOpen(t, path)
	defer db.Close()
	if _, err := db.Exec(query); err != nil {
		t.Fatal(err)
	}
}

func readAll(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
