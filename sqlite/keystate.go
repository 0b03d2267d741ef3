package sqlite

import (
	"cmp"
	"database/sql"
	"encoding/json"
	"slices"
	"sync/atomic"
	"time"

	"github.com/xplock/xplock/lock"
)

// The SQLite store keeps no rule of its own: this file only moves a key's
// state (lock.KeyState) between the tables and Go, and lock.Decide judges.

// loaded is one key as read for a decision, with what the store keeps
// beside the lock state.
type loaded struct {
	state lock.KeyState
	// ack is the requester's acknowledgement, nil for none.
	ack *lock.Ack
	// found: the key has a row.
	found bool
	// events is how many history rows the key keeps, historyLimit the
	// store's setting.
	events, historyLimit int64
}

// loadSQL reads everything a decision needs in one statement, one line per
// part: the store's history limit (part 0), the key's row (1), the
// requester's acknowledgement (2), each tenure (3) and each queue entry (4).
// Tenures and queue entries fill the columns as entry scans them; the other
// parts put their values where load reads them. (A UNION ALL of plain
// lookups: SQLite runs the same as LEFT JOINs many times slower.)
const loadSQL = `SELECT 0, history_limit, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM xplock_store
UNION ALL SELECT 1, generation, last_holder, NULL, token, last_token, other_token, changed_at, events, NULL
	FROM xplock_keys WHERE key = ?1
UNION ALL SELECT 2, token, NULL, NULL, generation, NULL, NULL, NULL, NULL, NULL
	FROM xplock_acks WHERE key = ?1 AND holder = ?2
UNION ALL SELECT 3, token, holder, mode, slots, checked, acquired_at, expires_at, ttl, keepers
	FROM xplock_tenures WHERE key = ?1
UNION ALL SELECT 4, seq, holder, mode, slots, 0, since, lease_end, 0, keepers
	FROM xplock_queue WHERE key = ?1`

// load reads key's state and holder's acknowledgement of it ("" for
// none).
func (tx *txn) load(key, holder string) (*loaded, error) {
	rows, err := tx.conn.QueryContext(tx.ctx, loadSQL, key, holder)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	k := &loaded{state: lock.KeyState{Key: key}}
	// Every row sets every column (NULL included): one set of
	// destinations serves them all.
	var part int
	var e entry
	dest := append([]any{&part}, e.dest()...)
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		switch part {
		case 0:
			k.historyLimit = e.id.Int64
		case 1:
			k.state.Row = lock.KeyRow{Generation: e.id.Int64, LastHolder: e.holder.String, Token: e.slots.Int64,
				LastToken: e.checked.Int64, OtherToken: e.began.Int64, ChangedAt: fromMicros(e.ends.Int64)}
			k.events, k.found = e.ttl.Int64, true
		case 2:
			k.ack = &lock.Ack{Token: e.id.Int64, Generation: e.slots.Int64}
		case 3:
			t, err := e.tenure()
			if err != nil {
				return nil, err
			}
			k.state.Tenures = append(k.state.Tenures, t)
		case 4:
			q, err := e.queueEntry()
			if err != nil {
				return nil, err
			}
			k.state.Queue = append(k.state.Queue, q)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	// In token and arrival order, which a UNION ALL does not promise.
	slices.SortFunc(k.state.Tenures, func(a, b lock.Tenure) int { return cmp.Compare(a.Token, b.Token) })
	slices.SortFunc(k.state.Queue, func(a, b lock.QueueEntry) int { return cmp.Compare(a.Seq, b.Seq) })
	return k, nil
}

// entry scans a tenure or a queue entry, which have the same shape.
type entry struct {
	id, slots, checked, began, ends, ttl sql.NullInt64
	holder, mode, keepers                sql.NullString
}

func (e *entry) dest() []any {
	return []any{&e.id, &e.holder, &e.mode, &e.slots, &e.checked, &e.began, &e.ends, &e.ttl, &e.keepers}
}

func (e *entry) tenure() (lock.Tenure, error) {
	keepers, err := readKeepers(e.keepers)
	return lock.Tenure{Holder: e.holder.String, Mode: lock.Mode(e.mode.String), Token: e.id.Int64, Checked: e.checked.Int64 != 0,
		AcquiredAt: fromMicros(e.began.Int64), ExpiresAt: fromMicros(e.ends.Int64),
		TTL: time.Duration(e.ttl.Int64) * time.Microsecond, Slots: int(e.slots.Int64), Keepers: keepers}, err
}

func (e *entry) queueEntry() (lock.QueueEntry, error) {
	keepers, err := readKeepers(e.keepers)
	return lock.QueueEntry{Holder: e.holder.String, Mode: lock.Mode(e.mode.String), Slots: int(e.slots.Int64), Seq: e.id.Int64,
		Since: fromMicros(e.began.Int64), LeaseEnd: fromMicros(e.ends.Int64), Keepers: keepers}, err
}

func readKeepers(s sql.NullString) ([]lock.Keeper, error) {
	if !s.Valid {
		return nil, nil
	}
	if c := lastKeepers.Load(); c != nil && c.text == s.String {
		return slices.Clone(c.keepers), nil
	}
	var keepers []lock.Keeper
	if err := json.Unmarshal([]byte(s.String), &keepers); err != nil {
		return nil, err
	}
	lastKeepers.Store(&codedKeepers{keepers: slices.Clone(keepers), text: s.String})
	return keepers, nil
}

// keepersJSON is what the keepers column holds: NULL for none.
func keepersJSON(keepers []lock.Keeper) (any, error) {
	if len(keepers) == 0 {
		return nil, nil
	}
	if c := lastKeepers.Load(); c != nil && slices.Equal(c.keepers, keepers) {
		return c.text, nil
	}
	b, err := json.Marshal(keepers)
	if err != nil {
		return nil, err
	}
	lastKeepers.Store(&codedKeepers{keepers: slices.Clone(keepers), text: string(b)})
	return string(b), nil
}

// codedKeepers is a list of keepers and its JSON.
type codedKeepers struct {
	keepers []lock.Keeper
	text    string
}

// lastKeepers is the list of keepers last written or read: a process's
// tenures are mostly kept by the process itself, the same list every
// time, and JSON costs more than the statement that stores it.
var lastKeepers atomic.Pointer[codedKeepers]

// save writes what decision d changed in the key k was loaded as, and
// records its events. holder is the requester, whose acknowledgement
// d.Changes.Ack is.
func (tx *txn) save(k *loaded, d lock.Decision, holder string) error {
	key := k.state.Key
	ch := d.Changes
	for _, t := range ch.Removed {
		if err := tx.exec("DELETE FROM xplock_tenures WHERE key = ? AND token = ?", key, t.Token); err != nil {
			return err
		}
	}
	for _, t := range ch.Updated {
		keepers, err := keepersJSON(t.Keepers)
		if err != nil {
			return err
		}
		if err := tx.exec(`UPDATE xplock_tenures SET holder = ?, mode = ?, slots = ?, checked = ?, acquired_at = ?,
			expires_at = ?, ttl = ?, keepers = ? WHERE key = ? AND token = ?`,
			t.Holder, string(t.Mode), t.Slots, t.Checked, toMicros(t.AcquiredAt), toMicros(t.ExpiresAt),
			t.TTL.Microseconds(), keepers, key, t.Token); err != nil {
			return err
		}
	}
	for _, t := range ch.Added {
		keepers, err := keepersJSON(t.Keepers)
		if err != nil {
			return err
		}
		if err := tx.exec(`INSERT INTO xplock_tenures (key, token, holder, mode, slots, checked, acquired_at, expires_at, ttl, keepers)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			key, t.Token, t.Holder, string(t.Mode), t.Slots, t.Checked, toMicros(t.AcquiredAt), toMicros(t.ExpiresAt),
			t.TTL.Microseconds(), keepers); err != nil {
			return err
		}
	}
	if err := tx.saveQueue(key, ch); err != nil {
		return err
	}
	if a := ch.Ack; a != nil && (k.ack == nil || *a != *k.ack) {
		if err := tx.exec(`INSERT INTO xplock_acks (key, holder, token, generation) VALUES (?, ?, ?, ?)
			ON CONFLICT (key, holder) DO UPDATE SET token = excluded.token, generation = excluded.generation`,
			key, holder, a.Token, a.Generation); err != nil {
			return err
		}
	}
	if !ch.Row && len(d.Events) == 0 {
		return nil
	}
	events, err := tx.addEvents(k, d.Events)
	if err != nil {
		return err
	}
	r := d.Next.Row
	if k.found {
		return tx.exec(`UPDATE xplock_keys SET last_holder = ?, generation = ?, token = ?, last_token = ?, other_token = ?,
			changed_at = ?, events = ? WHERE key = ?`,
			r.LastHolder, r.Generation, r.Token, r.LastToken, r.OtherToken, toMicros(r.ChangedAt), events, key)
	}
	return tx.exec(`INSERT INTO xplock_keys (key, last_holder, generation, token, last_token, other_token, changed_at, events)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		key, r.LastHolder, r.Generation, r.Token, r.LastToken, r.OtherToken, toMicros(r.ChangedAt), events)
}

// saveQueue writes the queue's part of the changes.
func (tx *txn) saveQueue(key string, ch lock.Changes) error {
	for _, q := range ch.QueueRemoved {
		if err := tx.exec("DELETE FROM xplock_queue WHERE key = ? AND seq = ?", key, q.Seq); err != nil {
			return err
		}
	}
	for _, q := range ch.QueueUpdated {
		keepers, err := keepersJSON(q.Keepers)
		if err != nil {
			return err
		}
		if err := tx.exec(`UPDATE xplock_queue SET holder = ?, mode = ?, slots = ?, since = ?, lease_end = ?, keepers = ?
			WHERE key = ? AND seq = ?`,
			q.Holder, string(q.Mode), q.Slots, toMicros(q.Since), toMicros(q.LeaseEnd), keepers, key, q.Seq); err != nil {
			return err
		}
	}
	for _, q := range ch.QueueAdded {
		keepers, err := keepersJSON(q.Keepers)
		if err != nil {
			return err
		}
		if err := tx.exec(`INSERT INTO xplock_queue (key, seq, holder, mode, slots, since, lease_end, keepers)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
			key, q.Seq, q.Holder, string(q.Mode), q.Slots, toMicros(q.Since), toMicros(q.LeaseEnd), keepers); err != nil {
			return err
		}
	}
	return nil
}

func (tx *txn) exec(query string, args ...any) error {
	_, err := tx.conn.ExecContext(tx.ctx, query, args...)
	return err
}

// addEvents appends events to k's history and, in the same transaction,
// prunes it back to the store's limit once it is a tenth over: one batched
// delete every limit/10 events costs far less than one delete per event.
// History shows only the newest limit events. It returns how many events
// the key keeps now.
func (tx *txn) addEvents(k *loaded, events []lock.Event) (int64, error) {
	kept := k.events
	for _, e := range events {
		byHolder, byUser, byHost, byPID := eventBy(e)
		if err := tx.exec(`INSERT INTO xplock_events
			(key, event, holder, generation, token, time, by_holder, by_user, by_host, by_pid, waited, mode, detail)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			e.Key, e.Type, e.Holder, e.Generation, e.Token, toMicros(e.Time), byHolder, byUser, byHost, byPID,
			e.Waited.Microseconds(), nullIfEmpty(string(e.Mode)), nullIfEmpty(e.Detail)); err != nil {
			return 0, err
		}
		kept++
	}
	limit := k.historyLimit
	if excess := kept - limit; excess > max(limit/10, 1) {
		if err := tx.exec(`DELETE FROM xplock_events WHERE id IN
			(SELECT id FROM xplock_events WHERE key = ? ORDER BY id LIMIT ?)`, k.state.Key, excess); err != nil {
			return 0, err
		}
		kept -= excess
	}
	return kept, nil
}

// eventBy is what an event stores in the columns by_holder, by_user,
// by_host and by_pid: who broke the lock, all NULL for other events.
func eventBy(e lock.Event) (byHolder, byUser, byHost, byPID any) {
	if e.By == nil {
		return nil, nil, nil, nil
	}
	return e.By.Holder, e.By.User, e.By.Host, e.By.PID
}

// nullIfEmpty stores an empty string as NULL: not recorded.
func nullIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// heldAck is one holder's acknowledgement of a key.
type heldAck struct {
	key, holder string
	ack         lock.Ack
}

// loadAll reads the state of the named keys (every key when none is named)
// and every acknowledgement of them, both in key order, for lookers. Tables
// of an earlier schema, which a looker reads without migrating them, are
// read as the migration would turn them. (Separate scans merged here:
// SQLite runs the LEFT JOIN of keys and tenures twice as slowly.)
func (tx *txn) loadAll(l *layout, keys []string) ([]lock.KeyState, []heldAck, error) {
	if l.version < schemaVersion {
		return tx.loadLegacy(l, keys)
	}
	filter, args := keyFilter("key", keys)
	rows, err := tx.conn.QueryContext(tx.ctx, `SELECT key, generation, token, last_holder, last_token, other_token, changed_at
		FROM xplock_keys`+filter+` ORDER BY key`, args...)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	var states []lock.KeyState
	for rows.Next() {
		var k lock.KeyState
		var changedAt int64
		if err := rows.Scan(&k.Key, &k.Row.Generation, &k.Row.Token, &k.Row.LastHolder, &k.Row.LastToken, &k.Row.OtherToken,
			&changedAt); err != nil {
			return nil, nil, err
		}
		k.Row.ChangedAt = fromMicros(changedAt)
		states = append(states, k)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}
	tenures, err := tx.conn.QueryContext(tx.ctx, `SELECT key, token, holder, mode, slots, checked, acquired_at, expires_at, ttl, keepers
		FROM xplock_tenures`+filter+` ORDER BY key, token`, args...)
	if err != nil {
		return nil, nil, err
	}
	defer tenures.Close()
	i := 0
	for tenures.Next() {
		var key string
		var e entry
		if err := tenures.Scan(append([]any{&key}, e.dest()...)...); err != nil {
			return nil, nil, err
		}
		t, err := e.tenure()
		if err != nil {
			return nil, nil, err
		}
		for i < len(states) && states[i].Key < key {
			i++
		}
		if i < len(states) && states[i].Key == key {
			states[i].Tenures = append(states[i].Tenures, t)
		}
	}
	if err := tenures.Err(); err != nil {
		return nil, nil, err
	}
	if err := tx.loadQueues(states, filter, args); err != nil {
		return nil, nil, err
	}
	acks, err := tx.loadAcks(keys, nil)
	return states, acks, err
}

// loadQueues adds to states (in key order) their queues, in arrival order,
// so that lookers see who waits.
func (tx *txn) loadQueues(states []lock.KeyState, filter string, args []any) error {
	rows, err := tx.conn.QueryContext(tx.ctx, `SELECT key, seq, holder, mode, slots, 0, since, lease_end, 0, keepers
		FROM xplock_queue`+filter+` ORDER BY key, seq`, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	i := 0
	for rows.Next() {
		var key string
		var e entry
		if err := rows.Scan(append([]any{&key}, e.dest()...)...); err != nil {
			return err
		}
		q, err := e.queueEntry()
		if err != nil {
			return err
		}
		for i < len(states) && states[i].Key < key {
			i++
		}
		if i < len(states) && states[i].Key == key {
			states[i].Queue = append(states[i].Queue, q)
		}
	}
	return rows.Err()
}

// loadAcks reads the acknowledgements of the named keys (every key when
// none is named), in key order. With legacyRows, the tables predate
// tokens: each acknowledged generation is read as lock.MigrateAck turns it
// on its key's migrated row.
func (tx *txn) loadAcks(keys []string, legacyRows map[string]lock.KeyRow) ([]heldAck, error) {
	token := "token"
	if legacyRows != nil {
		token = "0"
	}
	filter, args := keyFilter("key", keys)
	rows, err := tx.conn.QueryContext(tx.ctx, "SELECT key, holder, "+token+", generation FROM xplock_acks"+filter+" ORDER BY key", args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var acks []heldAck
	for rows.Next() {
		var a heldAck
		if err := rows.Scan(&a.key, &a.holder, &a.ack.Token, &a.ack.Generation); err != nil {
			return nil, err
		}
		if legacyRows != nil {
			a.ack = lock.MigrateAck(legacyRows[a.key], a.ack.Generation)
		}
		acks = append(acks, a)
	}
	return acks, rows.Err()
}

// legacyColumns are the lock row's columns in schema versions 1 and 2.
const legacyColumns = `key, holder, generation, token, held, checked, acquired_at, expires_at, ttl, changed_at, events`

// loadLegacy is loadAll on the tables of schema version 1 or 2, which kept
// at most one tenure in the key's row.
func (tx *txn) loadLegacy(l *layout, keys []string) ([]lock.KeyState, []heldAck, error) {
	filter, args := keyFilter("key", keys)
	rows, err := tx.conn.QueryContext(tx.ctx, "SELECT "+legacyColumns+" FROM "+l.keys+filter+" ORDER BY key", args...)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	var states []lock.KeyState
	migrated := map[string]lock.KeyRow{}
	for rows.Next() {
		var key, holder string
		var generation, token, acquiredAt, expiresAt, ttl, changedAt, events int64
		var held, checked bool
		if err := rows.Scan(&key, &holder, &generation, &token, &held, &checked, &acquiredAt, &expiresAt, &ttl,
			&changedAt, &events); err != nil {
			return nil, nil, err
		}
		k := lock.KeyState{Key: key, Row: lock.MigrateRow(holder, generation, token, fromMicros(changedAt))}
		if held {
			k.Tenures = []lock.Tenure{{Holder: holder, Mode: lock.ModeExclusive, Token: token, Checked: checked,
				AcquiredAt: fromMicros(acquiredAt), ExpiresAt: fromMicros(expiresAt), TTL: time.Duration(ttl) * time.Microsecond}}
		}
		migrated[key] = k.Row
		states = append(states, k)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}
	acks, err := tx.loadAcks(keys, migrated)
	return states, acks, err
}
