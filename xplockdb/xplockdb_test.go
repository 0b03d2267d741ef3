package xplockdb_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/xplock/xplock/cmd"
	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/postgres"
	"github.com/xplock/xplock/xplockdb"
)

func TestDefaultPathFollowsXDGThenHome(t *testing.T) {
	for _, tc := range []struct {
		name, state, home, want string
	}{
		{"XDG_STATE_HOME first", "/state", "/home/u", "/state/xplock/locks.db"},
		{"relative XDG_STATE_HOME ignored", "state", "/home/u", "/home/u/.local/state/xplock/locks.db"},
		{"HOME without XDG_STATE_HOME", "", "/home/u", "/home/u/.local/state/xplock/locks.db"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("XDG_STATE_HOME", tc.state)
			t.Setenv("HOME", tc.home)
			got, err := xplockdb.DefaultPath()
			if err != nil || got != tc.want {
				t.Errorf("DefaultPath() = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestNoDefaultPathWithoutAnAbsoluteHome(t *testing.T) {
	for _, home := range []string{"", "home"} {
		t.Setenv("XDG_STATE_HOME", "")
		t.Setenv("HOME", home)
		got, err := xplockdb.DefaultPath()
		if !errors.Is(err, xplockdb.ErrNoDefault) {
			t.Errorf("HOME=%q: DefaultPath() = %q, %v; want an error wrapping ErrNoDefault", home, got, err)
		}
	}
}

func TestLocationPrefersTheArgumentThenXPLOCK_DB(t *testing.T) {
	t.Setenv("XDG_STATE_HOME", "/state")
	t.Setenv(xplockdb.EnvVar, "")
	for _, tc := range []struct{ db, env, want string }{
		{"given.db", "env.db", "given.db"},
		{"", "env.db", "env.db"},
		{"", "", "/state/xplock/locks.db"},
	} {
		t.Setenv(xplockdb.EnvVar, tc.env)
		if got, err := xplockdb.Location(tc.db); err != nil || got != tc.want {
			t.Errorf("Location(%q) with XPLOCK_DB=%q = %q, %v; want %q", tc.db, tc.env, got, err, tc.want)
		}
	}
}

// A lock taken through Open("") is the one the CLI sees with no --db.
func TestOpenSharesTheDefaultStoreWithTheCLI(t *testing.T) {
	state := t.TempDir()
	t.Setenv("XDG_STATE_HOME", state)
	t.Setenv(xplockdb.EnvVar, "")
	ctx := context.Background()
	store, err := xplockdb.Open(ctx, "", xplockdb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if _, err := os.Stat(filepath.Join(state, "xplock", "locks.db")); err != nil {
		t.Fatalf("Open did not create the default store: %v", err)
	}
	l, err := lock.New(store, "deploy", "app", lock.Options{})
	if err != nil {
		t.Fatal(err)
	}
	g, err := l.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Release(ctx)

	// The lock commands drop to one P unless GOMAXPROCS is set; keep this
	// test process as it was.
	t.Setenv("GOMAXPROCS", strconv.Itoa(runtime.GOMAXPROCS(0)))
	var out, errOut bytes.Buffer
	if code := cmd.Run(ctx, []string{"acquire", "deploy", "-H", "script", "--nowait"}, &out, &errOut); code != 4 {
		t.Errorf("the CLI's acquire of a key the program holds exited %d, want 4; stderr: %s", code, errOut.String())
	}
}

func TestOpenNoCreateCreatesNothing(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "locks.db")
	for _, opts := range []xplockdb.Options{{NoCreate: true}, {ReadOnly: true}} {
		store, err := xplockdb.Open(context.Background(), path, opts)
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Open(%+v) of a missing file = %v, %v; want an error wrapping fs.ErrNotExist", opts, store, err)
		}
		if store != nil {
			t.Errorf("Open(%+v) failed but returned a non-nil store %#v", opts, store)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "sub")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("NoCreate/ReadOnly created %s: %v", filepath.Join(dir, "sub"), err)
	}
}

// Both URL schemes go to the PostgreSQL store (a malformed URL fails there
// without contacting a server); anything else is a SQLite file.
func TestOpenDispatchesPostgresURLs(t *testing.T) {
	for _, url := range []string{"postgres://u:PASSWORD@host:bad port/db", "postgresql://u:PASSWORD@host:bad port/db"} {
		if !xplockdb.IsPostgres(url) {
			t.Errorf("IsPostgres(%q) = false", url)
		}
		_, err := xplockdb.Open(context.Background(), url, xplockdb.Options{})
		if !errors.Is(err, postgres.ErrBadURL) {
			t.Errorf("Open(%q) = %v, want an error wrapping postgres.ErrBadURL", url, err)
		}
		if got := xplockdb.Redact(url); got == url {
			t.Errorf("Redact(%q) left the password in", url)
		}
	}
	if xplockdb.IsPostgres("postgres.db") {
		t.Error(`IsPostgres("postgres.db") = true, want a SQLite file`)
	}
}

func TestRedactMasksPasswords(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"postgres://user:PASSWORD@db.example:5432/app", "postgres://user:xxxxx@db.example:5432/app"},
		{"postgresql://user:p%40ss@host/db?sslmode=require", "postgresql://user:xxxxx@host/db?sslmode=require"},
		{"postgres://user@host/db?password=PASSWORD&sslmode=disable", "postgres://user@host/db?password=xxxxx&sslmode=disable"},
		{"postgres://user@host/db", "postgres://user@host/db"},
		{"postgres://user:PASSWORD@host:bad port/db", "postgres://user:xxxxx@host:bad port/db"},
		{"/var/lib/xplock/locks.db", "/var/lib/xplock/locks.db"},
	} {
		got := xplockdb.Redact(tc.in)
		if got != tc.want {
			t.Errorf("xplockdb.Redact(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if strings.Contains(got, "PASSWORD") {
			t.Errorf("xplockdb.Redact(%q) shows the password: %q", tc.in, got)
		}
	}
}
