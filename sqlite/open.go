// Package sqlite is the SQLite store of xplock: one database file shared by
// every process on a machine, in WAL mode, each decision one BEGIN IMMEDIATE
// transaction.
package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	sqlite3 "github.com/mattn/go-sqlite3"

	"github.com/xplock/xplock/lock"
)

// DefaultHistoryLimit is how many events are kept per key in a store whose
// tables were created without Options.HistoryLimit.
const DefaultHistoryLimit = 1000

// busySliceMillis bounds one wait of SQLite's for a lock held by another
// connection (with the connection setup of open_cgo.go, in steps of 50 µs
// to 2 ms). The store retries past it until the caller's context ends, so a
// user never sees "database is locked"; the slice only bounds how late a
// wait notices a context that ended without interrupting SQLite (see
// retryBusy).
const busySliceMillis = 200

// stmtCacheSize is how many prepared statements each connection keeps, so
// that a transaction's statements are parsed once per connection rather
// than every time: the store runs about a dozen distinct statements.
const stmtCacheSize = 32

// Options tune a Store.
type Options struct {
	// HistoryLimit is how many events are kept per key, set when Open
	// creates the store's tables (DefaultHistoryLimit when zero). It does
	// not change an existing store's limit: that is a setting of the store
	// (SetHistoryLimit).
	HistoryLimit int
	// NoCreate makes Open fail with an error wrapping fs.ErrNotExist, and
	// create nothing, when the database or its xplock tables do not exist:
	// for commands that can only change what is already held.
	NoCreate bool
	// ReadOnly opens the database read-only, for commands that only look: it
	// creates, migrates and changes nothing, and fails with an error
	// wrapping fs.ErrNotExist when the file does not exist. A database
	// without xplock tables reads as a store without locks until they
	// appear.
	ReadOnly bool
	// BusyLimit bounds how long one call waits for another connection that
	// holds the database locked (an application's long write transaction)
	// before it fails with an error wrapping ErrLocked. Zero: as long as the
	// call's context allows.
	BusyLimit time.Duration
	// Prover judges whether the processes keeping a tenure or queue entry
	// alive are all gone, for every decision and look; lock.LocalProver
	// when nil.
	Prover lock.Prover
}

// Store is a lock.Store in one SQLite file.
type Store struct {
	db        *sql.DB
	path      string
	readOnly  bool
	busyLimit time.Duration
	prover    lock.Prover
	// layout is where the xplock tables are; nil while a read-only store's
	// database has none.
	layout atomic.Pointer[layout]
	// keepWAL: closing leaves the -wal and -shm files and the commits in
	// the WAL, instead of checkpointing them into the database and deleting
	// both files (see Close).
	keepWAL bool
	// changes is the subscription shared by all subscribers.
	changes fanout
	// fileID names the database file for RendezvousAddress.
	fileID string
	// file is the database file as Open found it, for Replaced.
	file os.FileInfo
}

var (
	_ lock.Store        = (*Store)(nil)
	_ lock.Rendezvous   = (*Store)(nil)
	_ lock.Configurable = (*Store)(nil)
)

// ErrNotSQLite means the file exists but is not a SQLite database.
var ErrNotSQLite = errors.New("file is not a SQLite database")

// ErrLocked means another connection kept the database locked for longer
// than the caller could wait.
var ErrLocked = errors.New("the database is locked by another connection")

// ErrReadOnly means a store opened with Options.ReadOnly was asked to write.
var ErrReadOnly = errors.New("the lock store was opened read-only")

var sqliteHeader = []byte("SQLite format 3\x00")

// Open opens the lock database at path. Unless opts say otherwise it
// creates a missing database (0600, in 0700 directories, in WAL mode) and
// adds xplock's tables to a database without them, such as an
// application's own: there xplock is a guest that keeps its schema version
// in its own table, and never touches PRAGMA user_version or the journal
// mode. A file that is not SQLite, or whose xplock schema is newer than
// this program, is refused without being touched.
func Open(ctx context.Context, path string, opts Options) (*Store, error) {
	if opts.HistoryLimit == 0 {
		opts.HistoryLimit = DefaultHistoryLimit
	}
	if opts.HistoryLimit < 0 {
		return nil, errors.New("history limit must be positive")
	}
	fresh, created, err := prepareFile(path, !opts.NoCreate && !opts.ReadOnly)
	if err != nil {
		return nil, err
	}
	mode := "rw"
	if opts.ReadOnly {
		mode = "ro"
	}
	dsn := "file:" + (&url.URL{Path: path}).EscapedPath() +
		fmt.Sprintf("?mode=%s&_busy_timeout=%d&_sync=NORMAL&_stmt_cache_size=%d", mode, busySliceMillis, stmtCacheSize)
	driver, keepWAL := "sqlite3", registerConnectionSetup() == nil
	if keepWAL {
		driver, dsn = driverName, dsn+"&"+connectionParam+"=1"
	}
	db, err := sql.Open(driver, dsn)
	if err != nil {
		return nil, err
	}
	s := &Store{db: db, path: path, readOnly: opts.ReadOnly, busyLimit: opts.BusyLimit, prover: opts.Prover,
		keepWAL: keepWAL, fileID: fileID(path)}
	if s.prover == nil {
		s.prover = lock.LocalProver{}
	}
	s.file, _ = os.Stat(path)
	if err := s.setUp(ctx, fresh, opts); err != nil {
		if keepWAL {
			// Leave a refused database as it was: SQLite's usual close
			// removes the -wal and -shm files that looking at it made.
			db.ExecContext(context.WithoutCancel(ctx), "SELECT xplock_checkpoint_on_close(1)")
		}
		db.Close()
		if created {
			removeDatabase(path)
		}
		return nil, err
	}
	return s, nil
}

// setUp finds the xplock tables and, unless the store only looks, creates or
// migrates them. Only a file xplock created (or found empty) is put in WAL
// mode: an existing database keeps the journal mode its owner chose.
func (s *Store) setUp(ctx context.Context, fresh bool, opts Options) error {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return describeOpenError(s.path, err)
	}
	defer conn.Close()
	l, err := s.findLayout(ctx, conn)
	switch {
	case err != nil:
		return err
	case l != nil && l.version == schemaVersion:
		s.layout.Store(l)
		return nil
	case opts.ReadOnly:
		// An older store is read where it is; a database without xplock
		// tables reads as empty until they appear.
		s.layout.Store(l)
		return nil
	case l == nil && opts.NoCreate:
		return fmt.Errorf("%s has no xplock tables: %w", s.path, fs.ErrNotExist)
	}
	if fresh {
		if err := retryBusy(ctx, func() error {
			_, err := conn.ExecContext(ctx, "PRAGMA journal_mode=WAL")
			return err
		}); err != nil {
			return describeOpenError(s.path, err)
		}
	}
	err = s.inTx(ctx, conn, "BEGIN IMMEDIATE", func() error {
		// Another process may have created or migrated the tables while we
		// waited for the write lock.
		l, err := s.findLayout(ctx, conn)
		if err != nil {
			return err
		}
		from := 0
		if l != nil {
			from = l.version
		}
		for v := from; v < schemaVersion; v++ {
			var args []any
			if migrations[v].takesHistoryLimit {
				args = append(args, opts.HistoryLimit)
			}
			var err error
			if m := migrations[v]; m.run != nil {
				err = m.run(ctx, conn)
			} else {
				_, err = conn.ExecContext(ctx, m.schema, args...)
			}
			if err != nil {
				return fmt.Errorf("%s: migrating xplock's tables to schema version %d: %w", s.path, v+1, err)
			}
		}
		s.layout.Store(currentLayout)
		return nil
	})
	if err != nil {
		return describeOpenError(s.path, err)
	}
	return nil
}

// walTruncateBytes is how large Close lets the WAL grow before it copies the
// WAL into the database and empties it. The next process to open the
// database reads the whole WAL to rebuild its index, so a small WAL keeps
// opening cheap; a large one makes the copy (and its two fsyncs) rare.
// Each acquisition or release adds about 5 pages (20 KiB).
const walTruncateBytes = 256 << 10

// Close makes the commits of this process durable and closes the database.
//
// SQLite's own close, when it is the last connection to the database (as
// every CLI command is), checkpoints the WAL into the database with two
// fsyncs, deletes the -wal and -shm files, and the next command creates,
// syncs and initialises them again: most of a short command's database
// time. The store's connections skip that (SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE),
// and Close instead syncs the WAL (one fsync, so a returned command's
// decision survives a power loss as it did with the checkpoint) and
// empties it only once it has grown past 256 KiB. Leaving committed
// transactions in the WAL is SQLite's normal state between checkpoints:
// the next connection finds them there, crash or no crash.
func (s *Store) Close() error {
	s.changes.close()
	var err error
	if s.keepWAL && !s.readOnly {
		err = s.settleWAL()
	}
	return errors.Join(err, s.db.Close())
}

// settleWAL empties a large WAL when no other process is using it, and
// syncs it.
func (s *Store) settleWAL() error {
	wal := s.path + "-wal"
	if fi, err := os.Stat(wal); err == nil && fi.Size() > walTruncateBytes {
		s.truncateWAL()
	}
	f, err := os.Open(wal)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // not in WAL mode (a database shared with an application)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// truncateWAL copies the WAL into the database (two fsyncs) and truncates it
// to nothing, unless that would wait for another process reading or writing:
// a later Close will try again. (A RESTART checkpoint would not do: it only
// marks the WAL for a restart by the next writer, and the next process
// forgets the mark when it rebuilds the WAL index.)
func (s *Store) truncateWAL() {
	ctx := context.Background()
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "SELECT xplock_busy_timeout(0)"); err != nil {
		return
	}
	conn.ExecContext(ctx, "PRAGMA wal_checkpoint(TRUNCATE)")
	conn.ExecContext(ctx, fmt.Sprintf("SELECT xplock_busy_timeout(%d)", busySliceMillis))
}

// Replaced reports, as an error, that the file at the store's path is no
// longer the database it opened: deleted, or replaced by another file. The
// store's connections keep the old file open, so its inode cannot be
// reused while the store is open.
func (s *Store) Replaced() error {
	fi, err := os.Stat(s.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("the lock database %s was deleted", s.path)
	case err != nil:
		return err
	case s.file != nil && !os.SameFile(fi, s.file):
		return fmt.Errorf("the lock database %s was replaced by another file", s.path)
	}
	return nil
}

// Path is the database file.
func (s *Store) Path() string { return s.path }

// prepareFile refuses an existing file that is not SQLite, or not a regular
// file (a named pipe would block the open), without opening it for writing,
// and creates a missing one, private to the user, when create is set. fresh
// reports a file that holds no database yet (created or found empty);
// created that this call created it.
func prepareFile(path string, create bool) (fresh, created bool, err error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err == nil {
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return false, false, err
		}
		if !fi.Mode().IsRegular() {
			return false, false, fmt.Errorf("%s: %w (it is %s)", path, ErrNotSQLite, describeFileType(fi.Mode()))
		}
		header := make([]byte, len(sqliteHeader))
		n, err := io.ReadFull(f, header)
		if n == 0 && err == io.EOF {
			// An empty file is an empty database, unless a WAL beside it
			// holds its first pages.
			_, walErr := os.Stat(path + "-wal")
			return errors.Is(walErr, fs.ErrNotExist), false, nil
		}
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
			return false, false, err
		}
		if !bytes.Equal(header[:n], sqliteHeader) {
			return false, false, fmt.Errorf("%s: %w", path, ErrNotSQLite)
		}
		return false, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) || !create {
		return false, false, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return false, false, err
	}
	nf, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return prepareFile(path, false) // another process created it first
	}
	if err != nil {
		return false, false, err
	}
	return true, true, nf.Close()
}

func describeFileType(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeDevice != 0:
		return "a device"
	}
	return "not a regular file"
}

func removeDatabase(path string) {
	for _, suffix := range []string{"", "-wal", "-shm"} {
		os.Remove(path + suffix)
	}
}

// schemaVersion is the newest xplock schema this program knows. It is kept
// in xplock's own table xplock_store, never in PRAGMA user_version, which
// belongs to the application whose database xplock may be a guest in.
// migrations[i] moves xplock's tables from version i to i+1.
const schemaVersion = 3

// migration is one step of the schema: SQL, or Go where a step needs the
// lock rules (which live in package lock, not in SQL).
type migration struct {
	schema string
	// takesHistoryLimit: the schema's one parameter is a new store's
	// history limit.
	takesHistoryLimit bool
	// run, when set, is the step instead of schema.
	run func(ctx context.Context, conn *sql.Conn) error
}

var migrations = []migration{
	// Version 1, as earlier xplock versions created it.
	{schema: `CREATE TABLE xplock_locks (
		key         TEXT PRIMARY KEY,
		holder      TEXT NOT NULL,    -- current holder, or the last one
		generation  INTEGER NOT NULL,
		token       INTEGER NOT NULL,
		held        INTEGER NOT NULL, -- a tenure is open (its lease may have run out)
		checked     INTEGER NOT NULL, -- the open tenure had a checked acquisition
		acquired_at INTEGER NOT NULL, -- microseconds since the Unix epoch
		expires_at  INTEGER NOT NULL,
		ttl         INTEGER NOT NULL, -- microseconds
		changed_at  INTEGER NOT NULL,
		events      INTEGER NOT NULL  -- history rows kept for this key
	) WITHOUT ROWID;
	CREATE TABLE xplock_acks (
		key        TEXT NOT NULL,
		holder     TEXT NOT NULL,
		generation INTEGER NOT NULL,
		PRIMARY KEY (key, holder)
	) WITHOUT ROWID;
	CREATE TABLE xplock_events (
		id         INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused: watch cursors rely on it
		key        TEXT NOT NULL,
		event      TEXT NOT NULL,
		holder     TEXT NOT NULL,
		generation INTEGER NOT NULL,
		token      INTEGER NOT NULL,
		time       INTEGER NOT NULL,
		by_holder  TEXT,
		by_user    TEXT,
		by_host    TEXT,
		by_pid     INTEGER
	);
	CREATE INDEX xplock_events_key ON xplock_events (key, id);`},
	// Version 2: the schema version and the store's settings live in
	// xplock_store, and the lock rows move from xplock_locks to xplock_keys,
	// every holder's state with them. Earlier xplock versions, which would
	// not check a version kept here, then cannot run on the store: their
	// queries find no xplock_locks, and the tables they would create
	// collide with xplock_acks.
	{takesHistoryLimit: true, schema: `CREATE TABLE xplock_store (
		id             INTEGER PRIMARY KEY CHECK (id = 1),
		schema_version INTEGER NOT NULL,
		history_limit  INTEGER NOT NULL CHECK (history_limit > 0) -- events kept per key
	);
	INSERT INTO xplock_store (id, schema_version, history_limit) VALUES (1, 2, ?);
	CREATE TABLE xplock_keys (
		key         TEXT PRIMARY KEY,
		holder      TEXT NOT NULL,
		generation  INTEGER NOT NULL,
		token       INTEGER NOT NULL,
		held        INTEGER NOT NULL,
		checked     INTEGER NOT NULL,
		acquired_at INTEGER NOT NULL,
		expires_at  INTEGER NOT NULL,
		ttl         INTEGER NOT NULL,
		changed_at  INTEGER NOT NULL,
		events      INTEGER NOT NULL
	) WITHOUT ROWID;
	INSERT INTO xplock_keys SELECT ` + legacyColumns + ` FROM xplock_locks;
	DROP TABLE xplock_locks;`},
	// Version 3: tenures (any number per key, for readers) and the queue
	// get tables of their own, each key remembers the last exclusive
	// holder's token and the one before it, and each acknowledgement the
	// token it was taken at, which is what poison is judged by; event IDs
	// no longer need AUTOINCREMENT. The open tenure moves out of
	// xplock_keys, whose columns held and holder go: every query of
	// version 2 names them, so version 2 (which also checks the version
	// kept here) cannot misread the store.
	{run: migrateToTokens},
}

// schemaV3 is version 3's SQL, run by migrateToTokens.
const schemaV3 = `CREATE TABLE xplock_tenures (
		key         TEXT NOT NULL,
		token       INTEGER NOT NULL,
		holder      TEXT NOT NULL,
		mode        TEXT NOT NULL CHECK (mode IN ('exclusive', 'shared')),
		slots       INTEGER NOT NULL, -- the slot limit of a shared tenure, 0 for none
		checked     INTEGER NOT NULL,
		acquired_at INTEGER NOT NULL, -- microseconds since the Unix epoch
		expires_at  INTEGER NOT NULL,
		ttl         INTEGER NOT NULL, -- microseconds
		keepers     TEXT,             -- JSON: the processes keeping it alive; NULL for none
		-- One tenure per holder. Tokens are unique too (each new tenure's is
		-- the key's highest), found among the key's few rows: a second index
		-- would cost every acquisition and release another page to write.
		PRIMARY KEY (key, holder)
	) WITHOUT ROWID;
	CREATE TABLE xplock_queue (
		key       TEXT NOT NULL,
		seq       INTEGER NOT NULL,
		holder    TEXT NOT NULL,
		mode      TEXT NOT NULL CHECK (mode IN ('exclusive', 'shared')),
		slots     INTEGER NOT NULL,
		since     INTEGER NOT NULL,
		lease_end INTEGER NOT NULL,
		keepers   TEXT,
		PRIMARY KEY (key, seq)
	) WITHOUT ROWID;
	INSERT INTO xplock_tenures (key, token, holder, mode, slots, checked, acquired_at, expires_at, ttl, keepers)
		SELECT key, token, holder, 'exclusive', 0, checked, acquired_at, expires_at, ttl, NULL FROM xplock_keys WHERE held;
	ALTER TABLE xplock_keys RENAME COLUMN holder TO last_holder;
	ALTER TABLE xplock_keys ADD COLUMN last_token INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE xplock_keys ADD COLUMN other_token INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE xplock_keys DROP COLUMN held;
	ALTER TABLE xplock_keys DROP COLUMN checked;
	ALTER TABLE xplock_keys DROP COLUMN acquired_at;
	ALTER TABLE xplock_keys DROP COLUMN expires_at;
	ALTER TABLE xplock_keys DROP COLUMN ttl;
	ALTER TABLE xplock_acks ADD COLUMN token INTEGER NOT NULL DEFAULT 0;
	CREATE TABLE xplock_events_v3 (
		-- One above the highest, never reused: pruning never deletes a
		-- key's newest event, so the highest ID stays. (AUTOINCREMENT
		-- promised the same for one more page written per event.)
		id         INTEGER PRIMARY KEY,
		key        TEXT NOT NULL,
		event      TEXT NOT NULL,
		holder     TEXT NOT NULL,
		generation INTEGER NOT NULL,
		token      INTEGER NOT NULL,
		time       INTEGER NOT NULL,
		by_holder  TEXT,
		by_user    TEXT,
		by_host    TEXT,
		by_pid     INTEGER,
		waited     INTEGER NOT NULL DEFAULT 0, -- microseconds in the queue before an acquisition
		mode       TEXT CHECK (mode IN ('exclusive', 'shared')), -- NULL: recorded before version 3
		detail     TEXT -- more to say, such as that the holder died
	);
	INSERT INTO xplock_events_v3 (id, key, event, holder, generation, token, time, by_holder, by_user, by_host, by_pid)
		SELECT id, key, event, holder, generation, token, time, by_holder, by_user, by_host, by_pid
		FROM xplock_events ORDER BY id;
	DROP TABLE xplock_events;
	ALTER TABLE xplock_events_v3 RENAME TO xplock_events;
	CREATE INDEX xplock_events_key ON xplock_events (key, id);
	UPDATE xplock_store SET schema_version = 3;`

// migrateToTokens moves the tables to version 3 (schemaV3), filling in,
// for every key and acknowledgement, the tokens that poison is now judged
// by: it reads them as a looker reads version 2 (lock.MigrateRow and
// lock.MigrateAck keep each holder's state), then writes them.
func migrateToTokens(ctx context.Context, conn *sql.Conn) error {
	tx := &txn{ctx: ctx, conn: conn}
	states, acks, err := tx.loadLegacy(&layout{version: 2, keys: "xplock_keys"}, nil)
	if err != nil {
		return err
	}
	if err := tx.exec(schemaV3); err != nil {
		return err
	}
	for _, k := range states {
		if err := tx.exec("UPDATE xplock_keys SET last_token = ?, other_token = ? WHERE key = ?",
			k.Row.LastToken, k.Row.OtherToken, k.Key); err != nil {
			return err
		}
	}
	for _, a := range acks {
		if err := tx.exec("UPDATE xplock_acks SET token = ? WHERE key = ? AND holder = ?", a.ack.Token, a.key, a.holder); err != nil {
			return err
		}
	}
	return nil
}

// layout is where a database keeps xplock's tables.
type layout struct {
	version int
	// keys is the table of lock rows.
	keys string
}

var currentLayout = &layout{version: schemaVersion, keys: "xplock_keys"}

// findLayout reads which xplock tables the database has, without writing:
// nil when it has none. A newer schema than this program knows is refused.
func (s *Store) findLayout(ctx context.Context, conn *sql.Conn) (*layout, error) {
	var found []string
	err := retryBusy(ctx, func() error {
		found = found[:0]
		rows, err := conn.QueryContext(ctx, `SELECT name FROM sqlite_master
			WHERE type = 'table' AND name IN ('xplock_store', 'xplock_locks')`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var name string
			if err := rows.Scan(&name); err != nil {
				return err
			}
			found = append(found, name)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, describeOpenError(s.path, err)
	}
	switch {
	case slices.Contains(found, "xplock_store"):
	case slices.Contains(found, "xplock_locks"):
		return &layout{version: 1, keys: "xplock_locks"}, nil
	default:
		return nil, nil
	}
	var version int
	if err := retryBusy(ctx, func() error {
		return conn.QueryRowContext(ctx, "SELECT schema_version FROM xplock_store").Scan(&version)
	}); err != nil {
		return nil, describeOpenError(s.path, err)
	}
	if version > schemaVersion {
		return nil, fmt.Errorf("%s: %w: its xplock tables have schema version %d, this xplock knows up to %d; upgrade xplock",
			s.path, lock.ErrUnsupportedSchema, version, schemaVersion)
	}
	if version < schemaVersion {
		return &layout{version: version, keys: "xplock_keys"}, nil
	}
	return currentLayout, nil
}

// describeOpenError turns SQLite's terse open errors into ones that say
// what to check.
func describeOpenError(path string, err error) error {
	var se sqlite3.Error
	if errors.As(err, &se) {
		switch se.Code {
		case sqlite3.ErrNotADB:
			return fmt.Errorf("%s: %w", path, ErrNotSQLite)
		case sqlite3.ErrCantOpen, sqlite3.ErrPerm, sqlite3.ErrReadonly, sqlite3.ErrAuth:
			return fmt.Errorf("cannot open %s (%v): check that it and its directory are readable and writable by this user", path, err)
		}
	}
	if strings.HasPrefix(err.Error(), path+": ") {
		return err
	}
	return fmt.Errorf("%s: %w", path, err)
}
