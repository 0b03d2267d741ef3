package lock_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/xplock/xplock/lock"
)

// FuzzDecide runs byte-driven sequences of every request by three holders on
// one key, in both modes and under slot limits, waiting in the queue or
// not, with clock jumps (to a lease's or a waiting lease's end, just before
// and after it, far past it), through Decide and
// through refModel, a reference written from the contract's words rather
// than from Decide: it keeps every tenure ever begun and derives the
// generation and poison from that history. Every outcome, refusal, recorded
// event and view must agree. At the end, a key that only ever had exclusive
// tenures is migrated from the generation form of acknowledgements and must
// poison the same holders. The seeds in testdata/fuzz/FuzzDecide run as
// ordinary tests.
//
// Each holder is a client that remembers its place in the queue between
// waiting attempts, as the library does, and forgets it when granted,
// refused outright or leaving.
//
// Each step is two bytes: the request (op%11), then an argument that picks
// the holder (arg%3) and a variant (arg/3). Observing may first prove the
// oldest open tenure's holder, or the head waiter, dead, as a store does
// before it decides.
func FuzzDecide(f *testing.F) {
	f.Fuzz(func(t *testing.T, ops []byte) {
		if err := runRef(t, ops, nil); err != nil {
			// Describing every step slows the search tenfold: only a
			// failing input is run again to say what it did.
			var log []string
			runRef(t, ops, &log)
			t.Fatalf("after %q:\n%v", log, err)
		}
	})
}

// runRef runs ops through Decide and the model, describing each step into
// log when it is not nil, and returns their first disagreement.
func runRef(t *testing.T, ops []byte, log *[]string) error {
	j := newJudged(t, "k")
	m := &refModel{key: "k", acks: map[string]refAck{}, clients: map[string]*refClient{}}
	for i := 0; i+1 < len(ops) && i < 2*200; i += 2 {
		desc, err := m.step(j, ops[i], ops[i+1])
		if log != nil {
			*log = append(*log, fmt.Sprintf("%s at +%v", desc(), j.now.Sub(t0)))
		}
		if err == nil {
			err = m.compareView(j)
		}
		if err != nil {
			return err
		}
	}
	return m.compareMigrated(j)
}

var (
	refHolders = []string{"alice", "bob", "carol"}
	refTTLs    = []time.Duration{time.Second, 10 * time.Second, time.Minute}
	// refModes are the modes an acquisition asks for: exclusive, shared,
	// and shared under one and two slots.
	refModes = []struct {
		mode  lock.Mode
		slots int
	}{{lock.ModeExclusive, 0}, {lock.ModeShared, 0}, {lock.ModeShared, 1}, {"", 2}}
)

// refTenure is one tenure as the contract describes it.
type refTenure struct {
	holder  string
	shared  bool
	slots   int
	token   int64
	checked bool
	start   time.Time
	leaseTo time.Time
	ttl     time.Duration
	over    bool // released, broken, or its expiry recorded
}

func (t *refTenure) mode() lock.Mode {
	if t.shared {
		return lock.ModeShared
	}
	return lock.ModeExclusive
}

// refAck is when a holder caught up: after the first begun tenures.
type refAck struct {
	begun      int
	generation int64
}

type refModel struct {
	key       string
	history   []*refTenure // every tenure ever begun, oldest first
	acks      map[string]refAck
	freeSince time.Time
	events    []lock.Event // recorded since the last step began
	queue     []*refEntry  // in arrival order, lapsed ones until a decision meets them
	clients   map[string]*refClient
}

// refEntry is one waiting request's place in the queue.
type refEntry struct {
	holder   string
	shared   bool
	slots    int
	since    time.Time
	leaseEnd time.Time
	dead     bool
}

func (e *refEntry) live(now time.Time) bool { return now.Before(e.leaseEnd) && !e.dead }

// refClient is what a waiting holder remembers: its place as Decide named
// it (seq) and as the model knows it, and since when it waits.
type refClient struct {
	seq   int64
	entry *refEntry
	since time.Time
}

func (m *refModel) client(holder string) *refClient {
	if m.clients[holder] == nil {
		m.clients[holder] = &refClient{}
	}
	return m.clients[holder]
}

// drop removes e from the queue, if it is there.
func (m *refModel) drop(e *refEntry) {
	m.queue = slices.DeleteFunc(m.queue, func(q *refEntry) bool { return q == e })
}

// generation counts, over the whole history, the first acquisition and
// every exclusive tenure whose holder is not the previous exclusive one's.
func (m *refModel) generation() int64 {
	var gen int64
	lastWriter := ""
	for i, t := range m.history {
		if i == 0 || !t.shared && lastWriter != "" && t.holder != lastWriter {
			gen++
		}
		if !t.shared {
			lastWriter = t.holder
		}
	}
	return gen
}

// lastWriter is the holder of the latest exclusive tenure, "" for none.
func (m *refModel) lastWriter() string {
	for _, t := range slices.Backward(m.history) {
		if !t.shared {
			return t.holder
		}
	}
	return ""
}

// poisoned: some exclusive tenure of another holder began after holder
// caught up.
func (m *refModel) poisoned(holder string) bool {
	a, ok := m.acks[holder]
	return ok && slices.ContainsFunc(m.history[a.begun:], func(t *refTenure) bool { return !t.shared && t.holder != holder })
}

func (m *refModel) catchUp(holder string) {
	m.acks[holder] = refAck{begun: len(m.history), generation: m.generation()}
}

// open are the tenures not yet over (their leases may have run out unseen),
// oldest first.
func (m *refModel) open() []*refTenure {
	var open []*refTenure
	for _, t := range m.history {
		if !t.over {
			open = append(open, t)
		}
	}
	return open
}

// tenureOf is holder's open tenure, nil for none.
func (m *refModel) tenureOf(holder string) *refTenure {
	for _, t := range m.open() {
		if t.holder == holder {
			return t
		}
	}
	return nil
}

func (m *refModel) record(typ string, t *refTenure, at time.Time, by *lock.Breaker) {
	m.events = append(m.events, lock.Event{Key: m.key, Type: typ, Holder: t.holder, Mode: t.mode(),
		Generation: m.generation(), Token: t.token, Time: at, By: by})
}

// end ends t at, recording typ.
func (m *refModel) end(t *refTenure, typ string, at time.Time, by *lock.Breaker) {
	m.record(typ, t, at, by)
	t.over, m.freeSince = true, laterOf(m.freeSince, at)
}

// settle records the expiries nobody has seen yet, each stamped with its
// lease's end, and returns those tenures; it drops the queue entries that
// lapsed or died. Every decision begins with it.
func (m *refModel) settle(now time.Time) []*refTenure {
	m.queue = slices.DeleteFunc(m.queue, func(e *refEntry) bool { return !e.live(now) })
	var settled []*refTenure
	for _, t := range m.open() {
		if !now.Before(t.leaseTo) {
			m.end(t, lock.EventExpired, t.leaseTo, nil)
			settled = append(settled, t)
		}
	}
	return settled
}

// die ends the oldest open tenure now, as an expiry, if its lease has not
// run out.
func (m *refModel) die(now time.Time) {
	if open := m.open(); len(open) > 0 && now.Before(open[0].leaseTo) {
		m.end(open[0], lock.EventExpired, now, nil)
	}
}

func laterOf(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// state is what lookers see, without the poisoned holders: held while any
// lease is live, expired while leases ran out unseen, else free.
func (m *refModel) state(now time.Time) lock.State {
	s := lock.State{Key: m.key, State: lock.StateFree, Holder: m.lastWriter(), Generation: m.generation(),
		Token: int64(len(m.history)), Since: m.freeSince}
	var live, unseen []*refTenure
	for _, t := range m.open() {
		if now.Before(t.leaseTo) {
			live = append(live, t)
		} else {
			unseen = append(unseen, t)
		}
	}
	switch {
	case len(live) > 0:
		s.State, s.Mode, s.Slots, s.Since = lock.StateHeld, live[0].mode(), live[0].slots, live[0].start
		for _, t := range live {
			s.ExpiresAt = laterOf(s.ExpiresAt, t.leaseTo)
			s.Holders = append(s.Holders, lock.HolderState{Holder: t.holder, Mode: t.mode(), Token: t.token,
				Since: t.start, ExpiresAt: t.leaseTo})
		}
	case len(unseen) > 0:
		last := slices.MaxFunc(unseen, func(a, b *refTenure) int { return a.leaseTo.Compare(b.leaseTo) })
		s.State, s.Mode, s.Slots, s.Since, s.ExpiresAt = lock.StateExpired, last.mode(), last.slots, last.leaseTo, last.leaseTo
	}
	for _, e := range m.queue {
		if e.live(now) {
			mode := lock.ModeExclusive
			if e.shared {
				mode = lock.ModeShared
			}
			s.Waiters = append(s.Waiters, lock.WaiterState{Holder: e.holder, Mode: mode, Since: e.since})
		}
	}
	return s
}

func (m *refModel) view(now time.Time) lock.State {
	s := m.state(now)
	for _, h := range refHolders {
		if m.poisoned(h) {
			s.PoisonedHolders = append(s.PoisonedHolders, h)
		}
	}
	return s
}

// holding is the reason holder does not hold the key in tenure token (any
// when 0), "" when it does.
func (m *refModel) holding(holder string, token int64, now time.Time) (string, *lock.State) {
	refusal := func(reason string) (string, *lock.State) {
		s := m.state(now)
		return reason, &s
	}
	for _, t := range m.settle(now) {
		if t.holder == holder && (token == 0 || token == t.token) {
			reason, s := refusal(lock.ReasonExpired)
			s.ExpiresAt = t.leaseTo
			return reason, s
		}
	}
	t := m.tenureOf(holder)
	switch {
	case len(m.open()) == 0:
		return refusal(lock.ReasonFree)
	case t == nil:
		return refusal(lock.ReasonOther)
	case token != 0 && token != t.token:
		return refusal(lock.ReasonTenure)
	}
	return "", nil
}

// pickToken names a tenure: 0 any, then the newest token, the one before,
// the next one.
func (m *refModel) pickToken(variant int) int64 {
	newest := int64(len(m.history))
	return [...]int64{0, newest, newest - 1, newest + 1}[variant%4]
}

// step runs one request (or clock jump) through both and compares them,
// returning what it did and how they disagree.
func (m *refModel) step(j *judged, op, arg byte) (desc func() string, err error) {
	holder, variant := refHolders[arg%3], int(arg/3)
	m.events = nil
	var req lock.Request
	desc = func() string { return fmt.Sprintf("%T%+v", req, req) }
	switch op % 11 {
	case 0, 1:
		asked := refModes[variant/6%len(refModes)]
		r := lock.AcquireRequest{Key: m.key, Holder: holder, TTL: refTTLs[variant%3],
			KeepTenureTTL: variant/3%2 == 1, Checked: op%11 == 0, Mode: asked.mode, Slots: asked.slots,
			Wait: variant/24%2 == 1, WaitLease: [...]time.Duration{2 * time.Second, 30 * time.Second}[variant/48%2]}
		c := m.client(holder)
		if r.Wait {
			r.Seq, r.QueuedSince = c.seq, c.since
		}
		req = r
		d, want := j.do(r), m.acquire(r, c, j.now)
		if r.Wait {
			c.seq, c.since = d.Grant.Seq, d.Grant.QueuedSince
		}
		err = m.compareGrant(d, want)
	case 10:
		c := m.client(holder)
		r := lock.LeaveQueueRequest{Key: m.key, Holder: holder, Seq: c.seq + int64(variant%2)}
		req = r
		m.settle(j.now)
		if variant%2 == 0 { // else another place, which is not this holder's
			m.drop(c.entry)
			*c = refClient{}
		}
		err = m.compareState(j.do(r), refOutcome{state: m.state(j.now)})
	case 2, 3, 4:
		r := lock.ReleaseRequest{Key: m.key, Holder: holder, Acknowledge: op%11 == 2}
		if op%11 == 4 {
			r.Token, r.Acknowledge = m.pickToken(variant), variant/4%2 == 0
		}
		req = r
		err = m.compareState(j.do(r), m.release(r, j.now))
	case 5:
		r := lock.RenewRequest{Key: m.key, Holder: holder, Token: m.pickToken(variant)}
		if variant/4%2 == 1 {
			r.TTL = refTTLs[variant/8%3]
		}
		req = r
		err = m.compareGrant(j.do(r), m.renew(r, j.now))
	case 6:
		r := lock.BreakRequest{Key: m.key, By: lock.Breaker{Holder: holder, User: "u", Host: "h", PID: variant}}
		req = r
		err = m.compareState(j.do(r), m.breakLock(r, j.now))
	case 7:
		r := lock.AcknowledgeRequest{Key: m.key, Holder: holder, Token: m.pickToken(variant)}
		req = r
		reason, current := m.holding(holder, r.Token, j.now)
		if reason == "" {
			m.catchUp(holder)
		}
		err = m.compareState(j.do(r), refOutcome{reason: reason, current: current})
	case 8:
		req = lock.ObserveRequest{Key: m.key}
		switch {
		case variant%2 == 1 && len(j.k.Tenures) > 0:
			// The store proved the open tenure's processes gone.
			desc = func() string { return "holder proved dead, then observe" }
			j.k.Tenures[0].ProvedDeadAt = j.now
			m.die(j.now)
		case variant%4 == 2 && len(j.k.Queue) > 0:
			desc = func() string { return "head waiter proved dead, then observe" }
			j.k.Queue[0].ProvedDeadAt = j.now
			m.queue[0].dead = true
		}
		m.settle(j.now)
		err = m.compareState(j.do(req), refOutcome{state: m.state(j.now)})
	case 9:
		j.now = m.jump(j.now, variant)
		return func() string { return "clock moves" }, nil
	}
	if err != nil {
		return desc, fmt.Errorf("%s at +%v: %w", desc(), j.now.Sub(t0), err)
	}
	return desc, nil
}

// jump moves the clock: onto an open lease's end, just before or after it,
// or by a fixed step.
func (m *refModel) jump(now time.Time, variant int) time.Time {
	var ends []time.Time
	for _, t := range m.open() {
		ends = append(ends, t.leaseTo)
	}
	for _, e := range m.queue {
		ends = append(ends, e.leaseEnd)
	}
	if len(ends) > 0 && variant%8 < 3 {
		end := ends[variant/8%len(ends)]
		return laterOf(now, end.Add(time.Duration(variant%8-1)*time.Microsecond))
	}
	return now.Add([...]time.Duration{0, time.Microsecond, time.Millisecond, 500 * time.Millisecond,
		5 * time.Second, 30 * time.Second, time.Minute, time.Hour}[variant%8])
}

// refOutcome is what the model expects of one decision.
type refOutcome struct {
	grant    lock.Grant
	state    lock.State
	reason   string
	current  *lock.State // the refusal's view of the key
	conflict *lock.ConflictError
}

func (m *refModel) acquire(req lock.AcquireRequest, c *refClient, now time.Time) refOutcome {
	m.settle(now)
	shared := req.Mode == lock.ModeShared || req.Slots > 0
	mode := lock.ModeExclusive
	if shared {
		mode = lock.ModeShared
	}
	var own *refEntry // the request's place in the queue
	if req.Wait && slices.Contains(m.queue, c.entry) {
		own = c.entry
	}
	since := now
	switch {
	case own != nil:
		since = own.since
	case req.Wait && !c.since.IsZero():
		since = c.since
	}
	refused := func(conflict *lock.ConflictError) refOutcome {
		if conflict != nil {
			m.drop(own)
			conflict.Current = m.state(now)
		}
		return refOutcome{conflict: conflict, grant: lock.Grant{Key: m.key, Holder: req.Holder, Mode: mode,
			Slots: req.Slots, Now: now, Current: m.state(now)}}
	}
	t := m.tenureOf(req.Holder)
	if t != nil && t.shared != shared {
		return refused(&lock.ConflictError{Key: m.key, Holder: req.Holder, Mode: mode, Slots: req.Slots,
			Held: t.mode(), Err: lock.ErrModeConflict})
	}
	readers, writers := 0, 0
	for _, o := range m.open() {
		if o.shared {
			readers++
		} else {
			writers++
		}
	}
	if shared {
		// The limit in force: the readers', else the queued readers'.
		var holders []int
		for _, o := range m.open() {
			if o.shared {
				holders = append(holders, o.slots)
			}
		}
		var queued []int
		for _, e := range m.queue {
			if e.shared {
				queued = append(queued, e.slots)
			}
		}
		switch {
		case len(holders) > 0 && holders[0] != req.Slots:
			return refused(&lock.ConflictError{Key: m.key, Holder: req.Holder, Mode: mode, Slots: req.Slots,
				Limit: holders[0], Err: lock.ErrSlotLimit})
		case len(holders) == 0 && len(queued) > 0 && queued[0] != req.Slots:
			return refused(&lock.ConflictError{Key: m.key, Holder: req.Holder, Mode: mode, Slots: req.Slots,
				Limit: queued[0], Queued: true, Err: lock.ErrSlotLimit})
		}
	}
	ahead := m.queue
	if own != nil {
		ahead = m.queue[:slices.Index(m.queue, own)]
	}
	writersAhead := slices.ContainsFunc(ahead, func(e *refEntry) bool { return !e.shared })
	reentrant := t != nil
	switch {
	case reentrant:
	case !req.Wait && len(m.queue) > 0,
		!shared && (readers+writers > 0 || len(ahead) > 0),
		shared && (writers > 0 || writersAhead || req.Slots > 0 && readers+len(ahead) >= req.Slots):
		out := refused(nil)
		out.grant.Ahead = len(ahead)
		if !req.Wait {
			return out
		}
		if own == nil {
			own = &refEntry{holder: req.Holder, shared: shared, slots: req.Slots, since: since}
			m.queue = append(m.queue, own)
		}
		own.leaseEnd = laterOf(own.leaseEnd, now.Add(req.WaitLease))
		c.entry = own
		out.grant.QueuedSince, out.grant.Seq = since, -1 // any place
		out.grant.Current = m.state(now)
		return out
	}
	m.drop(own)
	c.entry = nil
	if reentrant {
		if !req.KeepTenureTTL {
			t.ttl = req.TTL
		}
		t.leaseTo = laterOf(t.leaseTo, now.Add(t.ttl))
		t.checked = t.checked || req.Checked
	} else {
		t = &refTenure{holder: req.Holder, shared: shared, slots: req.Slots, token: int64(len(m.history)) + 1,
			checked: req.Checked, start: now, leaseTo: now.Add(req.TTL), ttl: req.TTL}
		m.history = append(m.history, t)
		m.record(lock.EventAcquired, t, now, nil)
		m.events[len(m.events)-1].Waited = now.Sub(since)
	}
	if _, ok := m.acks[req.Holder]; !ok && req.Checked {
		m.catchUp(req.Holder)
	}
	return refOutcome{grant: lock.Grant{Acquired: true, Key: m.key, Holder: req.Holder, Mode: t.mode(), Slots: t.slots,
		Generation: m.generation(), Token: t.token, Reentrant: reentrant, Poisoned: m.poisoned(req.Holder),
		Acknowledged: m.acks[req.Holder].generation, Checked: t.checked, AcquiredAt: t.start, ExpiresAt: t.leaseTo,
		TTL: t.ttl, Now: now, Waited: now.Sub(since)}}
}

func (m *refModel) renew(req lock.RenewRequest, now time.Time) refOutcome {
	if reason, current := m.holding(req.Holder, req.Token, now); reason != "" {
		return refOutcome{reason: reason, current: current}
	}
	t := m.tenureOf(req.Holder)
	if req.TTL > 0 {
		t.ttl = req.TTL
	}
	t.leaseTo = laterOf(t.leaseTo, now.Add(t.ttl))
	return refOutcome{grant: lock.Grant{Acquired: true, Key: m.key, Holder: req.Holder, Mode: t.mode(), Slots: t.slots,
		Generation: m.generation(), Token: t.token, Reentrant: true, Checked: t.checked, AcquiredAt: t.start, ExpiresAt: t.leaseTo, TTL: t.ttl, Now: now}}
}

func (m *refModel) release(req lock.ReleaseRequest, now time.Time) refOutcome {
	if reason, current := m.holding(req.Holder, req.Token, now); reason != "" {
		return refOutcome{reason: reason, current: current}
	}
	t := m.tenureOf(req.Holder)
	m.end(t, lock.EventReleased, now, nil)
	if req.Acknowledge && t.checked {
		m.catchUp(req.Holder)
	}
	return refOutcome{state: m.state(now)}
}

func (m *refModel) breakLock(req lock.BreakRequest, now time.Time) refOutcome {
	m.settle(now)
	open := m.open()
	if len(open) == 0 {
		s := m.state(now)
		return refOutcome{state: s, reason: lock.ReasonFree, current: &s}
	}
	for _, t := range open {
		by := req.By
		m.end(t, lock.EventBroken, now, &by)
	}
	return refOutcome{state: m.state(now)}
}

// compareRefusal checks a decision's refusal and events against the model.
func (m *refModel) compareRefusal(d lock.Decision, want refOutcome) error {
	if err := compareEvents(d.Events, m.events); err != nil {
		return err
	}
	if want.conflict != nil {
		return compareConflicts(d.Err, want.conflict)
	}
	if want.reason == "" {
		if d.Err != nil {
			return fmt.Errorf("refused: %v, want success", d.Err)
		}
		return nil
	}
	nh, ok := d.Err.(*lock.NotHeldError)
	if !ok || nh.Reason != want.reason || nh.Key != m.key {
		return fmt.Errorf("got %v, want a refusal (%s)", d.Err, want.reason)
	}
	return compareStates("refusal's current state", nh.Current, *want.current)
}

func (m *refModel) compareGrant(d lock.Decision, want refOutcome) error {
	if err := m.compareRefusal(d, want); err != nil || want.reason != "" {
		return err
	}
	g, w := d.Grant, want.grant
	if err := compareStates("current", g.Current, w.Current); err != nil {
		return err
	}
	g.Current, w.Current = lock.State{}, lock.State{}
	if w.Seq == -1 && g.Seq > 0 {
		w.Seq = g.Seq // the model names no places; Decide's is checked through the waiters' order
	}
	if g.Acquired != w.Acquired || g.Key != w.Key || g.Holder != w.Holder || g.Mode != w.Mode || g.Slots != w.Slots ||
		g.Generation != w.Generation ||
		g.Token != w.Token || g.Reentrant != w.Reentrant || g.Poisoned != w.Poisoned || g.Acknowledged != w.Acknowledged ||
		g.Checked != w.Checked || !g.AcquiredAt.Equal(w.AcquiredAt) || !g.ExpiresAt.Equal(w.ExpiresAt) ||
		g.TTL != w.TTL || !g.Now.Equal(w.Now) || g.Waited != w.Waited || g.Seq != w.Seq ||
		!g.QueuedSince.Equal(w.QueuedSince) || g.Ahead != w.Ahead {
		return fmt.Errorf("grant\n got %+v\nwant %+v", g, w)
	}
	return nil
}

func (m *refModel) compareState(d lock.Decision, want refOutcome) error {
	if err := m.compareRefusal(d, want); err != nil {
		return err
	}
	if want.reason != "" && want.state.Key == "" {
		return nil // a refused release or acknowledgement: no state to compare
	}
	return compareStates("state", d.State, want.state)
}

func (m *refModel) compareView(j *judged) error {
	return compareStates("view", lock.View(j.k, j.acks, j.now), m.view(j.now))
}

// compareMigrated checks that the key, stored the way earlier versions
// stored it (the last holder, generation and token, and an acknowledged
// generation per holder), migrates to a state that poisons the same holders.
func (m *refModel) compareMigrated(j *judged) error {
	if len(m.history) == 0 || slices.ContainsFunc(m.history, func(t *refTenure) bool { return t.shared }) {
		return nil // earlier versions had exclusive tenures only
	}
	last := m.history[len(m.history)-1]
	k := j.k
	k.Row = lock.MigrateRow(last.holder, m.generation(), last.token, k.Row.ChangedAt)
	acks := map[string]lock.Ack{}
	for h, a := range m.acks {
		acks[h] = lock.MigrateAck(k.Row, a.generation)
	}
	return compareStates("migrated view", lock.View(k, acks, j.now), m.view(j.now))
}

func compareConflicts(got error, want *lock.ConflictError) error {
	ce, ok := got.(*lock.ConflictError)
	if !ok {
		return fmt.Errorf("got %v, want a *ConflictError (%v)", got, want.Err)
	}
	if err := compareStates("conflict's current state", ce.Current, want.Current); err != nil {
		return err
	}
	if ce.Key != want.Key || ce.Holder != want.Holder || ce.Mode != want.Mode || ce.Slots != want.Slots ||
		ce.Held != want.Held || ce.Limit != want.Limit || ce.Queued != want.Queued || ce.Err != want.Err {
		return fmt.Errorf("conflict\n got %+v\nwant %+v", ce, want)
	}
	return nil
}

func compareStates(what string, got, want lock.State) error {
	if got.Key != want.Key || got.State != want.State || got.Mode != want.Mode || got.Slots != want.Slots ||
		!sameHolders(got.Holders, want.Holders) || !slices.Equal(got.Waiters, want.Waiters) ||
		got.Holder != want.Holder || got.Generation != want.Generation ||
		got.Token != want.Token || !got.Since.Equal(want.Since) || !got.ExpiresAt.Equal(want.ExpiresAt) ||
		!slices.Equal(got.PoisonedHolders, want.PoisonedHolders) {
		return fmt.Errorf("%s\n got %+v\nwant %+v", what, got, want)
	}
	return nil
}

// sameHolders compares holders field by field, keepers included.
func sameHolders(a, b []lock.HolderState) bool {
	return slices.EqualFunc(a, b, func(x, y lock.HolderState) bool {
		return x.Holder == y.Holder && x.Mode == y.Mode && x.Token == y.Token && x.Since == y.Since &&
			x.ExpiresAt == y.ExpiresAt && slices.Equal(x.Keepers, y.Keepers)
	})
}

func compareEvents(got, want []lock.Event) error {
	if !slices.EqualFunc(got, want, func(a, b lock.Event) bool {
		return a.Key == b.Key && a.Type == b.Type && a.Holder == b.Holder && a.Mode == b.Mode && a.Waited == b.Waited &&
			a.Generation == b.Generation &&
			a.Token == b.Token && a.Time.Equal(b.Time) && (a.By == nil) == (b.By == nil) && (a.By == nil || *a.By == *b.By)
	}) {
		return fmt.Errorf("events\n got %+v\nwant %+v", got, want)
	}
	return nil
}
