// Package xplockdb opens the lock store the xplock command uses, from the
// same string its --db flag takes, so that a Go program shares locks with
// the CLI (and with scripts that call it) without repeating its rules.
//
// The string is resolved as the CLI resolves it (see Location): the given
// string, else the XPLOCK_DB environment variable, else the default SQLite
// file (see DefaultPath). A postgres:// or postgresql:// URL opens the
// PostgreSQL store; anything else is a SQLite file. Importing this package
// links both stores in; a program that uses only one imports that store's
// package (sqlite or postgres) directly.
package xplockdb

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/postgres"
	"github.com/xplock/xplock/sqlite"
)

// EnvVar names the environment variable that chooses the store when no
// location is given, as the CLI's --db flag does.
const EnvVar = "XPLOCK_DB"

// ErrNoDefault means there is no default store: neither XDG_STATE_HOME nor
// HOME is an absolute path. Give a location or set XPLOCK_DB instead.
var ErrNoDefault = errors.New("no lock store")

// Options says how Open treats the store. The zero value opens it as
// `xplock acquire` does: creating the SQLite file, its directory and the
// tables (or the PostgreSQL tables) when they do not exist yet.
type Options struct {
	// HistoryLimit is how many events are kept per key, applied only when
	// Open creates the store's tables (the store's default when zero).
	HistoryLimit int
	// NoCreate leaves a store that does not exist as it is. On SQLite, Open
	// then fails with an error wrapping fs.ErrNotExist when the file or its
	// xplock tables are missing; on PostgreSQL it opens a database without
	// xplock tables, which reads as holding no locks, and only Acquire
	// creates them.
	NoCreate bool
	// ReadOnly only looks: it creates, migrates and changes nothing. On
	// SQLite the file is opened read-only and a missing file fails with an
	// error wrapping fs.ErrNotExist; on PostgreSQL it means NoCreate.
	ReadOnly bool
	// BusyLimit bounds how long one SQLite call waits for another connection
	// that holds the database locked (zero: as long as its context allows).
	// PostgreSQL calls are bounded by their context.
	BusyLimit time.Duration
}

// Open opens the store that db names, resolved by Location: "" opens the
// one the CLI uses by default. Errors wrap the stores' own (for example
// postgres.ErrBadURL, sqlite.ErrNotSQLite, lock.ErrUnsupportedSchema,
// fs.ErrNotExist), and ErrNoDefault when there is no default store.
func Open(ctx context.Context, db string, opts Options) (lock.Store, error) {
	location, err := Location(db)
	if err != nil {
		return nil, err
	}
	// Each branch returns a nil interface on error, never a nil *Store in one.
	if IsPostgres(location) {
		s, err := postgres.Open(ctx, location, postgres.Options{
			HistoryLimit: opts.HistoryLimit,
			NoCreate:     opts.NoCreate || opts.ReadOnly,
		})
		if err != nil {
			return nil, err
		}
		return s, nil
	}
	s, err := sqlite.Open(ctx, location, sqlite.Options{
		HistoryLimit: opts.HistoryLimit,
		NoCreate:     opts.NoCreate,
		ReadOnly:     opts.ReadOnly,
		BusyLimit:    opts.BusyLimit,
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Location resolves db as the CLI resolves its --db flag: db itself when
// it is not empty, else $XPLOCK_DB, else DefaultPath.
func Location(db string) (string, error) {
	if db != "" {
		return db, nil
	}
	if env := os.Getenv(EnvVar); env != "" {
		return env, nil
	}
	return DefaultPath()
}

// DefaultPath is the CLI's default store: $XDG_STATE_HOME/xplock/locks.db,
// else $HOME/.local/state/xplock/locks.db. It never depends on the current
// directory: a relative XDG_STATE_HOME is ignored, as the XDG base
// directory specification says, and without an absolute HOME there is no
// default store (an error wrapping ErrNoDefault). Cron jobs and services
// often run without HOME, and two of them started in different directories
// must not lock different files.
func DefaultPath() (string, error) {
	if state := os.Getenv("XDG_STATE_HOME"); filepath.IsAbs(state) {
		return filepath.Join(state, "xplock", "locks.db"), nil
	}
	home := os.Getenv("HOME")
	if filepath.IsAbs(home) {
		return filepath.Join(home, ".local", "state", "xplock", "locks.db"), nil
	}
	why := "HOME is not set"
	if home != "" {
		why = fmt.Sprintf("HOME=%q is not an absolute path", home)
	}
	return "", fmt.Errorf("%w: %s, so there is no default store "+
		"($XDG_STATE_HOME/xplock/locks.db or ~/.local/state/xplock/locks.db) that does not depend on the current directory",
		ErrNoDefault, why)
}

// IsPostgres reports whether location is a PostgreSQL URL (postgres:// or
// postgresql://) rather than a SQLite file.
func IsPostgres(location string) bool {
	return strings.HasPrefix(location, "postgres://") || strings.HasPrefix(location, "postgresql://")
}

// Redact is location as a message may show it: a PostgreSQL URL with its
// password masked, a file path as it is.
func Redact(location string) string {
	if IsPostgres(location) {
		return postgres.Redact(location)
	}
	return location
}
