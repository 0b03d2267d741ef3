package sqlite

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/xplock/xplock/lock"
)

// TestWatchesHearCommits: both ways of watching a store (its directory, as
// on Linux, and its files, as with kqueue) hear of every commit, also by a
// process that opened the store after the watch began and after the
// previous writer closed it.
func TestWatchesHearCommits(t *testing.T) {
	for name, watched := range map[string]func(string) []string{
		"directory": watchDirectory,
		"files":     watchFiles,
	} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			path := filepath.Join(t.TempDir(), "locks.db")
			openStore := func(opts Options) *Store {
				t.Helper()
				s, err := Open(ctx, path, opts)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { s.Close() })
				return s
			}
			writer := openStore(Options{})
			looker := openStore(Options{ReadOnly: true})
			subCtx, cancel := context.WithCancel(ctx)
			defer cancel()
			changes, err := looker.watchCommits(subCtx, watched)
			if err != nil {
				t.Fatalf("watching %v: %v", watched(path), err)
			}
			for i, holder := range []string{"alice", "bob", "carol"} {
				if i > 0 {
					// A later process: the first writer's files are
					// closed, another one opens them.
					writer.Close()
					writer = openStore(Options{})
				}
				if _, err := writer.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: holder, TTL: time.Minute, Checked: true}); err != nil {
					t.Fatal(err)
				}
				select {
				case <-changes:
				case <-time.After(5 * time.Second):
					t.Fatalf("commit %d (%s acquires): not heard of within 5s", i+1, holder)
				}
				if _, err := writer.Release(ctx, lock.ReleaseRequest{Key: "k", Holder: holder, Acknowledge: true}); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}
