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

	sqlite3 "github.com/mattn/go-sqlite3"

	"github.com/xplock/xplock/lock"
)

// DefaultHistoryLimit is how many events are kept per key unless Options
// say otherwise.
const DefaultHistoryLimit = 1000

// busyTimeoutMillis bounds SQLite's own wait for the write lock (with the
// connection setup of open_cgo.go, in steps of 50 µs to 2 ms); the store
// retries past it, so a user never sees "database is locked".
const busyTimeoutMillis = 5000

// stmtCacheSize is how many prepared statements each connection keeps, so
// that a transaction's statements are parsed once per connection rather
// than every time: the store runs about a dozen distinct statements.
const stmtCacheSize = 32

// Options tune a Store.
type Options struct {
	// HistoryLimit is how many events are kept per key; DefaultHistoryLimit
	// when zero.
	HistoryLimit int
	// NoCreate makes Open fail with an error wrapping fs.ErrNotExist instead
	// of creating a missing database, for commands that only read.
	NoCreate bool
}

// Store is a lock.Store in one SQLite file.
type Store struct {
	db           *sql.DB
	path         string
	historyLimit int
	// keepWAL: closing leaves the -wal and -shm files and the commits in
	// the WAL, instead of checkpointing them into the database and deleting
	// both files (see Close).
	keepWAL bool
	// changes is the subscription shared by all subscribers.
	changes fanout
	// fileID names the database file for RendezvousAddress.
	fileID string
}

var (
	_ lock.Store      = (*Store)(nil)
	_ lock.Rendezvous = (*Store)(nil)
)

// ErrNotSQLite means the file exists but is not a SQLite database.
var ErrNotSQLite = errors.New("file is not a SQLite database")

var sqliteHeader = []byte("SQLite format 3\x00")

// Open opens the lock database at path, creating it (0600, in 0700
// directories) when it does not exist. A file that is not SQLite, or whose
// schema is newer than this program, is refused without being touched.
func Open(ctx context.Context, path string, opts Options) (*Store, error) {
	if opts.HistoryLimit == 0 {
		opts.HistoryLimit = DefaultHistoryLimit
	}
	if opts.HistoryLimit < 0 {
		return nil, errors.New("history limit must be positive")
	}
	created, err := prepareFile(path, !opts.NoCreate)
	if err != nil {
		return nil, err
	}
	dsn := "file:" + (&url.URL{Path: path}).EscapedPath() +
		fmt.Sprintf("?mode=rw&_busy_timeout=%d&_sync=NORMAL&_stmt_cache_size=%d", busyTimeoutMillis, stmtCacheSize)
	driver, keepWAL := "sqlite3", registerConnectionSetup() == nil
	if keepWAL {
		driver, dsn = driverName, dsn+"&"+connectionParam+"=1"
	}
	db, err := sql.Open(driver, dsn)
	if err != nil {
		return nil, err
	}
	s := &Store{db: db, path: path, historyLimit: opts.HistoryLimit, keepWAL: keepWAL, fileID: fileID(path)}
	if err := s.migrate(ctx); err != nil {
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
// empties it only once it has grown past walTruncateBytes. Leaving committed
// transactions in the WAL is SQLite's normal state between checkpoints:
// the next connection finds them there, crash or no crash.
func (s *Store) Close() error {
	s.changes.close()
	var err error
	if s.keepWAL {
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
	conn.ExecContext(ctx, fmt.Sprintf("SELECT xplock_busy_timeout(%d)", busyTimeoutMillis))
}

// Path is the database file.
func (s *Store) Path() string { return s.path }

// prepareFile refuses an existing file that is not SQLite and creates a
// missing one, private to the user. It reports whether it created the file.
func prepareFile(path string, create bool) (bool, error) {
	f, err := os.Open(path)
	if err == nil {
		defer f.Close()
		header := make([]byte, len(sqliteHeader))
		n, err := io.ReadFull(f, header)
		if n == 0 && (err == io.EOF) {
			return false, nil // an empty file is an empty database
		}
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
			return false, err
		}
		if !bytes.Equal(header[:n], sqliteHeader) {
			return false, fmt.Errorf("%s: %w", path, ErrNotSQLite)
		}
		return false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) || !create {
		return false, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return false, err
	}
	nf, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return false, nil // another process created it first
	}
	if err != nil {
		return false, err
	}
	return true, nf.Close()
}

func removeDatabase(path string) {
	for _, suffix := range []string{"", "-wal", "-shm"} {
		os.Remove(path + suffix)
	}
}

// schemaVersion is the newest schema this program knows, kept in PRAGMA
// user_version; migrations[i] moves a database from version i to i+1.
const schemaVersion = 1

var migrations = []string{
	`CREATE TABLE xplock_locks (
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
	CREATE INDEX xplock_events_key ON xplock_events (key, id);`,
}

// migrate brings the schema to schemaVersion. The common case, a current
// schema, costs one PRAGMA read.
func (s *Store) migrate(ctx context.Context) error {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return describeOpenError(s.path, err)
	}
	defer conn.Close()
	version, err := userVersion(ctx, conn)
	if err != nil {
		return describeOpenError(s.path, err)
	}
	if version == schemaVersion {
		return nil
	}
	if err := checkVersion(ctx, conn, version); err != nil {
		return fmt.Errorf("%s: %w", s.path, err)
	}
	if err := retryBusy(ctx, func() error {
		_, err := conn.ExecContext(ctx, "PRAGMA journal_mode=WAL")
		return err
	}); err != nil {
		return describeOpenError(s.path, err)
	}
	return s.inTx(ctx, conn, "BEGIN IMMEDIATE", func() error {
		// Another process may have migrated while we waited for the lock.
		version, err := userVersion(ctx, conn)
		if err != nil {
			return err
		}
		if err := checkVersion(ctx, conn, version); err != nil {
			return err
		}
		for v := version; v < schemaVersion; v++ {
			if _, err := conn.ExecContext(ctx, migrations[v]); err != nil {
				return fmt.Errorf("migrating schema to version %d: %w", v+1, err)
			}
		}
		_, err = conn.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", schemaVersion))
		return err
	})
}

func userVersion(ctx context.Context, conn *sql.Conn) (int, error) {
	var v int
	err := retryBusy(ctx, func() error {
		return conn.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v)
	})
	return v, err
}

// checkVersion refuses a schema newer than ours, and a user_version that an
// application set for its own schema in a database without xplock tables.
func checkVersion(ctx context.Context, conn *sql.Conn, version int) error {
	if version == 0 {
		return nil
	}
	var n int
	if err := conn.QueryRowContext(ctx,
		"SELECT count(*) FROM sqlite_master WHERE name = 'xplock_locks'").Scan(&n); err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("%w: the database's user_version is %d but it has no xplock tables; it belongs to another program, so give xplock a file of its own",
			lock.ErrUnsupportedSchema, version)
	}
	if version > schemaVersion {
		return fmt.Errorf("%w: the database has xplock schema version %d, this xplock knows up to %d; upgrade xplock",
			lock.ErrUnsupportedSchema, version, schemaVersion)
	}
	return nil
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
	return fmt.Errorf("%s: %w", path, err)
}
