package main

// Mutual exclusion: 16 holders run many run-mode critical sections on one
// key at once. Each section marks itself with mkdir (atomic: it fails if
// another section is inside), increments a counter file with a plain
// read-modify-write, and logs the lock's environment. No section may find
// another inside, no increment may be lost, and the log must show the
// generation, token and poison rules in the order the sections ran.

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// mutexSection is the critical section. It runs in the test's directory.
const mutexSection = `
if mkdir inside 2>/dev/null; then mine=1; else mine=0; echo "$XPLOCK_HOLDER $XPLOCK_TOKEN" >> overlaps; fi
n=$(cat count)
echo $((n + 1)) > count
echo "$XPLOCK_TOKEN $XPLOCK_GENERATION $XPLOCK_HOLDER $XPLOCK_POISONED $XPLOCK_KEY" >> log
if [ $mine = 1 ]; then rmdir inside; fi
`

func TestReliabilityMutualExclusion(t *testing.T) {
	scale := reliabilityScale(t)
	bin := xplockBin(t)
	dir := t.TempDir()
	db := filepath.Join(dir, "locks.db")
	const lanes = 16
	sections := 3 * scale
	if testing.Short() {
		sections = 2
	}
	total := lanes * sections
	if err := os.WriteFile(filepath.Join(dir, "count"), []byte("0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	createStore(t, db, 2*total+10)
	env := childEnv(db)
	wait := fmt.Sprintf("%dm", 5*scale)
	start := time.Now()
	failed := runLanes(t, slices.Repeat([]int{sections}, lanes), func(lane, _ int) proc {
		// Waiting is not fair: a waiter may lose to others for a long time.
		return runProc(t, bin, []string{"acquire", "k", "-H", fmt.Sprintf("p%d", lane), "--wait", wait, "--ttl", "30s",
			"--", "sh", "-c", mutexSection}, env, dir, 0)
	})
	ran := time.Since(start)
	if failed > 0 {
		t.Errorf("%d of %d runs failed", failed, total)
	}

	if b, err := os.ReadFile(filepath.Join(dir, "overlaps")); err == nil {
		t.Errorf("critical sections overlapped: %d found another inside", strings.Count(string(b), "\n"))
	}
	b, err := os.ReadFile(filepath.Join(dir, "count"))
	if err != nil {
		t.Fatal(err)
	}
	if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err != nil || n != total {
		t.Errorf("count is %q after %d sections: %d updates lost", strings.TrimSpace(string(b)), total, total-n)
	}
	if t.Failed() {
		t.FailNow()
	}

	// The log is in the order the sections ran.
	b, err = os.ReadFile(filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != total {
		t.Fatalf("%d sections logged, want %d", len(lines), total)
	}
	type section struct {
		token, gen     int64
		holder, poison string
	}
	var log []section
	lastGen := map[string]int64{} // acknowledged: every section exits 0
	var prev section
	for i, line := range lines {
		f := strings.Fields(line)
		if len(f) != 5 || f[4] != "k" {
			t.Fatalf("log line %d: %q", i+1, line)
		}
		s := section{holder: f[2], poison: f[3]}
		s.token, _ = strconv.ParseInt(f[0], 10, 64)
		s.gen, _ = strconv.ParseInt(f[1], 10, 64)
		wantGen := int64(1)
		if i > 0 {
			wantGen = prev.gen
			if s.holder != prev.holder {
				wantGen++
			}
			if s.token <= prev.token {
				t.Errorf("section %d: token %d after %d: tokens must increase", i+1, s.token, prev.token)
			}
		}
		if s.gen != wantGen {
			t.Errorf("section %d (%s after %s): generation %d, want %d", i+1, s.holder, prev.holder, s.gen, wantGen)
		}
		acked, ok := lastGen[s.holder]
		if wantPoison := map[bool]string{true: "1", false: "0"}[ok && acked != s.gen]; s.poison != wantPoison {
			t.Errorf("section %d: %s got XPLOCK_POISONED=%s, want %s (it acknowledged generation %d, now %d)",
				i+1, s.holder, s.poison, wantPoison, acked, s.gen)
		}
		lastGen[s.holder] = s.gen
		log = append(log, s)
		prev = s
	}

	// The store agrees: the lock is free, and its history holds every
	// tenure in the same order.
	p := runProc(t, bin, []string{"status", "k", "--history", "--json"}, env, dir, 0)
	var st statusOut
	if err := decodeLine(p.Stdout, &st); p.Exit != 0 || err != nil || len(st.Locks) != 1 {
		t.Fatalf("status: %v\n%s", err, p)
	}
	l := st.Locks[0]
	var wantPoisoned []string // every holder whose last section was before the last change of holder
	for h, g := range lastGen {
		if g != prev.gen {
			wantPoisoned = append(wantPoisoned, h)
		}
	}
	slices.Sort(wantPoisoned)
	if l.State != "free" || l.Generation != prev.gen || l.Token != prev.token || !slices.Equal(l.PoisonedHolders, wantPoisoned) {
		t.Errorf("final state: %s at generation %d, token %d, poisoned %v; want free at generation %d, token %d, poisoned %v",
			l.State, l.Generation, l.Token, l.PoisonedHolders, prev.gen, prev.token, wantPoisoned)
	}
	if len(l.History) != 2*total {
		t.Fatalf("history has %d events, want %d", len(l.History), 2*total)
	}
	for i, s := range log {
		acq, rel := l.History[2*i], l.History[2*i+1]
		if acq.Event != "acquired" || rel.Event != "released" || acq.Token != s.token || rel.Token != s.token ||
			acq.Holder != s.holder || acq.Generation != s.gen {
			t.Errorf("history events %d and %d: %+v, %+v; want the tenure of section %d: %+v", 2*i+1, 2*i+2, acq, rel, i+1, s)
			break
		}
	}
	// How long a tenure lasts (start CMD, run it, release) and how long the
	// lock stays free before the next waiter has it.
	var held, handoff []time.Duration
	for i, e := range l.History {
		at, _ := time.Parse(time.RFC3339Nano, e.Time)
		if i > 0 {
			prev, _ := time.Parse(time.RFC3339Nano, l.History[i-1].Time)
			if e.Event == "released" {
				held = append(held, at.Sub(prev))
			} else {
				handoff = append(handoff, at.Sub(prev))
			}
		}
	}
	t.Logf("%d holders x %d run-mode critical sections = %d sections in %s: no overlap, no lost update, "+
		"generations, tokens, poison and history as SPEC.md says; median tenure %s, median hand-off %s",
		lanes, sections, total, ran.Round(time.Millisecond), medianDuration(held), medianDuration(handoff))
}

func medianDuration(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	d = slices.Clone(d)
	slices.Sort(d)
	return d[len(d)/2].Round(100 * time.Microsecond)
}
