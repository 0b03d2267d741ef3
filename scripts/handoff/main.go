// Command handoff measures how fast a released lock reaches a waiting
// process: N real processes (this program re-executed as workers) pass one
// lock back and forth through package lock against one SQLite file.
//
// The hand-off latency of tenure T+1 is the time from the instant before
// its previous holder called Guard.Release on tenure T to the instant the
// next holder's Lock returned with tenure T+1, when the two are different
// processes. Tenure tokens pair the two instants; both are read from the
// system's wall clock, which all processes on a machine share.
//
//	go run ./scripts/handoff -n 2 -handoffs 1000
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/sqlite"
)

func main() {
	var (
		workers  = flag.Int("n", 2, "worker processes")
		handoffs = flag.Int("handoffs", 1000, "acquisitions in all, shared between the workers")
		hold     = flag.Duration("hold", 20*time.Millisecond, "how long a worker holds the lock")
		gap      = flag.Duration("gap", 10*time.Millisecond, "how long a worker pauses after releasing before it waits again (shorter than -hold, so that another worker is already waiting at each release)")
		warmup   = flag.Int("warmup", 20, "first hand-offs left out (process start-up)")
		db       = flag.String("db", "", "SQLite file (default: a new one in a temporary directory)")
		worker   = flag.Int("worker", -1, "internal: run as worker number N")
	)
	flag.Parse()
	if *worker >= 0 {
		if err := work(*db, *worker, *handoffs, *hold, *gap); err != nil {
			fmt.Fprintf(os.Stderr, "worker %d: %v\n", *worker, err)
			os.Exit(1)
		}
		return
	}
	if *workers < 2 || *gap >= *hold {
		fmt.Fprintln(os.Stderr, "handoff: need -n 2 or more and -gap shorter than -hold")
		os.Exit(2)
	}
	if *db == "" {
		dir, err := os.MkdirTemp("", "xplock-handoff")
		check(err)
		defer os.RemoveAll(dir)
		*db = filepath.Join(dir, "locks.db")
	}
	check(measure(*db, *workers, *handoffs, *hold, *gap, *warmup))
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "handoff:", err)
		os.Exit(1)
	}
}

// record is one worker's acquisition (acq) or release (rel) of a tenure.
type record struct {
	worker int
	kind   string
	token  int64
	at     int64 // Unix nanoseconds
	done   int64 // rel: when Release returned
}

func measure(db string, workers, handoffs int, hold, gap time.Duration, warmup int) error {
	// Create the database before the workers race to do it.
	s, err := sqlite.Open(context.Background(), db, sqlite.Options{})
	if err != nil {
		return err
	}
	s.Close()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	var (
		mu      sync.Mutex
		records []record
		wg      sync.WaitGroup
		errs    = make(chan error, workers)
	)
	start := time.Now()
	for w := range workers {
		n := handoffs / workers
		if w < handoffs%workers {
			n++
		}
		c := exec.Command(self, "-worker", strconv.Itoa(w), "-db", db, "-handoffs", strconv.Itoa(n),
			"-hold", hold.String(), "-gap", gap.String())
		c.Stderr = os.Stderr
		out, err := c.StdoutPipe()
		if err != nil {
			return err
		}
		if err := c.Start(); err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				var r record
				if _, err := fmt.Sscan(sc.Text(), &r.kind, &r.token, &r.at, &r.done); err != nil {
					errs <- fmt.Errorf("worker %d: bad line %q", w, sc.Text())
					return
				}
				r.worker = w
				mu.Lock()
				records = append(records, r)
				mu.Unlock()
			}
			if err := c.Wait(); err != nil {
				errs <- fmt.Errorf("worker %d: %w", w, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	elapsed := time.Since(start)

	released := map[int64]record{}
	acquired := map[int64]record{}
	for _, r := range records {
		if r.kind == "rel" {
			released[r.token] = r
		} else {
			acquired[r.token] = r
		}
	}
	var latencies, releases []time.Duration
	regrabs := 0
	for token, acq := range acquired {
		rel, ok := released[token-1]
		if !ok || token <= int64(warmup)+1 {
			continue
		}
		if rel.worker == acq.worker {
			regrabs++ // the releaser took it back before a waiter woke
			continue
		}
		latencies = append(latencies, time.Duration(acq.at-rel.at))
		releases = append(releases, time.Duration(rel.done-rel.at))
	}
	if len(latencies) == 0 {
		return errors.New("no hand-offs measured")
	}
	slices.Sort(latencies)
	// A releaser that took the lock back found no waiter woken within -gap:
	// count those hand-offs as slower than any measured one.
	for range regrabs {
		latencies = append(latencies, time.Duration(1<<62))
	}
	q := func(p float64) time.Duration { return latencies[int(p*float64(len(latencies)-1))] }
	fmt.Printf("hand-off latency between %d processes (release called -> other process's Lock returned), %d hand-offs in %s:\n",
		workers, len(latencies), elapsed.Round(time.Millisecond))
	show := func(d time.Duration) string {
		if d == 1<<62 {
			return ">" + gap.String()
		}
		return d.String()
	}
	fmt.Printf("  min %s  p50 %s  p90 %s  p99 %s  max %s\n", show(q(0)), show(q(0.50)), show(q(0.90)), show(q(0.99)), show(latencies[len(latencies)-1]))
	slices.Sort(releases)
	fmt.Printf("  the releaser's Release call alone: p50 %s  p99 %s\n", releases[len(releases)/2], releases[len(releases)*99/100])
	fmt.Printf("  releaser took the lock back before a waiter woke (counted as >%s): %d times\n", gap, regrabs)
	if n := len(latencies); n > 0 {
		var hist strings.Builder
		for _, b := range []time.Duration{500 * time.Microsecond, time.Millisecond, 2 * time.Millisecond, 5 * time.Millisecond, 10 * time.Millisecond} {
			i, _ := slices.BinarySearch(latencies, b)
			fmt.Fprintf(&hist, "  <%s: %.1f%%", b, 100*float64(i)/float64(n))
		}
		fmt.Println(hist.String())
	}
	return nil
}

// work takes and releases the lock handoffs times as holder wN, printing
// "acq TOKEN NANOS 0" and "rel TOKEN NANOS DONE" lines when done.
func work(db string, w, handoffs int, hold, gap time.Duration) error {
	ctx := context.Background()
	s, err := sqlite.Open(ctx, db, sqlite.Options{})
	if err != nil {
		return err
	}
	defer s.Close()
	l, err := lock.New(s, "handoff", "w"+strconv.Itoa(w), lock.Options{})
	if err != nil {
		return err
	}
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	type stamp struct {
		token          int64
		acq, rel, done int64
	}
	stamps := make([]stamp, 0, handoffs)
	for range handoffs {
		g, err := l.Lock(ctx)
		acq := time.Now().UnixNano()
		var poisoned *lock.PoisonError
		if errors.As(err, &poisoned) {
			g, err = poisoned.IntoGuard(), nil
		}
		if err != nil {
			return err
		}
		time.Sleep(hold)
		rel := time.Now().UnixNano()
		if err := g.Release(ctx); err != nil {
			return err
		}
		stamps = append(stamps, stamp{g.Token(), acq, rel, time.Now().UnixNano()})
		time.Sleep(gap)
	}
	for _, st := range stamps {
		fmt.Fprintf(out, "acq %d %d 0\nrel %d %d %d\n", st.token, st.acq, st.token, st.rel, st.done)
	}
	return nil
}
