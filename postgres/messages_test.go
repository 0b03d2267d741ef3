package postgres_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/postgres"
)

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://alice:hunter2@db.example:5432/locks?sslmode=require": "postgres://alice:xxxxx@db.example:5432/locks?sslmode=require",
		"postgresql://alice:p%40ss@/locks?host=/run/pg":                  "postgresql://alice:xxxxx@/locks?host=/run/pg",
		"postgres://alice@db/locks":                                      "postgres://alice@db/locks",
		"postgres://db/locks?user=alice&password=hunter2&sslmode=off":    "postgres://db/locks?user=alice&password=xxxxx&sslmode=off",
		"host=db user=alice password=hunter2 dbname=locks":               "host=db user=alice password=xxxxx dbname=locks",
		"postgres://alice:hun@ter2@db:notaport/x":                        "postgres://alice:xxxxx@db:notaport/x",
	} {
		if got := postgres.Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestMessages checks that errors say what really happened: which role
// lacks which privilege on which table, which search_path schema is
// missing, an emptied schema table, a server that is down.
func TestMessages(t *testing.T) {
	srv := needServer(t)
	ctx := context.Background()

	t.Run("ReadOnlyRole", func(t *testing.T) {
		db := srv.newDB(t)
		open(t, srv.url(db, false), postgres.Options{}) // creates the tables
		role := "ro_" + db
		srv.exec(t, db, "CREATE ROLE "+role+" LOGIN")
		srv.exec(t, db, "GRANT SELECT ON ALL TABLES IN SCHEMA public TO "+role)
		url := strings.Replace(srv.url(db, true), "xplock@", role+"@", 1)
		s := open(t, url, postgres.Options{})
		if _, err := s.Snapshot(ctx); err != nil {
			t.Fatalf("a read-only role cannot look: %v", err)
		}
		_, err := s.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: "a", TTL: time.Minute})
		t.Log(err)
		for _, want := range []string{`role "` + role + `"`, "xplock_locks", "grant"} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("acquire as a read-only role: %v; want it to mention %s", err, want)
			}
		}
	})

	t.Run("MissingSearchPathSchema", func(t *testing.T) {
		db := srv.newDB(t)
		_, err := postgres.Open(ctx, srv.url(db, false)+"&search_path=nosuch", postgres.Options{})
		t.Log(err)
		for _, want := range []string{`search_path is "nosuch"`, "create that schema"} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("open with a missing search_path schema: %v; want it to mention %s", err, want)
			}
		}
		if err != nil && strings.Contains(err.Error(), "privilege") {
			t.Errorf("a missing schema is not a privilege problem: %v", err)
		}
	})

	t.Run("EmptySchemaTable", func(t *testing.T) {
		db := srv.newDB(t)
		open(t, srv.url(db, false), postgres.Options{})
		srv.exec(t, db, "DELETE FROM xplock_schema")
		_, err := postgres.Open(ctx, srv.url(db, false), postgres.Options{NoCreate: true})
		t.Log(err)
		if err == nil || !strings.Contains(err.Error(), "xplock_schema table holds no version") || strings.Contains(err.Error(), "check the host") {
			t.Errorf("open with an empty xplock_schema: %v", err)
		}
	})

	t.Run("ServerDown", func(t *testing.T) {
		own := ownServer(t)
		db := own.newDB(t)
		s := open(t, strings.Replace(own.url(db, true), "xplock@", "xplock:hunter2secret@", 1), postgres.Options{})
		own.shutdown()
		callCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		began := time.Now()
		_, err := s.Snapshot(callCtx)
		var unreachable *postgres.UnreachableError
		if !errors.As(err, &unreachable) || callCtx.Err() != nil {
			t.Fatalf("snapshot with the server down: %v, want an UnreachableError before the deadline", err)
		}
		msg := err.Error()
		t.Log(msg)
		for _, want := range []string{"unreachable since", "restart"} {
			if !strings.Contains(msg, want) {
				t.Errorf("%q does not say %s", msg, want)
			}
		}
		if strings.Contains(msg, "hunter2secret") || strings.Contains(msg, "check the host") {
			t.Errorf("%q shows the password or blames the URL", msg)
		}
		if unreachable.Since.Before(began) || time.Since(unreachable.Since) > 2*time.Second {
			t.Errorf("unreachable since %v, the call began at %v", unreachable.Since, began)
		}
	})
}
