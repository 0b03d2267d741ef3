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

// decided is a decision as the caller is answered: prior is what an
// earlier attempt of the same request did that committed ("" if none, see
// requestOutcome), in the tenure priorToken.
type decided struct {
	lock.Decision
	prior      string
	priorToken int64
}

// decide runs one decision about key for holder (the requester, or who
// breaks the lock) under the caller's deadline, sending it again after a
// connection fault or a rollback that retrying cures. Every attempt
// carries the same request ID, so that an attempt whose answer was lost
// but which committed is recognised by the next one.
func (s *Store) decide(ctx context.Context, key, holder string, req lock.Request) (decided, error) {
	id := s.newRequestID()
	var out decided
	err := s.do(ctx, func(ctx context.Context) error {
		l, d, err := s.decideOnce(ctx, key, holder, id, req)
		out = decided{Decision: d, prior: l.prior, priorToken: l.priorToken}
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

// Acquire implements lock.Store. A key this store last found held by
// someone else is first looked at with a plain read, and the row is locked
// only when that look finds that the acquisition could be granted: a
// waiter that tries again while the lock stays held writes nothing.
func (s *Store) Acquire(ctx context.Context, req lock.AcquireRequest) (lock.Grant, error) {
	req.TTL = req.TTL.Truncate(time.Microsecond)        // what the server stores
	if _, ok := s.busy.Load(req.Key); ok && !req.Wait { // a waiter's try renews its place
		g, busy, err := s.peek(ctx, req)
		if err != nil || busy {
			return g, err
		}
	}
	if _, err := s.ready(ctx, true); err != nil {
		return lock.Grant{}, err
	}
	out, err := s.decide(ctx, req.Key, req.Holder, req)
	if err != nil {
		return lock.Grant{}, err
	}
	g := out.Grant
	if out.Err != nil { // a mode or slot-limit conflict, refused on arrival
		return g, out.Err
	}
	if !g.Acquired {
		s.busy.Store(req.Key, struct{}{})
		return g, nil
	}
	s.busy.Delete(req.Key)
	if out.prior == lock.EventAcquired && out.priorToken == g.Token {
		// An earlier attempt of this request began the tenure: it is not
		// re-entrant.
		g.Reentrant = false
	}
	return g, nil
}

// peek loads key's state without locking its row and reports whether the
// acquisition would be refused, with the refusal; nothing is saved.
func (s *Store) peek(ctx context.Context, req lock.AcquireRequest) (g lock.Grant, busy bool, err error) {
	err = s.do(ctx, func(ctx context.Context) error {
		var l loaded
		rows, err := s.pool.Query(ctx, loadSQL, req.Key, req.Holder, s.newRequestID())
		if err == nil {
			l, err = readLoad(rows, req.Key)
		}
		switch {
		case pgErrorCode(err) == undefinedTable || err == nil && l.now.IsZero():
			busy = false // no tables, or no row: nobody holds it
			return nil
		case err != nil:
			return err
		}
		lock.ProveDeaths(s.prover, &l.state, l.now)
		d := lock.Decide(l.state, l.ack, req, l.now)
		g, busy = d.Grant, !d.Grant.Acquired && d.Err == nil // a refusal is the locked decision's to report
		return nil
	})
	return g, busy, err
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
func (s *Store) holding(ctx context.Context, key, holder string, req lock.Request) (decided, error) {
	ok, err := s.ready(ctx, false)
	if err != nil {
		return decided{}, err
	}
	if !ok {
		free := lock.State{Key: key, State: lock.StateFree}
		return decided{Decision: lock.Decision{State: free,
			Err: &lock.NotHeldError{Key: key, Holder: holder, Reason: lock.ReasonFree, Current: free}}}, nil
	}
	return s.decide(ctx, key, holder, req)
}

// Renew implements lock.Store.
func (s *Store) Renew(ctx context.Context, req lock.RenewRequest) (lock.Grant, error) {
	req.TTL = req.TTL.Truncate(time.Microsecond)
	out, err := s.holding(ctx, req.Key, req.Holder, req)
	if err != nil {
		return lock.Grant{}, err
	}
	return out.Grant, out.Err
}

// Release implements lock.Store.
func (s *Store) Release(ctx context.Context, req lock.ReleaseRequest) (lock.State, error) {
	out, err := s.holding(ctx, req.Key, req.Holder, req)
	if err != nil {
		return lock.State{}, err
	}
	if err := out.redone(lock.EventReleased); err != nil {
		return lock.State{}, err
	}
	return out.State, nil
}

// Break implements lock.Store.
func (s *Store) Break(ctx context.Context, key string, by lock.Breaker) (lock.State, error) {
	out, err := s.holding(ctx, key, by.Holder, lock.BreakRequest{Key: key, By: by})
	if err != nil {
		return lock.State{}, err
	}
	return out.State, out.redone(lock.EventBroken)
}

// redone is the decision's refusal, unless an earlier attempt of the same
// request committed and did what this one asked (outcome): it is done,
// and its answer is the key's state now.
func (out *decided) redone(outcome string) error {
	var refusal *lock.NotHeldError
	if errors.As(out.Err, &refusal) && out.prior == outcome {
		out.State = refusal.Current
		return nil
	}
	return out.Err
}

// Acknowledge implements lock.Store.
func (s *Store) Acknowledge(ctx context.Context, key, holder string, token int64) error {
	out, err := s.holding(ctx, key, holder, lock.AcknowledgeRequest{Key: key, Holder: holder, Token: token})
	if err != nil {
		return err
	}
	return out.Err
}

// LeaveQueue implements lock.QueueLeaver.
func (s *Store) LeaveQueue(ctx context.Context, req lock.LeaveQueueRequest) error {
	_, err := s.holding(ctx, req.Key, req.Holder, req)
	return err
}

// Snapshot implements lock.Store. It reads in one REPEATABLE READ
// transaction, so one snapshot of the database, and lock.View says what
// each key shows. A store opened with NoCreate on tables of an earlier
// xplock reads them as they are, each key as the upgrade would convert it.
func (s *Store) Snapshot(ctx context.Context, keys ...string) (lock.Snapshot, error) {
	version := int(s.version.Load())
	if version != schemaVersion {
		err := s.do(ctx, func(ctx context.Context) (err error) {
			version, err = s.schemaVersion(ctx, s.pool)
			return err
		})
		if err != nil {
			return lock.Snapshot{}, s.describeSchemaError(err)
		}
		if err := checkVersion(version); err != nil {
			return lock.Snapshot{}, err
		}
	}
	var snap lock.Snapshot
	err := s.do(ctx, func(ctx context.Context) (err error) {
		switch version {
		case 0: // no xplock tables (yet): no locks, at the server's time
			snap = lock.Snapshot{}
			return s.pool.QueryRow(ctx, "SELECT clock_timestamp()").Scan(&snap.Now)
		case schemaVersion:
			s.version.Store(schemaVersion)
			snap, err = s.snapshot(ctx, keys)
		default:
			snap, err = s.legacySnapshot(ctx, keys)
		}
		return err
	})
	if err != nil {
		return lock.Snapshot{}, err
	}
	return snap, nil
}

const (
	// snapshotClockSQL is the snapshot's first statement, which fixes the
	// transaction's snapshot: the clock and the newest event.
	snapshotClockSQL = `SELECT clock_timestamp(), coalesce(max(id), 0) FROM xplock_events`
	snapshotKeysSQL  = `SELECT l.key, ` + rowColumns + `, ` + tenureColumns + `
		FROM xplock_locks l LEFT JOIN xplock_tenures t ON t.key = l.key WHERE l.generation > 0`
	snapshotAcksSQL = `SELECT a.key, a.holder, a.token, a.generation FROM xplock_acks a`
	byKeyOrder      = ` ORDER BY l.key COLLATE "C", t.token`
	// snapshotQueueSQL reads the queues, for lookers to see who waits.
	snapshotQueueSQL = `SELECT q.key, q.seq, q.holder, q.mode, q.slots, q.since, q.lease_end FROM xplock_queue q`
	bySeq            = ` ORDER BY q.seq`
)

// snapshot reads the named keys (every key when none is named) and all
// their acknowledgements in one round trip.
func (s *Store) snapshot(ctx context.Context, keys []string) (lock.Snapshot, error) {
	keysSQL, acksSQL, queueSQL, args := snapshotKeysSQL+byKeyOrder, snapshotAcksSQL, snapshotQueueSQL+bySeq, []any{}
	if len(keys) > 0 {
		keysSQL = snapshotKeysSQL + ` AND l.key = ANY($1)` + byKeyOrder
		acksSQL, args = snapshotAcksSQL+` WHERE a.key = ANY($1)`, []any{keys}
		queueSQL = snapshotQueueSQL + ` WHERE q.key = ANY($1)` + bySeq
	}
	var snap lock.Snapshot
	var states []lock.KeyState
	acks := map[string]map[string]lock.Ack{}
	b := &pgx.Batch{}
	b.Queue("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
	b.Queue(snapshotClockSQL).QueryRow(func(row pgx.Row) error { return row.Scan(&snap.Now, &snap.Cursor) })
	b.Queue(keysSQL, args...).Query(func(rows pgx.Rows) (err error) {
		states, err = scanKeys(rows)
		return err
	})
	b.Queue(acksSQL, args...).Query(func(rows pgx.Rows) error {
		var key, holder string
		var a lock.Ack
		_, err := pgx.ForEachRow(rows, []any{&key, &holder, &a.Token, &a.Generation}, func() error {
			if acks[key] == nil {
				acks[key] = map[string]lock.Ack{}
			}
			acks[key][holder] = a
			return nil
		})
		return err
	})
	queues := map[string][]lock.QueueEntry{}
	b.Queue(queueSQL, args...).Query(func(rows pgx.Rows) error {
		var key, mode string
		var q lock.QueueEntry
		_, err := pgx.ForEachRow(rows, []any{&key, &q.Seq, &q.Holder, &mode, &q.Slots, &q.Since, &q.LeaseEnd}, func() error {
			q.Mode = lock.Mode(mode)
			queues[key] = append(queues[key], q)
			return nil
		})
		return err
	})
	b.Queue("COMMIT")
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		return lock.Snapshot{}, err
	}
	for _, k := range states {
		k.Queue = queues[k.Key]
		lock.ProveDeaths(s.prover, &k, snap.Now) // a dead holder shows as expired
		snap.Locks = append(snap.Locks, lock.View(k, acks[k.Key], snap.Now))
	}
	return snap, nil
}

// scanKeys reads keys with their tenures, one row per tenure, ordered by
// key.
func scanKeys(rows pgx.Rows) ([]lock.KeyState, error) {
	var states []lock.KeyState
	var key string
	var ks keyScanner
	_, err := pgx.ForEachRow(rows, append([]any{&key}, ks.dest()...), func() error {
		if n := len(states); n == 0 || states[n-1].Key != key {
			states = append(states, lock.KeyState{Key: key, Row: ks.row()})
		}
		t, ok, err := ks.tenure()
		if ok {
			k := &states[len(states)-1]
			k.Tenures = append(k.Tenures, t)
		}
		return err
	})
	return states, err
}

const eventColumns = `id, key, event, holder, generation, token, time, by_holder, by_user, by_host, by_pid`

// eventColumns are the event columns events reads: tables of an earlier
// version, which a looker reads as they are, kept no waits.
func (s *Store) eventColumns() string {
	if s.version.Load() != schemaVersion {
		return eventColumns + ", 0, NULL, NULL"
	}
	return eventColumns + ", waited_us, mode, detail"
}

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
			var byHolder, byUser, byHost, mode, detail *string
			var byPID *int64
			var waited int64
			if err := rows.Scan(&e.ID, &e.Key, &e.Type, &e.Holder, &e.Generation, &e.Token, &e.Time,
				&byHolder, &byUser, &byHost, &byPID, &waited, &mode, &detail); err != nil {
				return err
			}
			e.Waited = time.Duration(waited) * time.Microsecond
			if mode != nil {
				e.Mode = lock.Mode(*mode)
			}
			if detail != nil {
				e.Detail = *detail
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
	columns := s.eventColumns()
	return s.events(ctx, `SELECT `+columns+` FROM (
			SELECT `+columns+` FROM xplock_events WHERE key = $1 ORDER BY id DESC LIMIT $2::bigint) e
		ORDER BY id`, key, limitArg(limit))
}

// EventsAfter implements lock.Store.
func (s *Store) EventsAfter(ctx context.Context, cursor int64, keys []string, limit int) ([]lock.Event, error) {
	columns := s.eventColumns()
	if len(keys) == 0 {
		return s.events(ctx, `SELECT `+columns+` FROM xplock_events WHERE id > $1 ORDER BY id LIMIT $2::bigint`,
			cursor, limitArg(limit))
	}
	return s.events(ctx, `SELECT `+columns+` FROM xplock_events WHERE id > $1 AND key = ANY($3)
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
