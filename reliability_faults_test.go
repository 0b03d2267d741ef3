package main

// Faults: holders are killed with SIGKILL at random moments (starting,
// waiting, holding, while a run-mode child runs, releasing) while others
// wait for the lock with short leases. Afterwards the database passes
// PRAGMA integrity_check, every lock comes back once the lease of a dead
// holder ends, generations and tokens never went down in any snapshot, and
// every acquisition and release a process reported is in the history, whose
// tenures follow SPEC.md's generation rule and each end exactly once.

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/sqlite"
)

// faultReport is an acquisition or release a process reported as done.
type faultReport struct {
	Event      string `json:"event"` // "acquired" or "released"
	Key        string `json:"key"`
	Holder     string `json:"holder"`
	Generation int64  `json:"generation"`
	Token      int64  `json:"token"`
	Reentrant  bool   `json:"reentrant"`
}

type faultLog struct {
	mu      sync.Mutex
	reports []faultReport
	started map[string]int
	killed  map[string]int
	exits   map[string]int
}

func (f *faultLog) add(kind string, p proc, reports ...faultReport) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reports = append(f.reports, reports...)
	f.started[kind]++
	if p.Killed {
		f.killed[kind]++
	} else {
		f.exits[fmt.Sprintf("%s exit %d", kind, p.Exit)]++
	}
}

func TestReliabilityFaults(t *testing.T) {
	scale := reliabilityScale(t)
	bin := xplockBin(t)
	dir := t.TempDir()
	db := filepath.Join(dir, "locks.db")
	keys := []string{"k0", "k1"}
	const cliLanes, libLanes = 5, 2
	rounds := 6 * scale
	if testing.Short() {
		rounds = 3
	}
	createStore(t, db, 1000000)
	env := childEnv(db)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	flog := &faultLog{started: map[string]int{}, killed: map[string]int{}, exits: map[string]int{}}
	start := time.Now()

	// A monitor reads the state over and over; generations and tokens must
	// never go down. Some readers are killed too.
	done := make(chan struct{})
	snapshots, monitorDone := 0, make(chan struct{})
	go func() {
		defer close(monitorDone)
		rng := rand.New(rand.NewPCG(seed, 99))
		last := map[string][2]int64{}
		for {
			select {
			case <-done:
				return
			default:
			}
			var kill time.Duration
			if rng.IntN(8) == 0 {
				kill = time.Duration(1 + rng.Int64N(int64(150*time.Millisecond)))
			}
			p := runProc(t, bin, []string{"status", "--json"}, env, dir, kill)
			flog.add("status", p)
			checkNoRace(t, p)
			if p.Killed {
				continue
			}
			var st statusOut
			if err := decodeLine(p.Stdout, &st); p.Exit != 0 || err != nil || storeErrorPattern.MatchString(p.Stderr) {
				t.Errorf("status: %v\n%s", err, p)
				continue
			}
			for _, l := range st.Locks {
				prev := last[l.Key]
				if l.Generation < prev[0] || l.Token < prev[1] {
					t.Errorf("%s went back from generation %d, token %d to generation %d, token %d",
						l.Key, prev[0], prev[1], l.Generation, l.Token)
				}
				last[l.Key] = [2]int64{l.Generation, l.Token}
				snapshots++
			}
		}
	}()

	var wg sync.WaitGroup
	for lane := range cliLanes {
		holder := fmt.Sprintf("f%d", lane)
		rng := rand.New(rand.NewPCG(seed, uint64(lane)))
		wg.Go(func() {
			for range rounds {
				key := keys[rng.IntN(len(keys))]
				// Kill one process in three, at a moment spread over its life.
				killAt := func(life time.Duration) time.Duration {
					if rng.IntN(3) == 0 {
						return time.Duration(1 + rng.Int64N(int64(life)))
					}
					return 0
				}
				if rng.IntN(2) == 0 {
					// Run mode: the lease (1s) is renewed while the child runs.
					child := fmt.Sprintf("sleep 0.%02d", rng.IntN(20))
					p := runProc(t, bin, []string{"acquire", key, "-H", holder, "--ttl", "1s", "--wait", "60s", "--json",
						"--", "sh", "-c", child}, env, dir, killAt(400*time.Millisecond))
					flog.add("run", p, faultAcquired(p.Stderr)...)
					// 6: the lease could not be renewed in time on a loaded machine.
					faultCheck(t, p, 0, 6)
					continue
				}
				p := runProc(t, bin, []string{"acquire", key, "-H", holder, "--ttl", "1s", "--wait", "60s", "--json"},
					env, dir, killAt(200*time.Millisecond))
				acquired := faultAcquired(p.Stdout)
				flog.add("acquire", p, acquired...)
				faultCheck(t, p, 0, 3)
				if len(acquired) == 0 {
					continue
				}
				p = runProc(t, bin, []string{"release", key, "-H", holder, "--json"}, env, dir, killAt(150*time.Millisecond))
				var r releaseOut
				var released []faultReport
				// A refusal (exit 5) prints the key's state, not a release.
				if err := decodeLine(p.Stdout, &r); err == nil && r.Event == "released" {
					released = append(released, faultReport{Event: "released", Key: r.Key, Holder: r.Holder,
						Generation: r.Generation, Token: r.Token})
				} else if p.Exit == 0 && !p.Killed {
					t.Errorf("release printed no JSON: %s", p)
				}
				flog.add("release", p, released...)
				// 5: the lease ended before release (which is then no success).
				faultCheck(t, p, 0, 5)
			}
		})
	}
	for lane := range libLanes {
		holder := fmt.Sprintf("lib%d", lane)
		rng := rand.New(rand.NewPCG(seed, uint64(100+lane)))
		wg.Go(func() {
			for round := range rounds {
				var kill time.Duration
				if rng.IntN(3) != 0 {
					kill = time.Duration(1 + rng.Int64N(int64(time.Second)))
				}
				p := runProc(t, testBinary(t), nil, childEnv(db, workerEnv+"=faults",
					"XPLOCK_FAULT_HOLDER="+holder, "XPLOCK_FAULT_KEYS="+strings.Join(keys, ","),
					fmt.Sprintf("XPLOCK_FAULT_SEED=%d", seed+uint64(1000*lane+round))), dir, kill)
				checkNoRace(t, p)
				var reports []faultReport
				for line := range strings.Lines(p.Stdout) {
					var r faultReport
					if json.Unmarshal([]byte(line), &r) == nil {
						reports = append(reports, r)
					}
				}
				flog.add("library", p, reports...)
				if !p.Killed && p.Exit != 0 {
					t.Errorf("library worker failed: %s", p)
				}
			}
		})
	}
	wg.Wait()
	close(done)
	<-monitorDone
	ran := time.Since(start)

	// Every lock comes back: nobody holds one for longer than its lease.
	for _, key := range keys {
		p := runProc(t, bin, []string{"acquire", key, "-H", "checker", "--ttl", "1m", "--wait", "60s", "--json"}, env, dir, 0)
		var l leaseOut
		if (p.Exit != 0 && p.Exit != 3) || decodeLine(p.Stdout, &l) != nil {
			t.Errorf("%s did not come back: %s", key, p)
		} else if waited := time.Duration(p.Return - p.Call); waited > 20*time.Second {
			t.Errorf("%s came back only after %s; its leases are 1s", key, waited)
		}
	}

	// The file is intact.
	raw, err := sql.Open("sqlite3", "file:"+db+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	var integrity string
	if err := raw.QueryRow("PRAGMA integrity_check").Scan(&integrity); err != nil || integrity != "ok" {
		t.Errorf("PRAGMA integrity_check: %q, %v", integrity, err)
	}

	// The history holds every reported acquisition and release, and its
	// tenures follow the rules.
	p := runProc(t, bin, []string{"status", "--history", "--json"}, env, dir, 0)
	var st statusOut
	if err := decodeLine(p.Stdout, &st); err != nil || p.Exit != 0 {
		t.Fatalf("status --history: %v\n%s", err, p)
	}
	events := 0
	history := map[string][]eventOut{}
	for _, l := range st.Locks {
		history[l.Key] = l.History
		events += len(l.History)
		faultCheckHistory(t, l.Key, l.History)
	}
	type tenure struct {
		event, key, holder string
		token              int64
	}
	recorded := map[tenure]eventOut{}
	for key, h := range history {
		for _, e := range h {
			recorded[tenure{e.Event, key, e.Holder, e.Token}] = e
		}
	}
	for _, r := range flog.reports {
		if r.Reentrant {
			continue // not a state change: not in history
		}
		e, ok := recorded[tenure{r.Event, r.Key, r.Holder, r.Token}]
		if !ok || e.Generation != r.Generation {
			t.Errorf("reported but not in history: %+v", r)
		}
	}
	t.Logf("%d processes started, %d killed (by kind: started %v, killed %v); exits %v", countAll(flog.started),
		countAll(flog.killed), flog.started, flog.killed, flog.exits)
	t.Logf("verified: %d state snapshots monotonic, %d reported acquisitions and releases found in a history of %d events, "+
		"integrity_check ok, %d locks came back; ran %s", snapshots, len(flog.reports), events, len(keys),
		ran.Round(time.Millisecond))
}

func countAll(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// faultAcquired reads the acquisition a process reported in out (stdout
// detached, stderr in run mode), even if it was killed afterwards.
func faultAcquired(out string) []faultReport {
	var l leaseOut
	if decodeLine(out, &l) != nil || (l.Acquired != nil && !*l.Acquired) {
		return nil // nothing, or a refusal (exit 4)
	}
	return []faultReport{{Event: "acquired", Key: l.Key, Holder: l.Holder, Generation: l.Generation, Token: l.Token,
		Reentrant: l.Reentrant}}
}

// faultCheck fails on an exit code other than allowed by a process that was
// not killed, and on store errors reaching the user.
func faultCheck(t *testing.T, p proc, allowed ...int) {
	t.Helper()
	checkNoRace(t, p)
	if p.Killed {
		return
	}
	if !slices.Contains(allowed, p.Exit) || storeErrorPattern.MatchString(p.Stderr) {
		t.Errorf("want exit %v and no store error: %s", allowed, p)
	}
}

// faultCheckHistory checks a key's history: every tenure starts with an
// acquired event and ends with exactly one released, expired or broken
// event of the same tenure before the next starts; generations go up by one
// exactly when the holder changes; tokens increase.
func faultCheckHistory(t *testing.T, key string, h []eventOut) {
	t.Helper()
	failures := 0
	errorf := func(format string, args ...any) {
		t.Helper()
		if failures++; failures <= 5 {
			t.Errorf(format, args...)
		}
	}
	defer func() {
		if failures > 5 {
			t.Errorf("%s: %d more errors in the history", key, failures-5)
		}
	}()
	var open *eventOut
	var last *eventOut // the last acquisition
	for i := range h {
		e := &h[i]
		switch e.Event {
		case lock.EventAcquired:
			if open != nil {
				errorf("%s: event %d acquired by %s (token %d) while %s's tenure (token %d) never ended",
					key, i+1, e.Holder, e.Token, open.Holder, open.Token)
			}
			want := int64(1)
			if last != nil {
				want = last.Generation
				if e.Holder != last.Holder {
					want++
				}
				if e.Token <= last.Token {
					errorf("%s: event %d: token %d after %d", key, i+1, e.Token, last.Token)
				}
			}
			if e.Generation != want {
				errorf("%s: event %d: %s acquired at generation %d after %+v; want %d",
					key, i+1, e.Holder, e.Generation, last, want)
			}
			open, last = e, e
		case lock.EventReleased, lock.EventExpired, lock.EventBroken:
			if open == nil || open.Holder != e.Holder || open.Token != e.Token || open.Generation != e.Generation {
				errorf("%s: event %d: %s of %s (token %d) ends no open tenure (open: %+v)", key, i+1, e.Event,
					e.Holder, e.Token, open)
			}
			open = nil
		default:
			errorf("%s: event %d: unknown event %q", key, i+1, e.Event)
		}
	}
}

var _ = registerWorker("faults", faultWorker)

// faultWorker is a library user that takes and releases locks in a loop
// with a short renewed lease, printing each acquisition and release to
// stdout as it happens, until it is killed or has done 20 rounds.
func faultWorker() int {
	ctx := context.Background()
	holder := os.Getenv("XPLOCK_FAULT_HOLDER")
	keys := strings.Split(os.Getenv("XPLOCK_FAULT_KEYS"), ",")
	seed, _ := strconv.ParseUint(os.Getenv("XPLOCK_FAULT_SEED"), 10, 64)
	rng := rand.New(rand.NewPCG(seed, 7))
	store, err := sqlite.Open(ctx, os.Getenv("XPLOCK_DB"), sqlite.Options{HistoryLimit: 1000000})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer store.Close()
	report := func(r faultReport) {
		b, _ := json.Marshal(r)
		os.Stdout.Write(append(b, '\n'))
	}
	for range 20 {
		key := keys[rng.IntN(len(keys))]
		l, err := lock.New(store, key, holder, lock.Options{TTL: time.Second})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		g, err := l.Lock(wctx)
		cancel()
		if err != nil && !errors.Is(err, lock.ErrPoisoned) {
			fmt.Fprintf(os.Stderr, "lock %s: %v\n", key, err)
			return 1
		}
		gr := g.Grant()
		report(faultReport{Event: "acquired", Key: key, Holder: holder, Generation: gr.Generation, Token: gr.Token})
		time.Sleep(time.Duration(rng.IntN(50)) * time.Millisecond)
		if err := g.Release(ctx); err != nil {
			if errors.Is(err, lock.ErrLeaseLost) {
				continue // renewal fell behind on a loaded machine: allowed, and reported as lost
			}
			fmt.Fprintf(os.Stderr, "release %s: %v\n", key, err)
			return 1
		}
		report(faultReport{Event: "released", Key: key, Holder: holder, Generation: gr.Generation, Token: gr.Token})
	}
	return 0
}
