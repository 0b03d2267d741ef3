package sqlite_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/sqlite"
)

// TestSubscriberThroughSymlinkHearsCommits: a store opened through a
// symbolic link into another directory hears of commits, although SQLite
// writes the -wal file beside the real file, not beside the link. Before,
// the subscriber watched the link's directory and heard of nothing.
func TestSubscriberThroughSymlinkHearsCommits(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real", "locks.db")
	link := filepath.Join(dir, "link", "locks.db")
	writer := open(t, real, sqlite.Options{})
	if err := os.Mkdir(filepath.Dir(link), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	looker := open(t, link, sqlite.Options{ReadOnly: true})
	ctx := t.Context()
	changes, err := looker.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := writer.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: "alice", TTL: time.Minute, Checked: true}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changes:
	case <-time.After(5 * time.Second):
		t.Fatal("a commit through the real path: not heard of through the link within 5s")
	}
}

// TestSubscribingCreatesNothing: a read-only store's subscription leaves
// the directory as it was but for the -wal and -shm files SQLite reads a
// WAL-mode database with.
func TestSubscribingCreatesNothing(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "locks.db")
	open(t, path, sqlite.Options{}).Close()
	allowed := append(dirNames(t, dir), "locks.db-wal", "locks.db-shm")

	looker := open(t, path, sqlite.Options{ReadOnly: true})
	ctx, cancel := context.WithCancel(t.Context())
	if _, err := looker.Subscribe(ctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	looker.Close()
	for _, name := range dirNames(t, dir) {
		if !slices.Contains(allowed, name) {
			t.Errorf("subscribing created %s", name)
		}
	}
}
