package postgres

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/xplock/xplock/lock"
)

// decisionTimeout bounds a decision once it is sent. The caller's context
// no longer cancels it then: an acquisition the server committed must not be
// reported as failed because a deadline passed while the answer was on its
// way.
const decisionTimeout = 30 * time.Second

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

// decide runs one decision on key, retrying what the server rolled back
// (serialization failures, deadlocks) and what never reached it.
func (s *Store) decide(ctx context.Context, key, query string, args ...any) (outcome, error) {
	args = append([]any{key, int64(s.historyLimit)}, args...)
	var out outcome
	err := s.retry(ctx, func() (err error) {
		out, err = s.decideOnce(ctx, key, query, args)
		return err
	})
	return out, err
}

// retry runs fn until it succeeds or fails with an error that retrying
// cannot help, and describes a connection problem.
func (s *Store) retry(ctx context.Context, fn func() error) error {
	pause := time.Millisecond
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil || ctx.Err() != nil {
			return err
		}
		if !retryable(err) || attempt == 20 {
			return s.describe(err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pause + rand.N(pause)):
		}
		pause = min(2*pause, 100*time.Millisecond)
	}
}

func (s *Store) decideOnce(ctx context.Context, key, query string, args []any) (outcome, error) {
	out := outcome{key: key}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return out, err
	}
	defer conn.Release()
	sent, cancel := context.WithTimeout(context.WithoutCancel(ctx), decisionTimeout)
	defer cancel()
	batch := &pgx.Batch{}
	batch.Queue(lockRowSQL, key)
	batch.Queue(query, args...)
	results := conn.SendBatch(sent, batch)
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

// Acquire implements lock.Store.
func (s *Store) Acquire(ctx context.Context, req lock.AcquireRequest) (lock.Grant, error) {
	out, err := s.decide(ctx, req.Key, acquireSQL(), req.Holder, micros(req.TTL), req.KeepTenureTTL, req.Checked)
	if err != nil {
		return lock.Grant{}, err
	}
	if out.busy {
		return lock.Grant{Key: req.Key, Holder: req.Holder, Now: out.now, Current: out.state()}, nil
	}
	g := out.grant()
	if out.acked != nil {
		g.Acknowledged = *out.acked
	}
	g.Poisoned = g.Acknowledged != 0 && g.Acknowledged != g.Generation
	return g, nil
}

// Renew implements lock.Store.
func (s *Store) Renew(ctx context.Context, req lock.RenewRequest) (lock.Grant, error) {
	out, err := s.decide(ctx, req.Key, renewSQL(), req.Holder, req.Token, micros(req.TTL))
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
	out, err := s.decide(ctx, req.Key, releaseSQL(), req.Holder, req.Token, req.Acknowledge)
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
	out, err := s.decide(ctx, key, breakSQL(), by.Holder, by.User, by.Host, int64(by.PID))
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
	out, err := s.decide(ctx, key, acknowledgeSQL(), holder, token)
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
	err := s.retry(ctx, func() error {
		snap = lock.Snapshot{}
		rows, err := s.pool.Query(ctx, query, args...)
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
	err := s.retry(ctx, func() error {
		rows, err := s.pool.Query(ctx, query, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		events = events[:0]
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

// describe turns a connection problem into an error that says what to
// check; errors from the server and the context are returned as they are.
func (s *Store) describe(err error) error {
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	if errors.As(err, &connectErr) || errors.As(err, &netErr) || errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) || pgconn.Timeout(err) {
		return describeConnError(s.connConfig, err)
	}
	return err
}
