package postgres

import (
	"strings"
	"sync"
)

// Every decision (Acquire, Renew, Release, Break, Acknowledge) is two
// statements sent together in one round trip, which PostgreSQL runs as one
// implicit transaction:
//
//  1. lockRowSQL creates the key's row if it is missing (a placeholder with
//     generation 0) and locks it. Two processes creating the same key wait
//     for each other instead of failing, and every later decision on the key
//     waits for this one to commit.
//  2. A decision statement built by decisionSQL. It starts after the lock is
//     held, so in READ COMMITTED its snapshot includes everything committed
//     on the key before, and its clock (clock_timestamp(), the server's) is
//     read after the lock: decisions on a key are ordered like time. It
//     records an unseen expiry (stamped with the lease's end, and committed
//     even when the decision is a refusal), decides, appends to the key's
//     history and prunes it, saves the row and the acknowledged generation,
//     and notifies subscribers.
//
// Under REPEATABLE READ or SERIALIZABLE (a server or role default) the
// statements share the first snapshot instead; every change to a key's
// acknowledgements or history also updates its row, so locking a row that
// changed since that snapshot fails with a serialization error and the
// decision is retried.
//
// Event IDs come from an identity column and are committed in ID order: a
// decision that records events first locks the single xplock_schema row,
// which it holds until it commits, and only then draws IDs. A watcher reading
// past its cursor can therefore never see an ID while a smaller one is still
// to be committed. Decisions that record nothing (renewals, re-entrant and
// refused acquisitions) do not take that lock and do not notify.

// lockRowSQL takes the key's row lock, creating a placeholder row for a key
// never seen. ON CONFLICT DO UPDATE locks the existing row even though its
// WHERE clause lets nothing be updated.
const lockRowSQL = `INSERT INTO xplock_locks AS l
	(key, holder, generation, token, held, checked, acquired_at, expires_at, ttl_us, changed_at, events)
	VALUES ($1, '', 0, 0, false, false, clock_timestamp(), clock_timestamp(), 0, clock_timestamp(), 0)
	ON CONFLICT (key) DO UPDATE SET events = l.events WHERE false`

// decisionPrefix reads the locked row. p holds the parameters ($1 the key,
// $2 the request's ID, then the decision's own), the store's history limit
// and the clock; o is the row as stored; b is the row once an expiry that
// nobody has seen yet is recorded: the tenure is over and the lock free
// since the lease's end; r is this request as recorded by an earlier
// attempt that committed (its answer was lost), if any.
const decisionPrefix = `WITH p AS MATERIALIZED (
	SELECT $1::text AS key, (SELECT c.history_limit FROM xplock_config c) AS lim, $2::uuid AS request_id,
		clock_timestamp() AS now%s),
o AS MATERIALIZED (
	SELECT l.key, l.holder, l.generation, l.token, l.held, l.checked, l.acquired_at, l.expires_at,
		l.ttl_us, l.changed_at, l.events, p.now,
		l.held AND l.expires_at > p.now AS live, l.held AND l.expires_at <= p.now AS lapsed
	FROM xplock_locks l JOIN p ON l.key = p.key),
b AS MATERIALIZED (
	SELECT o.key, o.holder, o.generation, o.token, o.held AND NOT o.lapsed AS held,
		o.checked AND NOT o.lapsed AS checked, o.acquired_at, o.expires_at, o.ttl_us,
		CASE WHEN o.lapsed THEN o.expires_at ELSE o.changed_at END AS changed_at,
		o.events, o.now, o.live, o.lapsed
	FROM o),
r AS MATERIALIZED (
	SELECT q.outcome, q.token FROM xplock_requests q JOIN p ON q.key = p.key AND q.request_id = p.request_id),
`

// decisionSuffix carries out decision n: ev are the events it records (the
// observed expiry first), serial orders their commit, ins and pruned keep the
// history bounded (cut is how many of the oldest stored events go, counted
// by the row so that the common case reads no history), upd saves the row (or placeholder drops a row created for
// nothing), ack saves an acknowledged generation, req records a request that
// began or ended a tenure, notify wakes subscribers.
const decisionSuffix = `,
ev AS (
	SELECT 1 AS seq, o.key, 'expired'::text AS event, o.holder, o.generation, o.token, o.expires_at AS time,
		NULL::text AS by_holder, NULL::text AS by_user, NULL::text AS by_host, NULL::bigint AS by_pid
	FROM o WHERE o.lapsed
	UNION ALL
	SELECT 2, n.key, n.event, n.holder, n.generation, n.token, n.now, n.by_holder, n.by_user, n.by_host, n.by_pid
	FROM n WHERE n.event IS NOT NULL),
k AS MATERIALIZED (SELECT count(*) AS k FROM ev),
serial AS (SELECT 1 FROM xplock_schema WHERE (SELECT k.k > 0 FROM k) FOR UPDATE),
ins AS (
	INSERT INTO xplock_events (key, event, holder, generation, token, time, by_holder, by_user, by_host, by_pid)
	SELECT ev.key, ev.event, ev.holder, ev.generation, ev.token, ev.time, ev.by_holder, ev.by_user, ev.by_host, ev.by_pid
	FROM ev, k, serial, p WHERE ev.seq > k.k - p.lim ORDER BY ev.seq),
cut AS MATERIALIZED (SELECT least(greatest(n.events + k.k - p.lim, 0), n.events) AS c FROM n, k, p),
pruned AS (
	DELETE FROM xplock_events e
	WHERE (SELECT cut.c FROM cut) > 0 AND e.key = (SELECT p.key FROM p) AND e.id <= (
		SELECT x.id FROM xplock_events x WHERE x.key = (SELECT p.key FROM p) ORDER BY x.id
		OFFSET (SELECT cut.c - 1 FROM cut) LIMIT 1)),
upd AS (
	UPDATE xplock_locks l SET holder = n.holder, generation = n.generation, token = n.token, held = n.held,
		checked = n.checked, acquired_at = n.acquired_at, expires_at = n.expires_at, ttl_us = n.ttl_us,
		changed_at = n.changed_at, events = least(n.events + k.k, p.lim)
	FROM n, k, p
	WHERE l.key = n.key AND n.generation > 0 AND (n.write OR k.k > 0 OR n.ack_gen IS NOT NULL)),
placeholder AS (DELETE FROM xplock_locks l USING n WHERE l.key = n.key AND n.generation = 0),
ack AS (
	INSERT INTO xplock_acks (key, holder, generation)
	SELECT n.key, n.ack_holder, n.ack_gen FROM n WHERE n.ack_gen IS NOT NULL
	ON CONFLICT (key, holder) DO UPDATE SET generation = excluded.generation),
req AS (
	INSERT INTO xplock_requests (key, holder, request_id, token, outcome)
	SELECT n.key, n.req_holder, p.request_id, n.token, n.req_outcome FROM n, p WHERE n.req_outcome IS NOT NULL
	ON CONFLICT (key, holder) DO UPDATE
	SET request_id = excluded.request_id, token = excluded.token, outcome = excluded.outcome),
notify AS (SELECT pg_notify('` + notifyChannel + `', n.key) FROM n, k WHERE k.k > 0)
SELECT n.holder, n.generation, n.token, n.held, n.checked, n.acquired_at, n.expires_at, n.ttl_us,
	n.changed_at, n.now, n.refusal, n.reentrant, n.busy, n.acked, (SELECT count(*) FROM notify)
FROM n`

// decisionColumns are n's columns with their defaults: the row b as it is
// (with an unseen expiry recorded), no event, no acknowledgement, no refusal.
var decisionColumns = []struct{ name, def string }{
	{"key", "d.key"}, {"now", "d.now"}, {"holder", "d.holder"}, {"generation", "d.generation"},
	{"token", "d.token"}, {"held", "d.held"}, {"checked", "d.checked"}, {"acquired_at", "d.acquired_at"},
	{"expires_at", "d.expires_at"}, {"ttl_us", "d.ttl_us"}, {"changed_at", "d.changed_at"},
	{"events", "d.events"},
	// write saves the row even when no event is recorded.
	{"write", "false"},
	// event is the decision's own event, recorded after any observed expiry.
	{"event", "NULL::text"}, {"by_holder", "NULL::text"}, {"by_user", "NULL::text"},
	{"by_host", "NULL::text"}, {"by_pid", "NULL::bigint"},
	// ack_gen, when not NULL, becomes ack_holder's acknowledged generation.
	{"ack_holder", "NULL::text"}, {"ack_gen", "NULL::bigint"},
	// req_outcome, when not NULL, records this request as req_holder's
	// last one on the key, with the tenure's token.
	{"req_holder", "NULL::text"}, {"req_outcome", "NULL::text"},
	// Outcomes for the caller.
	{"refusal", "NULL::text"}, {"reentrant", "false"}, {"busy", "false"}, {"acked", "NULL::bigint"},
}

// The decision statements are assembled on first use rather than at
// start-up, which every xplock command pays for, PostgreSQL or not.

// decisionSQL assembles a decision statement: params are extra columns of p
// (", $3::text AS holder"), d is a CTE over b and p that judges the request,
// and set overrides n's columns (see decisionColumns).
func decisionSQL(params, d string, set map[string]string) string {
	var sb strings.Builder
	sb.WriteString(strings.Replace(decisionPrefix, "%s", params, 1))
	sb.WriteString("d AS MATERIALIZED (")
	sb.WriteString(d)
	sb.WriteString("),\nn AS MATERIALIZED (SELECT ")
	for i, c := range decisionColumns {
		if i > 0 {
			sb.WriteString(", ")
		}
		expr, ok := set[c.name]
		if !ok {
			expr = c.def
		}
		delete(set, c.name)
		sb.WriteString(expr + " AS " + c.name)
	}
	if len(set) > 0 {
		panic("postgres: unknown decision columns")
	}
	sb.WriteString(" FROM d, p)")
	sb.WriteString(decisionSuffix)
	return sb.String()
}

// acquireSQL: $3 holder, $4 TTL in microseconds, $5 keep the tenure's TTL
// when re-entrant, $6 checked.
var acquireSQL = sync.OnceValue(func() string {
	return decisionSQL(
		", $3::text AS holder, $4::bigint AS ttl_us, $5::boolean AS keep_ttl, $6::boolean AS checked",
		`SELECT b.*, b.live AND b.holder <> p.holder AS busy, b.live AND b.holder = p.holder AS reentrant,
		b.live AND b.holder = p.holder AND EXISTS (SELECT 1 FROM r WHERE r.outcome = 'acquired' AND r.token = b.token) AS redo,
		NOT b.live AS take,
		CASE WHEN NOT b.live AND b.holder <> p.holder THEN b.generation + 1 ELSE b.generation END AS new_gen,
		CASE WHEN b.live AND p.keep_ttl THEN b.ttl_us ELSE p.ttl_us END AS new_ttl,
		(SELECT x.generation FROM xplock_acks x WHERE x.key = b.key AND x.holder = p.holder) AS prior_ack
	FROM b, p`,
		map[string]string{
			"holder":      "CASE WHEN d.take THEN p.holder ELSE d.holder END",
			"generation":  "d.new_gen",
			"token":       "CASE WHEN d.take THEN d.token + 1 ELSE d.token END",
			"held":        "d.held OR d.take",
			"checked":     "CASE WHEN d.take THEN p.checked WHEN d.reentrant THEN d.checked OR p.checked ELSE d.checked END",
			"acquired_at": "CASE WHEN d.take THEN d.now ELSE d.acquired_at END",
			"ttl_us":      "CASE WHEN d.busy THEN d.ttl_us ELSE d.new_ttl END",
			"expires_at":  "CASE WHEN d.busy THEN d.expires_at ELSE d.now + d.new_ttl * interval '1 microsecond' END",
			"changed_at":  "CASE WHEN d.take THEN d.now ELSE d.changed_at END",
			"write":       "NOT d.busy",
			"event":       "CASE WHEN d.take THEN 'acquired' END",
			// A newcomer's checked acquisition acknowledges the generation it
			// takes: it has nothing stale (SPEC rule 1).
			"ack_holder":  "p.holder",
			"ack_gen":     "CASE WHEN NOT d.busy AND p.checked AND d.prior_ack IS NULL THEN d.new_gen END",
			"acked":       "CASE WHEN NOT d.busy THEN coalesce(d.prior_ack, CASE WHEN p.checked THEN d.new_gen END) END",
			"req_holder":  "p.holder",
			"req_outcome": "CASE WHEN d.take THEN 'acquired' END",
			// This request's earlier attempt began the tenure: it is not a
			// re-entrant acquisition.
			"reentrant": "d.reentrant AND NOT d.redo",
			"busy":      "d.busy",
		})
})

// holdingParams and holdingCheck judge whether $3 holds a live lease in
// tenure $4 (any tenure when 0), naming the reason when it does not.
const (
	holdingParams = ", $3::text AS holder, $4::bigint AS tenure"
	holdingCheck  = `SELECT b.*, CASE
		WHEN b.lapsed AND b.holder = p.holder AND (p.tenure = 0 OR b.token = p.tenure) THEN 'expired'
		WHEN NOT b.held THEN 'free'
		WHEN b.holder <> p.holder THEN 'held'
		WHEN p.tenure <> 0 AND b.token <> p.tenure THEN 'new-tenure'
	END AS refusal
	FROM b, p`
)

// renewSQL: $5 the new TTL in microseconds, 0 to keep the tenure's.
var renewSQL = sync.OnceValue(func() string {
	return decisionSQL(holdingParams+", $5::bigint AS ttl_us", holdingCheck, map[string]string{
		"ttl_us": "CASE WHEN d.refusal IS NULL AND p.ttl_us > 0 THEN p.ttl_us ELSE d.ttl_us END",
		"expires_at": `CASE WHEN d.refusal IS NULL
		THEN d.now + (CASE WHEN p.ttl_us > 0 THEN p.ttl_us ELSE d.ttl_us END) * interval '1 microsecond'
		ELSE d.expires_at END`,
		"write":   "d.refusal IS NULL",
		"refusal": "d.refusal",
	})
})

// done reports whether an earlier attempt of this request ended the tenure
// with outcome: the request is answered as done, and changes nothing again.
func done(outcome string) string {
	return "EXISTS (SELECT 1 FROM r WHERE r.outcome = '" + outcome + "')"
}

// releaseSQL: $5 acknowledge the generation if the tenure was checked.
var releaseSQL = sync.OnceValue(func() string {
	return decisionSQL(holdingParams+", $5::boolean AS acknowledge", holdingCheck, map[string]string{
		"held":        "d.held AND d.refusal IS NOT NULL",
		"checked":     "d.checked AND d.refusal IS NOT NULL",
		"changed_at":  "CASE WHEN d.refusal IS NULL THEN d.now ELSE d.changed_at END",
		"event":       "CASE WHEN d.refusal IS NULL THEN 'released' END",
		"ack_holder":  "p.holder",
		"ack_gen":     "CASE WHEN d.refusal IS NULL AND p.acknowledge AND d.checked THEN d.generation END",
		"req_holder":  "p.holder",
		"req_outcome": "CASE WHEN d.refusal IS NULL THEN 'released' END",
		"refusal":     "CASE WHEN NOT " + done("released") + " THEN d.refusal END",
	})
})

var acknowledgeSQL = sync.OnceValue(func() string {
	return decisionSQL(holdingParams, holdingCheck, map[string]string{
		"ack_holder": "p.holder",
		"ack_gen":    "CASE WHEN d.refusal IS NULL THEN d.generation END",
		"refusal":    "d.refusal",
	})
})

// breakSQL: $3..$6 who breaks the lock.
var breakSQL = sync.OnceValue(func() string {
	return decisionSQL(
		", $3::text AS by_holder, $4::text AS by_user, $5::text AS by_host, $6::bigint AS by_pid",
		`SELECT b.*, CASE WHEN NOT b.held THEN 'free' END AS refusal FROM b`,
		map[string]string{
			"held":        "false",
			"checked":     "false",
			"changed_at":  "CASE WHEN d.refusal IS NULL THEN d.now ELSE d.changed_at END",
			"event":       "CASE WHEN d.refusal IS NULL THEN 'broken' END",
			"by_holder":   "p.by_holder",
			"by_user":     "p.by_user",
			"by_host":     "p.by_host",
			"by_pid":      "p.by_pid",
			"req_holder":  "p.by_holder",
			"req_outcome": "CASE WHEN d.refusal IS NULL THEN 'broken' END",
			"refusal":     "CASE WHEN NOT " + done("broken") + " THEN d.refusal END",
		})
})
