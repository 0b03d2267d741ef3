package sqlite_test

import (
	"context"
	"database/sql"
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
