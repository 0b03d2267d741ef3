// Command fairness measures how fairly a contended lock serves its
// waiters, xplock's (package lock on one SQLite file) side by side with
// flock(2), the kernel lock flock(1) takes, in one run.
//
// N worker processes (this program re-executed) each loop for -duration:
// ask for the lock, hold it for -hold, let go, and ask again at once (the
// case where an unfair lock lets the releaser barge back in). Each worker
// reports every wait (from asking to holding) and how many sections it
// completed. The report gives, per lock, each worker's worst wait and the
// spread of completed sections across workers, and checks xplock's worst
// wait against 1.5 × (N − 1) × hold plus the measured hand-off overhead:
// (N − 1) times the p99 gap between one section's end and the next one's
// start, in the same run.
//
//	go run ./scripts/fairness -n 6 -hold 50ms -duration 5s
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
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/sqlite"
)

func main() {
	var (
		workers  = flag.Int("n", 6, "worker processes")
		hold     = flag.Duration("hold", 50*time.Millisecond, "how long a worker holds the lock")
		duration = flag.Duration("duration", 5*time.Second, "how long each lock is measured")
		worker   = flag.Int("worker", -1, "internal: run as worker number N")
		impl     = flag.String("impl", "", "internal: the worker's lock, xplock or flock")
		path     = flag.String("path", "", "internal: the SQLite file or the flock file")
		start    = flag.Int64("start", 0, "internal: Unix nanoseconds at which workers start asking")
		until    = flag.Int64("until", 0, "internal: Unix nanoseconds at which workers stop asking")
	)
	flag.Parse()
	if *worker >= 0 {
		if err := work(*impl, *path, *worker, *hold, time.Unix(0, *start), time.Unix(0, *until)); err != nil {
			fmt.Fprintf(os.Stderr, "worker %d: %v\n", *worker, err)
			os.Exit(1)
		}
		return
	}
	if *workers < 2 {
		fmt.Fprintln(os.Stderr, "fairness: need -n 2 or more")
		os.Exit(2)
	}
	dir, err := os.MkdirTemp("", "xplock-fairness")
	check(err)
	defer os.RemoveAll(dir)
	db := filepath.Join(dir, "locks.db")
	// Create the database before the workers race to do it.
	s, err := sqlite.Open(context.Background(), db, sqlite.Options{})
	check(err)
	s.Close()
	flockFile := filepath.Join(dir, "flock")
	check(os.WriteFile(flockFile, nil, 0o600))

	fmt.Printf("%d workers, hold %s, %s per lock\n", *workers, *hold, *duration)
	var xplockWorst, bound time.Duration
	for _, l := range []struct{ impl, path string }{{"xplock", db}, {"flock", flockFile}} {
		r, err := measure(l.impl, l.path, *workers, *hold, *duration)
		check(err)
		worst := r.report(l.impl, *hold)
		if l.impl == "xplock" {
			xplockWorst = worst
			bound = time.Duration(1.5*float64(*workers-1)*float64(*hold)) + time.Duration(*workers-1)*r.gap(0.99)
		}
	}
	fmt.Printf("\nxplock's worst wait %s; bound 1.5 × (N−1) × hold + (N−1) × p99 hand-off gap = %s: ",
		xplockWorst.Round(time.Millisecond), bound.Round(time.Millisecond))
	if xplockWorst > bound {
		fmt.Println("EXCEEDED")
		os.Exit(1)
	}
	fmt.Println("ok")
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "fairness:", err)
		os.Exit(1)
	}
}

// section is one worker's turn: asked, got the lock, let go (Unix nanos).
type section struct {
	worker            int
	asked, got, letGo int64
}

type result struct {
	workers  int
	sections []section
}

// measure runs the workers on one lock until duration has passed.
func measure(impl, path string, workers int, hold, duration time.Duration) (*result, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	// Workers start together, once all are up, and stop asking together.
	start := time.Now().Add(500 * time.Millisecond)
	until := start.Add(duration)
	r := &result{workers: workers}
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		errs = make(chan error, workers)
	)
	for w := range workers {
		c := exec.Command(self, "-worker", strconv.Itoa(w), "-impl", impl, "-path", path,
			"-hold", hold.String(), "-start", strconv.FormatInt(start.UnixNano(), 10), "-until", strconv.FormatInt(until.UnixNano(), 10))
		c.Stderr = os.Stderr
		out, err := c.StdoutPipe()
		if err != nil {
			return nil, err
		}
		if err := c.Start(); err != nil {
			return nil, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				s := section{worker: w}
				if _, err := fmt.Sscan(sc.Text(), &s.asked, &s.got, &s.letGo); err != nil {
					errs <- fmt.Errorf("worker %d: bad line %q", w, sc.Text())
					return
				}
				mu.Lock()
				r.sections = append(r.sections, s)
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
		return nil, err
	}
	if len(r.sections) == 0 {
		return nil, errors.New("no sections completed")
	}
	slices.SortFunc(r.sections, func(a, b section) int { return int(a.got - b.got) })
	return r, nil
}

// gap is the quantile q of the times from one section's end to the next
// one's start: the lock's own hand-off overhead.
func (r *result) gap(q float64) time.Duration {
	var gaps []time.Duration
	for i := 1; i < len(r.sections); i++ {
		gaps = append(gaps, time.Duration(r.sections[i].got-r.sections[i-1].letGo))
	}
	if len(gaps) == 0 {
		return 0
	}
	slices.Sort(gaps)
	return gaps[int(q*float64(len(gaps)-1))]
}

// report prints each worker's worst wait and sections, and returns the
// worst wait of all.
func (r *result) report(impl string, hold time.Duration) time.Duration {
	worst := make([]time.Duration, r.workers)
	count := make([]int, r.workers)
	for _, s := range r.sections {
		worst[s.worker] = max(worst[s.worker], time.Duration(s.got-s.asked))
		count[s.worker]++
	}
	fmt.Printf("\n%s: %d sections, hand-off gap p50 %s p99 %s\n", impl, len(r.sections),
		r.gap(0.5).Round(10*time.Microsecond), r.gap(0.99).Round(10*time.Microsecond))
	for w := range r.workers {
		fmt.Printf("  worker %d: %4d sections, worst wait %s\n", w, count[w], worst[w].Round(time.Millisecond))
	}
	fmt.Printf("  worst wait %s (%.1f × hold); sections per worker min %d max %d (spread %d)\n",
		slices.Max(worst).Round(time.Millisecond), float64(slices.Max(worst))/float64(hold),
		slices.Min(count), slices.Max(count), slices.Max(count)-slices.Min(count))
	return slices.Max(worst)
}

// work asks for the lock, holds it for hold and lets go, again and again
// from start until until, printing "ASKED GOT LETGO" (Unix nanos) for each
// section.
func work(impl, path string, w int, hold time.Duration, start, until time.Time) error {
	take, err := opener(impl, path, w)
	if err != nil {
		return err
	}
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	time.Sleep(time.Until(start))
	for time.Now().Before(until) {
		asked := time.Now()
		letGo, err := take()
		if err != nil {
			return err
		}
		got := time.Now()
		time.Sleep(hold)
		done := time.Now()
		if err := letGo(); err != nil {
			return err
		}
		fmt.Fprintln(out, asked.UnixNano(), got.UnixNano(), done.UnixNano())
	}
	return nil
}

// opener returns a function that takes the lock and returns how to let go.
func opener(impl, path string, w int) (func() (func() error, error), error) {
	switch impl {
	case "xplock":
		s, err := sqlite.Open(context.Background(), path, sqlite.Options{})
		if err != nil {
			return nil, err
		}
		l, err := lock.New(s, "fair", "w"+strconv.Itoa(w), lock.Options{TTL: 30 * time.Second})
		if err != nil {
			return nil, err
		}
		return func() (func() error, error) {
			g, err := l.LockUnchecked(context.Background())
			if err != nil {
				return nil, err
			}
			return func() error { return g.Release(context.Background()) }, nil
		}, nil
	case "flock":
		return func() (func() error, error) {
			// A descriptor per section, as each flock(1) run opens its own.
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				return nil, err
			}
			if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
				f.Close()
				return nil, err
			}
			return f.Close, nil
		}, nil
	}
	return nil, fmt.Errorf("unknown lock %q", impl)
}
