package postgres

import (
	"context"
	"time"

	"github.com/xplock/xplock/lock"
)

// legacySnapshotSQL reads the tables of schema versions 1 and 2, which a
// store opened with NoCreate leaves as they are: one row per key, holding
// its one (exclusive) tenure, and each acknowledgement as a generation.
const legacySnapshotSQL = `WITH c AS MATERIALIZED (
		SELECT clock_timestamp() AS now, (SELECT coalesce(max(id), 0) FROM xplock_events) AS cursor)
	SELECT c.now, c.cursor, l.key, l.holder, l.generation, l.token, l.held, l.checked, l.acquired_at, l.expires_at,
		l.ttl_us, l.changed_at,
		array(SELECT a.holder FROM xplock_acks a WHERE a.key = l.key ORDER BY a.holder),
		array(SELECT a.generation FROM xplock_acks a WHERE a.key = l.key ORDER BY a.holder)
	FROM c LEFT JOIN xplock_locks l ON l.generation > 0 AND (cardinality($1::text[]) = 0 OR l.key = ANY($1))
	ORDER BY l.key COLLATE "C"`

// legacySnapshot is Snapshot on the tables of schema versions 1 and 2: each
// key is read as the migration to version 3 would convert it, and judged
// by lock.View.
func (s *Store) legacySnapshot(ctx context.Context, keys []string) (lock.Snapshot, error) {
	var snap lock.Snapshot
	rows, err := s.pool.Query(ctx, legacySnapshotSQL, append([]string{}, keys...))
	if err != nil {
		return snap, err
	}
	defer rows.Close()
	for rows.Next() {
		var key, holder *string
		var generation, token, ttlMicros *int64
		var held, checked *bool
		var acquiredAt, expiresAt, changedAt *time.Time
		var ackHolders []string
		var ackGenerations []int64
		if err := rows.Scan(&snap.Now, &snap.Cursor, &key, &holder, &generation, &token, &held, &checked,
			&acquiredAt, &expiresAt, &ttlMicros, &changedAt, &ackHolders, &ackGenerations); err != nil {
			return snap, err
		}
		if key == nil {
			continue // no locks: the one row carries only the clock and cursor
		}
		k := lock.KeyState{Key: *key, Row: lock.MigrateRow(*holder, *generation, *token, *changedAt)}
		if *held {
			k.Tenures = []lock.Tenure{{Holder: *holder, Mode: lock.ModeExclusive, Token: *token, Checked: *checked,
				AcquiredAt: *acquiredAt, ExpiresAt: *expiresAt, TTL: time.Duration(*ttlMicros) * time.Microsecond}}
		}
		acks := map[string]lock.Ack{}
		for i, h := range ackHolders {
			acks[h] = lock.MigrateAck(k.Row, ackGenerations[i])
		}
		snap.Locks = append(snap.Locks, lock.View(k, acks, snap.Now))
	}
	return snap, rows.Err()
}
