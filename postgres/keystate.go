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
//     the key waits for this one to commit. Then the load (loadSQL,
//     loadQueueSQL): its statements start once the lock is held, so they
//     see every earlier decision on the key, and the clock they read
//     (clock_timestamp(), the server's) orders decisions on a key like time.
//  2. What lock.Decide changed: the events (first locking the single
//     xplock_schema row, see below), the pruning of the key's history, the
//     row (or the placeholder dropped, for a key still never acquired),
//     tenures, queue entries, the requester's acknowledgement, the request
//     itself (see requestOutcome), a notification for subscribers, and
//     COMMIT. A refusal commits too: the expiries it observed are recorded.
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
// and this request ($3) as an earlier attempt of it recorded it, if one
// committed. No row: the key has none.
const loadSQL = `WITH c AS MATERIALIZED (SELECT clock_timestamp() AS now)
	SELECT c.now, g.history_limit, l.events, a.token, a.generation, r.outcome, r.token, ` + rowColumns + `, ` + tenureColumns + `
	FROM c, xplock_config g, xplock_locks l
	LEFT JOIN xplock_acks a ON a.key = l.key AND a.holder = $2
	LEFT JOIN xplock_requests r ON r.key = l.key AND r.holder = $2 AND r.request_id = $3
	LEFT JOIN xplock_tenures t ON t.key = l.key
	WHERE l.key = $1
	ORDER BY t.token`

const loadQueueSQL = `SELECT seq, holder, mode, slots, since, lease_end, keepers
	FROM xplock_queue WHERE key = $1 ORDER BY seq`

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

// queueLoad queues the statements that load key, for holder's request id.
func queueLoad(b *pgx.Batch, key, holder, id string) {
	b.Queue(loadSQL, key, holder, id)
	b.Queue(loadQueueSQL, key)
}

// readLoad reads the results of the statements queueLoad queued.
func readLoad(results pgx.BatchResults, key string) (loaded, error) {
	l := loaded{state: lock.KeyState{Key: key}}
	if err := readKey(results, &l); err != nil {
		return l, err
	}
	return l, readQueue(results, &l.state)
}

// readKey reads loadSQL's rows into l.
func readKey(results pgx.BatchResults, l *loaded) error {
	rows, err := results.Query()
	if err != nil {
		return err
	}
	defer rows.Close()
	var ks keyScanner
	for first := true; rows.Next(); first = false {
		var ackToken, ackGeneration, priorToken *int64
		var prior *string
		dest := append([]any{&l.now, &l.limit, &l.events, &ackToken, &ackGeneration, &prior, &priorToken}, ks.dest()...)
		if err := rows.Scan(dest...); err != nil {
			return err
		}
		if first {
			l.state.Row = ks.row()
			if ackToken != nil {
				l.ack = &lock.Ack{Token: *ackToken, Generation: *ackGeneration}
			}
			if prior != nil {
				l.prior, l.priorToken = *prior, *priorToken
			}
		}
		t, ok, err := ks.tenure()
		if err != nil {
			return err
		}
		if ok {
			l.state.Tenures = append(l.state.Tenures, t)
		}
	}
	return rows.Err()
}

// readQueue reads loadQueueSQL's rows into k.
func readQueue(results pgx.BatchResults, k *lock.KeyState) error {
	rows, err := results.Query()
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var q lock.QueueEntry
		var mode string
		var slots int32
		var keepers []byte
		if err := rows.Scan(&q.Seq, &q.Holder, &mode, &slots, &q.Since, &q.LeaseEnd, &keepers); err != nil {
			return err
		}
		q.Mode, q.Slots = lock.Mode(mode), int(slots)
		if q.Keepers, err = decodeKeepers(keepers); err != nil {
			return err
		}
		k.Queue = append(k.Queue, q)
	}
	return rows.Err()
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
	serialSQL = `SELECT 1 FROM xplock_schema FOR UPDATE`
	eventSQL  = `INSERT INTO xplock_events (key, event, holder, generation, token, time, by_holder, by_user, by_host, by_pid)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`
	// pruneSQL deletes the key's oldest events, up to the one at offset $2.
	pruneSQL = `DELETE FROM xplock_events e WHERE e.key = $1 AND e.id <= (
		SELECT x.id FROM xplock_events x WHERE x.key = $1 ORDER BY x.id OFFSET $2 LIMIT 1)`
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
	notifySQL = `SELECT pg_notify('` + notifyChannel + `', $1)`
)

// queueSave queues the statements that save decision d on the key as l
// loaded it, for holder's request id, and the COMMIT.
func queueSave(b *pgx.Batch, l loaded, d lock.Decision, holder, id string) {
	key := l.state.Key
	if len(d.Events) > 0 {
		b.Queue(serialSQL)
	}
	// The key keeps its newest events, at most limit of them: cut is how
	// many of the stored ones go, counted by the row so that the common
	// case reads no history.
	n := int64(len(d.Events))
	if cut := min(max(l.events+n-l.limit, 0), l.events); cut > 0 {
		b.Queue(pruneSQL, key, cut-1)
	}
	for _, e := range d.Events[max(0, n-l.limit):] {
		var byHolder, byUser, byHost, byPID any
		if e.By != nil {
			byHolder, byUser, byHost, byPID = e.By.Holder, e.By.User, e.By.Host, int64(e.By.PID)
		}
		b.Queue(eventSQL, key, e.Type, e.Holder, e.Generation, e.Token, e.Time, byHolder, byUser, byHost, byPID)
	}
	switch r := d.Next.Row; {
	case r.Generation == 0:
		b.Queue(dropPlaceholderSQL, key)
	case d.Changes.Row || n > 0:
		b.Queue(updateRowSQL, key, r.Generation, r.Token, r.LastHolder, r.LastToken, r.OtherToken, r.ChangedAt,
			min(l.events+n, l.limit))
	}
	// Deletions first: a holder's new tenure may replace its expired one.
	for _, t := range d.Changes.Removed {
		b.Queue(deleteTenureSQL, key, t.Token)
	}
	for _, t := range d.Changes.Updated {
		b.Queue(updateTenureSQL, tenureArgs(key, t)...)
	}
	for _, t := range d.Changes.Added {
		b.Queue(insertTenureSQL, tenureArgs(key, t)...)
	}
	for _, q := range d.Changes.QueueRemoved {
		b.Queue(deleteQueueSQL, key, q.Seq)
	}
	for _, q := range d.Changes.QueueUpdated {
		b.Queue(updateQueueSQL, queueArgs(key, q)...)
	}
	for _, q := range d.Changes.QueueAdded {
		b.Queue(insertQueueSQL, queueArgs(key, q)...)
	}
	if a := d.Changes.Ack; a != nil {
		b.Queue(ackSQL, key, holder, a.Token, a.Generation)
	}
	if outcome, token := requestOutcome(d); outcome != "" {
		b.Queue(requestSQL, key, holder, id, token, outcome)
	}
	if n > 0 {
		b.Queue(notifySQL, key)
	}
	b.Queue("COMMIT")
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
	queueLoad(b, key, holder, id)
	results := conn.SendBatch(ctx, b)
	l, err := readBegun(results, key)
	if cerr := results.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return l, lock.Decision{}, err
	}
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
	return readLoad(results, key)
}
