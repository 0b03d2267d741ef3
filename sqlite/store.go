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
	if err := retryBusy(ctx, func() error {
		_, err := conn.ExecContext(ctx, begin)
		return err
	}); err != nil {
		return err
	}
	// ROLLBACK must run even when ctx ended, or the pooled connection would
	// stay inside a transaction.
	end := context.WithoutCancel(ctx)
	if err := fn(); err != nil {
		conn.ExecContext(end, "ROLLBACK")
		return err
	}
	if err := retryBusy(ctx, func() error {
		_, err := conn.ExecContext(ctx, "COMMIT")
		return err
	}); err != nil {
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
	if s.readOnly && isNoSuchTable(err) {
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

func isNoSuchTable(err error) bool {
	return err != nil && strings.Contains(err.Error(), "no such table")
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
	// A refusal still commits what its transaction recorded (an expiry it
	// observed) before it is reported.
	var refused error
	err = s.inTx(ctx, conn, begin, func() error {
		err := fn(&txn{ctx: stmtCtx, conn: conn, store: s, now: toMicros(time.Now())})
		if errors.Is(err, lock.ErrNotHeld) {
			refused, err = err, nil
		}
		return err
	})
	if err != nil {
		return err
	}
	return refused
}

// txn is one transaction's view: its connection and its moment.
type txn struct {
	ctx   context.Context
	conn  *sql.Conn
	store *Store
	now   int64
	// historyLimit is the store's setting, read with the first row loaded
	// (0 until then).
	historyLimit int64
}

func toMicros(t time.Time) int64 { return t.UnixMicro() }

func fromMicros(us int64) time.Time {
	if us == 0 {
		return time.Time{}
	}
	return time.UnixMicro(us)
}

// row is one xplock_locks row.
type row struct {
	key        string
	holder     string
	generation int64
	token      int64
	held       bool
	checked    bool
	acquiredAt int64
	expiresAt  int64
	ttl        int64
	changedAt  int64
	events     int64
}

const rowColumns = `key, holder, generation, token, held, checked, acquired_at, expires_at, ttl, changed_at, events`

// scanRow scans rowColumns, then extra.
func scanRow(sc interface{ Scan(...any) error }, extra ...any) (row, error) {
	var r row
	err := sc.Scan(append([]any{&r.key, &r.holder, &r.generation, &r.token, &r.held, &r.checked,
		&r.acquiredAt, &r.expiresAt, &r.ttl, &r.changedAt, &r.events}, extra...)...)
	return r, err
}

// load reads key's row, and the store's history limit with it; found is
// false for a key never acquired.
func (tx *txn) load(key string) (r row, found bool, err error) {
	r, err = scanRow(tx.conn.QueryRowContext(tx.ctx,
		"SELECT "+rowColumns+", (SELECT history_limit FROM xplock_store) FROM xplock_keys WHERE key = ?", key),
		&tx.historyLimit)
	if errors.Is(err, sql.ErrNoRows) {
		return row{key: key}, false, nil
	}
	return r, err == nil, err
}

func (tx *txn) save(r *row) error {
	_, err := tx.conn.ExecContext(tx.ctx, `INSERT INTO xplock_keys (`+rowColumns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (key) DO UPDATE SET holder = excluded.holder, generation = excluded.generation,
			token = excluded.token, held = excluded.held, checked = excluded.checked,
			acquired_at = excluded.acquired_at, expires_at = excluded.expires_at, ttl = excluded.ttl,
			changed_at = excluded.changed_at, events = excluded.events`,
		r.key, r.holder, r.generation, r.token, r.held, r.checked,
		r.acquiredAt, r.expiresAt, r.ttl, r.changedAt, r.events)
	return err
}

// live reports whether r's tenure is open and its lease has not run out.
func (tx *txn) live(r *row) bool { return r.held && r.expiresAt > tx.now }

// observeExpiry records the end of a lease that ran out unseen, stamped with
// the lease's end, and marks the tenure over. The caller saves r.
func (tx *txn) observeExpiry(r *row) (expired bool, err error) {
	if !r.held || r.expiresAt > tx.now {
		return false, nil
	}
	r.held, r.checked, r.changedAt = false, false, r.expiresAt
	return true, tx.addEvent(r, lock.EventExpired, r.expiresAt, nil)
}

// addEvent appends to r's history and, in the same transaction, prunes it
// back to the store's limit once it is a tenth over: one batched delete
// every limit/10 events costs far less than one delete per event. History
// shows only the newest limit events. The caller saves r, which counts the
// kept events.
func (tx *txn) addEvent(r *row, event string, at int64, by *lock.Breaker) error {
	var byHolder, byUser, byHost, byPID any
	if by != nil {
		byHolder, byUser, byHost, byPID = by.Holder, by.User, by.Host, by.PID
	}
	if _, err := tx.conn.ExecContext(tx.ctx, `INSERT INTO xplock_events
		(key, event, holder, generation, token, time, by_holder, by_user, by_host, by_pid)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		r.key, event, r.holder, r.generation, r.token, at, byHolder, byUser, byHost, byPID); err != nil {
		return err
	}
	r.events++
	if tx.historyLimit == 0 {
		// A key's first event: its row was not there to bring the limit.
		if err := tx.conn.QueryRowContext(tx.ctx, "SELECT history_limit FROM xplock_store").Scan(&tx.historyLimit); err != nil {
			return err
		}
	}
	limit := tx.historyLimit
	if excess := r.events - limit; excess > max(limit/10, 1) {
		if _, err := tx.conn.ExecContext(tx.ctx, `DELETE FROM xplock_events WHERE id IN
			(SELECT id FROM xplock_events WHERE key = ? ORDER BY id LIMIT ?)`, r.key, excess); err != nil {
			return err
		}
		r.events -= excess
	}
	return nil
}

// acknowledged reads holder's acknowledged generation on key, 0 for none.
func (tx *txn) acknowledged(key, holder string) (int64, error) {
	var gen int64
	err := tx.conn.QueryRowContext(tx.ctx,
		"SELECT generation FROM xplock_acks WHERE key = ? AND holder = ?", key, holder).Scan(&gen)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	return gen, err
}

func (tx *txn) acknowledge(key, holder string, generation int64) error {
	_, err := tx.conn.ExecContext(tx.ctx, `INSERT INTO xplock_acks (key, holder, generation) VALUES (?, ?, ?)
		ON CONFLICT (key, holder) DO UPDATE SET generation = excluded.generation`, key, holder, generation)
	return err
}

func (tx *txn) state(r *row) lock.State {
	s := lock.State{Key: r.key, Holder: r.holder, Generation: r.generation, Token: r.token}
	switch {
	case tx.live(r):
		s.State, s.Since, s.ExpiresAt = lock.StateHeld, fromMicros(r.acquiredAt), fromMicros(r.expiresAt)
	case r.held:
		s.State, s.Since, s.ExpiresAt = lock.StateExpired, fromMicros(r.expiresAt), fromMicros(r.expiresAt)
	default:
		s.State, s.Since = lock.StateFree, fromMicros(r.changedAt)
	}
	return s
}

func (tx *txn) grant(r *row) lock.Grant {
	return lock.Grant{
		Acquired: true, Key: r.key, Holder: r.holder, Generation: r.generation, Token: r.token,
		Checked: r.checked, AcquiredAt: fromMicros(r.acquiredAt), ExpiresAt: fromMicros(r.expiresAt),
		TTL: time.Duration(r.ttl) * time.Microsecond, Now: fromMicros(tx.now),
	}
}

// Acquire implements lock.Store.
func (s *Store) Acquire(ctx context.Context, req lock.AcquireRequest) (lock.Grant, error) {
	var g lock.Grant
	err := s.write(ctx, func(tx *txn) error {
		r, found, err := tx.load(req.Key)
		if err != nil {
			return err
		}
		if tx.live(&r) && r.holder != req.Holder {
			g = lock.Grant{Key: req.Key, Holder: req.Holder, Now: fromMicros(tx.now), Current: tx.state(&r)}
			return nil
		}
		ttl := req.TTL.Microseconds()
		reentrant := tx.live(&r)
		if reentrant {
			if req.KeepTenureTTL {
				ttl = r.ttl
			}
			r.checked = r.checked || req.Checked
		} else {
			if _, err := tx.observeExpiry(&r); err != nil {
				return err
			}
			switch {
			case !found:
				r.generation = 1
			case r.holder != req.Holder:
				r.generation++
			}
			r.holder, r.token, r.held, r.checked = req.Holder, r.token+1, true, req.Checked
			r.acquiredAt, r.changedAt = tx.now, tx.now
			if err := tx.addEvent(&r, lock.EventAcquired, tx.now, nil); err != nil {
				return err
			}
		}
		r.ttl, r.expiresAt = ttl, tx.now+ttl
		if err := tx.save(&r); err != nil {
			return err
		}
		acked, err := tx.acknowledged(req.Key, req.Holder)
		if err != nil {
			return err
		}
		if acked == 0 && req.Checked {
			// A newcomer has nothing stale (SPEC rule 1).
			acked = r.generation
			if err := tx.acknowledge(req.Key, req.Holder, acked); err != nil {
				return err
			}
		}
		g = tx.grant(&r)
		g.Reentrant = reentrant
		g.Acknowledged = acked
		g.Poisoned = acked != 0 && acked != r.generation
		return nil
	})
	return g, err
}

// holding loads key's row and checks that holder holds a live lease in the
// tenure token (any tenure when token is 0). An expiry it observes is
// recorded and saved.
func (tx *txn) holding(key, holder string, token int64) (row, error) {
	r, _, err := tx.load(key)
	if err != nil {
		return r, err
	}
	refuse := func(reason string) error {
		return &lock.NotHeldError{Key: key, Holder: holder, Reason: reason, Current: tx.state(&r)}
	}
	expired, err := tx.observeExpiry(&r)
	if err != nil {
		return r, err
	}
	if expired {
		if err := tx.save(&r); err != nil {
			return r, err
		}
		if r.holder == holder && (token == 0 || token == r.token) {
			st := refuse(lock.ReasonExpired).(*lock.NotHeldError)
			st.Current.ExpiresAt = fromMicros(r.expiresAt)
			return r, st
		}
	}
	switch {
	case !r.held:
		return r, refuse(lock.ReasonFree)
	case r.holder != holder:
		return r, refuse(lock.ReasonOther)
	case token != 0 && r.token != token:
		return r, refuse(lock.ReasonTenure)
	}
	return r, nil
}

// Renew implements lock.Store.
func (s *Store) Renew(ctx context.Context, req lock.RenewRequest) (lock.Grant, error) {
	var g lock.Grant
	err := s.write(ctx, func(tx *txn) error {
		r, err := tx.holding(req.Key, req.Holder, req.Token)
		if err != nil {
			return err
		}
		if req.TTL > 0 {
			r.ttl = req.TTL.Microseconds()
		}
		r.expiresAt = tx.now + r.ttl
		if err := tx.save(&r); err != nil {
			return err
		}
		g = tx.grant(&r)
		g.Reentrant = true
		return nil
	})
	return g, err
}

// Release implements lock.Store.
func (s *Store) Release(ctx context.Context, req lock.ReleaseRequest) (lock.State, error) {
	var st lock.State
	err := s.write(ctx, func(tx *txn) error {
		r, err := tx.holding(req.Key, req.Holder, req.Token)
		if err != nil {
			return err
		}
		checked := r.checked
		r.held, r.checked, r.changedAt = false, false, tx.now
		if err := tx.addEvent(&r, lock.EventReleased, tx.now, nil); err != nil {
			return err
		}
		if err := tx.save(&r); err != nil {
			return err
		}
		if req.Acknowledge && checked {
			if err := tx.acknowledge(r.key, r.holder, r.generation); err != nil {
				return err
			}
		}
		st = tx.state(&r)
		return nil
	})
	return st, err
}

// Break implements lock.Store.
func (s *Store) Break(ctx context.Context, key string, by lock.Breaker) (lock.State, error) {
	var st lock.State
	err := s.write(ctx, func(tx *txn) error {
		r, _, err := tx.load(key)
		if err != nil {
			return err
		}
		expired, err := tx.observeExpiry(&r)
		if err != nil {
			return err
		}
		if !r.held {
			if expired {
				if err := tx.save(&r); err != nil {
					return err
				}
			}
			st = tx.state(&r)
			return &lock.NotHeldError{Key: key, Holder: by.Holder, Reason: lock.ReasonFree, Current: st}
		}
		r.held, r.checked, r.changedAt = false, false, tx.now
		if err := tx.addEvent(&r, lock.EventBroken, tx.now, &by); err != nil {
			return err
		}
		if err := tx.save(&r); err != nil {
			return err
		}
		st = tx.state(&r)
		return nil
	})
	return st, err
}

// Acknowledge implements lock.Store.
func (s *Store) Acknowledge(ctx context.Context, key, holder string, token int64) error {
	return s.write(ctx, func(tx *txn) error {
		r, err := tx.holding(key, holder, token)
		if err != nil {
			return err
		}
		return tx.acknowledge(key, holder, r.generation)
	})
}

// Snapshot implements lock.Store.
func (s *Store) Snapshot(ctx context.Context, keys ...string) (lock.Snapshot, error) {
	var snap lock.Snapshot
	err := s.read(ctx, func(tx *txn) error {
		snap = lock.Snapshot{}
		filter, args := keyFilter("key", keys)
		rows, err := tx.conn.QueryContext(ctx, "SELECT "+rowColumns+" FROM "+s.layout.Load().keys+filter+" ORDER BY key", args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		index := map[string]int{}
		for rows.Next() {
			r, err := scanRow(rows)
			if err != nil {
				return err
			}
			index[r.key] = len(snap.Locks)
			snap.Locks = append(snap.Locks, tx.state(&r))
		}
		if err := rows.Err(); err != nil {
			return err
		}
		filter, args = keyFilter("a.key", keys)
		poisoned, err := tx.conn.QueryContext(ctx, `SELECT a.key, a.holder FROM xplock_acks a
			JOIN `+s.layout.Load().keys+` l ON l.key = a.key AND l.generation != a.generation`+filter+` ORDER BY a.key, a.holder`, args...)
		if err != nil {
			return err
		}
		defer poisoned.Close()
		for poisoned.Next() {
			var key, holder string
			if err := poisoned.Scan(&key, &holder); err != nil {
				return err
			}
			l := &snap.Locks[index[key]]
			l.PoisonedHolders = append(l.PoisonedHolders, holder)
		}
		if err := poisoned.Err(); err != nil {
			return err
		}
		snap.Now = fromMicros(tx.now)
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

func scanEvents(rows *sql.Rows) ([]lock.Event, error) {
	defer rows.Close()
	var events []lock.Event
	for rows.Next() {
		var e lock.Event
		var at int64
		var byHolder, byUser, byHost sql.NullString
		var byPID sql.NullInt64
		if err := rows.Scan(&e.ID, &e.Key, &e.Type, &e.Holder, &e.Generation, &e.Token, &at,
			&byHolder, &byUser, &byHost, &byPID); err != nil {
			return nil, err
		}
		e.Time = fromMicros(at)
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
		if s.layout.Load().version == schemaVersion {
			if err := tx.conn.QueryRowContext(ctx, "SELECT history_limit FROM xplock_store").Scan(&kept); err != nil {
				return err
			}
		}
		if limit > 0 && (kept < 0 || int64(limit) < kept) {
			kept = int64(limit)
		}
		rows, err := tx.conn.QueryContext(ctx, `SELECT * FROM (SELECT `+eventColumns+` FROM xplock_events
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
		rows, err := tx.conn.QueryContext(ctx, "SELECT "+eventColumns+" FROM xplock_events"+filter+" ORDER BY id LIMIT ?", args...)
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

// Settings implements lock.Configurable. A store whose tables are older than
// this program, or absent, has the default settings.
func (s *Store) Settings(ctx context.Context) (lock.Settings, error) {
	settings := lock.Settings{HistoryLimit: DefaultHistoryLimit}
	err := s.read(ctx, func(tx *txn) error {
		if s.layout.Load().version < schemaVersion {
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
