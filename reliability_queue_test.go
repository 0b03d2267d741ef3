//go:build linux

package main

// Fair waiting with real processes: waiters are served in the order they
// arrived, nobody barges past the queue, a reader does not overtake a
// queued writer, and a waiter that dies or gives up stops blocking the
// queue. Each waiter is started only once `status --json` shows the one
// before it queued, so the arrival order is known.

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/sqlite"
)

// queueSetup is a store file and a way to run xplock on it.
type queueSetup struct {
	t   *testing.T
	dir string
	db  string
}

func newQueueSetup(t *testing.T) *queueSetup {
	dir := t.TempDir()
	return &queueSetup{t: t, dir: dir, db: filepath.Join(dir, "locks.db")}
}

// run runs xplock to its end.
func (s *queueSetup) run(args ...string) proc {
	s.t.Helper()
	return runProc(s.t, xplockBin(s.t), args, childEnv(s.db), s.dir, time.Minute)
}

// must runs xplock and fails the test unless it exits 0.
func (s *queueSetup) must(args ...string) proc {
	s.t.Helper()
	p := s.run(args...)
	if p.Exit != 0 {
		s.t.Fatalf("%v", p)
	}
	checkNoRace(s.t, p)
	return p
}

// start runs xplock in the background; its result arrives on the channel.
func (s *queueSetup) start(args ...string) <-chan proc {
	done := make(chan proc, 1)
	go func() { done <- runProc(s.t, xplockBin(s.t), args, childEnv(s.db), s.dir, time.Minute) }()
	return done
}

// waiters is the key's queue as `status --json` shows it, head first.
func (s *queueSetup) waiters(key string) []string {
	s.t.Helper()
	p := s.must("status", key, "--json")
	var out struct {
		Locks []struct {
			Waiters []struct {
				Holder string `json:"holder"`
				Mode   string `json:"mode"`
			} `json:"waiters"`
		} `json:"locks"`
	}
	if err := json.Unmarshal([]byte(p.Stdout), &out); err != nil || len(out.Locks) != 1 {
		s.t.Fatalf("status --json: %v\n%s", err, p.Stdout)
	}
	var holders []string
	for _, w := range out.Locks[0].Waiters {
		holders = append(holders, w.Holder)
	}
	return holders
}

// awaitWaiters waits up to 30s for the key's queue to be want.
func (s *queueSetup) awaitWaiters(key string, want ...string) {
	s.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := s.waiters(key)
		if slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("queue of %s is %v after 30s, want %v", key, got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// store opens the store in this process, for requests the CLI cannot make.
func (s *queueSetup) store() *sqlite.Store {
	s.t.Helper()
	st, err := sqlite.Open(context.Background(), s.db, sqlite.Options{})
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { st.Close() })
	return st
}

func TestQueueServesInArrivalOrder(t *testing.T) {
	s := newQueueSetup(t)
	s.must("acquire", "k", "-H", "holder", "--ttl", "5m")
	var names []string
	var done []<-chan proc
	for i := range 5 {
		name := "w" + string(rune('1'+i))
		// Each marks its turn in the order file, and holds the lock a little
		// so that the next one truly waits for it.
		done = append(done, s.start("acquire", "k", "-H", name, "--wait", "60s", "-c", "echo "+name+" >> order; sleep 0.05"))
		names = append(names, name)
		s.awaitWaiters("k", names...)
	}
	s.must("release", "k", "-H", "holder")
	for _, d := range done {
		p := <-d
		if p.Exit != 0 {
			t.Errorf("%v", p)
		}
		checkNoRace(t, p)
	}
	order, err := os.ReadFile(filepath.Join(s.dir, "order"))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(string(order)); !slices.Equal(got, names) {
		t.Errorf("served in the order %v, want the arrival order %v", got, names)
	}
	if got := s.waiters("k"); len(got) != 0 {
		t.Errorf("queue left behind: %v", got)
	}
	// History says how long each of them waited.
	var status struct {
		Locks []struct {
			History []struct {
				Event  string   `json:"event"`
				Holder string   `json:"holder"`
				Waited *float64 `json:"waited"`
			} `json:"history"`
		} `json:"locks"`
	}
	if err := json.Unmarshal([]byte(s.must("status", "k", "--history", "--json").Stdout), &status); err != nil {
		t.Fatal(err)
	}
	for _, e := range status.Locks[0].History {
		switch {
		case e.Event != lock.EventAcquired:
		case e.Waited == nil:
			t.Errorf("%s's acquired event has no waited", e.Holder)
		case (e.Holder == "holder") != (*e.Waited == 0):
			t.Errorf("%s's acquired event says it waited %vs", e.Holder, *e.Waited)
		}
	}
}

// A --nowait never barges in: refused while anyone is queued, even when
// the lock itself is free. The queued waiter here is a library request
// with a long waiting lease that is not trying again, so that the lock
// stays free with it queued for as long as the test needs.
func TestQueueNowaitRefusedWhileQueued(t *testing.T) {
	s := newQueueSetup(t)
	s.must("acquire", "k", "-H", "holder", "--ttl", "5m")
	st := s.store()
	g, err := st.Acquire(context.Background(), lock.AcquireRequest{Key: "k", Holder: "patient", TTL: time.Minute,
		Checked: true, Wait: true, WaitLease: 10 * time.Minute})
	if err != nil || g.Acquired || g.Seq == 0 {
		t.Fatalf("queueing: %+v, %v", g, err)
	}
	s.must("release", "k", "-H", "holder")
	s.awaitWaiters("k", "patient")

	p := s.run("acquire", "k", "-H", "barger", "--nowait")
	if p.Exit != 4 || !strings.Contains(p.Stderr, "free") || !strings.Contains(p.Stderr, "1 queued") {
		t.Errorf("--nowait on a free lock with a waiter queued: want exit 4 saying it is free with 1 queued; %v", p)
	}
	p = s.run("acquire", "k", "-H", "barger", "--nowait", "--json")
	if p.Exit != 4 || !strings.Contains(p.Stdout, `"acquired":false`) || !strings.Contains(p.Stdout, `"holder":"patient"`) {
		t.Errorf("--nowait --json: want the refusal listing the waiter; %v", p)
	}
	s.awaitWaiters("k", "patient") // the refused request did not queue

	// The waiter's turn: it takes the lock at its next try.
	g, err = st.Acquire(context.Background(), lock.AcquireRequest{Key: "k", Holder: "patient", TTL: time.Minute,
		Checked: true, Wait: true, Seq: g.Seq, QueuedSince: g.QueuedSince})
	if err != nil || !g.Acquired {
		t.Fatalf("the waiter's next try: %+v, %v", g, err)
	}
	s.awaitWaiters("k")
}

// A reader that arrives after a queued writer waits behind it, even though
// the lock is held shared and a reader could otherwise join it; it is
// served once the writer has had its turn.
func TestQueueReaderWaitsBehindQueuedWriter(t *testing.T) {
	s := newQueueSetup(t)
	s.must("acquire", "k", "-H", "reader1", "--shared")
	writer := s.start("acquire", "k", "-H", "writer", "--wait", "60s")
	s.awaitWaiters("k", "writer")

	p := s.run("acquire", "k", "-H", "reader2", "--shared", "--nowait")
	if p.Exit != 4 || !strings.Contains(p.Stderr, "1 queued ahead") {
		t.Errorf("a reader that does not wait, behind a queued writer: want exit 4 saying 1 queued ahead; %v", p)
	}
	reader2 := s.start("acquire", "k", "-H", "reader2", "--shared", "--wait", "60s", "--json")
	s.awaitWaiters("k", "writer", "reader2")

	s.must("release", "k", "-H", "reader1")
	if p := <-writer; p.Exit != 0 {
		t.Fatalf("the writer: %v", p)
	}
	// The writer holds it (detached): the reader still waits.
	s.awaitWaiters("k", "reader2")
	select {
	case p := <-reader2:
		t.Fatalf("the reader got in while the writer held the lock: %v", p)
	default:
	}
	s.must("release", "k", "-H", "writer")
	p = <-reader2
	if p.Exit != 0 || !strings.Contains(p.Stdout, `"mode":"shared"`) {
		t.Fatalf("the reader after the writer released: %v", p)
	}
	checkNoRace(t, p)
}

// A waiter killed with SIGKILL cannot leave the queue, but its entry is
// kept alive by its own process even when it acquires detached (no CMD, so
// its tenure would have no keepers): the next look proves it dead and
// skips it at once, well before its waiting lease (lock.DefaultWaitLease
// after its last try, which comes every third of that) would lapse.
func TestQueueKilledWaiterSkippedAtOnce(t *testing.T) {
	s := newQueueSetup(t)
	s.must("acquire", "k", "-H", "holder", "--ttl", "5m")
	victim := s.start("acquire", "k", "-H", "victim", "--wait", "60s")
	s.awaitWaiters("k", "victim")
	next := s.start("acquire", "k", "-H", "next", "--wait", "60s", "--json")
	s.awaitWaiters("k", "victim", "next")

	pid := s.pidOf("victim")
	killed := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-victim
	s.must("release", "k", "-H", "holder")
	p := <-next
	took := time.Since(killed)
	if p.Exit != 0 {
		t.Fatalf("the waiter behind the killed one: %v", p)
	}
	checkNoRace(t, p)
	events, err := s.store().History(context.Background(), "k", 0)
	if err != nil {
		t.Fatal(err)
	}
	var released, granted time.Time
	for _, e := range events {
		switch {
		case e.Type == lock.EventReleased && e.Holder == "holder":
			released = e.Time
		case e.Type == lock.EventAcquired && e.Holder == "next":
			granted = e.Time
		}
	}
	if released.IsZero() || granted.IsZero() {
		t.Fatalf("history %+v, want the holder's release and next's grant", events)
	}
	handoff := granted.Sub(released)
	t.Logf("served %v after the kill, %v after the release (waiting lease %v)", took, handoff, lock.DefaultWaitLease)
	// Measured from the kill, which leaves the victim's entry at least two
	// thirds of its waiting lease: room for a loaded machine, yet below
	// what waiting for the lease to lapse takes.
	if bound := 2 * time.Second; took >= bound || handoff >= bound {
		t.Errorf("the waiter behind a killed one got the lock %v after the kill (%v after the release), want within %v",
			took, handoff, bound)
	}
	var got struct {
		Waited float64 `json:"waited"`
	}
	if err := json.Unmarshal([]byte(p.Stdout), &got); err != nil || got.Waited < took.Seconds() {
		t.Errorf("acquire --json says it waited %vs (%v), want at least %v", got.Waited, err, took)
	}
}

// pidOf finds the running `xplock acquire ... -H holder` process.
func (s *queueSetup) pidOf(holder string) int {
	s.t.Helper()
	pids := processesMatching("-H " + holder + " --wait")
	if len(pids) != 1 {
		s.t.Fatalf("processes waiting as %s: %v, want one", holder, pids)
	}
	return pids[0]
}

// A waiter that gives up leaves the queue at once: the moment it has
// exited, status shows nobody waiting, and its exit-4 message said how
// many were queued ahead of it.
func TestQueueTimedOutWaiterLeavesAtOnce(t *testing.T) {
	s := newQueueSetup(t)
	s.must("acquire", "k", "-H", "holder", "--ttl", "5m")
	first := s.start("acquire", "k", "-H", "first", "--wait", "60s")
	s.awaitWaiters("k", "first")
	p := s.run("acquire", "k", "-H", "impatient", "--wait", "1500ms")
	if p.Exit != 4 || !strings.Contains(p.Stderr, "1 queued ahead") {
		t.Errorf("a wait that ran out: want exit 4 saying 1 queued ahead; %v", p)
	}
	if got := s.waiters("k"); !slices.Equal(got, []string{"first"}) {
		t.Errorf("right after the timed-out waiter exited the queue is %v, want [first]", got)
	}
	s.must("release", "k", "-H", "holder")
	if p := <-first; p.Exit != 0 {
		t.Errorf("%v", p)
	}
}

// queueOp is one step of a queue history for porcupine: a waiter's
// arrival in the queue, its grant, or a release.
type queueOp struct {
	kind   string // "arrive", "grant" or "release"
	holder string
}

// queueModel is the queue's ordering guarantee: waiters are granted the
// lock in the order they arrived, one at a time.
type queueModel struct {
	holder string
	queue  string // holders, comma-terminated, head first
}

var queuePorcupine = porcupine.Model{
	Init: func() any { return queueModel{holder: "holder"} },
	Step: func(state, input, _ any) (bool, any) {
		s, op := state.(queueModel), input.(queueOp)
		switch op.kind {
		case "arrive":
			s.queue += op.holder + ","
			return true, s
		case "grant":
			head, rest, _ := strings.Cut(s.queue, ",")
			if s.holder != "" || head != op.holder {
				return false, s
			}
			s.holder, s.queue = op.holder, rest
			return true, s
		default:
			if s.holder != op.holder {
				return false, s
			}
			s.holder = ""
			return true, s
		}
	},
	DescribeOperation: func(input, _ any) string {
		op := input.(queueOp)
		return op.kind + " " + op.holder
	},
}

// Porcupine checks the order in which real waiting processes were served
// against the queue's guarantee. Waiters arrive in batches: each batch is
// started once `status --json` shows every earlier one queued, so the
// arrival order is known between batches; within a batch (two at once) it
// is whatever the store saw, and the model allows either. An arrival spans
// from its process's start to the status that showed it queued; a grant
// ends when its command noted the time inside the critical section; a
// release begins when the command noted the time at its end and ends when
// the process exited.
func TestQueueOrderLinearizable(t *testing.T) {
	s := newQueueSetup(t)
	s.must("acquire", "k", "-H", "holder", "--ttl", "5m")
	type waiter struct {
		name        string
		started     int64
		queued      int64
		done        <-chan proc
		exited, end int64
	}
	var waiters []*waiter
	var names []string
	for _, batch := range [][]string{{"w1"}, {"w2", "w3"}, {"w4"}, {"w5", "w6"}, {"w7"}} {
		for _, name := range batch {
			w := &waiter{name: name, started: time.Now().UnixNano()}
			w.done = s.start("acquire", "k", "-H", name, "--wait", "60s", "-c",
				"date +%s%N > start."+name+"; sleep 0.02; date +%s%N > end."+name)
			waiters = append(waiters, w)
			names = append(names, name)
		}
		s.awaitWaiterSet("k", names)
		for _, w := range waiters[len(waiters)-len(batch):] {
			w.queued = time.Now().UnixNano()
		}
	}
	releaseCall := time.Now().UnixNano()
	s.must("release", "k", "-H", "holder")
	releaseReturn := time.Now().UnixNano()
	ops := []porcupine.Operation{{ClientId: 0, Input: queueOp{"release", "holder"}, Call: releaseCall, Return: releaseReturn}}
	for i, w := range waiters {
		p := <-w.done
		if p.Exit != 0 {
			t.Fatalf("%v", p)
		}
		checkNoRace(t, p)
		started, ended := s.nanosIn("start."+w.name), s.nanosIn("end."+w.name)
		ops = append(ops,
			porcupine.Operation{ClientId: i + 1, Input: queueOp{"arrive", w.name}, Call: w.started, Return: w.queued},
			porcupine.Operation{ClientId: i + 1, Input: queueOp{"grant", w.name}, Call: w.queued, Return: started},
			porcupine.Operation{ClientId: i + 1, Input: queueOp{"release", w.name}, Call: ended, Return: p.Return})
	}
	if res := porcupine.CheckOperations(queuePorcupine, ops); !res {
		for _, op := range ops {
			t.Logf("%v [%d, %d]", op.Input, op.Call, op.Return)
		}
		t.Fatal("the waiters were not served in arrival order")
	}
}

// awaitWaiterSet waits up to 30s for the key's queue to hold exactly the
// holders in want, in any order.
func (s *queueSetup) awaitWaiterSet(key string, want []string) {
	s.t.Helper()
	want = slices.Sorted(slices.Values(want))
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := slices.Sorted(slices.Values(s.waiters(key)))
		if slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("queue of %s is %v after 30s, want %v", key, got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// nanosIn reads the Unix nanoseconds a command wrote into file.
func (s *queueSetup) nanosIn(file string) int64 {
	s.t.Helper()
	b, err := os.ReadFile(filepath.Join(s.dir, file))
	if err != nil {
		s.t.Fatal(err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		s.t.Fatalf("%s: %v", file, err)
	}
	return n
}
