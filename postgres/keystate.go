package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/xplock/xplock/lock"
)

// Every decision (Acquire, Renew, Release, Break, Acknowledge) is one
// transaction in two round trips, each a pipelined batch; lock.Decide makes
// the decision in between, and no rule is applied in SQL.
//
//  1. BEGIN in READ COMMITTED (whatever the server's default isolation),
//     then lockRowSQL, which creates the key's row if it is missing (a
//     placeholder with generation 0) and locks it: every later decision on
//     the key waits for this one to commit. Then loadSQL: it starts once
//     the lock is held, so it sees every earlier decision on the key, and
//     the clock it reads (clock_timestamp(), the server's) orders decisions
//     on a key like time.
//  2. What lock.Decide changed: changedSQL when there are events (it
//     locks the single xplock_schema row, see below, and notifies
//     subscribers), the events, the pruning of the key's history, the row
//     (or the placeholder dropped, for a key still never acquired),
//     tenures, queue entries, the requester's acknowledgement, the request
//     itself (see requestOutcome), and COMMIT. A refusal commits too: the
//     expiries it observed are recorded.
//
// Event IDs come from an identity column and are committed in ID order: a
// decision that records events first locks the xplock_schema row, which it
// holds until it commits, and only then draws IDs. A watcher reading past
// its cursor can therefore never see an ID while a smaller one is still to
// be committed. Decisions that record nothing (renewals, re-entrant and
// refused acquisitions) do not take that lock and do not notify.

const beginSQL = "BEGIN ISOLATION LEVEL READ COMMITTED"

// lockRowSQL takes the key's row lock, creating a placeholder row for a key
// never seen. ON CONFLICT DO UPDATE locks the existing row even though its
// WHERE clause lets nothing be updated.
const lockRowSQL = `INSERT INTO xplock_locks AS l
	(key, generation, token, last_holder, last_token, other_token, changed_at, events)
	VALUES ($1, 0, 0, '', 0, 0, clock_timestamp(), 0)
	ON CONFLICT (key) DO UPDATE SET events = l.events WHERE false`

// rowColumns and tenureColumns are a key's row (l) and one of its tenures
// (t), as keyScanner reads them.
const (
	rowColumns    = `l.generation, l.token, l.last_holder, l.last_token, l.other_token, l.changed_at`
	tenureColumns = `t.token, t.holder, t.mode, t.slots, t.checked, t.acquired_at, t.expires_at, t.ttl_us, t.keepers`
)

// loadSQL reads the key's row ($1) with one result row per tenure, the
// server's clock, the history limit, the requester's ($2) acknowledgement,
// this request ($3) as an earlier attempt of it recorded it, if one
// committed, and the key's queue (JSON, see queueJSON). No row: the key has
// none.
const loadSQL = `WITH c AS MATERIALIZED (SELECT clock_timestamp() AS now)
	SELECT c.now, g.history_limit, l.events, a.token, a.generation, r.outcome, r.token,
		(SELECT json_agg(q ORDER BY q.seq) FROM xplock_queue q WHERE q.key = l.key),
		` + rowColumns + `, ` + tenureColumns + `
	FROM c, xplock_config g, xplock_locks l
	LEFT JOIN xplock_acks a ON a.key = l.key AND a.holder = $2
	LEFT JOIN xplock_requests r ON r.key = l.key AND r.holder = $2 AND r.request_id = $3
	LEFT JOIN xplock_tenures t ON t.key = l.key
	WHERE l.key = $1
	ORDER BY t.token`

// queueJSON is a row of xplock_queue as JSON.
type queueJSON struct {
	Holder   string        `json:"holder"`
	Mode     lock.Mode     `json:"mode"`
	Slots    int           `json:"slots"`
	Seq      int64         `json:"seq"`
	Since    time.Time     `json:"since"`
	LeaseEnd time.Time     `json:"lease_end"`
	Keepers  []lock.Keeper `json:"keepers"`
}

// loaded is a key's state as a decision finds it.
type loaded struct {
	state lock.KeyState
	ack   *lock.Ack
	now   time.Time
	// events is how many history rows the key has, limit how many it keeps.
	events, limit int64
	// prior is what an earlier attempt of this request did ("" if none
	// committed) and in which tenure.
	prior      string
	priorToken int64
}

// readLoad reads the rows of loadSQL.
func readLoad(rows pgx.Rows, key string) (loaded, error) {
	l := loaded{state: lock.KeyState{Key: key}}
	defer rows.Close()
	var ks keyScanner
	for first := true; rows.Next(); first = false {
		var ackToken, ackGeneration, priorToken *int64
		var prior *string
		var queue []queueJSON
		dest := append([]any{&l.now, &l.limit, &l.events, &ackToken, &ackGeneration, &prior, &priorToken, &queue},
			ks.dest()...)
		if err := rows.Scan(dest...); err != nil {
			return l, err
		}
		if first {
			l.state.Row = ks.row()
			if ackToken != nil {
				l.ack = &lock.Ack{Token: *ackToken, Generation: *ackGeneration}
			}
			if prior != nil {
				l.prior, l.priorToken = *prior, *priorToken
			}
			for _, q := range queue {
				l.state.Queue = append(l.state.Queue, lock.QueueEntry{Holder: q.Holder, Mode: q.Mode, Slots: q.Slots,
					Seq: q.Seq, Since: q.Since, LeaseEnd: q.LeaseEnd, Keepers: q.Keepers})
			}
		}
		t, ok, err := ks.tenure()
		if err != nil {
			return l, err
		}
		if ok {
			l.state.Tenures = append(l.state.Tenures, t)
		}
	}
	return l, rows.Err()
}

// keyScanner scans rowColumns and tenureColumns, the tenure's NULL when
// the key has none.
type keyScanner struct {
	generation, token, lastToken, otherToken int64
	lastHolder                               string
	changedAt                                time.Time

	tToken, tTTL            *int64
	tHolder, tMode          *string
	tSlots                  *int32
	tChecked                *bool
	tAcquiredAt, tExpiresAt *time.Time
	tKeepers                []byte
}

func (k *keyScanner) dest() []any {
	return []any{&k.generation, &k.token, &k.lastHolder, &k.lastToken, &k.otherToken, &k.changedAt,
		&k.tToken, &k.tHolder, &k.tMode, &k.tSlots, &k.tChecked, &k.tAcquiredAt, &k.tExpiresAt, &k.tTTL, &k.tKeepers}
}

// row is the scanned row; a placeholder (generation 0) is a key never
// acquired, the zero KeyRow.
func (k *keyScanner) row() lock.KeyRow {
	if k.generation == 0 {
		return lock.KeyRow{}
	}
	return lock.KeyRow{Generation: k.generation, Token: k.token, LastHolder: k.lastHolder,
		LastToken: k.lastToken, OtherToken: k.otherToken, ChangedAt: k.changedAt}
}

// tenure is the scanned tenure, if there is one.
func (k *keyScanner) tenure() (lock.Tenure, bool, error) {
	if k.tToken == nil {
		return lock.Tenure{}, false, nil
	}
	keepers, err := decodeKeepers(k.tKeepers)
	return lock.Tenure{Holder: *k.tHolder, Mode: lock.Mode(*k.tMode), Token: *k.tToken, Checked: *k.tChecked,
		AcquiredAt: *k.tAcquiredAt, ExpiresAt: *k.tExpiresAt, TTL: time.Duration(*k.tTTL) * time.Microsecond,
		Slots: int(*k.tSlots), Keepers: keepers}, true, err
}

func decodeKeepers(b []byte) ([]lock.Keeper, error) {
	if b == nil {
		return nil, nil
	}
	var keepers []lock.Keeper
	if err := json.Unmarshal(b, &keepers); err != nil {
		return nil, errors.New("unreadable keepers in the xplock tables: " + err.Error())
	}
	return keepers, nil
}

// encodeKeepers is the keepers column: NULL for none.
func encodeKeepers(keepers []lock.Keeper) any {
	if len(keepers) == 0 {
		return nil
	}
	b, err := json.Marshal(keepers)
	if err != nil {
		panic(err) // plain numbers and strings always marshal
	}
	return string(b)
}

// Statements that save a decision.
const (
	// changedSQL begins the save of a change of state: it takes the
	// xplock_schema row lock before event IDs are drawn (see above), and
	// notifies subscribers, which PostgreSQL does at COMMIT.
	changedSQL = `SELECT pg_notify('` + notifyChannel + `', $1) FROM xplock_schema FOR UPDATE`
	eventSQL   = `INSERT INTO xplock_events (key, event, holder, generation, token, time, by_holder, by_user, by_host, by_pid,
		waited_us, mode, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, NULLIF($12, ''), NULLIF($13, ''))`
	// pruneSQL deletes the key's $2 oldest events. Its LIMIT makes the
	// planner read them in index order, stopping after them, rather than
	// every one of the key's events.
	pruneSQL = `DELETE FROM xplock_events WHERE id IN (
		SELECT x.id FROM xplock_events x WHERE x.key = $1 ORDER BY x.id LIMIT $2)`
	updateRowSQL = `UPDATE xplock_locks SET generation = $2, token = $3, last_holder = $4, last_token = $5,
		other_token = $6, changed_at = $7, events = $8 WHERE key = $1`
	dropPlaceholderSQL = `DELETE FROM xplock_locks WHERE key = $1 AND generation = 0`
	insertTenureSQL    = `INSERT INTO xplock_tenures
		(key, token, holder, mode, slots, checked, acquired_at, expires_at, ttl_us, keepers)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`
	updateTenureSQL = `UPDATE xplock_tenures SET holder = $3, mode = $4, slots = $5, checked = $6,
		acquired_at = $7, expires_at = $8, ttl_us = $9, keepers = $10 WHERE key = $1 AND token = $2`
	deleteTenureSQL = `DELETE FROM xplock_tenures WHERE key = $1 AND token = $2`
	insertQueueSQL  = `INSERT INTO xplock_queue (key, seq, holder, mode, slots, since, lease_end, keepers)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`
	updateQueueSQL = `UPDATE xplock_queue SET holder = $3, mode = $4, slots = $5, since = $6, lease_end = $7,
		keepers = $8 WHERE key = $1 AND seq = $2`
	deleteQueueSQL = `DELETE FROM xplock_queue WHERE key = $1 AND seq = $2`
	ackSQL         = `INSERT INTO xplock_acks (key, holder, token, generation) VALUES ($1, $2, $3, $4)
		ON CONFLICT (key, holder) DO UPDATE SET token = excluded.token, generation = excluded.generation`
	requestSQL = `INSERT INTO xplock_requests (key, holder, request_id, token, outcome) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (key, holder) DO UPDATE
		SET request_id = excluded.request_id, token = excluded.token, outcome = excluded.outcome`
)

// queueSave queues the statements that save decision d on the key as l
// loaded it, for holder's request id, and the COMMIT.
func queueSave(b *pgx.Batch, l loaded, d lock.Decision, holder, id string) {
	key := l.state.Key
	// The key keeps its newest events, at most limit of them: cut is how
	// many of the stored ones go, counted by the row so that the common
	// case reads no history.
	n := int64(len(d.Events))
	if n > 0 {
		b.Queue(changedSQL, key)
	}
	if cut := min(max(l.events+n-l.limit, 0), l.events); cut > 0 {
		b.Queue(pruneSQL, key, cut)
	}
	for _, e := range d.Events[max(0, n-l.limit):] {
		byHolder, byUser, byHost, byPID := eventBy(e)
		b.Queue(eventSQL, key, e.Type, e.Holder, e.Generation, e.Token, e.Time, byHolder, byUser, byHost, byPID,
			e.Waited.Microseconds(), string(e.Mode), e.Detail)
	}
	switch r := d.Next.Row; {
	case r.Generation == 0:
		b.Queue(dropPlaceholderSQL, key)
	case d.Changes.Row || n > 0:
		b.Queue(updateRowSQL, key, r.Generation, r.Token, r.LastHolder, r.LastToken, r.OtherToken, r.ChangedAt,
			min(l.events+n, l.limit))
	}
	c := d.Changes
	queueDiff(b, [3]string{deleteTenureSQL, updateTenureSQL, insertTenureSQL}, c.Removed, c.Updated, c.Added,
		func(t lock.Tenure) []any { return []any{key, t.Token} },
		func(t lock.Tenure) []any { return tenureArgs(key, t) })
	queueDiff(b, [3]string{deleteQueueSQL, updateQueueSQL, insertQueueSQL}, c.QueueRemoved, c.QueueUpdated, c.QueueAdded,
		func(q lock.QueueEntry) []any { return []any{key, q.Seq} },
		func(q lock.QueueEntry) []any { return queueArgs(key, q) })
	if a := d.Changes.Ack; a != nil {
		b.Queue(ackSQL, key, holder, a.Token, a.Generation)
	}
	if outcome, token := requestOutcome(d); outcome != "" {
		b.Queue(requestSQL, key, holder, id, token, outcome)
	}
	b.Queue("COMMIT")
}

// eventBy is what an event stores in the columns by_holder, by_user,
// by_host and by_pid: who broke the lock, all NULL for other events.
func eventBy(e lock.Event) (byHolder, byUser, byHost, byPID any) {
	if e.By == nil {
		return nil, nil, nil, nil
	}
	return e.By.Holder, e.By.User, e.By.Host, int64(e.By.PID)
}

// queueDiff queues the statements (sql: delete, update, insert) that save
// the difference of one table: deletions first, since a holder's new tenure
// may replace its expired one. id gives a deletion's parameters, row an
// update's or insertion's.
func queueDiff[T any](b *pgx.Batch, sql [3]string, removed, updated, added []T, id, row func(T) []any) {
	for _, r := range removed {
		b.Queue(sql[0], id(r)...)
	}
	for _, r := range updated {
		b.Queue(sql[1], row(r)...)
	}
	for _, r := range added {
		b.Queue(sql[2], row(r)...)
	}
}

func tenureArgs(key string, t lock.Tenure) []any {
	return []any{key, t.Token, t.Holder, string(t.Mode), int32(t.Slots), t.Checked, t.AcquiredAt, t.ExpiresAt,
		t.TTL.Microseconds(), encodeKeepers(t.Keepers)}
}

func queueArgs(key string, q lock.QueueEntry) []any {
	return []any{key, q.Seq, q.Holder, string(q.Mode), int32(q.Slots), q.Since, q.LeaseEnd, encodeKeepers(q.Keepers)}
}

// requestOutcome is what a request did that its retry must not do again:
// it began a tenure ("acquired"), or ended one ("released", "broken"), the
// tenure given by its token; "" when it did neither. It is stored, per key
// and holder, with the request's ID: a request sent again after its answer
// was lost (a dropped connection) finds it and is answered as done.
func requestOutcome(d lock.Decision) (outcome string, token int64) {
	for _, e := range d.Events {
		if e.Type != lock.EventExpired {
			return e.Type, e.Token
		}
	}
	return "", 0
}

// decideOnce makes one attempt at deciding req about key, for holder (the
// requester, or who breaks the lock) and request id.
func (s *Store) decideOnce(ctx context.Context, key, holder, id string, req lock.Request) (loaded, lock.Decision, error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return loaded{}, lock.Decision{}, err
	}
	// A connection left inside the transaction by an error is closed, not
	// reused, by Release: the server rolls the transaction back.
	defer conn.Release()
	b := &pgx.Batch{}
	b.Queue(beginSQL)
	b.Queue(lockRowSQL, key)
	b.Queue(loadSQL, key, holder, id)
	results := conn.SendBatch(ctx, b)
	l, err := readBegun(results, key)
	if cerr := results.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return l, lock.Decision{}, err
	}
	lock.ProveDeaths(s.prover, &l.state, l.now)
	d := lock.Decide(l.state, l.ack, req, l.now)
	b = &pgx.Batch{}
	queueSave(b, l, d, holder, id)
	return l, d, conn.SendBatch(ctx, b).Close()
}

// readBegun reads the first batch of a decision: BEGIN, the row lock, the
// load.
func readBegun(results pgx.BatchResults, key string) (loaded, error) {
	for range 2 {
		if _, err := results.Exec(); err != nil {
			return loaded{}, err
		}
	}
	rows, err := results.Query()
	if err != nil {
		return loaded{}, err
	}
	return readLoad(rows, key)
}
