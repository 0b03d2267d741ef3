package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	mathrand "math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/xplock/xplock/lock"
)

// outcome is a decision's result: the key's row after it, and what was
// decided.
type outcome struct {
	key        string
	holder     string
	generation int64
	token      int64
	held       bool
	checked    bool
	acquiredAt time.Time
	expiresAt  time.Time
	ttlMicros  int64
	changedAt  time.Time
	now        time.Time
	refusal    *string
	reentrant  bool
	busy       bool
	acked      *int64
	notified   int64
}

// decide runs one decision on key under the caller's deadline, sending it
// again after a connection fault or a rollback that retrying cures. Every
// attempt carries the same request ID, so that an attempt whose answer was
// lost but which committed is recognised by the next one.
func (s *Store) decide(ctx context.Context, key, query string, args ...any) (outcome, error) {
	args = append([]any{key, s.newRequestID()}, args...)
	var out outcome
	err := s.do(ctx, func(ctx context.Context) (err error) {
		out, err = s.decideOnce(ctx, key, query, args)
		return err
	})
	return out, err
}

// newRequestID names a request: a random (version 4) UUID, unless a test
// fixed it to send one request twice, as a retry after a lost answer does.
func (s *Store) newRequestID() string {
	if s.fixedRequestID != "" {
		return s.fixedRequestID
	}
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// reportMargin is how long before its caller's deadline a call stops
// trying to reach an unreachable server (at most a tenth of the time it
// was given), so that its caller learns that the store was unreachable
// rather than only that time ran out.
const reportMargin = 100 * time.Millisecond

// Backoff between attempts while the server cannot be reached.
const (
	minRetryPause = 5 * time.Millisecond
	maxRetryPause = 250 * time.Millisecond
)

// do runs fn until it succeeds, fails in a way that trying again cannot
// cure, or the caller's bound ends: shortly before ctx's deadline, or
// OutageLimit after the call began when ctx has none. Connection faults
// (a restart, a killed backend, a reset) and rollbacks (serialization
// failures, deadlocks) are retried on a new connection; a server that
// does not answer in time, or is still unreachable at the bound, gives an
// *UnreachableError saying since when.
func (s *Store) do(ctx context.Context, fn func(context.Context) error) error {
	start := time.Now()
	bound := start.Add(s.outageLimit)
	if deadline, ok := ctx.Deadline(); ok {
		bound = deadline.Add(-min(reportMargin, deadline.Sub(start)/10))
	}
	callCtx, cancel := context.WithDeadline(ctx, bound)
	defer cancel()
	pause := minRetryPause
	var fault error
	for {
		sent := time.Now()
		err := fn(callCtx)
		switch {
		case err == nil:
			s.reachable()
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		case callCtx.Err() != nil:
			return s.unreachable(sent, fault)
		case rolledBack(err):
		case transient(err):
			fault = err
			s.unreachableFrom(sent)
		default:
			return s.describe(err)
		}
		select {
		case <-callCtx.Done():
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return s.unreachable(sent, fault)
		case <-time.After(pause + mathrand.N(pause)):
		}
		pause = min(2*pause, maxRetryPause)
	}
}

// unreachableFrom records that the server failed to answer a request sent
// at t, unless it was already known to be unreachable.
func (s *Store) unreachableFrom(t time.Time) {
	s.downMu.Lock()
	defer s.downMu.Unlock()
	if s.downSince.IsZero() {
		s.downSince = t
	}
}

func (s *Store) reachable() {
	s.downMu.Lock()
	defer s.downMu.Unlock()
	s.downSince = time.Time{}
}

// unreachable is the error for a call that ran out of time: the server has
// not answered since it was last known unreachable, or since the last
// request was sent.
func (s *Store) unreachable(sent time.Time, fault error) error {
	s.unreachableFrom(sent)
	s.downMu.Lock()
	since := s.downSince
	s.downMu.Unlock()
	return &UnreachableError{Server: s.server, Since: since, Err: redact(fault, s.connConfig.Password)}
}

func (s *Store) decideOnce(ctx context.Context, key, query string, args []any) (outcome, error) {
	out := outcome{key: key}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return out, err
	}
	defer conn.Release()
	batch := &pgx.Batch{}
	batch.Queue(lockRowSQL, key)
	batch.Queue(query, args...)
	results := conn.SendBatch(ctx, batch)
	if _, err := results.Exec(); err != nil {
		results.Close()
		return out, err
	}
	err = results.QueryRow().Scan(&out.holder, &out.generation, &out.token, &out.held, &out.checked,
		&out.acquiredAt, &out.expiresAt, &out.ttlMicros, &out.changedAt, &out.now,
		&out.refusal, &out.reentrant, &out.busy, &out.acked, &out.notified)
	// Close reads the commit's outcome.
	if cerr := results.Close(); err == nil {
		err = cerr
	}
	return out, err
}

func (o *outcome) state() lock.State {
	if o.generation == 0 {
		return lock.State{Key: o.key, State: lock.StateFree} // never acquired
	}
	return rowState(o.key, o.holder, o.generation, o.token, o.held, o.acquiredAt, o.expiresAt, o.changedAt, o.now)
}

func rowState(key, holder string, generation, token int64, held bool, acquiredAt, expiresAt, changedAt, now time.Time) lock.State {
	s := lock.State{Key: key, Holder: holder, Generation: generation, Token: token}
	switch {
	case held && expiresAt.After(now):
		s.State, s.Since, s.ExpiresAt = lock.StateHeld, acquiredAt, expiresAt
	case held:
		s.State, s.Since, s.ExpiresAt = lock.StateExpired, expiresAt, expiresAt
	default:
		s.State, s.Since = lock.StateFree, changedAt
	}
	return s
}

func (o *outcome) grant() lock.Grant {
	return lock.Grant{
		Acquired: true, Key: o.key, Holder: o.holder, Generation: o.generation, Token: o.token,
		Reentrant: o.reentrant, Checked: o.checked, AcquiredAt: o.acquiredAt, ExpiresAt: o.expiresAt,
		TTL: time.Duration(o.ttlMicros) * time.Microsecond, Now: o.now,
	}
}

// refused turns a refusal into the *lock.NotHeldError the Store contract
// asks for, or nil.
func (o *outcome) refused(holder string) error {
	if o.refusal == nil {
		return nil
	}
	st := &lock.NotHeldError{Key: o.key, Holder: holder, Reason: *o.refusal, Current: o.state()}
	if st.Reason == lock.ReasonExpired {
		st.Current.ExpiresAt = o.expiresAt
	}
	return st
}

func micros(d time.Duration) int64 { return d.Microseconds() }

// Acquire implements lock.Store. A key this store last found held by
// someone else is first looked at with a plain read, and the row is locked
// only when that look finds the lock free, expired or the holder's own: a
// waiter that tries again while the lock stays held writes nothing.
func (s *Store) Acquire(ctx context.Context, req lock.AcquireRequest) (lock.Grant, error) {
	if _, ok := s.busy.Load(req.Key); ok {
		current, now, held, err := s.peek(ctx, req.Key, req.Holder)
		if err != nil {
			return lock.Grant{}, err
		}
		if held {
			return lock.Grant{Key: req.Key, Holder: req.Holder, Now: now, Current: current}, nil
		}
	}
	if _, err := s.ready(ctx, true); err != nil {
		return lock.Grant{}, err
	}
	out, err := s.decide(ctx, req.Key, acquireSQL(), req.Holder, micros(req.TTL), req.KeepTenureTTL, req.Checked)
	if err != nil {
		return lock.Grant{}, err
	}
	if out.busy {
		s.busy.Store(req.Key, struct{}{})
		return lock.Grant{Key: req.Key, Holder: req.Holder, Now: out.now, Current: out.state()}, nil
	}
	s.busy.Delete(req.Key)
	g := out.grant()
	if out.acked != nil {
		g.Acknowledged = *out.acked
	}
	g.Poisoned = g.Acknowledged != 0 && g.Acknowledged != g.Generation
	return g, nil
}

// peek reads key's row without locking it and reports whether another
// holder has a live lease on it.
func (s *Store) peek(ctx context.Context, key, holder string) (current lock.State, now time.Time, held bool, err error) {
	err = s.do(ctx, func(ctx context.Context) error {
		var h string
		var generation, token int64
		var isHeld bool
		var acquiredAt, expiresAt, changedAt time.Time
		err := s.pool.QueryRow(ctx, `SELECT clock_timestamp(), l.holder, l.generation, l.token, l.held,
				l.acquired_at, l.expires_at, l.changed_at
			FROM xplock_locks l WHERE l.key = $1`, key).
			Scan(&now, &h, &generation, &token, &isHeld, &acquiredAt, &expiresAt, &changedAt)
		switch {
		case errors.Is(err, pgx.ErrNoRows) || pgErrorCode(err) == undefinedTable:
			held = false
			return nil
		case err != nil:
			return err
		}
		current = rowState(key, h, generation, token, isHeld, acquiredAt, expiresAt, changedAt, now)
		held = current.State == lock.StateHeld && h != holder
		return nil
	})
	return current, now, held, err
}

// ready makes sure that the xplock tables are there, at this version,
// before a decision writes to them: it migrates an older schema, and
// creates missing tables when create is set. It reports false when there
// are none and create is not set (a store opened with NoCreate).
func (s *Store) ready(ctx context.Context, create bool) (bool, error) {
	if s.version.Load() == schemaVersion {
		return true, nil
	}
	var version int
	err := s.do(ctx, func(ctx context.Context) (err error) {
		version, err = s.schemaVersion(ctx, s.pool)
		return err
	})
	if err != nil {
		return false, s.describeSchemaError(err)
	}
	if err := checkVersion(version); err != nil {
		return false, err
	}
	if version == 0 && !create {
		return false, nil
	}
	if version < schemaVersion {
		if err := s.do(ctx, s.migrate); err != nil {
			return false, s.describeSchemaError(err)
		}
	}
	s.version.Store(schemaVersion)
	return true, nil
}

// holding runs a decision about a tenure (renew, release, acknowledge,
// break). A store without tables holds nothing: it refuses without
// creating them.
func (s *Store) holding(ctx context.Context, key, holder, query string, args ...any) (outcome, error) {
	ok, err := s.ready(ctx, false)
	if err != nil {
		return outcome{}, err
	}
	if !ok {
		free := lock.ReasonFree
		return outcome{key: key, refusal: &free}, nil
	}
	return s.decide(ctx, key, query, append([]any{holder}, args...)...)
}

// Renew implements lock.Store.
func (s *Store) Renew(ctx context.Context, req lock.RenewRequest) (lock.Grant, error) {
	out, err := s.holding(ctx, req.Key, req.Holder, renewSQL(), req.Token, micros(req.TTL))
	if err != nil {
		return lock.Grant{}, err
	}
	if err := out.refused(req.Holder); err != nil {
		return lock.Grant{}, err
	}
	g := out.grant()
	g.Reentrant = true
	return g, nil
}

// Release implements lock.Store.
func (s *Store) Release(ctx context.Context, req lock.ReleaseRequest) (lock.State, error) {
	out, err := s.holding(ctx, req.Key, req.Holder, releaseSQL(), req.Token, req.Acknowledge)
	if err != nil {
		return lock.State{}, err
	}
	if err := out.refused(req.Holder); err != nil {
		return lock.State{}, err
	}
	return out.state(), nil
}

// Break implements lock.Store.
func (s *Store) Break(ctx context.Context, key string, by lock.Breaker) (lock.State, error) {
	out, err := s.holding(ctx, key, by.Holder, breakSQL(), by.User, by.Host, int64(by.PID))
	if err != nil {
		return lock.State{}, err
	}
	if err := out.refused(by.Holder); err != nil {
		return out.state(), err
	}
	return out.state(), nil
}

// Acknowledge implements lock.Store.
func (s *Store) Acknowledge(ctx context.Context, key, holder string, token int64) error {
	out, err := s.holding(ctx, key, holder, acknowledgeSQL(), token)
	if err != nil {
		return err
	}
	return out.refused(holder)
}

// Snapshot implements lock.Store. It is one statement, so one snapshot of
// the database.
func (s *Store) Snapshot(ctx context.Context, keys ...string) (lock.Snapshot, error) {
	filter, args := "l.generation > 0", []any{}
	if len(keys) > 0 {
		filter, args = "l.generation > 0 AND l.key = ANY($1)", []any{keys}
	}
	query := `WITH c AS MATERIALIZED (
			SELECT clock_timestamp() AS now, (SELECT coalesce(max(id), 0) FROM xplock_events) AS cursor)
		SELECT c.now, c.cursor, l.key, l.holder, l.generation, l.token, l.held, l.acquired_at, l.expires_at,
			l.changed_at, array(SELECT a.holder FROM xplock_acks a WHERE a.key = l.key AND a.generation <> l.generation
				ORDER BY a.holder COLLATE "C")
		FROM c LEFT JOIN xplock_locks l ON ` + filter + `
		ORDER BY l.key COLLATE "C"`
	var snap lock.Snapshot
	err := s.do(ctx, func(ctx context.Context) error {
		snap = lock.Snapshot{}
		rows, err := s.pool.Query(ctx, query, args...)
		if pgErrorCode(err) == undefinedTable {
			// No xplock tables (yet): no locks, at the server's time.
			return s.pool.QueryRow(ctx, "SELECT clock_timestamp()").Scan(&snap.Now)
		}
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var key, holder *string
			var generation, token *int64
			var held *bool
			var acquiredAt, expiresAt, changedAt *time.Time
			var poisoned []string
			if err := rows.Scan(&snap.Now, &snap.Cursor, &key, &holder, &generation, &token, &held,
				&acquiredAt, &expiresAt, &changedAt, &poisoned); err != nil {
				return err
			}
			if key == nil {
				continue // no locks: the one row carries only the clock and cursor
			}
			st := rowState(*key, *holder, *generation, *token, *held, *acquiredAt, *expiresAt, *changedAt, snap.Now)
			if len(poisoned) > 0 {
				st.PoisonedHolders = poisoned
			}
			snap.Locks = append(snap.Locks, st)
		}
		return rows.Err()
	})
	if err != nil {
		return lock.Snapshot{}, err
	}
	return snap, nil
}

const eventColumns = `id, key, event, holder, generation, token, time, by_holder, by_user, by_host, by_pid`

// events runs a query for events.
func (s *Store) events(ctx context.Context, query string, args ...any) ([]lock.Event, error) {
	var events []lock.Event
	err := s.do(ctx, func(ctx context.Context) error {
		events = events[:0]
		rows, err := s.pool.Query(ctx, query, args...)
		if pgErrorCode(err) == undefinedTable {
			return nil // no xplock tables (yet): no events
		}
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var e lock.Event
			var byHolder, byUser, byHost *string
			var byPID *int64
			if err := rows.Scan(&e.ID, &e.Key, &e.Type, &e.Holder, &e.Generation, &e.Token, &e.Time,
				&byHolder, &byUser, &byHost, &byPID); err != nil {
				return err
			}
			if byHolder != nil {
				e.By = &lock.Breaker{Holder: *byHolder}
				if byUser != nil {
					e.By.User = *byUser
				}
				if byHost != nil {
					e.By.Host = *byHost
				}
				if byPID != nil {
					e.By.PID = int(*byPID)
				}
			}
			events = append(events, e)
		}
		return rows.Err()
	})
	return events, err
}

// limitArg is a LIMIT parameter: NULL, no limit, when limit <= 0.
func limitArg(limit int) any {
	if limit <= 0 {
		return nil
	}
	return int64(limit)
}

// History implements lock.Store.
func (s *Store) History(ctx context.Context, key string, limit int) ([]lock.Event, error) {
	return s.events(ctx, `SELECT `+eventColumns+` FROM (
			SELECT `+eventColumns+` FROM xplock_events WHERE key = $1 ORDER BY id DESC LIMIT $2::bigint) e
		ORDER BY id`, key, limitArg(limit))
}

// EventsAfter implements lock.Store.
func (s *Store) EventsAfter(ctx context.Context, cursor int64, keys []string, limit int) ([]lock.Event, error) {
	if len(keys) == 0 {
		return s.events(ctx, `SELECT `+eventColumns+` FROM xplock_events WHERE id > $1 ORDER BY id LIMIT $2::bigint`,
			cursor, limitArg(limit))
	}
	return s.events(ctx, `SELECT `+eventColumns+` FROM xplock_events WHERE id > $1 AND key = ANY($3)
		ORDER BY id LIMIT $2::bigint`, cursor, limitArg(limit), keys)
}

// describe explains an error the server gave for good: a refusal that
// names the role, table or schema is described with what to do about it.
// The password is never shown.
func (s *Store) describe(err error) error {
	switch pgErrorCode(err) {
	case insufficientPrivs, invalidSchemaName, undefinedTable:
		err = s.describeSchemaError(err)
	}
	return redact(err, s.connConfig.Password)
}

// Settings implements lock.Configurable.
func (s *Store) Settings(ctx context.Context) (lock.Settings, error) {
	settings := lock.Settings{HistoryLimit: DefaultHistoryLimit}
	err := s.do(ctx, func(ctx context.Context) error {
		var limit int64
		err := s.pool.QueryRow(ctx, "SELECT history_limit FROM xplock_config").Scan(&limit)
		if pgErrorCode(err) == undefinedTable {
			return nil // no tables yet, or older ones: the default applies
		}
		settings.HistoryLimit = int(limit)
		return err
	})
	return settings, err
}

// SetHistoryLimit implements lock.Configurable. It creates the xplock
// tables if there are none.
func (s *Store) SetHistoryLimit(ctx context.Context, n int) error {
	if n <= 0 {
		return errors.New("history limit must be positive")
	}
	if _, err := s.ready(ctx, true); err != nil {
		return err
	}
	return s.do(ctx, func(ctx context.Context) error {
		_, err := s.pool.Exec(ctx, "UPDATE xplock_config SET history_limit = $1", int64(n))
		return err
	})
}
