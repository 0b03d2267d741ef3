package main

// Shared tenures under contention, with real processes: a semaphore
// (--slots 2) whose critical sections measure how many of them are inside
// at once, and readers (--shared) mixed with writers on one key, whose
// sections log entering and leaving in one global order. Neither measure can
// itself race: slots are taken with mkdir, which fails when the directory
// exists, and the log is appended under flock(1) with its sequence number.

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xplock/xplock/lock"
)

// semaphoreSection takes the lowest free numbered slot directory, so the
// slot it gets is the number of sections inside at that moment (itself
// included) at most: with at most N inside it never needs slot N+1, and
// with N+1 inside one of them had to. It stays a little to let others in.
const semaphoreSection = `
i=1; while ! mkdir slot.$i 2>/dev/null; do i=$((i + 1)); done
echo "$i $XPLOCK_TOKEN $XPLOCK_HOLDER $XPLOCK_POISONED" >> slots.log
sleep 0.05
rmdir slot.$i
`

func TestReliabilitySemaphore(t *testing.T) {
	scale := reliabilityScale(t)
	dir := t.TempDir()
	db := filepath.Join(dir, "locks.db")
	const lanes, slots = 12, 2
	sections := 4 * scale
	if testing.Short() {
		sections = 2
	}
	total := lanes * sections
	createStore(t, db, 2*total+10)
	start := time.Now()
	failed := runLanes(t, slices.Repeat([]int{sections}, lanes), func(lane, _ int) proc {
		return runShared(t, db, dir, "pool", fmt.Sprintf("w%d", lane), lock.ModeShared, slots, semaphoreSection)
	})
	ran := time.Since(start)
	if failed > 0 {
		t.Fatalf("%d of %d runs failed", failed, total)
	}
	lines := readLines(t, filepath.Join(dir, "slots.log"))
	if len(lines) != total {
		t.Fatalf("%d sections logged, want %d", len(lines), total)
	}
	most, atMost := 0, 0
	for i, line := range lines {
		f := strings.Fields(line)
		if len(f) != 4 {
			t.Fatalf("log line %d: %q", i+1, line)
		}
		n, err := strconv.Atoi(f[0])
		if err != nil {
			t.Fatalf("log line %d: %q", i+1, line)
		}
		if n > most {
			most, atMost = n, 0
		}
		if n == most {
			atMost++
		}
		if f[3] != "0" {
			// Shared tenures never poison: nobody wrote.
			t.Errorf("section %d (%s, token %s) was told the lock is poisoned; no exclusive tenure ever began", i+1, f[2], f[1])
		}
	}
	switch {
	case most > slots:
		t.Errorf("%d sections were inside at once (%d times), the limit is %d", most, atMost, slots)
	case most < slots:
		t.Errorf("never more than %d section inside at once: the test did not contend (the limit is %d)", most, slots)
	}
	if state, _, history := statusOf(t, db, dir, "pool"); state != "free" || len(history) != 2*total {
		t.Errorf("final state %s with %d history events; want free with %d", state, len(history), 2*total)
	}
	t.Logf("%d holders x %d run-mode sections with --slots %d = %d sections in %s: at most %d inside at once (%d times)",
		lanes, sections, slots, total, ran.Round(time.Millisecond), most, atMost)
}

// rwSection logs entering and leaving under flock(1), each with the next
// number of a counter kept in the same lock, so the log's order is the order
// things happened in. A writer also marks itself with mkdir, which fails if
// another writer is inside.
const rwSection = `
logged() { flock rw.lock sh -c 'n=$(cat seq); echo $((n + 1)) > seq; echo "$n $0" >> rw.log' "$*"; }
logged enter $ROLE $XPLOCK_HOLDER $XPLOCK_TOKEN $XPLOCK_GENERATION $XPLOCK_POISONED
mine=0; if [ $ROLE = w ]; then if mkdir writer 2>/dev/null; then mine=1; else logged overlap w $XPLOCK_HOLDER; fi; fi
sleep 0.02
if [ $mine = 1 ]; then rmdir writer; fi
logged exit $ROLE $XPLOCK_HOLDER $XPLOCK_TOKEN
`

func TestReliabilityReadersWriters(t *testing.T) {
	scale := reliabilityScale(t)
	dir := t.TempDir()
	db := filepath.Join(dir, "locks.db")
	const readers = 6
	sections := 4 * scale
	if testing.Short() {
		sections = 2
	}
	// One writer writes most: it comes back after its own tenure, which
	// leaves the generation alone but must poison the readers; the other
	// writes once and moves the generation.
	perWriter := []int{2 * sections, 1}
	writers := len(perWriter)
	lanes := append(perWriter, slices.Repeat([]int{sections}, readers)...)
	total := 0
	for _, n := range lanes {
		total += n
	}
	if err := os.WriteFile(filepath.Join(dir, "seq"), []byte("1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	createStore(t, db, 2*total+10)
	start := time.Now()
	// A reader starts its next section once a writer section has ended
	// since its last one (or no writer is left): readers come back to a
	// cache that was written, while the writers contend with them.
	var mu sync.Mutex
	written := sync.NewCond(&mu)
	writes, writersLeft := 0, writers
	seen := make([]int, len(lanes))
	failed := runLanes(t, lanes, func(lane, section int) proc {
		if lane < writers {
			p := runShared(t, db, dir, "cache", fmt.Sprintf("w%d", lane), lock.ModeExclusive, 0, "ROLE=w\n"+rwSection)
			mu.Lock()
			if writes++; section == lanes[lane]-1 {
				writersLeft--
			}
			written.Broadcast()
			mu.Unlock()
			return p
		}
		mu.Lock()
		for section > 0 && writes == seen[lane] && writersLeft > 0 {
			written.Wait()
		}
		mu.Unlock()
		p := runShared(t, db, dir, "cache", fmt.Sprintf("r%d", lane-writers), lock.ModeShared, 0, "ROLE=r\n"+rwSection)
		mu.Lock()
		seen[lane] = writes
		mu.Unlock()
		return p
	})
	ran := time.Since(start)
	if failed > 0 {
		t.Fatalf("%d of %d runs failed", failed, total)
	}
	sum := checkReadersWriters(t, readLines(t, filepath.Join(dir, "rw.log")), total)
	if state, gen, history := statusOf(t, db, dir, "cache"); state != "free" || gen != sum.generation || len(history) != 2*total {
		t.Errorf("final state %s at generation %d with %d history events; want free at %d with %d",
			state, gen, len(history), sum.generation, 2*total)
	}
	t.Logf("%d readers x %d and %d writers x %v run-mode sections = %d in %s: no writer overlapped anything; "+
		"up to %d readers inside at once; %d reader sections (%d at the generation of their last) and %d writer sections "+
		"told of poison, as the rules say", readers, sections, writers, perWriter, total, ran.Round(time.Millisecond), sum.mostReaders,
		sum.poisonedReaders, sum.sameGeneration, sum.poisonedWriters)
}

type rwSummary struct {
	generation                       int64
	mostReaders                      int
	poisonedReaders, poisonedWriters int
	// sameGeneration counts the poisoned reader sections whose generation
	// is the one of their last section: the writer came back.
	sameGeneration int
}

// checkReadersWriters replays the log of rwSection: no reader overlaps a
// writer and no writer anything; tokens, generations and poison follow the
// rules. Every section exited 0, so every tenure acknowledged at its end.
func checkReadersWriters(t *testing.T, lines []string, total int) rwSummary {
	t.Helper()
	if n := len(lines) - strings.Count(strings.Join(lines, "\n"), " overlap "); n != 2*total {
		t.Fatalf("%d log lines, want %d (an enter and an exit per section)", n, 2*total)
	}
	var sum rwSummary
	readersIn := map[string]bool{}
	writerIn := ""
	var maxToken, lastWriterToken int64
	lastWriter := ""
	// writersSince counts, per holder, the writer sections of other holders
	// that entered since its last section exited (it acknowledged then).
	writersSince := map[string]int{}
	lastGen := map[string]int64{} // of each holder's last section; 0 before its first
	for i, line := range lines {
		f := strings.Fields(line)
		if len(f) < 4 || f[0] != strconv.Itoa(i+1) {
			t.Fatalf("log line %d out of sequence: %q", i+1, line)
		}
		event, role, holder := f[1], f[2], f[3]
		switch event {
		case "overlap":
			t.Errorf("log line %d: writer %s found another writer inside", i+1, holder)
		case "exit":
			if role == "w" {
				writerIn = ""
			} else {
				delete(readersIn, holder)
			}
			writersSince[holder] = 0
		case "enter":
			if len(f) != 7 {
				t.Fatalf("log line %d: %q", i+1, line)
			}
			token, _ := strconv.ParseInt(f[4], 10, 64)
			gen, _ := strconv.ParseInt(f[5], 10, 64)
			poisoned := f[6] == "1"
			if writerIn != "" {
				t.Errorf("log line %d: %s %s entered while writer %s was inside", i+1, role, holder, writerIn)
			}
			if sum.generation == 0 {
				sum.generation = 1
			}
			switch role {
			case "w":
				if len(readersIn) > 0 {
					t.Errorf("log line %d: writer %s entered while readers %v were inside", i+1, holder, slices.Sorted(maps.Keys(readersIn)))
				}
				if token <= maxToken {
					t.Errorf("log line %d: writer %s has token %d, not above every earlier one (%d)", i+1, holder, token, maxToken)
				}
				if lastWriter != "" && lastWriter != holder {
					sum.generation++
				}
				lastWriter, lastWriterToken, writerIn = holder, token, holder
				for h := range writersSince {
					if h != holder {
						writersSince[h]++
					}
				}
			default:
				readersIn[holder] = true
				sum.mostReaders = max(sum.mostReaders, len(readersIn))
				if token <= lastWriterToken {
					t.Errorf("log line %d: reader %s has token %d, not above the last writer's %d", i+1, holder, token, lastWriterToken)
				}
			}
			maxToken = max(maxToken, token)
			if gen != sum.generation {
				t.Errorf("log line %d: %s %s at generation %d, want %d", i+1, role, holder, gen, sum.generation)
			}
			// A newcomer is clean; afterwards a section is poisoned exactly
			// when another holder's writer section began since its last.
			wantPoisoned := lastGen[holder] != 0 && writersSince[holder] > 0
			if poisoned != wantPoisoned {
				t.Errorf("log line %d: %s %s told poisoned=%v, want %v (%d writer sections of others since its last)",
					i+1, role, holder, poisoned, wantPoisoned, writersSince[holder])
			}
			if poisoned && role == "w" {
				sum.poisonedWriters++
			} else if poisoned {
				sum.poisonedReaders++
				if gen == lastGen[holder] {
					sum.sameGeneration++
				}
			}
			lastGen[holder] = gen
		default:
			t.Fatalf("log line %d: %q", i+1, line)
		}
	}
	if sum.mostReaders < 2 {
		t.Errorf("never more than %d reader inside at once: the readers did not share", sum.mostReaders)
	}
	if sum.sameGeneration == 0 {
		t.Errorf("no reader was told of poison by a writer that came back (same generation): the run did not show it")
	}
	return sum
}

// runLanes runs a goroutine per lane, each running its number of sections
// processes one after the other, and returns how many failed: did not exit 0 or printed anything.
func runLanes(t *testing.T, sections []int, run func(lane, section int) proc) int {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := 0
	for lane, n := range sections {
		wg.Go(func() {
			for section := range n {
				p := run(lane, section)
				checkNoRace(t, p)
				if p.Exit != 0 || p.Stdout != "" || p.Stderr != "" {
					mu.Lock()
					if failed++; failed <= 3 {
						t.Errorf("want exit 0 and no output from xplock or the section: %s", p)
					}
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return failed
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// statusOf is the key's status with its whole history, as xplock prints it.
func statusOf(t *testing.T, db, dir, key string) (state string, generation int64, history []eventOut) {
	t.Helper()
	p := runProc(t, xplockBin(t), []string{"status", key, "--history", "--json"}, childEnv(db), dir, 0)
	var st statusOut
	if err := decodeLine(p.Stdout, &st); p.Exit != 0 || err != nil || len(st.Locks) != 1 {
		t.Fatalf("status: %v\n%s", err, p)
	}
	l := st.Locks[0]
	return l.State, l.Generation, l.History
}

// runShared runs section under sh with xplock in run mode, holding key as
// holder in mode (with --slots when slots is above zero).
func runShared(t *testing.T, db, dir, key, holder string, mode lock.Mode, slots int, section string) proc {
	t.Helper()
	args := []string{"acquire", key, "-H", holder, "--wait", "5m", "--ttl", "30s"}
	switch {
	case slots > 0:
		args = append(args, "--slots", strconv.Itoa(slots))
	case mode == lock.ModeShared:
		args = append(args, "--shared")
	}
	return runProc(t, xplockBin(t), append(args, "--", "sh", "-c", section), childEnv(db), dir, 0)
}
