// Command readers-bench measures readers side by side in one run: N
// processes each run M short critical sections one after the other, every
// section a run-mode `xplock acquire KEY -H rN --shared -- CMD` on one key,
// against `flock -s FILE CMD` on one lock file doing the same. Both sides
// run alternately (the order swaps every repetition, after a warm-up round)
// so that a machine loaded by other work slows both alike; it prints each
// side's median wall time, sections per second and CPU time per section,
// and the ratio of the wall times.
//
// It builds the xplock binary itself.
//
//	go run ./scripts/readers-bench                       # 8 readers x 20 sections, 7 repetitions
//	go run ./scripts/readers-bench -readers 16 -sections 10 -reps 5
package main

import (
	"bytes"
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
)

var (
	readers  = flag.Int("readers", 8, "reader processes at once")
	sections = flag.Int("sections", 20, "critical sections each reader runs, one after the other")
	reps     = flag.Int("reps", 7, "measured repetitions of each side")
	section  = flag.String("section", "true", "the critical section, a command run directly (no shell)")
	keep     = flag.Bool("keep", false, "keep the temporary directory and print its path")
)

func main() {
	flag.Parse()
	if *readers < 1 || *sections < 1 || *reps < 1 {
		fail(errors.New("-readers, -sections and -reps must be 1 or more"))
	}
	dir, err := os.MkdirTemp("", "xplock-readers-bench-")
	if err != nil {
		fail(err)
	}
	if *keep {
		fmt.Println("temporary directory:", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	xplock := filepath.Join(dir, "xplock")
	fmt.Fprintln(os.Stderr, "building xplock ...")
	if out, err := exec.Command("go", "build", "-o", xplock, ".").CombinedOutput(); err != nil {
		fail(fmt.Errorf("go build (run from the module root): %v\n%s", err, out))
	}
	flock, err := exec.LookPath("flock")
	if err != nil {
		fail(fmt.Errorf("flock(1) is the peer measured against: %w (install util-linux)", err))
	}
	cmd := strings.Fields(*section)
	db := filepath.Join(dir, "locks.db")
	lockFile := filepath.Join(dir, "cache.lock")
	sides := []*side{
		{name: "xplock acquire --shared -- " + *section, argv: func(reader int) []string {
			return append([]string{xplock, "acquire", "cache", "-H", "r" + strconv.Itoa(reader), "--shared", "--"}, cmd...)
		}},
		{name: "flock -s FILE " + *section, argv: func(int) []string {
			return append([]string{flock, "-s", lockFile}, cmd...)
		}},
	}
	env := append(os.Environ(), "XPLOCK_DB="+db)
	for round := -1; round < *reps; round++ {
		for k := range sides {
			s := sides[(k+max(round, 0))%len(sides)]
			wall, cpu, err := readersRun(s.argv, env)
			if err != nil {
				fail(fmt.Errorf("%s: %w", s.name, err))
			}
			if round >= 0 {
				s.walls, s.cpus = append(s.walls, wall), append(s.cpus, cpu)
			}
		}
	}
	n := *readers * *sections
	fmt.Printf("%d readers x %d sections = %d run-mode sections per repetition, %d repetitions, load average %s\n",
		*readers, *sections, n, *reps, loadAverage())
	for _, s := range sides {
		m := median(s.walls)
		fmt.Printf("  %-40s median %8s  (min %8s, max %8s)  %7.0f sections/s  cpu %6.1f ms/section\n",
			s.name, m.Round(time.Millisecond), slices.Min(s.walls).Round(time.Millisecond),
			slices.Max(s.walls).Round(time.Millisecond), float64(n)/m.Seconds(),
			float64(median(s.cpus))/float64(n)/1e6)
	}
	x, f := median(sides[0].walls), median(sides[1].walls)
	fmt.Printf("ratio xplock / flock -s (wall time, medians): %.2f×\n", float64(x)/float64(f))
}

// side is one of the two things compared.
type side struct {
	name  string
	argv  func(reader int) []string
	walls []time.Duration
	// cpus are the user and system time of the processes and their children.
	cpus []time.Duration
}

// readersRun starts every reader at once, each running its sections one
// after the other, and returns the wall time until the last is done and the
// CPU time the processes used.
func readersRun(argv func(reader int) []string, env []string) (wall, cpu time.Duration, err error) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	errs := make(chan error, *readers)
	start := time.Now()
	for r := range *readers {
		wg.Go(func() {
			for range *sections {
				a := argv(r)
				c := exec.Command(a[0], a[1:]...)
				var stderr bytes.Buffer
				c.Env, c.Stderr = env, &stderr
				if err := c.Run(); err != nil {
					errs <- fmt.Errorf("%s: %v: %s", strings.Join(a, " "), err, strings.TrimSpace(stderr.String()))
					return
				}
				mu.Lock()
				cpu += c.ProcessState.UserTime() + c.ProcessState.SystemTime()
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	wall = time.Since(start)
	close(errs)
	return wall, cpu, <-errs
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "readers-bench:", err)
	os.Exit(1)
}
