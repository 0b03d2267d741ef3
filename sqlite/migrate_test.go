package sqlite

import (
	"context"
	"database/sql"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/xplock/xplock/lock"
)

// rawDatabase opens path through go-sqlite3 alone, to write tables as
// earlier versions did; us gives now+d in the tables' microseconds.
func rawDatabase(t *testing.T, path string) (db *sql.DB, us func(d time.Duration) int64) {
	t.Helper()
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	return db, func(d time.Duration) int64 { return now.Add(d).UnixMicro() }
}

// version1Store writes a store as earlier xplock versions left it (schema 1, its
// version in user_version): bob holds k in generation 2 after alice, who
// acknowledged generation 1.
func version1Store(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "locks.db")
	db, us := rawDatabase(t, path)
	defer db.Close()
	for _, q := range []string{
		"PRAGMA journal_mode=WAL",
		migrations[0].schema,
		"PRAGMA user_version = 1",
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.Exec(`INSERT INTO xplock_locks VALUES ('k', 'bob', 2, 2, 1, 1, ?, ?, ?, ?, 3)`,
		us(-time.Minute), us(time.Hour), int64(time.Hour/time.Microsecond), us(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO xplock_acks VALUES ('k', 'alice', 1), ('k', 'bob', 2)`); err != nil {
		t.Fatal(err)
	}
	for i, ev := range []struct {
		event, holder string
		gen           int64
	}{{"acquired", "alice", 1}, {"released", "alice", 1}, {"acquired", "bob", 2}} {
		if _, err := db.Exec(`INSERT INTO xplock_events (key, event, holder, generation, token, time) VALUES ('k', ?, ?, ?, ?, ?)`,
			ev.event, ev.holder, ev.gen, ev.gen, us(time.Duration(i-3)*time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

// TestMigratesVersion1 keeps every holder's state: the lock, who is
// poisoned, history; a looker reads a version 1 store without migrating it.
func TestMigratesVersion1(t *testing.T) {
	path := version1Store(t)
	ctx := context.Background()

	ro, err := Open(ctx, path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	snap, err := ro.Snapshot(ctx)
	ro.Close()
	if err != nil || len(snap.Locks) != 1 || snap.Locks[0].Holder != "bob" {
		t.Fatalf("a looker's snapshot of a version 1 store: %+v, %v", snap, err)
	}
	if n := tableCount(t, path, "xplock_store"); n != 0 {
		t.Fatal("looking migrated the store")
	}

	s, err := Open(ctx, path, Options{HistoryLimit: 77})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	snap, err = s.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Locks) != 1 {
		t.Fatalf("locks after migrating: %+v", snap.Locks)
	}
	l := snap.Locks[0]
	if l.State != lock.StateHeld || l.Holder != "bob" || l.Generation != 2 || l.Token != 2 ||
		len(l.PoisonedHolders) != 1 || l.PoisonedHolders[0] != "alice" {
		t.Fatalf("lock after migrating: %+v; want held by bob in generation 2, alice poisoned", l)
	}
	if h, err := s.History(ctx, "k", 0); err != nil || len(h) != 3 {
		t.Fatalf("history after migrating: %v, %v", h, err)
	}
	if st, err := s.Settings(ctx); err != nil || st.HistoryLimit != 77 {
		t.Fatalf("settings after migrating: %+v, %v", st, err)
	}
	if _, err := s.Release(ctx, lock.ReleaseRequest{Key: "k", Holder: "bob", Acknowledge: true}); err != nil {
		t.Fatal(err)
	}
	g, err := s.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: "bob", TTL: time.Hour, Checked: true})
	if err != nil || !g.Acquired || g.Poisoned || g.Generation != 2 {
		t.Fatalf("bob again: %+v, %v; want clean in generation 2", g, err)
	}
	if _, err := s.Release(ctx, lock.ReleaseRequest{Key: "k", Holder: "bob", Acknowledge: true}); err != nil {
		t.Fatal(err)
	}
	g, err = s.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: "alice", TTL: time.Hour, Checked: true})
	if err != nil || !g.Acquired || !g.Poisoned || g.Generation != 3 {
		t.Fatalf("alice, who acknowledged generation 1: %+v, %v; want poisoned in generation 3", g, err)
	}
	if n := tableCount(t, path, "xplock_locks"); n != 0 {
		t.Fatal("xplock_locks is still there")
	}
	if v := userVersion(t, path); v != 1 {
		t.Fatalf("user_version %d; the migration must leave it alone", v)
	}
}

// TestVersion1CannotRunOnNewStore runs what earlier xplock versions run on opening a
// store: on a database whose user_version is 0 it creates its tables, and
// on one whose user_version is 1 it goes straight to its queries. Both must
// fail on a store of this version, whatever the user_version.
func TestVersion1CannotRunOnNewStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.db")
	s, err := Open(context.Background(), path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	_, err = tx.Exec(migrations[0].schema)
	tx.Rollback()
	if err == nil {
		t.Error("the earlier schema could be created beside this version's")
	}
	for _, q := range []string{
		"SELECT key, holder, generation, token, held, checked, acquired_at, expires_at, ttl, changed_at, events FROM xplock_locks WHERE key = 'k'",
		"SELECT a.key, a.holder FROM xplock_acks a JOIN xplock_locks l ON l.key = a.key AND l.generation != a.generation",
		"INSERT INTO xplock_locks (key, holder, generation, token, held, checked, acquired_at, expires_at, ttl, changed_at, events) VALUES ('k', 'h', 1, 1, 1, 1, 0, 0, 0, 0, 0)",
	} {
		if _, err := db.Exec(q); err == nil {
			t.Errorf("an earlier version's query ran on this version's store: %s", q)
		}
	}
}

// queryInt reads one integer from path, opened read-only.
func queryInt(t *testing.T, path, query string, args ...any) int {
	t.Helper()
	db, err := sql.Open("sqlite3", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow(query, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func tableCount(t *testing.T, path, name string) int {
	t.Helper()
	return queryInt(t, path, "SELECT count(*) FROM sqlite_master WHERE name = ?", name)
}

func userVersion(t *testing.T, path string) int {
	t.Helper()
	return queryInt(t, path, "PRAGMA user_version")
}

// version2Store writes a store as the previous xplock version left it
// (schema 2, its version in xplock_store, in an application's database
// with user_version 7):
//   - k: bob holds it in generation 3 (token 5); alice acknowledged
//     generation 1 and dave 2 (both poisoned), bob and carol 3 (clean);
//   - free: alice released it in generation 2 (token 4) and acknowledged
//     it; bob acknowledged generation 1 (poisoned).
func version2Store(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "app.db")
	db, us := rawDatabase(t, path)
	defer db.Close()
	for _, q := range []struct {
		sql  string
		args []any
	}{
		{"PRAGMA user_version = 7", nil},
		{migrations[0].schema, nil},
		{migrations[1].schema, []any{50}},
		{`INSERT INTO xplock_keys VALUES ('k', 'bob', 3, 5, 1, 1, ?, ?, ?, ?, 0), ('free', 'alice', 2, 4, 0, 0, 0, 0, 0, ?, 0)`,
			[]any{us(-time.Minute), us(time.Hour), int64(time.Hour / time.Microsecond), us(-time.Minute), us(-time.Hour)}},
		{`INSERT INTO xplock_acks VALUES ('k', 'alice', 1), ('k', 'dave', 2), ('k', 'bob', 3), ('k', 'carol', 3),
			('free', 'alice', 2), ('free', 'bob', 1)`, nil},
	} {
		if _, err := db.Exec(q.sql, q.args...); err != nil {
			t.Fatalf("%s: %v", q.sql, err)
		}
	}
	return path
}

// TestMigratesVersion2 keeps every holder's state across the move to
// tokens: an acknowledgement of the current generation stays clean, an
// older one stays poisoned; a looker reads the version 2 store as the
// migration will turn it, without migrating it.
func TestMigratesVersion2(t *testing.T) {
	path := version2Store(t)
	ctx := context.Background()
	want := map[string]lock.State{
		"k":    {State: lock.StateHeld, Holder: "bob", Generation: 3, Token: 5, PoisonedHolders: []string{"alice", "dave"}},
		"free": {State: lock.StateFree, Holder: "alice", Generation: 2, Token: 4, PoisonedHolders: []string{"bob"}},
	}
	check := func(who string, s *Store) {
		t.Helper()
		snap, err := s.Snapshot(ctx)
		if err != nil || len(snap.Locks) != 2 {
			t.Fatalf("%s: snapshot %+v, %v", who, snap, err)
		}
		for _, l := range snap.Locks {
			w := want[l.Key]
			if l.State != w.State || l.Holder != w.Holder || l.Generation != w.Generation || l.Token != w.Token ||
				!slices.Equal(l.PoisonedHolders, w.PoisonedHolders) {
				t.Errorf("%s: %s is %+v, want %+v", who, l.Key, l, w)
			}
		}
	}

	ro, err := Open(ctx, path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	check("a looker at version 2", ro)
	ro.Close()
	if v := queryInt(t, path, "SELECT schema_version FROM xplock_store"); v != 2 {
		t.Fatalf("looking moved the store to schema version %d", v)
	}

	s, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	check("after migrating", s)
	if v := queryInt(t, path, "SELECT schema_version FROM xplock_store"); v != schemaVersion {
		t.Fatalf("schema version %d after migrating, want %d", v, schemaVersion)
	}
	if v := userVersion(t, path); v != 7 {
		t.Fatalf("user_version %d; the migration must leave the application's 7 alone", v)
	}

	acquire := func(key, holder string, gen int64, poisoned bool) {
		t.Helper()
		g, err := s.Acquire(ctx, lock.AcquireRequest{Key: key, Holder: holder, TTL: time.Hour, Checked: true})
		if err != nil || !g.Acquired || g.Generation != gen || g.Poisoned != poisoned {
			t.Fatalf("%s acquires %s: %+v, %v; want generation %d, poisoned %v", holder, key, g, err, gen, poisoned)
		}
	}
	release := func(key, holder string) {
		t.Helper()
		if _, err := s.Release(ctx, lock.ReleaseRequest{Key: key, Holder: holder, Acknowledge: true}); err != nil {
			t.Fatalf("%s releases %s: %v", holder, key, err)
		}
	}
	// bob's migrated tenure is his: he renews and releases it.
	if _, err := s.Renew(ctx, lock.RenewRequest{Key: "k", Holder: "bob", Token: 5}); err != nil {
		t.Fatalf("bob renews his migrated tenure: %v", err)
	}
	release("k", "bob")
	acquire("k", "carol", 4, false) // acknowledged the generation bob held
	release("k", "carol")
	acquire("k", "dave", 5, true)
	release("k", "dave")
	acquire("free", "alice", 2, false) // the last holder, caught up
	release("free", "alice")
	acquire("free", "bob", 3, true)
}

// TestVersion2CannotRunOnNewStore runs what the previous xplock version
// runs on a store: a version 3 store is refused by its version check, and
// its queries fail rather than misread the tables.
func TestVersion2CannotRunOnNewStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "locks.db")
	s, err := Open(context.Background(), path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if v := queryInt(t, path, "SELECT schema_version FROM xplock_store"); v <= 2 {
		t.Fatalf("schema version %d: version 2 would take the store for its own", v)
	}
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, q := range []string{
		"SELECT " + legacyColumns + ", (SELECT history_limit FROM xplock_store) FROM xplock_keys WHERE key = 'k'",
		"INSERT INTO xplock_keys (" + legacyColumns + ") VALUES ('k', 'h', 1, 1, 1, 1, 0, 0, 0, 0, 0) ON CONFLICT (key) DO UPDATE SET held = excluded.held",
		"SELECT " + legacyColumns + " FROM xplock_keys ORDER BY key",
	} {
		if _, err := db.Exec(q); err == nil {
			t.Errorf("a version 2 query ran on this version's store: %s", q)
		}
	}
}
