// Package postgres is the PostgreSQL store of xplock: the same locks as the
// SQLite store, kept in a server that processes on several machines reach.
//
// Leases are judged by the server's clock. Each decision is one implicit
// transaction sent in a single round trip: a statement that creates or locks
// the key's row, then one statement that decides, records history, prunes it
// and notifies subscribers (LISTEN/NOTIFY). Tables are prefixed xplock_, so
// they can live in an application's own database (and schema, through
// search_path).
package postgres

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/xplock/xplock/lock"
)

// DefaultHistoryLimit is how many events are kept per key unless Options
// say otherwise (the same as the SQLite store's).
const DefaultHistoryLimit = 1000

// defaultConnectTimeout bounds a connection attempt when the URL gives no
// connect_timeout, so that an unreachable server is reported, not waited on.
const defaultConnectTimeout = 10 * time.Second

// Options tune a Store.
type Options struct {
	// HistoryLimit is how many events are kept per key; DefaultHistoryLimit
	// when zero.
	HistoryLimit int
	// NoCreate makes Open fail with ErrNoSchema (which wraps fs.ErrNotExist)
	// instead of creating the xplock tables in a database that has none, for
	// commands that only read.
	NoCreate bool
}

// ErrBadURL means the connection URL could not be parsed.
var ErrBadURL = errors.New("invalid PostgreSQL URL")

// ErrNoSchema means the database has no xplock tables and Options.NoCreate
// was set.
var ErrNoSchema = fmt.Errorf("no xplock tables in this database: %w", fs.ErrNotExist)

// Store is a lock.Store in a PostgreSQL database.
type Store struct {
	pool         *pgxpool.Pool
	connConfig   *pgx.ConnConfig
	historyLimit int

	listener listener

	// closed ends subscriptions when the store is closed.
	closed context.Context
	close  context.CancelFunc
}

var _ lock.Store = (*Store)(nil)

// Open connects to the database at url (postgres://user:password@host:port/dbname?sslmode=...,
// or any form pgx accepts, including libpq's PG* environment variables for
// what the URL leaves out) and brings the xplock schema up to date. A schema
// newer than this program is refused with lock.ErrUnsupportedSchema without
// being touched. Connection problems are reported with what to check.
func Open(ctx context.Context, url string, opts Options) (*Store, error) {
	if opts.HistoryLimit == 0 {
		opts.HistoryLimit = DefaultHistoryLimit
	}
	if opts.HistoryLimit < 0 {
		return nil, errors.New("history limit must be positive")
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// pgx redacts the password from the message.
		return nil, fmt.Errorf("%w: %v", ErrBadURL, err)
	}
	cc := cfg.ConnConfig
	if cc.ConnectTimeout <= 0 {
		cc.ConnectTimeout = defaultConnectTimeout
	}
	if _, ok := cc.RuntimeParams["application_name"]; !ok {
		cc.RuntimeParams["application_name"] = "xplock"
	}
	// A CLI invocation uses one connection, a long-lived process a handful;
	// idle ones are closed after a minute rather than pgx's half hour.
	cfg.MaxConnIdleTime = time.Minute
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, describeConnError(cc, err)
	}
	closed, cancel := context.WithCancel(context.Background())
	s := &Store{pool: pool, connConfig: cc.Copy(), historyLimit: opts.HistoryLimit, closed: closed, close: cancel}
	if err := s.migrate(ctx, opts.NoCreate); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Close closes the store's connections and ends its subscriptions.
func (s *Store) Close() error {
	s.close()
	s.pool.Close()
	return nil
}

// schemaVersion is the newest schema this program knows, kept in the
// xplock_schema table; migrations[i] moves a database from version i to i+1.
// Version 0 is a database without xplock tables.
const schemaVersion = 1

var migrations = []string{
	`CREATE TABLE xplock_schema (
		singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
		version   integer NOT NULL
	);
	INSERT INTO xplock_schema (version) VALUES (0);
	CREATE TABLE xplock_locks (
		key         text PRIMARY KEY,
		holder      text NOT NULL,        -- current holder, or the last one
		generation  bigint NOT NULL,
		token       bigint NOT NULL,
		held        boolean NOT NULL,     -- a tenure is open (its lease may have run out)
		checked     boolean NOT NULL,     -- the open tenure had a checked acquisition
		acquired_at timestamptz NOT NULL, -- all times are the server's clock
		expires_at  timestamptz NOT NULL,
		ttl_us      bigint NOT NULL,      -- the tenure's lease length in microseconds
		changed_at  timestamptz NOT NULL,
		events      bigint NOT NULL       -- history rows kept for this key
	);
	CREATE TABLE xplock_acks (
		key        text NOT NULL,
		holder     text NOT NULL,
		generation bigint NOT NULL,
		PRIMARY KEY (key, holder)
	);
	CREATE TABLE xplock_events (
		-- Never reused, and committed in id order (event-recording
		-- transactions take the xplock_schema row lock first): watch cursors
		-- rely on both.
		id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
		key        text NOT NULL,
		event      text NOT NULL,
		holder     text NOT NULL,
		generation bigint NOT NULL,
		token      bigint NOT NULL,
		time       timestamptz NOT NULL,
		by_holder  text,
		by_user    text,
		by_host    text,
		by_pid     bigint
	);
	CREATE INDEX xplock_events_key ON xplock_events (key, id);`,
}

// migrationLock is the advisory lock key that serializes schema creation
// and migration between processes opening the same database ("xplock").
const migrationLock = 0x78706c6f636b

// migrate brings the schema to schemaVersion. The common case, a current
// schema, costs one query.
func (s *Store) migrate(ctx context.Context, noCreate bool) error {
	var version int
	err := s.pool.QueryRow(ctx, "SELECT version FROM xplock_schema").Scan(&version)
	if pgErrorCode(err) == undefinedTable {
		version, err = 0, nil
	}
	if err != nil {
		return describeConnError(s.connConfig, err)
	}
	if version == schemaVersion {
		return nil
	}
	if err := checkVersion(version); err != nil {
		return err
	}
	if version == 0 && noCreate {
		return ErrNoSchema
	}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(migrationLock)); err != nil {
			return err
		}
		// Another process may have migrated while we waited for the lock.
		version, err := s.schemaVersion(ctx, tx)
		if err != nil {
			return err
		}
		if err := checkVersion(version); err != nil {
			return err
		}
		for v := version; v < schemaVersion; v++ {
			if _, err := tx.Exec(ctx, migrations[v]); err != nil {
				return fmt.Errorf("migrating the xplock schema to version %d: %w", v+1, err)
			}
		}
		_, err = tx.Exec(ctx, "UPDATE xplock_schema SET version = $1", schemaVersion)
		return err
	})
	if errors.Is(err, lock.ErrUnsupportedSchema) {
		return err
	}
	if err != nil {
		return describeConnError(s.connConfig, err)
	}
	return nil
}

type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// schemaVersion reads the xplock schema version, 0 when there are no xplock
// tables (in the schemas of search_path).
func (s *Store) schemaVersion(ctx context.Context, q querier) (int, error) {
	var exists bool
	var version int
	err := q.QueryRow(ctx, `SELECT to_regclass('xplock_schema') IS NOT NULL`).Scan(&exists)
	if err != nil || !exists {
		return 0, err
	}
	err = q.QueryRow(ctx, "SELECT version FROM xplock_schema").Scan(&version)
	return version, err
}

func checkVersion(version int) error {
	if version > schemaVersion {
		return fmt.Errorf("%w: the database has xplock schema version %d, this xplock knows up to %d; upgrade xplock",
			lock.ErrUnsupportedSchema, version, schemaVersion)
	}
	return nil
}
