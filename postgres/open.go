// Package postgres is the PostgreSQL store of xplock: the same locks as the
// SQLite store, kept in a server that processes on several machines reach.
//
// Leases are judged by the server's clock. Each decision is one transaction
// in two round trips: the first locks the key's row (creating it for a new
// key) and loads the key's state, lock.Decide decides, and the second saves
// what changed, records history, prunes it, notifies subscribers
// (LISTEN/NOTIFY) and commits. Tables are prefixed xplock_, so they can
// live in an application's own database (and schema, through search_path).
package postgres

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/xplock/xplock/lock"
)

// DefaultHistoryLimit is how many events are kept per key in a store whose
// tables were created without Options.HistoryLimit (the same as the SQLite
// store's).
const DefaultHistoryLimit = 1000

// defaultConnectTimeout bounds a connection attempt when the URL gives no
// connect_timeout, so that an unreachable server is reported, not waited on.
const defaultConnectTimeout = 10 * time.Second

// DefaultOutageLimit is how long a call whose context has no deadline rides
// out a server it cannot reach (a restart, a killed connection, a network
// partition) before it fails.
const DefaultOutageLimit = time.Minute

// Options tune a Store.
type Options struct {
	// HistoryLimit is how many events are kept per key, stored in the
	// database when Open creates the xplock tables (DefaultHistoryLimit
	// when zero). It changes nothing in a store that has them already:
	// there SetHistoryLimit changes the limit every user of the store
	// shares.
	HistoryLimit int
	// NoCreate makes Open leave a database without xplock tables (or with
	// an older version of them) as it is, for commands that only look. Such
	// a store reads as having no locks until the tables appear; Release,
	// Renew, Break and Acknowledge there find nothing held, and only
	// Acquire creates the tables. Older tables are read as they are, and
	// upgraded by the first call that writes.
	NoCreate bool
	// OutageLimit is how long a call without a deadline rides out an
	// unreachable server; DefaultOutageLimit when zero. A call with a
	// deadline rides it out until shortly before that deadline.
	OutageLimit time.Duration
	// Prover judges whether the processes keeping a tenure or queue entry
	// alive are all gone, for every decision and look; lock.LocalProver
	// when nil. It proves only processes of this machine (its boot and PID
	// namespace): a holder elsewhere keeps its tenure until its lease ends,
	// even when its session is gone, since from here a dead holder cannot
	// be told apart from one cut off by a network partition.
	Prover lock.Prover
}

// ErrBadURL means the connection URL could not be parsed.
var ErrBadURL = errors.New("invalid PostgreSQL URL")

// Store is a lock.Store in a PostgreSQL database.
type Store struct {
	pool       *pgxpool.Pool
	connConfig *pgx.ConnConfig
	// server names the server and who connects, for messages.
	server       string
	historyLimit int
	outageLimit  time.Duration
	prover       lock.Prover

	// version is the xplock schema version in the database as last seen:
	// below schemaVersion only in a NoCreate store that has not needed to
	// write yet.
	version atomic.Int64

	// downSince is when the server stopped answering; zero while it does.
	downMu    sync.Mutex
	downSince time.Time

	// busy holds the keys whose last acquisition here found them held by
	// someone else: the next try looks with a plain read first, so that a
	// waiter takes no row lock and writes nothing while the lock stays held.
	busy sync.Map

	// fixedRequestID, set by tests, is every request's ID.
	fixedRequestID string

	listener listener

	// closed ends subscriptions when the store is closed.
	closed context.Context
	close  context.CancelFunc
}

var (
	_ lock.Store        = (*Store)(nil)
	_ lock.Configurable = (*Store)(nil)
)

// Open connects to the database at url (postgres://user:password@host:port/dbname?sslmode=...,
// or any form pgx accepts, including libpq's PG* environment variables for
// what the URL leaves out) and brings the xplock schema up to date (see
// Options.NoCreate). A schema newer than this program is refused with
// lock.ErrUnsupportedSchema without being touched. A server that cannot be
// reached now is reported at once, with what to check; later calls ride
// out faults (see Options.OutageLimit).
func Open(ctx context.Context, url string, opts Options) (*Store, error) {
	if opts.HistoryLimit == 0 {
		opts.HistoryLimit = DefaultHistoryLimit
	}
	if opts.HistoryLimit < 0 {
		return nil, errors.New("history limit must be positive")
	}
	if opts.OutageLimit <= 0 {
		opts.OutageLimit = DefaultOutageLimit
	}
	if opts.Prover == nil {
		opts.Prover = lock.LocalProver{}
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
		return nil, redact(describeConnError(cc, err), cc.Password)
	}
	closed, cancel := context.WithCancel(context.Background())
	s := &Store{
		pool: pool, connConfig: cc.Copy(), historyLimit: opts.HistoryLimit, outageLimit: opts.OutageLimit, prover: opts.Prover,
		server: fmt.Sprintf("%s (user %q, database %q)", serverAddress(cc), cc.User, cc.Database),
		closed: closed, close: cancel,
	}
	if err := s.open(ctx, opts.NoCreate); err != nil {
		s.Close()
		return nil, redact(err, cc.Password)
	}
	return s, nil
}

// closeWait bounds how long Close waits for connections to shut down: a
// connection stuck on an unreachable server must not hold up an exit (pgx
// gives a broken connection's cancel request 15 s).
const closeWait = 100 * time.Millisecond

// Close closes the store's connections and ends its subscriptions.
func (s *Store) Close() error {
	s.close()
	done := make(chan struct{})
	go func() {
		s.pool.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(closeWait):
	}
	return nil
}

// schemaVersion is the newest schema this program knows, kept in the
// xplock_schema table; migrations[i] moves a database from version i to i+1.
// Version 0 is a database without xplock tables. Programs that know an
// older version refuse a newer one, and every query of theirs fails on it
// (version 3 dropped or renamed the columns they name), so even an earlier
// program that never checks the version cannot misread it.
const schemaVersion = 3

// A migration runs inside the transaction that moves the schema forward.
type migration func(ctx context.Context, tx pgx.Tx) error

// execMigration is a migration made of SQL alone.
func execMigration(sql string) migration {
	return func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, sql)
		return err
	}
}

var migrations = []migration{
	execMigration(`CREATE TABLE xplock_schema (
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
	CREATE INDEX xplock_events_key ON xplock_events (key, id);`),
	// The store's settings, shared by all its users; and, per key and
	// holder, the last request that began or ended a tenure, so that a
	// request sent again after its answer was lost (a dropped connection)
	// is recognised as done rather than decided twice.
	execMigration(`CREATE TABLE xplock_config (
		singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
		history_limit bigint NOT NULL CHECK (history_limit > 0)
	);
	CREATE TABLE xplock_requests (
		key        text NOT NULL,
		holder     text NOT NULL,
		request_id uuid NOT NULL,
		token      bigint NOT NULL,      -- the tenure the request began or ended
		outcome    text NOT NULL CHECK (outcome IN ('acquired', 'released', 'broken')),
		PRIMARY KEY (key, holder)
	);`),
	migrateToTenures,
}

// migrateToTenures moves to version 3, the state lock.Decide judges: a key
// may have several tenures (shared ones) and a queue, so tenures leave the
// key's row for a table of their own; the row keeps what poison is decided
// by (the last exclusive holder and its token, and the token of the
// exclusive holder before it), and an acknowledgement keeps the token it
// was taken at. The rows and acknowledgements are converted by the lock
// package, so that every holder stays as poisoned, or as clean, as it was.
func migrateToTenures(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `CREATE TABLE xplock_tenures (
		key         text NOT NULL,
		token       bigint NOT NULL,
		holder      text NOT NULL,
		mode        text NOT NULL CHECK (mode IN ('exclusive', 'shared')),
		slots       integer NOT NULL CHECK (slots >= 0), -- 0: no limit
		checked     boolean NOT NULL,     -- any of its acquisitions was checked
		acquired_at timestamptz NOT NULL, -- all times are the server's clock
		expires_at  timestamptz NOT NULL,
		ttl_us      bigint NOT NULL,      -- its lease length in microseconds
		keepers     jsonb,                -- processes keeping it alive; NULL: none
		PRIMARY KEY (key, token),
		UNIQUE (key, holder)
	);
	INSERT INTO xplock_tenures (key, token, holder, mode, slots, checked, acquired_at, expires_at, ttl_us)
		SELECT key, token, holder, 'exclusive', 0, checked, acquired_at, expires_at, ttl_us
		FROM xplock_locks WHERE held;
	CREATE TABLE xplock_queue (
		key       text NOT NULL,
		seq       bigint NOT NULL,        -- arrival order
		holder    text NOT NULL,
		mode      text NOT NULL CHECK (mode IN ('exclusive', 'shared')),
		slots     integer NOT NULL CHECK (slots >= 0),
		since     timestamptz NOT NULL,
		lease_end timestamptz NOT NULL,
		keepers   jsonb,
		PRIMARY KEY (key, seq)
	);
	ALTER TABLE xplock_locks RENAME COLUMN holder TO last_holder; -- the last exclusive holder
	ALTER TABLE xplock_locks
		ADD COLUMN last_token bigint NOT NULL DEFAULT 0,  -- the last exclusive tenure's token
		ADD COLUMN other_token bigint NOT NULL DEFAULT 0, -- the last exclusive tenure's before last_holder's
		DROP COLUMN held, DROP COLUMN checked, DROP COLUMN acquired_at, DROP COLUMN expires_at, DROP COLUMN ttl_us;
	ALTER TABLE xplock_acks ADD COLUMN token bigint NOT NULL DEFAULT 0; -- the key's highest token then
	-- No defaults: an insert that does not name them (an earlier version's) fails.
	ALTER TABLE xplock_locks ALTER COLUMN last_token DROP DEFAULT, ALTER COLUMN other_token DROP DEFAULT;
	ALTER TABLE xplock_acks ALTER COLUMN token DROP DEFAULT;
	ALTER TABLE xplock_events
		ADD COLUMN waited_us bigint NOT NULL DEFAULT 0,                       -- time queued before an acquisition
		ADD COLUMN mode text CHECK (mode IN ('exclusive', 'shared')),     -- NULL: recorded before version 3
		ADD COLUMN detail text;                                             -- more to say, such as that the holder died`)
	if err != nil {
		return err
	}
	rows, err := tx.Query(ctx, "SELECT key, last_holder, generation, token, changed_at FROM xplock_locks WHERE generation > 0")
	if err != nil {
		return err
	}
	keys := map[string]lock.KeyRow{}
	batch := &pgx.Batch{}
	for rows.Next() {
		var key, holder string
		var generation, token int64
		var changedAt time.Time
		if err := rows.Scan(&key, &holder, &generation, &token, &changedAt); err != nil {
			return err
		}
		r := lock.MigrateRow(holder, generation, token, changedAt)
		keys[key] = r
		batch.Queue("UPDATE xplock_locks SET last_token = $2, other_token = $3 WHERE key = $1", key, r.LastToken, r.OtherToken)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	rows, err = tx.Query(ctx, "SELECT key, holder, generation FROM xplock_acks")
	if err != nil {
		return err
	}
	for rows.Next() {
		var key, holder string
		var generation int64
		if err := rows.Scan(&key, &holder, &generation); err != nil {
			return err
		}
		a := lock.MigrateAck(keys[key], generation)
		batch.Queue("UPDATE xplock_acks SET token = $3 WHERE key = $1 AND holder = $2", key, holder, a.Token)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if err := tx.SendBatch(ctx, batch).Close(); err != nil {
		return err
	}
	// Statistics from the start: without them the planner reads a key's
	// tenures with bitmap scans, which visit again every dead row that the
	// decisions since the last autovacuum left, instead of index scans,
	// which mark them and skip them after.
	_, err = tx.Exec(ctx, "ANALYZE xplock_locks, xplock_tenures, xplock_queue, xplock_acks, xplock_requests, xplock_events")
	return err
}

// migrationLock is the advisory lock key that serializes schema creation
// and migration between processes opening the same database ("xplock").
const migrationLock = 0x78706c6f636b

// open reads the schema version at the first contact with the server and,
// unless noCreate, brings the schema up to date. The common case, a
// current schema, costs one query.
func (s *Store) open(ctx context.Context, noCreate bool) error {
	var version int
	err := s.pool.QueryRow(ctx, "SELECT version FROM xplock_schema").Scan(&version)
	switch {
	case pgErrorCode(err) == undefinedTable:
		version, err = 0, nil
	case errors.Is(err, pgx.ErrNoRows):
		err = errSchemaEmpty
	}
	if err != nil {
		return s.describeSchemaError(err)
	}
	if err := checkVersion(version); err != nil {
		return err
	}
	s.version.Store(int64(version))
	if version == schemaVersion || noCreate {
		return nil
	}
	return s.describeSchemaError(s.migrate(ctx))
}

// migrate brings the schema to schemaVersion, creating the tables if need
// be, in one transaction.
func (s *Store) migrate(ctx context.Context) error {
	err := s.migrateTo(ctx, schemaVersion)
	if err == nil {
		s.version.Store(schemaVersion)
	}
	return err
}

// migrateTo moves the schema forward to version target in one transaction.
func (s *Store) migrateTo(ctx context.Context, target int) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(migrationLock)); err != nil {
			return err
		}
		// Another process may have migrated while we waited for the lock.
		version, err := s.schemaVersion(ctx, tx)
		if err != nil {
			return err
		}
		if err := checkVersion(version); err != nil || version >= target {
			return err
		}
		for v := version; v < target; v++ {
			if err := migrations[v](ctx, tx); err != nil {
				return fmt.Errorf("migrating the xplock schema to version %d: %w", v+1, err)
			}
			if v+1 == 2 {
				// Version 2 brought the settings; they start from this store's options.
				if _, err := tx.Exec(ctx, "INSERT INTO xplock_config (history_limit) VALUES ($1)", int64(s.historyLimit)); err != nil {
					return err
				}
			}
		}
		_, err = tx.Exec(ctx, "UPDATE xplock_schema SET version = $1", target)
		return err
	})
}

// errSchemaEmpty means xplock_schema exists but holds no version.
var errSchemaEmpty = errors.New("the xplock_schema table holds no version row")

// describeSchemaError explains a failure to read or create the schema.
func (s *Store) describeSchemaError(err error) error {
	switch {
	case err == nil || errors.Is(err, lock.ErrUnsupportedSchema):
		return err
	case errors.Is(err, errSchemaEmpty):
		return fmt.Errorf("PostgreSQL at %s: %w: it was emptied, or the xplock_ tables there were not made by xplock; "+
			"restore the row or drop the xplock_ tables (losing the locks' state)", s.server, err)
	case pgErrorCode(err) == invalidSchemaName:
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var path string
		if qerr := s.pool.QueryRow(ctx, "SELECT current_setting('search_path')").Scan(&path); qerr == nil {
			err = fmt.Errorf("search_path is %q: %w", path, err)
		}
	}
	return describeConnError(s.connConfig, err)
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
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, errSchemaEmpty
	}
	return version, err
}

func checkVersion(version int) error {
	if version > schemaVersion {
		return fmt.Errorf("%w: the database has xplock schema version %d, this xplock knows up to %d; upgrade xplock",
			lock.ErrUnsupportedSchema, version, schemaVersion)
	}
	return nil
}
