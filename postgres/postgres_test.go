package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/lock/locktest"
	"github.com/xplock/xplock/postgres"
)

// open opens a store on url, closed when the test ends.
func open(t testing.TB, url string, opts postgres.Options) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(context.Background(), url, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// backend gives each conformance test a database of its own; every handle
// is its own store (its own connections), alternately over the Unix socket
// and TCP, as separate processes on separate machines would have.
func backend(srv *pgServer, setup func(t *testing.T, db string)) func(t *testing.T) locktest.Backend {
	return func(t *testing.T) locktest.Backend {
		db := srv.newDB(t)
		if setup != nil {
			setup(t, db)
		}
		var n int
		var mu sync.Mutex
		return func(t *testing.T) lock.Store {
			mu.Lock()
			n++
			tcp := n%2 == 0
			mu.Unlock()
			return open(t, srv.url(db, tcp), postgres.Options{})
		}
	}
}

func TestConformance(t *testing.T) {
	t.Parallel()
	srv := needServer(t)
	locktest.Run(t, backend(srv, nil))
}

// TestConformanceRepeatableRead runs the suite with REPEATABLE READ as the
// database's default isolation: both statements of a decision then share
// the snapshot taken before the row lock was granted, and decisions must
// stay correct by retrying serialization failures. (SERIALIZABLE passes as
// well; it is left out to keep the run short, since its own conflict
// detection would mask a mistake that REPEATABLE READ exposes.)
func TestConformanceRepeatableRead(t *testing.T) {
	t.Parallel()
	srv := needServer(t)
	locktest.Run(t, backend(srv, func(t *testing.T, db string) {
		srv.exec(t, db, "ALTER DATABASE "+db+" SET default_transaction_isolation = 'repeatable read'")
	}))
}

func TestSchema(t *testing.T) {
	srv := needServer(t)
	ctx := context.Background()

	t.Run("NoCreate", func(t *testing.T) {
		// Looking at a database without xplock tables (in a search_path
		// schema that does not exist either) creates nothing: it holds no
		// locks, no events, and nothing to release.
		db := srv.newDB(t)
		relations := func() int64 {
			return srv.queryInt(t, db, "SELECT count(*) FROM pg_class WHERE relname LIKE 'xplock%'") +
				srv.queryInt(t, db, "SELECT count(*) FROM pg_namespace WHERE nspname = 'locks'")
		}
		for _, url := range []string{srv.url(db, false), srv.url(db, false) + "&search_path=locks"} {
			s := open(t, url, postgres.Options{NoCreate: true})
			snap, err := s.Snapshot(ctx)
			if err != nil || len(snap.Locks) != 0 || snap.Now.IsZero() {
				t.Fatalf("snapshot of an empty database: %+v, %v", snap, err)
			}
			if events, err := s.EventsAfter(ctx, 0, nil, 10); err != nil || len(events) != 0 {
				t.Fatalf("events of an empty database: %+v, %v", events, err)
			}
			if _, err := s.Release(ctx, lock.ReleaseRequest{Key: "k", Holder: "a"}); !errors.Is(err, lock.ErrNotHeld) {
				t.Fatalf("release in an empty database: %v, want ErrNotHeld", err)
			}
			if _, err := s.Renew(ctx, lock.RenewRequest{Key: "k", Holder: "a"}); !errors.Is(err, lock.ErrNotHeld) {
				t.Fatalf("renew in an empty database: %v, want ErrNotHeld", err)
			}
			if settings, err := s.Settings(ctx); err != nil || settings.HistoryLimit != postgres.DefaultHistoryLimit {
				t.Fatalf("settings of an empty database: %+v, %v", settings, err)
			}
			changes, err := s.Subscribe(ctx)
			if err != nil || changes == nil {
				t.Fatalf("subscribe: %v", err)
			}
			if n := relations(); n != 0 {
				t.Fatalf("NoCreate created %d relations or schemas", n)
			}
		}
		// Acquire is what creates a store, and a looking store then sees it.
		looker := open(t, srv.url(db, false), postgres.Options{NoCreate: true})
		writer := open(t, srv.url(db, true), postgres.Options{NoCreate: true})
		if g, err := writer.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: "a", TTL: time.Hour}); err != nil || !g.Acquired {
			t.Fatalf("acquire: %+v, %v", g, err)
		}
		if snap, err := looker.Snapshot(ctx); err != nil || len(snap.Locks) != 1 || snap.Locks[0].Holder != "a" {
			t.Fatalf("snapshot once created: %+v, %v", snap, err)
		}
	})

	t.Run("ConcurrentCreation", func(t *testing.T) {
		db := srv.newDB(t)
		var wg sync.WaitGroup
		errs := make(chan error, 6)
		for range 6 {
			wg.Go(func() {
				s, err := postgres.Open(ctx, srv.url(db, false), postgres.Options{})
				if err == nil {
					_, err = s.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: "a", TTL: time.Minute})
					s.Close()
				}
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("NewerRefusedUntouched", func(t *testing.T) {
		db := srv.newDB(t)
		s := open(t, srv.url(db, false), postgres.Options{})
		if _, err := s.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: "a", TTL: time.Hour, Checked: true}); err != nil {
			t.Fatal(err)
		}
		s.Close()
		srv.exec(t, db, "UPDATE xplock_schema SET version = 99")
		before := srv.queryInt(t, db, "SELECT count(*) FROM xplock_events")
		_, err := postgres.Open(ctx, srv.url(db, false), postgres.Options{})
		if !errors.Is(err, lock.ErrUnsupportedSchema) || !strings.Contains(err.Error(), "upgrade xplock") {
			t.Fatalf("Open of a newer schema: %v, want ErrUnsupportedSchema asking to upgrade", err)
		}
		if v := srv.queryInt(t, db, "SELECT version FROM xplock_schema"); v != 99 {
			t.Fatalf("schema version changed to %d", v)
		}
		if after := srv.queryInt(t, db, "SELECT count(*) FROM xplock_events"); after != before {
			t.Fatalf("events changed from %d to %d", before, after)
		}
	})

	t.Run("SearchPath", func(t *testing.T) {
		// The tables go to the first schema of search_path, set in the URL.
		db := srv.newDB(t)
		srv.exec(t, db, "CREATE SCHEMA locks")
		s := open(t, srv.url(db, false)+"&search_path=locks", postgres.Options{})
		if _, err := s.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: "a", TTL: time.Hour}); err != nil {
			t.Fatal(err)
		}
		if n := srv.queryInt(t, db, "SELECT count(*) FROM locks.xplock_locks"); n != 1 {
			t.Fatalf("locks.xplock_locks has %d rows, want 1", n)
		}
	})
}

func TestConnectionErrors(t *testing.T) {
	srv := needServer(t)
	ctx := context.Background()
	db := srv.newDB(t)
	closedPort := freePort(t)
	for _, tc := range []struct {
		name, url string
		want      []string
	}{
		{"refused", fmt.Sprintf("postgres://xplock:secret-pw@127.0.0.1:%d/%s", closedPort, db),
			[]string{"127.0.0.1:", "check that PostgreSQL is running", "host and port"}},
		{"no such database", srv.url("nosuchdb", true), []string{"database", "nosuchdb", "check"}},
		{"no such user", strings.Replace(srv.url(db, true), "xplock@", "nobody_here:secret-pw@", 1),
			[]string{"user", "nobody_here", "check"}},
		{"no socket", fmt.Sprintf("postgres:///%s?host=/nonexistent/dir", db), []string{"Unix socket", "check"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := postgres.Open(ctx, tc.url, postgres.Options{})
			if err == nil {
				t.Fatal("Open succeeded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "secret-pw") {
				t.Errorf("error shows the password: %v", err)
			}
		})
	}
	_, err := postgres.Open(ctx, "postgres://xplock:secret-pw@127.0.0.1:notaport/x", postgres.Options{})
	if !errors.Is(err, postgres.ErrBadURL) || strings.Contains(err.Error(), "secret-pw") {
		t.Fatalf("bad URL: %v, want ErrBadURL without the password", err)
	}
}

// TestHistoryLimit checks that history is pruned to the limit in the same
// decision, that the limit holds even when one decision records two events,
// and that event IDs are never reused.
func TestHistoryLimit(t *testing.T) {
	srv := needServer(t)
	ctx := context.Background()
	db := srv.newDB(t)
	// The limit given when the tables are created is stored; a later
	// handle's own limit changes nothing, SetHistoryLimit does.
	s := open(t, srv.url(db, false), postgres.Options{HistoryLimit: 3})
	if other := open(t, srv.url(db, true), postgres.Options{HistoryLimit: 50}); true {
		if settings, err := other.Settings(ctx); err != nil || settings.HistoryLimit != 3 {
			t.Fatalf("settings after opening with another limit: %+v, %v; want the stored 3", settings, err)
		}
	}
	var last int64
	for _, limit := range []int{3, 1} {
		key := fmt.Sprintf("k%d", limit)
		if err := s.SetHistoryLimit(ctx, limit); err != nil {
			t.Fatal(err)
		}
		for i := range 5 {
			holder := fmt.Sprintf("h%d", i%2)
			if _, err := s.Acquire(ctx, lock.AcquireRequest{Key: key, Holder: holder, TTL: time.Hour}); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Release(ctx, lock.ReleaseRequest{Key: key, Holder: holder}); err != nil {
				t.Fatal(err)
			}
		}
		// An expiry and the acquisition that observes it: two events at once.
		if _, err := s.Acquire(ctx, lock.AcquireRequest{Key: key, Holder: "x", TTL: time.Millisecond}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
		if _, err := s.Acquire(ctx, lock.AcquireRequest{Key: key, Holder: "y", TTL: time.Hour}); err != nil {
			t.Fatal(err)
		}
		history, err := s.History(ctx, key, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(history) != limit {
			t.Fatalf("limit %d: %d events kept: %+v", limit, len(history), history)
		}
		if h := history[len(history)-1]; h.Type != lock.EventAcquired || h.Holder != "y" {
			t.Fatalf("limit %d: newest event %+v, want y's acquisition", limit, h)
		}
		if limit > 1 {
			if h := history[len(history)-2]; h.Type != lock.EventExpired || h.Holder != "x" {
				t.Fatalf("limit %d: %+v, want x's expiry before y's acquisition", limit, h)
			}
		}
		if n := srv.queryInt(t, db, "SELECT count(*) FROM xplock_events WHERE key = $1", key); n != int64(limit) {
			t.Fatalf("limit %d: %d rows stored", limit, n)
		}
		if n := srv.queryInt(t, db, "SELECT events FROM xplock_locks WHERE key = $1", key); n != int64(limit) {
			t.Fatalf("limit %d: the row counts %d events", limit, n)
		}
		for _, e := range history {
			if e.ID <= last {
				t.Fatalf("event ID %d reused or out of order (after %d)", e.ID, last)
			}
			last = e.ID
		}
	}
	// A smaller limit set by another process prunes what a larger one kept.
	small := open(t, srv.url(db, false), postgres.Options{})
	if err := small.SetHistoryLimit(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if err := small.SetHistoryLimit(ctx, 0); err == nil {
		t.Fatal("a history limit of 0 was accepted")
	}
	if _, err := s.Release(ctx, lock.ReleaseRequest{Key: "k3", Holder: "y"}); err != nil {
		t.Fatal(err)
	}
	if history, err := small.History(ctx, "k3", 0); err != nil || len(history) != 2 || history[1].Type != lock.EventReleased {
		t.Fatalf("after a release with limit 2: %+v, %v", history, err)
	}
}

// TestFirstAcquisitionRace has many handles take a key nobody has used at
// the same moment: creating its row must not fail, and one of them wins.
func TestFirstAcquisitionRace(t *testing.T) {
	srv := needServer(t)
	db := srv.newDB(t)
	const n = 8
	stores := make([]*postgres.Store, n)
	for i := range stores {
		stores[i] = open(t, srv.url(db, i%2 == 0), postgres.Options{})
	}
	for round := range 5 {
		key := fmt.Sprintf("new-%d", round)
		start := make(chan struct{})
		grants := make(chan lock.Grant, n)
		errs := make(chan error, n)
		for i, s := range stores {
			go func() {
				<-start
				g, err := s.Acquire(context.Background(), lock.AcquireRequest{Key: key, Holder: fmt.Sprint("h", i), TTL: time.Hour, Checked: true})
				errs <- err
				grants <- g
			}()
		}
		close(start)
		won := 0
		for range n {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
			if g := <-grants; g.Acquired {
				won++
				if g.Generation != 1 || g.Token != 1 || g.Poisoned {
					t.Fatalf("winner's grant: %+v", g)
				}
			}
		}
		if won != 1 {
			t.Fatalf("%d handles acquired %s", won, key)
		}
	}
	if n := srv.queryInt(t, db, "SELECT count(*) FROM xplock_locks WHERE generation = 0"); n != 0 {
		t.Fatalf("%d placeholder rows left", n)
	}
}

// TestRefusalOnUnknownKeyLeavesNothing checks that releasing, renewing,
// breaking and acknowledging a key nobody ever took store nothing.
func TestRefusalOnUnknownKeyLeavesNothing(t *testing.T) {
	srv := needServer(t)
	ctx := context.Background()
	db := srv.newDB(t)
	s := open(t, srv.url(db, false), postgres.Options{})
	_, err := s.Release(ctx, lock.ReleaseRequest{Key: "ghost", Holder: "a"})
	var nh *lock.NotHeldError
	if !errors.As(err, &nh) || nh.Reason != lock.ReasonFree || nh.Current.Holder != "" || !nh.Current.Since.IsZero() {
		t.Fatalf("release of an unknown key: %v (%+v)", err, nh)
	}
	if _, err := s.Renew(ctx, lock.RenewRequest{Key: "ghost", Holder: "a"}); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatal(err)
	}
	if _, err := s.Break(ctx, "ghost", lock.Breaker{Holder: "ops"}); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatal(err)
	}
	if err := s.Acknowledge(ctx, "ghost", "a", 0); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatal(err)
	}
	if n := srv.queryInt(t, db, "SELECT count(*) FROM xplock_locks"); n != 0 {
		t.Fatalf("%d rows stored", n)
	}
	snap, err := s.Snapshot(ctx)
	if err != nil || len(snap.Locks) != 0 || snap.Cursor != 0 || snap.Now.IsZero() {
		t.Fatalf("snapshot of an empty store: %+v, %v", snap, err)
	}
}

// TestEventsNeverSkipped has writers on many keys race a reader that
// follows EventsAfter from its cursor, as watch does: the reader must see
// every event, none twice, in ID order, even though the writers' commits
// interleave.
func TestEventsNeverSkipped(t *testing.T) {
	srv := needServer(t)
	ctx := context.Background()
	db := srv.newDB(t)
	reader := open(t, srv.url(db, false), postgres.Options{})
	const writers, rounds = 6, 25
	done := make(chan error, writers)
	for w := range writers {
		s := open(t, srv.url(db, w%2 == 0), postgres.Options{})
		go func() {
			key, holder := fmt.Sprint("key-", w), fmt.Sprint("w", w)
			for range rounds {
				if _, err := s.Acquire(ctx, lock.AcquireRequest{Key: key, Holder: holder, TTL: time.Minute}); err != nil {
					done <- err
					return
				}
				if _, err := s.Release(ctx, lock.ReleaseRequest{Key: key, Holder: holder}); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
	}
	var seen []int64
	var cursor int64
	finished := 0
	for finished < writers {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			finished++
		default:
		}
		events, err := reader.EventsAfter(ctx, cursor, nil, 7)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range events {
			seen = append(seen, e.ID)
			cursor = e.ID
		}
	}
	for {
		events, err := reader.EventsAfter(ctx, cursor, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(events) == 0 {
			break
		}
		for _, e := range events {
			seen = append(seen, e.ID)
			cursor = e.ID
		}
	}
	all, err := reader.EventsAfter(ctx, 0, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != writers*rounds*2 || len(seen) != len(all) {
		t.Fatalf("the reader saw %d events, the store has %d, want %d", len(seen), len(all), writers*rounds*2)
	}
	for i, e := range all {
		if seen[i] != e.ID {
			t.Fatalf("event %d: the reader saw ID %d, the store has %d", i, seen[i], e.ID)
		}
	}
}

// TestServerClock checks that leases are judged by the server's clock: the
// grant's times are the server's, whatever this process's clock says.
func TestServerClock(t *testing.T) {
	srv := needServer(t)
	ctx := context.Background()
	db := srv.newDB(t)
	s := open(t, srv.url(db, false), postgres.Options{})
	g, err := s.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: "a", TTL: 90 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if g.ExpiresAt.Sub(g.Now) != 90*time.Second || !g.AcquiredAt.Equal(g.Now) {
		t.Fatalf("grant times: now %v, acquired %v, expires %v", g.Now, g.AcquiredAt, g.ExpiresAt)
	}
	stored := srv.queryInt(t, db, "SELECT (extract(epoch FROM expires_at) * 1000000)::bigint FROM xplock_tenures WHERE key = 'k'")
	if stored != g.ExpiresAt.UnixMicro() {
		t.Fatalf("stored lease end %d, grant says %d", stored, g.ExpiresAt.UnixMicro())
	}
}

// TestSubscribeReconnects checks that a subscription survives its
// connection being terminated by the server, and wakes its reader.
func TestSubscribeReconnects(t *testing.T) {
	srv := needServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	db := srv.newDB(t)
	s := open(t, srv.url(db, false), postgres.Options{})
	changes, err := s.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wait := func(what string) {
		t.Helper()
		select {
		case <-changes:
		case <-time.After(10 * time.Second):
			t.Fatalf("no wake-up %s", what)
		}
	}
	wait("once listening")
	if n := srv.queryInt(t, db, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND query LIKE 'LISTEN%'`); n != 1 {
		t.Fatalf("terminated %d listening connections, want 1", n)
	}
	wait("after the connection was lost")
	// The new connection listens: a change wakes the subscriber again. Any
	// wake-up still queued from the reconnection is drained first.
	deadline := time.After(10 * time.Second)
	for {
		if _, err := s.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: "a", TTL: time.Hour}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Release(ctx, lock.ReleaseRequest{Key: "k", Holder: "a"}); err != nil {
			t.Fatal(err)
		}
		select {
		case <-changes:
			return
		case <-deadline:
			t.Fatal("no wake-up from a change after reconnecting")
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// TestSimpleProtocol runs decisions with pgx's simple protocol, as a URL
// for a transaction-pooling proxy would ask (default_query_exec_mode): the
// two statements of a decision must still be one transaction.
func TestSimpleProtocol(t *testing.T) {
	srv := needServer(t)
	ctx := context.Background()
	db := srv.newDB(t)
	s := open(t, srv.url(db, true)+"&default_query_exec_mode=simple_protocol", postgres.Options{})
	other := open(t, srv.url(db, false), postgres.Options{})
	req := lock.AcquireRequest{Key: "k", Holder: "a", TTL: time.Hour, Checked: true}
	if g, err := s.Acquire(ctx, req); err != nil || !g.Acquired || g.Generation != 1 {
		t.Fatalf("acquire: %+v, %v", g, err)
	}
	if g, err := other.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: "b", TTL: time.Hour}); err != nil || g.Acquired || g.Current.Holder != "a" {
		t.Fatalf("b's acquire: %+v, %v", g, err)
	}
	if _, err := s.Break(ctx, "k", lock.Breaker{Holder: "ops", User: "root", Host: "h", PID: 7}); err != nil {
		t.Fatal(err)
	}
	if g, err := other.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: "b", TTL: time.Hour, Checked: true}); err != nil || !g.Acquired || g.Generation != 2 {
		t.Fatalf("b after the break: %+v, %v", g, err)
	}
	if _, err := s.Release(ctx, lock.ReleaseRequest{Key: "k", Holder: "a"}); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("a's release: %v", err)
	}
	history, err := s.History(ctx, "k", 0)
	if err != nil || len(history) != 3 || history[1].By == nil || history[1].By.PID != 7 {
		t.Fatalf("history %+v, %v", history, err)
	}
	snap, err := s.Snapshot(ctx, "k")
	if err != nil || len(snap.Locks) != 1 || snap.Locks[0].Holder != "b" || snap.Cursor != history[2].ID {
		t.Fatalf("snapshot %+v, %v", snap, err)
	}
}

// TestSubscribeKeys: a subscriber to some keys is woken by their changes,
// not by other keys'.
func TestSubscribeKeys(t *testing.T) {
	srv := needServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	db := srv.newDB(t)
	s := open(t, srv.url(db, false), postgres.Options{})
	changes, err := s.SubscribeKeys(ctx, "mine")
	if err != nil {
		t.Fatal(err)
	}
	// The first wake-up says the connection listens.
	select {
	case <-changes:
	case <-time.After(10 * time.Second):
		t.Fatal("no wake-up once listening")
	}
	cycle := func(key string) {
		t.Helper()
		if _, err := s.Acquire(ctx, lock.AcquireRequest{Key: key, Holder: "a", TTL: time.Hour}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Release(ctx, lock.ReleaseRequest{Key: key, Holder: "a"}); err != nil {
			t.Fatal(err)
		}
	}
	for range 5 {
		cycle("other")
	}
	select {
	case <-changes:
		t.Fatal("woken by other keys' changes")
	case <-time.After(500 * time.Millisecond):
	}
	cycle("mine")
	select {
	case <-changes:
	case <-time.After(10 * time.Second):
		t.Fatal("no wake-up for a change of the key")
	}
}

// TestWaiterLooksWithoutRowLock: once a key was found held, trying again
// while it stays held reads it without locking its row (which would write
// the row's xmax and WAL, and commit a write transaction each time).
func TestWaiterLooksWithoutRowLock(t *testing.T) {
	srv := needServer(t)
	ctx := context.Background()
	db := srv.newDB(t)
	holder := open(t, srv.url(db, false), postgres.Options{})
	waiter := open(t, srv.url(db, true), postgres.Options{})
	if _, err := holder.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: "a", TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	req := lock.AcquireRequest{Key: "k", Holder: "b", TTL: time.Hour, Checked: true}
	if g, err := waiter.Acquire(ctx, req); err != nil || g.Acquired || g.Current.Holder != "a" {
		t.Fatalf("first try: %+v, %v", g, err)
	}
	xmax := func() int64 {
		return srv.queryInt(t, db, "SELECT xmax::text::bigint FROM xplock_locks WHERE key = 'k'")
	}
	before := xmax()
	for range 5 {
		if g, err := waiter.Acquire(ctx, req); err != nil || g.Acquired || g.Current.Holder != "a" || g.Current.State != lock.StateHeld {
			t.Fatalf("try while held: %+v, %v", g, err)
		}
	}
	if after := xmax(); after != before {
		t.Fatalf("the waiter's tries locked the row (xmax %d, then %d)", before, after)
	}
	// Once free, the next try takes it.
	if _, err := holder.Release(ctx, lock.ReleaseRequest{Key: "k", Holder: "a"}); err != nil {
		t.Fatal(err)
	}
	if g, err := waiter.Acquire(ctx, req); err != nil || !g.Acquired || g.Generation != 2 {
		t.Fatalf("try once free: %+v, %v", g, err)
	}
}

// TestQueueLoaded: a key's queue entries, which lock.Decide passes on
// unchanged until the fair queue uses them, are loaded with each decision
// and kept as they are.
func TestQueueLoaded(t *testing.T) {
	srv := needServer(t)
	ctx := context.Background()
	db := srv.newDB(t)
	s := open(t, srv.url(db, false), postgres.Options{})
	if _, err := s.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: "a", TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	srv.exec(t, db, `INSERT INTO xplock_queue VALUES
		('k', 1, 'b', 'shared', 2, now(), now() + interval '1 minute',
			'[{"boot_id": "x", "pidns": 4026531836, "pid": 42, "start": 7, "pgid": 42}]'),
		('k', 2, 'c', 'exclusive', 0, now(), now() + interval '1 minute', NULL)`)
	if _, err := s.Release(ctx, lock.ReleaseRequest{Key: "k", Holder: "a"}); err != nil {
		t.Fatal(err)
	}
	if n := srv.queryInt(t, db, `SELECT count(*) FROM xplock_queue WHERE key = 'k' AND (seq, holder) IN ((1, 'b'), (2, 'c'))`); n != 2 {
		t.Fatalf("%d of the 2 queue entries kept", n)
	}
}
