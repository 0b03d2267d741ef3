package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	sqlite3 "github.com/mattn/go-sqlite3"

	"github.com/xplock/xplock/lock"
)

// retryBusy runs fn until it succeeds, fails with something other than
// SQLITE_BUSY/SQLITE_LOCKED, or ctx ends. SQLite's own wait for the lock
// (busySliceMillis at a time) ends early when go-sqlite3 interrupts it for
// an ended context, so a caller's deadline is kept however long another
// connection holds the database.
func retryBusy(ctx context.Context, fn func() error) error {
	pause := 100 * time.Microsecond
	for {
		err := fn()
		if !isBusy(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w while %w", context.Cause(ctx), ErrLocked)
		case <-time.After(pause + rand.N(pause)):
		}
		pause = min(2*pause, 10*time.Millisecond)
	}
}

func isBusy(err error) bool {
	var se sqlite3.Error
	return errors.As(err, &se) && (se.Code == sqlite3.ErrBusy || se.Code == sqlite3.ErrLocked)
}

// inTx runs fn between begin ("BEGIN IMMEDIATE" for writes, "BEGIN" for a
// consistent read) and COMMIT on conn, rolling back when fn fails. A COMMIT
// that must wait for readers (in rollback-journal mode) waits only as long
// as ctx allows; it is then rolled back, and nothing was decided.
func (s *Store) inTx(ctx context.Context, conn *sql.Conn, begin string, fn func() error) error {
	// ROLLBACK must run even when ctx ended, or the pooled connection would
	// stay inside a transaction.
	end := context.WithoutCancel(ctx)
	// A read transaction's BEGIN and COMMIT never wait (its first query
	// takes the lock); a write's BEGIN IMMEDIATE and COMMIT may.
	mayWait := begin != "BEGIN"
	run := func(query string) error {
		if mayWait {
			return execWaiting(ctx, conn, query)
		}
		_, err := conn.ExecContext(end, query)
		return err
	}
	if err := retryBusy(ctx, func() error { return run(begin) }); err != nil {
		return err
	}
	if err := fn(); err != nil {
		conn.ExecContext(end, "ROLLBACK")
		return err
	}
	if err := retryBusy(ctx, func() error { return run("COMMIT") }); err != nil {
		conn.ExecContext(end, "ROLLBACK")
		return err
	}
	return nil
}

// errBusyLimit is the cause of a call's end at Options.BusyLimit.
type errBusyLimit time.Duration

func (e errBusyLimit) Error() string { return fmt.Sprintf("gave up after %s", time.Duration(e)) }

// write runs fn in a BEGIN IMMEDIATE transaction with the store's clock
// read after the write lock is taken, so decisions are ordered like time.
func (s *Store) write(ctx context.Context, fn func(tx *txn) error) error {
	if s.readOnly {
		return ErrReadOnly
	}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	return s.explain(s.withConn(ctx, "BEGIN IMMEDIATE", fn))
}

// read runs fn in a read transaction, again from the start if it finds the
// database locked (in rollback-journal mode, while another connection
// commits). A read-only store whose database has no xplock tables yet
// gives errNoTables.
func (s *Store) read(ctx context.Context, fn func(tx *txn) error) error {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	l, err := s.findTables(ctx)
	if err != nil {
		return err
	}
	err = retryBusy(ctx, func() error { return s.withConn(ctx, "BEGIN", fn) })
	if s.readOnly && isSchemaChanged(err) {
		// Someone migrated the tables since: look again.
		s.layout.CompareAndSwap(l, nil)
		if _, err := s.findTables(ctx); err != nil {
			return err
		}
		err = retryBusy(ctx, func() error { return s.withConn(ctx, "BEGIN", fn) })
	}
	return s.explain(err)
}

// bound applies Options.BusyLimit to one call.
func (s *Store) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if s.busyLimit <= 0 {
		return ctx, func() {}
	}
	return context.WithTimeoutCause(ctx, s.busyLimit, errBusyLimit(s.busyLimit))
}

// explain names the database in an error about its lock.
func (s *Store) explain(err error) error {
	if errors.Is(err, ErrLocked) {
		return fmt.Errorf("%s: %w", s.path, err)
	}
	return err
}

// errNoTables means a read-only store's database has no xplock tables.
var errNoTables = errors.New("no xplock tables")

// findTables returns where the xplock tables are, looking for them again
// while a read-only store has found none.
func (s *Store) findTables(ctx context.Context) (*layout, error) {
	if l := s.layout.Load(); l != nil {
		return l, nil
	}
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	l, err := s.findLayout(ctx, conn)
	if err != nil {
		return nil, err
	}
	if l == nil {
		return nil, errNoTables
	}
	s.layout.CompareAndSwap(nil, l)
	return l, nil
}

// isSchemaChanged reports an error of a query written for tables that
// another process has since migrated.
func isSchemaChanged(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "no such table") || strings.Contains(err.Error(), "no such column"))
}

func (s *Store) withConn(ctx context.Context, begin string, fn func(tx *txn) error) error {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	// Once BEGIN IMMEDIATE has the write lock no statement of the
	// transaction waits for anything, and the decision is finished whatever
	// ctx does: its statements run without ctx's cancellation, which
	// go-sqlite3 watches with a goroutine per statement (half again the CPU
	// of a write transaction). BEGIN IMMEDIATE and COMMIT, which can wait,
	// and reads, which take their lock at their first statement, keep ctx.
	stmtCtx := ctx
	if begin == "BEGIN IMMEDIATE" {
		stmtCtx = context.WithoutCancel(ctx)
	}
	return s.inTx(ctx, conn, begin, func() error {
		// The clock is read once the transaction has begun (for a write,
		// holds the write lock), so decisions are ordered like time. It is
		// kept to the microsecond the tables store, so that what a decision
		// returns is what a later load finds.
		return fn(&txn{ctx: stmtCtx, conn: conn, now: time.UnixMicro(time.Now().UnixMicro())})
	})
}

// txn is one transaction's view: its connection and its moment.
type txn struct {
	ctx  context.Context
	conn *sql.Conn
	now  time.Time
}

func fromMicros(us int64) time.Time {
	if us == 0 {
		return time.Time{}
	}
	return time.UnixMicro(us)
}

func toMicros(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMicro()
}

// decide makes one decision on key in a write transaction: it loads the
// key's state (with holder's acknowledgement), asks lock.Decide, and saves
// what changed. A refusal (Decision.Err) is committed all the same: it may
// have observed an expiry.
func (s *Store) decide(ctx context.Context, key, holder string, req lock.Request) (lock.Decision, error) {
	var d lock.Decision
	err := s.write(ctx, func(tx *txn) error {
		k, err := tx.load(key, holder)
		if err != nil {
			return err
		}
		lock.ProveDeaths(s.prover, &k.state, tx.now)
		d = lock.Decide(k.state, k.ack, req, tx.now)
		return tx.save(k, d, holder)
	})
	return d, err
}

// Acquire implements lock.Store.
func (s *Store) Acquire(ctx context.Context, req lock.AcquireRequest) (lock.Grant, error) {
	req.TTL = req.TTL.Truncate(time.Microsecond)
	d, err := s.decide(ctx, req.Key, req.Holder, req)
	if err != nil {
		return lock.Grant{}, err
	}
	return d.Grant, d.Err // d.Err: a mode or slot-limit conflict, refused on arrival
}

// Renew implements lock.Store.
func (s *Store) Renew(ctx context.Context, req lock.RenewRequest) (lock.Grant, error) {
	req.TTL = req.TTL.Truncate(time.Microsecond)
	d, err := s.decide(ctx, req.Key, req.Holder, req)
	if err != nil {
		return lock.Grant{}, err
	}
	return d.Grant, d.Err
}

// Release implements lock.Store.
func (s *Store) Release(ctx context.Context, req lock.ReleaseRequest) (lock.State, error) {
	d, err := s.decide(ctx, req.Key, req.Holder, req)
	switch {
	case err != nil:
		return lock.State{}, err
	case d.Err != nil:
		return lock.State{}, d.Err
	}
	return d.State, nil
}

// Break implements lock.Store.
func (s *Store) Break(ctx context.Context, key string, by lock.Breaker) (lock.State, error) {
	d, err := s.decide(ctx, key, "", lock.BreakRequest{Key: key, By: by})
	if err != nil {
		return lock.State{}, err
	}
	return d.State, d.Err
}

// Acknowledge implements lock.Store.
func (s *Store) Acknowledge(ctx context.Context, key, holder string, token int64) error {
	d, err := s.decide(ctx, key, holder, lock.AcknowledgeRequest{Key: key, Holder: holder, Token: token})
	if err != nil {
		return err
	}
	return d.Err
}

// LeaveQueue implements lock.QueueLeaver.
func (s *Store) LeaveQueue(ctx context.Context, req lock.LeaveQueueRequest) error {
	_, err := s.decide(ctx, req.Key, req.Holder, req)
	return err
}

// Snapshot implements lock.Store.
func (s *Store) Snapshot(ctx context.Context, keys ...string) (lock.Snapshot, error) {
	var snap lock.Snapshot
	err := s.read(ctx, func(tx *txn) error {
		states, acks, err := tx.loadAll(s.layout.Load(), keys)
		if err != nil {
			return err
		}
		snap = lock.Snapshot{Now: tx.now}
		byHolder := map[string]lock.Ack{} // one key's, reused: View keeps none
		for _, k := range states {
			clear(byHolder)
			for len(acks) > 0 && acks[0].key <= k.Key {
				if acks[0].key == k.Key {
					byHolder[acks[0].holder] = acks[0].ack
				}
				acks = acks[1:]
			}
			if k.Row.Generation > 0 {
				lock.ProveDeaths(s.prover, &k, tx.now) // a dead holder shows as expired
				snap.Locks = append(snap.Locks, lock.View(k, byHolder, tx.now))
			}
		}
		return tx.conn.QueryRowContext(ctx, "SELECT COALESCE(MAX(id), 0) FROM xplock_events").Scan(&snap.Cursor)
	})
	if errors.Is(err, errNoTables) {
		return lock.Snapshot{Now: time.Now()}, nil
	}
	return snap, err
}

// keyFilter builds " WHERE column IN (...)" for keys, or nothing. The keys
// go in as one JSON array, so that any number of them fits in a statement.
func keyFilter(column string, keys []string) (string, []any) {
	if len(keys) == 0 {
		return "", nil
	}
	list, _ := json.Marshal(keys) // strings always marshal
	return " WHERE " + column + " IN (SELECT value FROM json_each(?))", []any{string(list)}
}

const eventColumns = `id, key, event, holder, generation, token, time, by_holder, by_user, by_host, by_pid`

// eventColumnsOf are the event columns scanEvents reads from tables of
// version: those before 3 kept no waits, modes or details.
func eventColumnsOf(version int) string {
	if version < 3 {
		return eventColumns + ", 0, NULL, NULL"
	}
	return eventColumns + ", waited, mode, detail"
}

func scanEvents(rows *sql.Rows) ([]lock.Event, error) {
	defer rows.Close()
	var events []lock.Event
	for rows.Next() {
		var e lock.Event
		var at int64
		var byHolder, byUser, byHost, mode, detail sql.NullString
		var byPID sql.NullInt64
		var waited int64
		if err := rows.Scan(&e.ID, &e.Key, &e.Type, &e.Holder, &e.Generation, &e.Token, &at,
			&byHolder, &byUser, &byHost, &byPID, &waited, &mode, &detail); err != nil {
			return nil, err
		}
		e.Time, e.Waited = fromMicros(at), time.Duration(waited)*time.Microsecond
		e.Mode, e.Detail = lock.Mode(mode.String), detail.String
		if byHolder.Valid {
			e.By = &lock.Breaker{Holder: byHolder.String, User: byUser.String, Host: byHost.String, PID: int(byPID.Int64)}
		}
		events = append(events, e)
	}
	return events, rows.Err()
}

// History implements lock.Store. It shows at most the store's history
// limit of events: pruning lets a key's history grow a little past it.
func (s *Store) History(ctx context.Context, key string, limit int) ([]lock.Event, error) {
	var events []lock.Event
	err := s.read(ctx, func(tx *txn) error {
		kept := int64(-1)
		if s.layout.Load().version >= 2 {
			if err := tx.conn.QueryRowContext(ctx, "SELECT history_limit FROM xplock_store").Scan(&kept); err != nil {
				return err
			}
		}
		if limit > 0 && (kept < 0 || int64(limit) < kept) {
			kept = int64(limit)
		}
		rows, err := tx.conn.QueryContext(ctx, `SELECT * FROM (SELECT `+eventColumnsOf(s.layout.Load().version)+` FROM xplock_events
			WHERE key = ? ORDER BY id DESC LIMIT ?) ORDER BY id`, key, kept)
		if err != nil {
			return err
		}
		events, err = scanEvents(rows)
		return err
	})
	if errors.Is(err, errNoTables) {
		return nil, nil
	}
	return events, err
}

// EventsAfter implements lock.Store.
func (s *Store) EventsAfter(ctx context.Context, cursor int64, keys []string, limit int) ([]lock.Event, error) {
	if limit <= 0 {
		limit = -1
	}
	filter, args := keyFilter("key", keys)
	if filter == "" {
		filter = " WHERE id > ?"
	} else {
		filter += " AND id > ?"
	}
	args = append(args, cursor, limit)
	var events []lock.Event
	err := s.read(ctx, func(tx *txn) error {
		rows, err := tx.conn.QueryContext(ctx, "SELECT "+eventColumnsOf(s.layout.Load().version)+" FROM xplock_events"+filter+
			" ORDER BY id LIMIT ?", args...)
		if err != nil {
			return err
		}
		events, err = scanEvents(rows)
		return err
	})
	if errors.Is(err, errNoTables) {
		return nil, nil
	}
	return events, err
}

// Settings implements lock.Configurable. A store without xplock tables, or
// with tables from before settings were kept in the store, has the default
// settings.
func (s *Store) Settings(ctx context.Context) (lock.Settings, error) {
	settings := lock.Settings{HistoryLimit: DefaultHistoryLimit}
	err := s.read(ctx, func(tx *txn) error {
		if s.layout.Load().version < 2 {
			return nil
		}
		return tx.conn.QueryRowContext(ctx, "SELECT history_limit FROM xplock_store").Scan(&settings.HistoryLimit)
	})
	if errors.Is(err, errNoTables) {
		err = nil
	}
	return settings, err
}

// SetHistoryLimit implements lock.Configurable. Each key's history is
// pruned to the new limit the next time it grows.
func (s *Store) SetHistoryLimit(ctx context.Context, n int) error {
	if n <= 0 {
		return errors.New("history limit must be positive")
	}
	return s.write(ctx, func(tx *txn) error {
		_, err := tx.conn.ExecContext(tx.ctx, "UPDATE xplock_store SET history_limit = ?", n)
		return err
	})
}
