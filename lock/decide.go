package lock

import (
	"cmp"
	"slices"
	"time"
)

// Decide is the judge: every rule of xplock is applied here and nowhere
// else. A store loads the key's state under its write lock, with ack the
// requester's acknowledgement (nil when it has none; breaks and
// observations need none), calls Decide with its own clock, saves what
// changed, records the events and returns the outcome. Decide does no I/O,
// reads no clock and keeps nothing.
//
// The stores are being moved onto Decide: until they are, sqlite/store.go
// and postgres/decide.go still apply the same rules themselves, and
// FuzzDecide's reference model and the conformance suite keep all three in
// step.
//
// The rules, in the order a newcomer needs them:
//
// Generation. Per key, 1 at the key's first acquisition, and one more each
// time an exclusive tenure begins with a holder other than the last
// exclusive holder. The last exclusive holder is remembered after release,
// expiry and break, so a broken holder stays the last one. Shared tenures
// never move the generation, and an exclusive tenure that follows only
// shared ones keeps it. It never decreases.
//
// Poison. An acknowledgement, per key and holder, is the key's highest token
// at the moment the holder caught up. The holder is poisoned while an
// exclusive tenure of another holder has a greater token; a holder that
// never acknowledged is never poisoned. A checked acquisition by such a
// newcomer acknowledges (it has nothing stale). A checked tenure that ends by
// a release asked to acknowledge, and an Acknowledge by the live holder,
// acknowledge. Nothing else does: not an expiry, not a break (even by the
// holder itself), not a release that keeps the poison or ends an unchecked
// tenure, not a refusal. Unchecked acquisitions report poison but never
// acknowledge.
//
// Tenure. One holder's continuous possession, from taking a free or expired
// lock (its own expired lease included) until release, expiry or break. An
// acquisition by the holder of a live tenure, in its mode, is re-entrant: it
// joins that tenure, which is checked if any of its acquisitions was.
//
// Mode. A tenure is exclusive (a writer) or shared (a reader); the two never
// overlap. An exclusive tenure begins only when no other tenure is live; a
// shared one when no exclusive tenure is live and, under a slot limit, fewer
// shared tenures than the limit are. Each reader has its own tenure, token
// and lease. The limit in force is that of the live shared tenures; a shared
// request naming another (none where one is in force, one where none is) is
// refused with a *ConflictError (ErrSlotLimit), and so is a holder asking
// for the other mode than the one it holds the key in (ErrModeConflict):
// these refusals change nothing but the expiries they observed. A break
// ends every live tenure, recording each.
//
// Queue. Waiting is first come, first served. A request that waits and
// cannot be granted joins the key's queue at the tail with a waiting lease,
// or renews its entry there; each attempt is judged again. A request is
// granted when nothing ahead of it conflicts: an exclusive one needs no live
// tenure and nobody queued ahead; a shared one no live exclusive tenure, no
// exclusive request ahead, and fewer live shared tenures plus shared
// requests ahead than the limit. A request not queued yet has everyone
// queued ahead of it, and one that does not wait is refused while anyone is
// queued (no barging). A re-entrant acquisition never queues. When no
// shared tenure is live, the queued shared requests' limit is the one in
// force. An entry whose lease lapsed or whose waiter is proved dead is
// dropped by the next decision that meets it, and a LeaveQueueRequest drops
// one at once. A grant says how long the request waited since it first
// queued.
//
// Token. A new tenure's token is one above the key's highest; a re-entrant
// acquisition keeps its tenure's token.
//
// Lease. A new tenure's lease ends at now + TTL. A re-entrant acquisition
// and a renewal move the end to the later of the current end and now + TTL
// (the tenure's TTL unless a new one is given): a live lease never ends
// earlier. A tenure has ended by expiry once now reaches its lease's end, or
// once its keepers are proved dead (then at the moment of proof). The
// first decision that meets such a tenure records its expiry, stamped with
// when it ended, whatever was asked. Renew, release and acknowledge need the
// holder's live tenure (the one with the request's token, when not zero).
// Otherwise they are refused with a *NotHeldError whose reason is
// ReasonExpired when this very decision found that tenure's lease run out,
// else ReasonFree when no tenure is live, ReasonOther when another holder's
// is, ReasonTenure when the holder's live tenure has another token. Break
// needs any live tenure (ReasonFree otherwise). A refused decision still
// saves the expiries it observed.
func Decide(k KeyState, ack *Ack, req Request, now time.Time) Decision {
	d := &decider{now: now, next: k.clone(), ack: ack}
	for _, e := range k.Queue {
		d.lastSeq = max(d.lastSeq, e.Seq)
	}
	switch r := req.(type) {
	case AcquireRequest:
		d.acquire(r)
	case RenewRequest:
		d.renew(r)
	case ReleaseRequest:
		d.release(r)
	case BreakRequest:
		d.breakTenures(r)
	case AcknowledgeRequest:
		d.acknowledge(r)
	case LeaveQueueRequest:
		d.observe()
		d.leave(d.next.entry(r.Holder, r.Seq))
		d.out.State = d.next.view(now)
	case ObserveRequest:
		d.observe()
		d.out.State = d.next.view(now)
	default:
		panic("lock: Decide: unknown request")
	}
	d.out.Next = d.next
	d.out.Changes.Row = k.Row != d.next.Row
	d.out.Changes.Added, d.out.Changes.Updated, d.out.Changes.Removed = diff(k.Tenures, d.next.Tenures, Tenure.id, Tenure.equal)
	d.out.Changes.QueueAdded, d.out.Changes.QueueUpdated, d.out.Changes.QueueRemoved = diff(k.Queue, d.next.Queue, QueueEntry.id, QueueEntry.equal)
	return d.out
}

// Mode is how a tenure holds its key.
type Mode string

// Modes of a tenure.
const (
	ModeExclusive Mode = "exclusive"
	ModeShared    Mode = "shared"
)

// KeyState is one key as a store loads it under its write lock.
type KeyState struct {
	Key     string
	Row     KeyRow
	Tenures []Tenure
	// Queue is the key's waiters, in arrival order.
	Queue []QueueEntry
}

// KeyRow is what a key remembers between tenures. The zero KeyRow is a key
// never acquired.
type KeyRow struct {
	// Generation is 0 until the key's first acquisition.
	Generation int64
	// Token is the highest token the key has given out.
	Token int64
	// LastHolder is the last exclusive holder ("" before the first exclusive
	// tenure) and LastToken the token of its latest exclusive tenure.
	LastHolder string
	LastToken  int64
	// OtherToken is the token of the latest exclusive tenure of a holder
	// other than LastHolder, 0 for none. With LastToken it answers poison.
	OtherToken int64
	// ChangedAt is when the key last became free or was taken.
	ChangedAt time.Time
}

// Tenure is one holder's live (or expired but not yet recorded) tenure.
type Tenure struct {
	Holder  string
	Mode    Mode
	Token   int64
	Checked bool
	// AcquiredAt is when the tenure began; ExpiresAt is its lease's end.
	AcquiredAt, ExpiresAt time.Time
	// TTL is the lease length renewals use by default.
	TTL time.Duration
	// Slots is the limit a shared tenure was granted under, 0 for none.
	Slots int
	// Keepers are the processes that keep the tenure alive (run mode, a
	// renewing Guard), the union over its live acquisitions; none for a
	// detached tenure, which only its lease ends.
	Keepers []Keeper
	// ProvedDeadAt, set by the store for this decision only, is the moment
	// the store proved every process keeping the tenure alive gone; zero
	// when not proved (or not provable), and the lease alone decides.
	ProvedDeadAt time.Time
}

// end is when the tenure ends unless it is renewed: its lease's end, or the
// proof of its keepers' death when that came first.
func (t Tenure) end() time.Time {
	if !t.ProvedDeadAt.IsZero() && t.ProvedDeadAt.Before(t.ExpiresAt) {
		return t.ProvedDeadAt
	}
	return t.ExpiresAt
}

func (t Tenure) live(now time.Time) bool { return t.end().After(now) }

// QueueEntry is one waiter in a key's queue.
type QueueEntry struct {
	Holder string
	Mode   Mode
	// Slots is the limit a shared request names, 0 for none.
	Slots int
	// Seq orders arrivals; Since is when the waiter first queued (kept when
	// a lapsed entry rejoins); LeaseEnd is when the entry lapses unless its
	// waiter renews it.
	Seq      int64
	Since    time.Time
	LeaseEnd time.Time
	Keepers  []Keeper
	// ProvedDeadAt, set by the store for this decision only, is the moment
	// the store proved every process keeping the entry alive gone; zero
	// when not proved.
	ProvedDeadAt time.Time
}

// live reports whether the entry still holds its place at now: its lease
// has not lapsed and its waiter is not proved dead.
func (q QueueEntry) live(now time.Time) bool {
	return q.LeaseEnd.After(now) && (q.ProvedDeadAt.IsZero() || q.ProvedDeadAt.After(now))
}

func (q QueueEntry) mode() Mode {
	if q.Mode == ModeShared {
		return ModeShared
	}
	return ModeExclusive
}

// Keeper is one process that keeps a tenure or queue entry alive, recorded
// so that a process in the same boot, PID and time namespace can prove it
// gone.
type Keeper struct {
	BootID string `json:"boot_id"`
	// PIDNamespace is the inode of the keeper's PID namespace.
	PIDNamespace uint64 `json:"pidns"`
	// TimeNamespace is the inode of the keeper's time namespace (0 where
	// the kernel has none): Start reads differently in another one.
	TimeNamespace uint64 `json:"timens,omitempty"`
	PID           int    `json:"pid"`
	// Start is the process's start time in clock ticks since boot
	// (/proc/PID/stat field 22): a reused PID has another.
	Start uint64 `json:"start"`
	// Group, when not zero, is a process group that also keeps it alive
	// (run mode's CMD).
	Group int `json:"pgid,omitempty"`
}

// Ack is a holder's acknowledgement of a key.
type Ack struct {
	// Token is the key's highest token when the holder caught up: any
	// exclusive tenure of another holder with a greater one poisons it.
	Token int64
	// Generation is the key's generation then, for messages.
	Generation int64
}

// Request is what Decide is asked: an AcquireRequest, RenewRequest,
// ReleaseRequest, BreakRequest, AcknowledgeRequest, LeaveQueueRequest or
// ObserveRequest.
type Request interface{ isRequest() }

// BreakRequest asks to end every live tenure of a key (`release --force`).
type BreakRequest struct {
	Key string
	By  Breaker
}

// AcknowledgeRequest asks to clear the holder's poison while it holds the
// lock in the tenure Token (any tenure when zero).
type AcknowledgeRequest struct {
	Key, Holder string
	Token       int64
}

// ObserveRequest asks only to record the expiries of tenures that ended
// unseen (and to drop the queue entries that lapsed).
type ObserveRequest struct{ Key string }

func (AcquireRequest) isRequest()     {}
func (RenewRequest) isRequest()       {}
func (ReleaseRequest) isRequest()     {}
func (BreakRequest) isRequest()       {}
func (AcknowledgeRequest) isRequest() {}
func (ObserveRequest) isRequest()     {}
func (LeaveQueueRequest) isRequest()  {}

// Decision is what Decide returns: the key's new state, what a store must
// write, and the outcome for the caller.
type Decision struct {
	Next    KeyState
	Changes Changes
	// Events are to be recorded in this order.
	Events []Event
	// Grant answers an acquisition or renewal; an acquisition that finds the
	// lock held by another holder has Acquired false and Current set.
	Grant Grant
	// State is the key after a release, break or observation.
	State State
	// Err is a *NotHeldError when the request was refused. The decision
	// must be saved all the same.
	Err error
}

// Changes is the difference between the loaded state and Decision.Next.
type Changes struct {
	// Row is true when Next.Row must be written (inserted for a key that
	// had none).
	Row bool
	// Tenures to insert, update and delete, each known by its token.
	Added, Updated, Removed []Tenure
	// Queue entries to insert, update and delete, each known by its Seq.
	QueueAdded, QueueUpdated, QueueRemoved []QueueEntry
	// Ack, when not nil, is the requester's new acknowledgement.
	Ack *Ack
}

// decider carries one decision.
type decider struct {
	now  time.Time
	next KeyState
	ack  *Ack
	out  Decision
	// lastSeq is the highest Seq of the queue as loaded: a new entry never
	// takes the Seq of one this decision removes.
	lastSeq int64
}

func (k KeyState) clone() KeyState {
	k.Tenures = slices.Clone(k.Tenures)
	k.Queue = slices.Clone(k.Queue)
	slices.SortFunc(k.Queue, bySeq)
	return k
}

func bySeq(a, b QueueEntry) int { return cmp.Compare(a.Seq, b.Seq) }

func (d *decider) record(typ string, t Tenure, at time.Time, by *Breaker) {
	d.out.Events = append(d.out.Events, Event{Key: d.next.Key, Type: typ, Holder: t.Holder, Mode: t.mode(),
		Generation: d.next.Row.Generation, Token: t.Token, Time: at, By: by})
}

// observe ends the tenures that ran out and records their expiries, and
// drops the queue entries that lapsed or whose waiters are proved dead.
func (d *decider) observe() (ended []Tenure) {
	d.next.Queue = slices.DeleteFunc(d.next.Queue, func(q QueueEntry) bool { return !q.live(d.now) })
	d.next.Tenures = slices.DeleteFunc(d.next.Tenures, func(t Tenure) bool {
		if t.live(d.now) {
			return false
		}
		ended = append(ended, t)
		return true
	})
	for _, t := range ended {
		d.record(EventExpired, t, t.end(), nil)
		if t.end().Before(t.ExpiresAt) {
			d.out.Events[len(d.out.Events)-1].Detail = DetailHolderDied
		}
		if t.end().After(d.next.Row.ChangedAt) {
			d.next.Row.ChangedAt = t.end()
		}
	}
	return ended
}

// tenureOf returns the index of holder's live tenure, or -1.
func (k KeyState) tenureOf(holder string) int {
	return slices.IndexFunc(k.Tenures, func(t Tenure) bool { return t.Holder == holder })
}

func (d *decider) acquire(r AcquireRequest) {
	d.observe()
	mode, slots := r.mode(), max(r.Slots, 0)
	i := d.next.tenureOf(r.Holder)
	q := -1 // the request's queue entry
	if r.Wait && r.Seq != 0 {
		q = d.next.entry(r.Holder, r.Seq)
	}
	since := d.now
	switch {
	case q >= 0:
		since = d.next.Queue[q].Since
	case !r.QueuedSince.IsZero() && r.QueuedSince.Before(d.now):
		since = r.QueuedSince // a lapsed entry rejoins, still counting
	}
	if err := d.conflict(r.Holder, mode, slots, i); err != nil {
		d.leave(q) // judged again at the entry's turn: it can never be granted
		d.out.Grant = d.refusal(r.Holder, mode, slots)
		err.Current = d.out.Grant.Current
		d.out.Err = err
		return
	}
	ahead := d.next.Queue // a request not queued yet joins behind everyone
	if q >= 0 {
		ahead = d.next.Queue[:q]
	}
	reentrant := i >= 0
	switch {
	case reentrant:
		d.leave(q) // a re-entrant acquisition never queues
		t := &d.next.Tenures[i]
		ttl := r.TTL
		if r.KeepTenureTTL {
			ttl = t.TTL
		}
		d.extend(t, ttl)
		t.Checked = t.Checked || r.Checked
		t.Keepers = union(t.Keepers, r.Keepers)
	case (r.Wait || len(ahead) == 0) && d.next.grantable(mode, slots, ahead):
		d.leave(q)
		i = d.begin(r, mode, slots, d.now.Sub(since))
	default:
		n := len(ahead)
		var seq int64
		if r.Wait {
			seq = d.wait(r, mode, slots, q, since)
		}
		d.out.Grant = d.refusal(r.Holder, mode, slots)
		d.out.Grant.Ahead = n
		if r.Wait {
			d.out.Grant.Seq, d.out.Grant.QueuedSince = seq, since
		}
		return
	}
	if d.ack == nil && r.Checked {
		d.acknowledgeNow() // a newcomer has nothing stale
	}
	g := d.grant(d.next.Tenures[i])
	g.Reentrant = reentrant
	g.Waited = d.now.Sub(since)
	if d.ack != nil {
		g.Acknowledged = d.ack.Generation
		g.Poisoned = d.next.Row.poisons(r.Holder, *d.ack)
	}
	d.out.Grant = g
}

// entry returns the index of holder's queue entry seq, or -1.
func (k KeyState) entry(holder string, seq int64) int {
	return slices.IndexFunc(k.Queue, func(q QueueEntry) bool { return q.Seq == seq && q.Holder == holder })
}

// leave removes the queue entry at index q, if any.
func (d *decider) leave(q int) {
	if q >= 0 {
		d.next.Queue = slices.Delete(d.next.Queue, q, q+1)
	}
}

// wait keeps the request's place in the queue, renewing its entry q or
// joining at the tail, and returns the entry's Seq.
func (d *decider) wait(r AcquireRequest, mode Mode, slots, q int, since time.Time) int64 {
	lease := r.WaitLease
	if lease <= 0 {
		lease = DefaultWaitLease
	}
	if q >= 0 {
		e := &d.next.Queue[q]
		e.LeaseEnd = laterOf(e.LeaseEnd, d.now.Add(lease))
		e.Keepers = union(e.Keepers, r.waitKeepers())
		return e.Seq
	}
	d.lastSeq++
	d.next.Queue = append(d.next.Queue, QueueEntry{Holder: r.Holder, Mode: mode, Slots: slots, Seq: d.lastSeq,
		Since: since, LeaseEnd: d.now.Add(lease), Keepers: slices.Clone(r.waitKeepers())})
	return d.lastSeq
}

// waitKeepers are the processes that keep the request's queue entry alive.
func (r AcquireRequest) waitKeepers() []Keeper {
	if r.WaitKeepers != nil {
		return r.WaitKeepers
	}
	return r.Keepers
}

// union is the keepers of a and those of b not in a.
func union(a, b []Keeper) []Keeper {
	for _, k := range b {
		if !slices.Contains(a, k) {
			a = append(slices.Clip(a), k)
		}
	}
	return a
}

func (r AcquireRequest) mode() Mode {
	if r.Mode == ModeShared || r.Slots > 0 {
		return ModeShared
	}
	return ModeExclusive
}

// mode is the tenure's mode; a tenure stored without one is exclusive.
func (t Tenure) mode() Mode {
	if t.Mode == ModeShared {
		return ModeShared
	}
	return ModeExclusive
}

// conflict returns the *ConflictError refusing a request the key cannot
// grant as asked, nil for any other. own is the index of the requester's
// live tenure, or -1.
func (d *decider) conflict(holder string, mode Mode, slots, own int) *ConflictError {
	limit, queued, inForce := d.next.limit()
	switch {
	case own >= 0 && d.next.Tenures[own].mode() != mode:
		return &ConflictError{Key: d.next.Key, Holder: holder, Mode: mode, Slots: slots,
			Held: d.next.Tenures[own].mode(), Err: ErrModeConflict}
	case mode == ModeShared && inForce && limit != slots:
		return &ConflictError{Key: d.next.Key, Holder: holder, Mode: mode, Slots: slots,
			Limit: limit, Queued: queued, Err: ErrSlotLimit}
	}
	return nil
}

// limit returns the slot limit in force: that of the shared tenures, else
// (queued) that of the shared requests in the queue, if there are any.
func (k KeyState) limit() (slots int, queued, inForce bool) {
	for _, t := range k.Tenures {
		if t.mode() == ModeShared {
			return t.Slots, false, true
		}
	}
	for _, q := range k.Queue {
		if q.mode() == ModeShared {
			return q.Slots, true, true
		}
	}
	return 0, false, false
}

// grantable reports whether a new tenure in mode, under the slot limit
// slots, can begin beside the key's tenures (all live) with the requests
// ahead of it in the queue (all live) served first: an exclusive one needs
// no tenure and nobody ahead; a shared one no exclusive tenure, no
// exclusive request ahead, and fewer shared tenures and requests ahead than
// the limit.
func (k KeyState) grantable(mode Mode, slots int, ahead []QueueEntry) bool {
	if mode == ModeExclusive {
		return len(k.Tenures) == 0 && len(ahead) == 0
	}
	for _, t := range k.Tenures {
		if t.mode() == ModeExclusive {
			return false
		}
	}
	for _, q := range ahead {
		if q.mode() == ModeExclusive {
			return false
		}
	}
	return slots == 0 || len(k.Tenures)+len(ahead) < slots
}

// refusal is the Grant of an acquisition not granted.
func (d *decider) refusal(holder string, mode Mode, slots int) Grant {
	return Grant{Key: d.next.Key, Holder: holder, Mode: mode, Slots: slots, Now: d.now, Current: d.next.view(d.now)}
}

// begin starts the requester's new tenure, after it waited that long in
// the queue, and returns its index.
func (d *decider) begin(r AcquireRequest, mode Mode, slots int, waited time.Duration) int {
	row := &d.next.Row
	row.Token++
	switch {
	case row.Generation == 0:
		row.Generation = 1
	case mode == ModeExclusive && row.LastHolder != "" && row.LastHolder != r.Holder:
		row.Generation++
	}
	if mode == ModeExclusive {
		if row.LastHolder != r.Holder {
			row.LastHolder, row.OtherToken = r.Holder, row.LastToken
		}
		row.LastToken = row.Token
	}
	row.ChangedAt = d.now
	t := Tenure{Holder: r.Holder, Mode: mode, Token: row.Token, Checked: r.Checked,
		AcquiredAt: d.now, ExpiresAt: d.now.Add(r.TTL), TTL: r.TTL, Slots: slots, Keepers: slices.Clone(r.Keepers)}
	d.next.Tenures = append(d.next.Tenures, t)
	d.record(EventAcquired, t, d.now, nil)
	d.out.Events[len(d.out.Events)-1].Waited = waited
	return len(d.next.Tenures) - 1
}

// extend moves a live lease's end to now + ttl unless it already ends later.
func (d *decider) extend(t *Tenure, ttl time.Duration) {
	t.TTL = ttl
	if end := d.now.Add(ttl); end.After(t.ExpiresAt) {
		t.ExpiresAt = end
	}
}

// poisons reports whether an exclusive tenure of a holder other than holder
// has a token greater than its acknowledgement's.
func (r KeyRow) poisons(holder string, ack Ack) bool {
	latestOther := r.LastToken
	if holder == r.LastHolder {
		latestOther = r.OtherToken
	}
	return latestOther > ack.Token
}

// acknowledgeNow makes the key as it now is the requester's acknowledgement.
func (d *decider) acknowledgeNow() {
	d.ack = &Ack{Token: d.next.Row.Token, Generation: d.next.Row.Generation}
	d.out.Changes.Ack = d.ack
}

func (d *decider) grant(t Tenure) Grant {
	return Grant{Acquired: true, Key: d.next.Key, Holder: t.Holder, Mode: t.mode(), Slots: t.Slots, Generation: d.next.Row.Generation,
		Token: t.Token, Checked: t.Checked, AcquiredAt: t.AcquiredAt, ExpiresAt: t.ExpiresAt, TTL: t.TTL, Now: d.now}
}

// holding returns the index of holder's live tenure in the tenure token
// (any tenure when token is 0), or refuses the request and returns -1.
func (d *decider) holding(holder string, token int64) int {
	ended := d.observe()
	refuse := func(reason string) *NotHeldError {
		e := &NotHeldError{Key: d.next.Key, Holder: holder, Reason: reason, Current: d.next.view(d.now)}
		d.out.Err = e
		return e
	}
	for _, t := range ended {
		if t.Holder == holder && (token == 0 || token == t.Token) {
			refuse(ReasonExpired).Current.ExpiresAt = t.end()
			return -1
		}
	}
	i := d.next.tenureOf(holder)
	switch {
	case len(d.next.Tenures) == 0:
		refuse(ReasonFree)
	case i < 0:
		refuse(ReasonOther)
	case token != 0 && token != d.next.Tenures[i].Token:
		refuse(ReasonTenure)
	default:
		return i
	}
	return -1
}

func (d *decider) renew(r RenewRequest) {
	i := d.holding(r.Holder, r.Token)
	if i < 0 {
		return
	}
	t := &d.next.Tenures[i]
	ttl := t.TTL
	if r.TTL > 0 {
		ttl = r.TTL
	}
	d.extend(t, ttl)
	d.out.Grant = d.grant(*t)
	d.out.Grant.Reentrant = true
}

func (d *decider) release(r ReleaseRequest) {
	i := d.holding(r.Holder, r.Token)
	if i < 0 {
		return
	}
	t := d.next.Tenures[i]
	d.next.Tenures = slices.Delete(d.next.Tenures, i, i+1)
	d.next.Row.ChangedAt = d.now
	d.record(EventReleased, t, d.now, nil)
	if r.Acknowledge && t.Checked {
		d.acknowledgeNow()
	}
	d.out.State = d.next.view(d.now)
}

func (d *decider) breakTenures(r BreakRequest) {
	d.observe()
	if len(d.next.Tenures) == 0 {
		d.out.State = d.next.view(d.now)
		d.out.Err = &NotHeldError{Key: d.next.Key, Holder: r.By.Holder, Reason: ReasonFree, Current: d.out.State}
		return
	}
	for _, t := range d.next.Tenures {
		by := r.By
		d.record(EventBroken, t, d.now, &by)
	}
	d.next.Tenures = d.next.Tenures[:0]
	d.next.Row.ChangedAt = d.now
	d.out.State = d.next.view(d.now)
}

func (d *decider) acknowledge(r AcknowledgeRequest) {
	if d.holding(r.Holder, r.Token) >= 0 {
		d.acknowledgeNow()
	}
}

// view is the key as lookers see it at now, without its poisoned holders.
// Tenures that ended unseen all ran at one time (every decision observes
// first), so they share one mode.
func (k KeyState) view(now time.Time) State {
	s := State{Key: k.Key, State: StateFree, Holder: k.Row.LastHolder, Generation: k.Row.Generation,
		Token: k.Row.Token, Since: k.Row.ChangedAt}
	for _, t := range k.Tenures {
		if !t.live(now) {
			continue
		}
		if s.State != StateHeld || t.AcquiredAt.Before(s.Since) {
			s.Since = t.AcquiredAt
		}
		s.State, s.Mode, s.Slots = StateHeld, t.mode(), t.Slots
		if t.mode() == ModeExclusive {
			s.Holder = t.Holder
		}
		s.ExpiresAt = laterOf(s.ExpiresAt, t.ExpiresAt)
		s.Holders = append(s.Holders, HolderState{Holder: t.Holder, Mode: t.mode(), Token: t.Token,
			Since: t.AcquiredAt, ExpiresAt: t.ExpiresAt, Keepers: slices.Clone(t.Keepers)})
	}
	queue := k.Queue
	if !slices.IsSortedFunc(queue, bySeq) {
		queue = k.clone().Queue
	}
	for _, q := range queue {
		if q.live(now) {
			s.Waiters = append(s.Waiters, WaiterState{Holder: q.Holder, Mode: q.mode(), Since: q.Since})
		}
	}
	if s.State == StateHeld {
		slices.SortFunc(s.Holders, func(a, b HolderState) int { return cmp.Compare(a.Token, b.Token) })
		return s
	}
	for _, t := range k.Tenures {
		if s.State != StateExpired || t.end().After(s.ExpiresAt) {
			s.State, s.Mode, s.Slots, s.Since, s.ExpiresAt = StateExpired, t.mode(), t.Slots, t.end(), t.end()
			if t.mode() == ModeExclusive {
				s.Holder = t.Holder
			}
		}
	}
	return s
}

func laterOf(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// View is the key as status and watch show it at now, given every
// acknowledgement of the key by holder. A key never acquired (Generation 0)
// is free and lists nobody.
func View(k KeyState, acks map[string]Ack, now time.Time) State {
	s := k.view(now)
	for holder, ack := range acks {
		if k.Row.poisons(holder, ack) {
			s.PoisonedHolders = append(s.PoisonedHolders, holder)
		}
	}
	slices.Sort(s.PoisonedHolders)
	return s
}

// diff compares two lists of records by id.
func diff[T any](before, after []T, id func(T) int64, equal func(T, T) bool) (added, updated, removed []T) {
	for _, a := range after {
		i := slices.IndexFunc(before, func(b T) bool { return id(b) == id(a) })
		switch {
		case i < 0:
			added = append(added, a)
		case !equal(before[i], a):
			updated = append(updated, a)
		}
	}
	for _, b := range before {
		if !slices.ContainsFunc(after, func(a T) bool { return id(a) == id(b) }) {
			removed = append(removed, b)
		}
	}
	return added, updated, removed
}

func (t Tenure) id() int64     { return t.Token }
func (q QueueEntry) id() int64 { return q.Seq }

func (t Tenure) equal(u Tenure) bool {
	return t.Holder == u.Holder && t.Mode == u.Mode && t.Token == u.Token && t.Checked == u.Checked &&
		t.AcquiredAt.Equal(u.AcquiredAt) && t.ExpiresAt.Equal(u.ExpiresAt) && t.TTL == u.TTL &&
		t.Slots == u.Slots && slices.Equal(t.Keepers, u.Keepers) && t.ProvedDeadAt.Equal(u.ProvedDeadAt)
}

func (q QueueEntry) equal(r QueueEntry) bool {
	return q.Holder == r.Holder && q.Mode == r.Mode && q.Slots == r.Slots && q.Seq == r.Seq &&
		q.Since.Equal(r.Since) && q.LeaseEnd.Equal(r.LeaseEnd) && slices.Equal(q.Keepers, r.Keepers) &&
		q.ProvedDeadAt.Equal(r.ProvedDeadAt)
}

// MigrateRow turns a lock row stored by versions that kept only the last
// holder, generation and token into a KeyRow. Those versions had exclusive
// tenures only, so the last holder is the last exclusive holder. The token
// of the exclusive holder before it is not stored; any token in
// [1, token-1] answers poison the same for every acknowledgement MigrateAck
// and later decisions can make, so the row takes token-1 once the
// generation has moved (there was another holder) and 0 before.
func MigrateRow(holder string, generation, token int64, changedAt time.Time) KeyRow {
	r := KeyRow{Generation: generation, Token: token, LastHolder: holder, LastToken: token, ChangedAt: changedAt}
	if generation > 1 {
		r.OtherToken = token - 1
	}
	return r
}

// MigrateAck turns an acknowledged generation stored by earlier versions
// into an Ack on the migrated row, keeping the holder's state: the current
// generation stays clean (it caught up with the highest token), an older one
// stays poisoned (it caught up before every tenure).
func MigrateAck(row KeyRow, generation int64) Ack {
	if generation >= row.Generation {
		return Ack{Token: row.Token, Generation: generation}
	}
	return Ack{Generation: generation}
}
