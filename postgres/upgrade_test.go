package postgres_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/postgres"
)

// oldSchema makes db hold the xplock tables of schema version, empty, as
// the xplock that knew that version created them.
func oldSchema(t *testing.T, srv *pgServer, db string, version int) {
	t.Helper()
	s := open(t, srv.url(db, false), postgres.Options{NoCreate: true})
	if err := s.MigrateTo(context.Background(), version); err != nil {
		t.Fatal(err)
	}
	s.Close()
}

// TestUpgradeFromVersion1: a store written by version 1 is read as it is
// by a looking store, and upgraded, keeping every lock and
// acknowledgement, by the first store that writes.
func TestUpgradeFromVersion1(t *testing.T) {
	srv := needServer(t)
	ctx := context.Background()
	db := srv.newDB(t)
	oldSchema(t, srv, db, 1)
	// Holder a took k, checked (acknowledging generation 1), for an hour.
	srv.exec(t, db, `INSERT INTO xplock_locks VALUES ('k', 'a', 1, 1, true, true, now(), now() + interval '1 hour',
			3600000000, now(), 1);
		INSERT INTO xplock_acks VALUES ('k', 'a', 1);
		INSERT INTO xplock_events (key, event, holder, generation, token, time) VALUES ('k', 'acquired', 'a', 1, 1, now())`)

	looker := open(t, srv.url(db, false), postgres.Options{NoCreate: true})
	if snap, err := looker.Snapshot(ctx); err != nil || len(snap.Locks) != 1 || snap.Locks[0].Holder != "a" ||
		snap.Locks[0].State != lock.StateHeld {
		t.Fatalf("snapshot of a version 1 store: %+v, %v", snap, err)
	}
	if v := srv.queryInt(t, db, "SELECT version FROM xplock_schema"); v != 1 {
		t.Fatalf("looking changed the schema version to %d", v)
	}
	// The looking store writes once asked to: it upgrades first.
	if _, err := looker.Release(ctx, lock.ReleaseRequest{Key: "k", Holder: "a", Acknowledge: true}); err != nil {
		t.Fatal(err)
	}
	if v := srv.queryInt(t, db, "SELECT version FROM xplock_schema"); v != 3 {
		t.Fatalf("schema version %d after a release, want 3", v)
	}
	if settings, err := looker.Settings(ctx); err != nil || settings.HistoryLimit != postgres.DefaultHistoryLimit {
		t.Fatalf("settings after the upgrade: %+v, %v", settings, err)
	}
	if g, err := looker.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: "a", TTL: time.Hour, Checked: true}); err != nil || g.Generation != 1 || g.Poisoned {
		t.Fatalf("acquire after the upgrade: %+v, %v", g, err)
	}
}

// TestUpgradeKeepsPoison: moving a version 2 store to version 3 keeps
// every holder's poison (acknowledged at the key's generation: clean;
// lower: poisoned), every lease, and a lease that ran out unseen, whose
// expiry is recorded when the next decision meets it. A looking store
// shows the same before the upgrade as after.
func TestUpgradeKeepsPoison(t *testing.T) {
	srv := needServer(t)
	ctx := context.Background()
	db := srv.newDB(t)
	oldSchema(t, srv, db, 2)
	// k: bob holds generation 3 for an hour; alice and carol acknowledged
	// earlier generations, bob the current one. gone: erin's lease ran out
	// a minute ago, unseen; frank acknowledged before her. free: dave
	// released the only generation there was.
	srv.exec(t, db, `INSERT INTO xplock_locks VALUES
			('k', 'bob', 3, 4, true, true, now() - interval '1 minute', now() + interval '1 hour', 3600000000, now(), 0),
			('gone', 'erin', 2, 2, true, true, now() - interval '2 minutes', now() - interval '1 minute', 60000000,
				now() - interval '2 minutes', 0),
			('free', 'dave', 1, 1, false, false, now(), now(), 60000000, now(), 0);
		INSERT INTO xplock_acks VALUES ('k', 'alice', 2), ('k', 'bob', 3), ('k', 'carol', 1),
			('gone', 'erin', 2), ('gone', 'frank', 1), ('free', 'dave', 1)`)
	want := map[string]struct {
		state    string
		holder   string
		poisoned []string
	}{
		"k":    {lock.StateHeld, "bob", []string{"alice", "carol"}},
		"gone": {lock.StateExpired, "erin", []string{"frank"}},
		"free": {lock.StateFree, "dave", nil},
	}
	check := func(what string, s *postgres.Store) {
		t.Helper()
		snap, err := s.Snapshot(ctx)
		if err != nil || len(snap.Locks) != len(want) {
			t.Fatalf("%s: %+v, %v", what, snap, err)
		}
		for _, st := range snap.Locks {
			w := want[st.Key]
			if st.State != w.state || st.Holder != w.holder || !slices.Equal(st.PoisonedHolders, w.poisoned) {
				t.Errorf("%s: %s is %s by %q, poisoned %q; want %s by %q, poisoned %q",
					what, st.Key, st.State, st.Holder, st.PoisonedHolders, w.state, w.holder, w.poisoned)
			}
		}
	}
	check("before the upgrade", open(t, srv.url(db, false), postgres.Options{NoCreate: true}))
	s := open(t, srv.url(db, true), postgres.Options{})
	if v := srv.queryInt(t, db, "SELECT version FROM xplock_schema"); v != 3 {
		t.Fatalf("schema version %d after Open, want 3", v)
	}
	check("after the upgrade", s)

	// The decisions agree: bob's lease runs on; alice and carol are
	// poisoned when they take k, dave is not when he takes free again.
	if g, err := s.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: "alice", TTL: time.Hour}); err != nil || g.Acquired {
		t.Fatalf("alice while bob holds k: %+v, %v", g, err)
	}
	if _, err := s.Release(ctx, lock.ReleaseRequest{Key: "k", Holder: "bob", Token: 4, Acknowledge: true}); err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"alice", "carol"} {
		g, err := s.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: h, TTL: time.Hour, Checked: true})
		if err != nil || !g.Acquired || !g.Poisoned {
			t.Fatalf("%s takes k: %+v, %v; want poisoned", h, g, err)
		}
		if _, err := s.Release(ctx, lock.ReleaseRequest{Key: "k", Holder: h}); err != nil {
			t.Fatal(err)
		}
	}
	if g, err := s.Acquire(ctx, lock.AcquireRequest{Key: "free", Holder: "dave", TTL: time.Hour, Checked: true}); err != nil ||
		g.Generation != 1 || g.Token != 2 || g.Poisoned {
		t.Fatalf("dave takes free again: %+v, %v; want generation 1, token 2, clean", g, err)
	}
	// Erin comes back to her lapsed lock: its expiry is recorded, and her
	// new tenure keeps the generation. Frank then is poisoned, erin not.
	g, err := s.Acquire(ctx, lock.AcquireRequest{Key: "gone", Holder: "erin", TTL: time.Hour, Checked: true})
	if err != nil || !g.Acquired || g.Generation != 2 || g.Token != 3 || g.Poisoned {
		t.Fatalf("erin takes gone again: %+v, %v", g, err)
	}
	history, err := s.History(ctx, "gone", 0)
	if err != nil || len(history) != 2 || history[0].Type != lock.EventExpired || history[0].Holder != "erin" ||
		history[0].Token != 2 || history[1].Type != lock.EventAcquired {
		t.Fatalf("history of gone: %+v, %v; want erin's expiry, then her acquisition", history, err)
	}
	if _, err := s.Release(ctx, lock.ReleaseRequest{Key: "gone", Holder: "erin", Acknowledge: true}); err != nil {
		t.Fatal(err)
	}
	if g, err := s.Acquire(ctx, lock.AcquireRequest{Key: "gone", Holder: "frank", TTL: time.Hour, Checked: true}); err != nil ||
		!g.Acquired || !g.Poisoned || g.Generation != 3 {
		t.Fatalf("frank takes gone: %+v, %v; want generation 3, poisoned", g, err)
	}
}

// TestEarlierVersionsFail: on a version 3 store, the statements of
// versions 1 and 2 (every decision began with the first; peek and status
// ran the others) fail instead of misreading it.
func TestEarlierVersionsFail(t *testing.T) {
	srv := needServer(t)
	ctx := context.Background()
	db := srv.newDB(t)
	s := open(t, srv.url(db, false), postgres.Options{})
	if _, err := s.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: "a", TTL: time.Hour, Checked: true}); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, srv.url(db, false))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, query := range []string{
		`INSERT INTO xplock_locks AS l
			(key, holder, generation, token, held, checked, acquired_at, expires_at, ttl_us, changed_at, events)
			VALUES ('k', '', 0, 0, false, false, clock_timestamp(), clock_timestamp(), 0, clock_timestamp(), 0)
			ON CONFLICT (key) DO UPDATE SET events = l.events WHERE false`,
		`SELECT clock_timestamp(), l.holder, l.generation, l.token, l.held, l.acquired_at, l.expires_at, l.changed_at
			FROM xplock_locks l WHERE l.key = 'k'`,
		`SELECT l.key, l.holder, l.generation, l.token, l.held, l.acquired_at, l.expires_at, l.changed_at,
			array(SELECT a.holder FROM xplock_acks a WHERE a.key = l.key AND a.generation <> l.generation)
			FROM xplock_locks l WHERE l.generation > 0`,
		`INSERT INTO xplock_acks (key, holder, generation) VALUES ('k', 'b', 1)`,
	} {
		_, err := conn.Exec(ctx, query)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || (pe.Code != "42703" && pe.Code != "23502") {
			t.Errorf("a statement of version 2 on version 3: %v, want undefined column or not-null violation\n%s", err, query)
		}
	}
}
