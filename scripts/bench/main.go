// Command bench measures xplock against the tools people would use instead,
// side by side in one run, and prints a table of ratios with the targets of
// issue 6 and whether each is met:
//
//  1. an uncontended CLI acquire + release cycle against two
//     `flock -n FILE true` calls and against two `sqlite3` shell calls that
//     run the equivalent upserts;
//  2. 8 processes × 30 run-mode critical sections incrementing a shared
//     counter file, against the same with `flock FILE CMD`;
//  3. the library: uncontended Lock/Release cycles per second, and the
//     cross-process hand-off latency (scripts/handoff);
//  4. scale: acquire latency with 10 keys against 100,000 keys and a million
//     history rows, `status` over 10,000 keys, and the CLI's peak RSS.
//
// Alternatives are run alternately (the order rotates every repetition) and
// compared by their medians, so that a machine loaded by other work slows
// both sides alike. It builds the xplock binary itself.
//
//	go run ./scripts/bench            # full run, a few minutes
//	go run ./scripts/bench -quick     # fewer repetitions, under a minute
package main

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	_ "github.com/mattn/go-sqlite3"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/sqlite"
)

var (
	quick    = flag.Bool("quick", false, "fewer repetitions and smaller fixtures: a smoke test of the numbers, not the numbers")
	only     = flag.String("only", "", "comma-separated sections to run: cli, contended, library, scale (default all)")
	keep     = flag.Bool("keep", false, "keep the temporary directory (binaries, databases) and print its path")
	noApt    = flag.Bool("no-install", false, "do not try to install missing tools (sqlite3) with apt-get")
	cpuTimes = flag.Bool("cpu", true, "also print the CPU time (user+system) of each CLI measure")
)

// The targets of issue 6 (the library's, of issue 11: a ratio to the bare
// go-sqlite3 floor measured in the same run).
const (
	targetCycleVsFlock    = 1.5
	aimCycleVsFlock       = 1.2
	targetCycleVsSQLite   = 1.0
	targetContended       = 1.5
	targetLibraryVsBare   = 0.8
	targetHandoffP50      = 2 * time.Millisecond
	targetHandoffP99      = 10 * time.Millisecond
	targetScaleRatio      = 1.2
	targetStatus10k       = 200 * time.Millisecond
	targetPeakRSSKiB      = 20 * 1024
	contendedProcs        = 8
	contendedSections     = 30
	scaleKeys             = 100_000
	scaleHistoryRows      = 1_000_000
	statusKeys            = 10_000
	smallKeys             = 10
	benchKey              = "key-000007" // present in every fixture
	benchHolder           = "bench"
	defaultHistoryLimit   = sqlite.DefaultHistoryLimit
	sqliteShellPreamble   = "PRAGMA busy_timeout=5000; PRAGMA synchronous=NORMAL; "
	sqliteShellAcquire    = "BEGIN IMMEDIATE; INSERT INTO locks (key, holder, generation, token, held, checked, acquired_at, expires_at, ttl, changed_at, events) VALUES ('k', 'bench', 1, 1, 1, 1, 1, 2, 1, 1, 1) ON CONFLICT (key) DO UPDATE SET holder = excluded.holder, token = token + 1, held = 1, acquired_at = excluded.acquired_at, expires_at = excluded.expires_at, changed_at = excluded.changed_at, events = events + 1; COMMIT;"
	sqliteShellRelease    = "BEGIN IMMEDIATE; UPDATE locks SET held = 0, checked = 0, changed_at = 3, events = events + 1 WHERE key = 'k' AND holder = 'bench'; COMMIT;"
	sqliteShellTable      = "PRAGMA journal_mode=WAL; CREATE TABLE locks (key TEXT PRIMARY KEY, holder TEXT NOT NULL, generation INTEGER NOT NULL, token INTEGER NOT NULL, held INTEGER NOT NULL, checked INTEGER NOT NULL, acquired_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, ttl INTEGER NOT NULL, changed_at INTEGER NOT NULL, events INTEGER NOT NULL) WITHOUT ROWID;"
	counterIncrementShell = `n=$(cat "$1"); echo $((n + 1)) > "$1"`
)

type env struct {
	dir     string
	xplock  string
	handoff string   // "" when scripts/handoff is not in the tree
	floors  []string // the start-up floor programs of scripts/bench/floor
	flock   string
	sqlite3 string
	sh      string
	reps    int
	rows    []resultRow
	notes   []string
}

// resultRow is one line of the final table.
type resultRow struct {
	measure, xplock, baseline, value, target, result string
}

func main() {
	flag.Parse()
	start := time.Now()
	dir, err := os.MkdirTemp("", "xplock-bench-")
	check(err)
	tempDir = dir
	if *keep {
		fmt.Println("temporary directory:", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	e := &env{dir: dir, reps: 41}
	if *quick {
		e.reps = 11
	}
	e.prepare()
	fmt.Println(machine())
	fmt.Println()
	sections := map[string]func(){
		"cli":       e.cliCycle,
		"contended": e.contended,
		"library":   e.library,
		"scale":     e.scale,
	}
	order := []string{"cli", "contended", "library", "scale"}
	if *only != "" {
		order = strings.Split(*only, ",")
	}
	for _, name := range order {
		run, ok := sections[name]
		if !ok {
			check(fmt.Errorf("unknown section %q (want cli, contended, library, scale)", name))
		}
		run()
	}
	fmt.Printf("\nxplock benchmarks (go run ./scripts/bench%s), %s, load average %s\n\n",
		map[bool]string{true: " -quick", false: ""}[*quick], time.Since(start).Round(time.Second), loadAverage())
	printTable(e.rows)
	for _, n := range e.notes {
		fmt.Println("note:", n)
	}
}

// tempDir holds the binaries and databases of the run; check removes it
// too when it ends the run.
var tempDir string

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		if tempDir != "" && !*keep {
			os.RemoveAll(tempDir)
		}
		os.Exit(1)
	}
}

// prepare builds the binaries and finds (or installs) the tools compared.
func (e *env) prepare() {
	root, err := moduleRoot()
	check(err)
	e.xplock = filepath.Join(e.dir, "xplock")
	fmt.Fprintln(os.Stderr, "building xplock ...")
	check(run(root, "go", "build", "-o", e.xplock, "."))
	if _, err := os.Stat(filepath.Join(root, "scripts", "handoff")); err == nil {
		e.handoff = filepath.Join(e.dir, "handoff")
		if err := run(root, "go", "build", "-o", e.handoff, "./scripts/handoff"); err != nil {
			e.note("scripts/handoff does not build (%v): hand-off latency skipped", err)
			e.handoff = ""
		}
	}
	for _, floor := range []string{"gohello", "gosqlite"} {
		bin := filepath.Join(e.dir, floor)
		check(run(root, "go", "build", "-o", bin, "./scripts/bench/floor/"+floor))
		e.floors = append(e.floors, bin)
	}
	e.flock = tool("flock", "util-linux")
	e.sqlite3 = tool("sqlite3", "sqlite3")
	e.sh, _ = exec.LookPath("sh")
}

func (e *env) note(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	fmt.Fprintln(os.Stderr, "bench:", msg)
	e.notes = append(e.notes, msg)
}

// tool finds name on PATH, installing pkg with apt-get when it is missing
// and that is possible; "" when it stays missing.
func tool(name, pkg string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if _, err := exec.LookPath("apt-get"); err == nil && !*noApt && os.Geteuid() == 0 {
		fmt.Fprintf(os.Stderr, "bench: %s is missing; installing the %s package with apt-get ...\n", name, pkg)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		c := exec.CommandContext(ctx, "apt-get", "install", "-y", "-qq", pkg)
		c.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := c.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "bench: apt-get install %s failed: %v\n%s", pkg, err, out)
		}
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	fmt.Fprintf(os.Stderr, "bench: %s is not installed (package %s) and could not be installed: comparisons with it are skipped\n", name, pkg)
	return ""
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run this from inside the xplock module")
	}
	return filepath.Dir(mod), nil
}

func run(dir string, name string, args ...string) error {
	c := exec.Command(name, args...)
	c.Dir = dir
	out, err := c.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

// machine describes where the numbers come from.
func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	var uts syscall.Utsname
	kernel := "unknown kernel"
	if syscall.Uname(&uts) == nil {
		kernel = utsString(uts.Sysname[:]) + " " + utsString(uts.Release[:])
	}
	return fmt.Sprintf("machine: %d CPUs (nproc), %s, %s, %s, load average %s",
		runtime.NumCPU(), model, kernel, runtime.Version(), loadAverage())
}

func utsString(b []int8) string {
	var s []byte
	for _, c := range b {
		if c == 0 {
			break
		}
		s = append(s, byte(c))
	}
	return string(s)
}

func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// proc is one process to time: argv and extra environment.
type proc struct {
	argv []string
	env  []string
}

// sample is what one run of a sequence of processes cost.
type sample struct {
	wall   time.Duration
	cpu    time.Duration // user + system of the processes and their children
	maxRSS int64         // KiB, the largest of the processes
}

// runSeq runs procs one after another and fails on a non-zero exit.
func runSeq(procs []proc) (sample, error) {
	var s sample
	for _, p := range procs {
		c := exec.Command(p.argv[0], p.argv[1:]...)
		c.Env = append(os.Environ(), p.env...)
		var stderr bytes.Buffer
		c.Stderr = &stderr
		t := time.Now()
		err := c.Run()
		s.wall += time.Since(t)
		if err != nil {
			return s, fmt.Errorf("%s: %v: %s", strings.Join(p.argv, " "), err, strings.TrimSpace(stderr.String()))
		}
		st := c.ProcessState
		s.cpu += st.UserTime() + st.SystemTime()
		if ru, ok := st.SysUsage().(*syscall.Rusage); ok {
			s.maxRSS = max(s.maxRSS, ru.Maxrss)
		}
	}
	return s, nil
}

// variant is one side of a side-by-side comparison.
type variant struct {
	name    string
	procs   []proc
	samples []sample
}

// alternate runs every variant reps times, rotating the order each round so
// that no variant always runs after the same one, after one warm-up round.
func alternate(reps int, vs []*variant) error {
	for round := -1; round < reps; round++ {
		for k := range vs {
			v := vs[(k+max(round, 0))%len(vs)]
			s, err := runSeq(v.procs)
			if err != nil {
				return fmt.Errorf("%s: %w", v.name, err)
			}
			if round >= 0 {
				v.samples = append(v.samples, s)
			}
		}
	}
	return nil
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func quantile(d []time.Duration, q float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[int(math.Round(q*float64(len(s)-1)))]
}

func (v *variant) walls() []time.Duration {
	var d []time.Duration
	for _, s := range v.samples {
		d = append(d, s.wall)
	}
	return d
}

func (v *variant) cpus() []time.Duration {
	var d []time.Duration
	for _, s := range v.samples {
		d = append(d, s.cpu)
	}
	return d
}

func (v *variant) maxRSS() int64 {
	var m int64
	for _, s := range v.samples {
		m = max(m, s.maxRSS)
	}
	return m
}

func (v *variant) describe() string {
	w := v.walls()
	s := fmt.Sprintf("  %-34s median %8s  p25 %8s  p75 %8s", v.name, ms(median(w)), ms(quantile(w, 0.25)), ms(quantile(w, 0.75)))
	if *cpuTimes {
		s += fmt.Sprintf("  cpu %8s", ms(median(v.cpus())))
	}
	return s
}

func ms(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d >= 100*time.Millisecond:
		return fmt.Sprintf("%.0fms", float64(d)/1e6)
	case d >= 10*time.Millisecond:
		return fmt.Sprintf("%.1fms", float64(d)/1e6)
	default:
		return fmt.Sprintf("%.2fms", float64(d)/1e6)
	}
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

func (e *env) add(r resultRow) { e.rows = append(e.rows, r) }

func (e *env) skip(measure, target, why string) {
	e.add(resultRow{measure: measure, target: target, result: "skipped", value: why})
}

func printTable(rows []resultRow) {
	header := resultRow{"measure", "xplock", "baseline", "ratio / value", "target", "result"}
	all := append([]resultRow{header}, rows...)
	width := make([]int, 6)
	cells := func(r resultRow) []string {
		return []string{r.measure, r.xplock, r.baseline, r.value, r.target, r.result}
	}
	for _, r := range all {
		for i, c := range cells(r) {
			width[i] = max(width[i], len([]rune(c)))
		}
	}
	line := func(cs []string) {
		var b strings.Builder
		b.WriteString("|")
		for i, c := range cs {
			fmt.Fprintf(&b, " %s%s |", c, strings.Repeat(" ", width[i]-len([]rune(c))))
		}
		fmt.Println(b.String())
	}
	line(cells(header))
	sep := make([]string, 6)
	for i := range sep {
		sep[i] = strings.Repeat("-", width[i])
	}
	fmt.Println("|-" + strings.Join(sep, "-|-") + "-|")
	for _, r := range rows {
		line(cells(r))
	}
}

// xp is an xplock process on db.
func (e *env) xp(db string, args ...string) proc {
	return proc{argv: append([]string{e.xplock}, args...), env: []string{"XPLOCK_DB=" + db}}
}

// cliCycle compares an uncontended acquire + release cycle.
func (e *env) cliCycle() {
	fmt.Println("1. uncontended CLI cycle: acquire + release (two processes each)")
	db := filepath.Join(e.dir, "cli.db")
	vs := []*variant{{
		name:  "xplock acquire; xplock release",
		procs: []proc{e.xp(db, "acquire", "k", "-H", benchHolder), e.xp(db, "release", "k", "-H", benchHolder)},
	}}
	if e.flock != "" {
		lockFile := filepath.Join(e.dir, "cli.flock")
		f := proc{argv: []string{e.flock, "-n", lockFile, "true"}}
		vs = append(vs, &variant{name: "flock -n F true (twice)", procs: []proc{f, f}})
	}
	if e.sqlite3 != "" {
		sdb := filepath.Join(e.dir, "shell.db")
		check(run(e.dir, e.sqlite3, sdb, sqliteShellTable))
		vs = append(vs, &variant{name: "sqlite3 upsert (twice)", procs: []proc{
			{argv: []string{e.sqlite3, "-batch", "-init", os.DevNull, sdb, sqliteShellPreamble + sqliteShellAcquire}},
			{argv: []string{e.sqlite3, "-batch", "-init", os.DevNull, sdb, sqliteShellPreamble + sqliteShellRelease}},
		}})
	}
	// The start-up floors: the same binary doing nothing with a database,
	// and the smallest Go programs without and with go-sqlite3.
	vs = append(vs, &variant{name: "xplock --version (twice, floor)", procs: []proc{
		{argv: []string{e.xplock, "--version"}}, {argv: []string{e.xplock, "--version"}},
	}})
	for _, bin := range e.floors {
		vs = append(vs, &variant{name: filepath.Base(bin) + " (twice, floor)", procs: []proc{{argv: []string{bin}}, {argv: []string{bin}}}})
	}
	check(alternate(2*e.reps, vs))
	for _, v := range vs {
		fmt.Println(v.describe())
	}
	x := median(vs[0].walls())
	var flock time.Duration
	if e.flock != "" {
		flock = median(vs[1].walls())
	}
	for _, v := range vs[1:] {
		b := median(v.walls())
		ratio := float64(x) / float64(b)
		floorRatio := ""
		if flock > 0 {
			floorRatio = fmt.Sprintf(", %.2f× flock", float64(b)/float64(flock))
		}
		switch {
		case strings.HasPrefix(v.name, "flock"):
			res := verdict(ratio <= targetCycleVsFlock)
			if ratio <= aimCycleVsFlock {
				res += " (and the 1.2× aim)"
			}
			e.add(resultRow{"CLI cycle vs flock -n ×2", ms(x), ms(b), fmt.Sprintf("%.2f×", ratio),
				fmt.Sprintf("≤ %.1f× (aim %.1f×)", targetCycleVsFlock, aimCycleVsFlock), res})
		case strings.HasPrefix(v.name, "sqlite3"):
			e.add(resultRow{"CLI cycle vs sqlite3 shell ×2", ms(x), ms(b), fmt.Sprintf("%.2f×", ratio),
				fmt.Sprintf("≤ %.1f×", targetCycleVsSQLite), verdict(ratio <= targetCycleVsSQLite)})
		case strings.HasPrefix(v.name, "xplock"):
			e.add(resultRow{"  (start-up floor: xplock --version ×2)", ms(b), "", fmt.Sprintf("%.0f%% of the cycle%s", 100*float64(b)/float64(x), floorRatio), "", "info"})
		default:
			e.add(resultRow{"  (floor: " + strings.TrimSuffix(v.name, " (twice, floor)") + " ×2)", ms(b), "", strings.TrimPrefix(floorRatio, ", "), "", "info"})
		}
	}
	if e.flock == "" {
		e.skip("CLI cycle vs flock -n ×2", "≤ 1.5×", "flock(1) not installed")
	}
	if e.sqlite3 == "" {
		e.skip("CLI cycle vs sqlite3 shell ×2", "≤ 1.0×", "sqlite3 shell not installed")
	}
	rss := vs[0].maxRSS()
	e.add(resultRow{"CLI peak RSS: acquire, release", fmt.Sprintf("%.1f MiB", float64(rss)/1024), "", "", "≤ 20 MiB", verdict(rss <= targetPeakRSSKiB)})
	fmt.Println()
}

// contended runs 8 processes × 30 critical sections that each increment a
// counter file, with xplock run mode and with flock(1).
func (e *env) contended() {
	const measure = "8×30 contended run mode vs flock"
	fmt.Printf("2. contended: %d processes × %d critical sections incrementing one counter file\n", contendedProcs, contendedSections)
	if e.flock == "" || e.sh == "" {
		e.skip(measure, "≤ 1.5×", "flock(1) or sh not installed")
		return
	}
	db := filepath.Join(e.dir, "contended.db")
	if _, err := runSeq([]proc{e.xp(db, "acquire", "probe", "-H", "probe", "--", "true")}); err != nil {
		e.note("run mode does not work in this build (%v); the contended comparison is skipped", err)
		e.skip(measure, "≤ 1.5×", "run mode not in this build")
		return
	}
	counter := filepath.Join(e.dir, "counter")
	lockFile := filepath.Join(e.dir, "contended.flock")
	script := filepath.Join(e.dir, "increment.sh")
	check(os.WriteFile(script, []byte(counterIncrementShell+"\n"), 0o755))
	section := func(worker int, xplock bool) []string {
		if xplock {
			return []string{e.xplock, "acquire", "counter", "-H", "worker-" + strconv.Itoa(worker), "--", e.sh, script, counter}
		}
		return []string{e.flock, lockFile, e.sh, script, counter}
	}
	reps := 3
	if *quick {
		reps = 1
	}
	var walls [2][]time.Duration
	lost := [2]int{}
	for r := 0; r < reps; r++ {
		for k := range 2 {
			xplock := (k+r)%2 == 0
			check(os.WriteFile(counter, []byte("0\n"), 0o644))
			wall, err := contendedRun(contendedProcs, contendedSections, func(w int) proc {
				return proc{argv: section(w, xplock), env: []string{"XPLOCK_DB=" + db}}
			})
			check(err)
			b, err := os.ReadFile(counter)
			check(err)
			n, err := strconv.Atoi(strings.TrimSpace(string(b)))
			check(err)
			i := map[bool]int{true: 0, false: 1}[xplock]
			walls[i] = append(walls[i], wall)
			lost[i] += contendedProcs*contendedSections - n
		}
	}
	x, f := median(walls[0]), median(walls[1])
	fmt.Printf("  %-34s median %8s  (%d runs, lost updates %d)\n", "xplock acquire -H wN -- sh incr", ms(x), reps, lost[0])
	fmt.Printf("  %-34s median %8s  (%d runs, lost updates %d)\n", "flock F sh incr", ms(f), reps, lost[1])
	ratio := float64(x) / float64(f)
	e.add(resultRow{measure, ms(x), ms(f), fmt.Sprintf("%.2f×, lost updates %d (flock %d)", ratio, lost[0], lost[1]),
		"≤ 1.5×, 0 lost", verdict(ratio <= targetContended && lost[0] == 0)})
	fmt.Println()
}

// contendedRun starts procs workers that each run sections processes one
// after another, and returns the wall time until all are done.
func contendedRun(procs, sections int, mk func(worker int) proc) (time.Duration, error) {
	var wg sync.WaitGroup
	errs := make(chan error, procs)
	start := time.Now()
	for w := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range sections {
				if _, err := runSeq([]proc{mk(w)}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return time.Since(start), <-errs
}

// library measures the Go API in this process and the hand-off between
// processes with scripts/handoff.
func (e *env) library() {
	fmt.Println("3. library")
	ctx := context.Background()
	s, err := sqlite.Open(ctx, filepath.Join(e.dir, "library.db"), sqlite.Options{})
	check(err)
	defer s.Close()
	cycleOf := func(opts lock.Options) func() {
		l, err := lock.New(s, "k", benchHolder, opts)
		check(err)
		return func() {
			g, err := l.Lock(ctx)
			check(err)
			check(g.Release(ctx))
		}
	}
	// The default renewing Guard, and one without renewal or socket: the
	// store's own share of the cycle.
	cycle, storeCycle := cycleOf(lock.Options{}), cycleOf(lock.Options{NoRenew: true})
	bare := bareSQLiteCycle(filepath.Join(e.dir, "bare.db"))
	for range 100 {
		cycle()
		storeCycle()
		bare()
	}
	d := 3 * time.Second
	if *quick {
		d = time.Second
	}
	// Alternating slices of each, so that load changes hit both alike.
	var rates, storeRates, bareRates []float64
	perSecond := func(f func()) float64 {
		n, t := 0, time.Now()
		for time.Since(t) < d/3 {
			f()
			n++
		}
		return float64(n) / time.Since(t).Seconds()
	}
	for range 3 {
		rates = append(rates, perSecond(cycle))
		storeRates = append(storeRates, perSecond(storeCycle))
		bareRates = append(bareRates, perSecond(bare))
	}
	slices.Sort(rates)
	slices.Sort(storeRates)
	slices.Sort(bareRates)
	rate, storeRate, bareRate := rates[1], storeRates[1], bareRates[1]
	fmt.Printf("  Lock + Release, one process, uncontended: %.0f cycles/s (median of 3 slices; %.0f–%.0f)\n", rate, rates[0], rates[2])
	fmt.Printf("  the same with a NoRenew guard (no renewal, no socket): %.0f cycles/s (%.0f–%.0f)\n", storeRate, storeRates[0], storeRates[2])
	fmt.Printf("  bare go-sqlite3, the same two write transactions' shape: %.0f cycles/s (%.0f–%.0f)\n", bareRate, bareRates[0], bareRates[2])
	e.add(resultRow{"library Lock+Release cycles/s", fmt.Sprintf("%.0f/s", rate), fmt.Sprintf("%.0f/s (bare SQLite)", bareRate),
		fmt.Sprintf("%.2f× the bare rate", rate/bareRate), fmt.Sprintf("≥ %.1f× bare", targetLibraryVsBare), verdict(rate/bareRate >= targetLibraryVsBare)})
	e.add(resultRow{"  (NoRenew guard: the store's own share)", fmt.Sprintf("%.0f/s", storeRate), "", fmt.Sprintf("%.2f× the bare rate", storeRate/bareRate), "", "info"})

	if e.handoff == "" {
		e.skip("hand-off between processes p50 / p99", "≤ 2ms / ≤ 10ms", "scripts/handoff not in the tree")
		fmt.Println()
		return
	}
	n := 1000
	if *quick {
		n = 300
	}
	out, err := exec.Command(e.handoff, "-n", "2", "-handoffs", strconv.Itoa(n)).CombinedOutput()
	if err != nil {
		e.note("scripts/handoff failed: %v\n%s", err, out)
		e.skip("hand-off between processes p50 / p99", "≤ 2ms / ≤ 10ms", "scripts/handoff failed")
		return
	}
	for line := range strings.Lines(string(out)) {
		fmt.Print("  ", line)
	}
	p50, p99, over99, err := parseHandoff(string(out))
	if err != nil {
		e.note("cannot read scripts/handoff's output: %v", err)
		e.skip("hand-off between processes p50 / p99", "≤ 2ms / ≤ 10ms", "unreadable output")
		return
	}
	p99s := ms(p99)
	if over99 {
		p99s = ">" + p99s
	}
	e.add(resultRow{"hand-off between processes p50 / p99", ms(p50) + " / " + p99s, "", fmt.Sprintf("2 processes, %d hand-offs", n),
		"≤ 2ms / ≤ 10ms", verdict(p50 <= targetHandoffP50 && p99 <= targetHandoffP99 && !over99)})
	fmt.Println()
}

// parseHandoff reads p50 and p99 from the latency line of scripts/handoff
// ("min D  p50 D  p90 D  p99 D  max D"). A quantile shown as ">D" (slower
// than anything measured) comes back as D with over set.
// bareSQLiteCycle returns the floor of a library cycle on this machine: the
// two write transactions of an acquire and a release (an upsert of the
// lock row and an event row each), straight through go-sqlite3 on one
// connection, in WAL mode with synchronous=NORMAL like the store, without
// the store's checks, history, poison or lease.
func bareSQLiteCycle(path string) func() {
	ctx := context.Background()
	db, err := sql.Open("sqlite3", "file:"+path+"?_journal_mode=WAL&_sync=NORMAL&_busy_timeout=5000")
	check(err)
	conn, err := db.Conn(ctx)
	check(err)
	_, err = conn.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS locks (key TEXT PRIMARY KEY, holder TEXT, generation INTEGER, expires INTEGER);
		CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, key TEXT, event TEXT, holder TEXT, time INTEGER)`)
	check(err)
	tx := func(event, rowSQL string, args ...any) {
		_, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE")
		check(err)
		_, err = conn.ExecContext(ctx, rowSQL, args...)
		check(err)
		_, err = conn.ExecContext(ctx, "INSERT INTO events (key, event, holder, time) VALUES ('k', ?, 'bench', ?)", event, time.Now().UnixMicro())
		check(err)
		_, err = conn.ExecContext(ctx, "COMMIT")
		check(err)
	}
	return func() {
		tx("acquired", `INSERT INTO locks VALUES ('k', 'bench', 1, ?)
			ON CONFLICT (key) DO UPDATE SET holder = excluded.holder, expires = excluded.expires`, time.Now().Add(time.Minute).UnixMicro())
		tx("released", "UPDATE locks SET expires = 0 WHERE key = 'k'")
	}
}

func parseHandoff(out string) (p50, p99 time.Duration, over99 bool, err error) {
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) < 10 || f[0] != "min" {
			continue
		}
		var got50, got99 bool
		for i := 0; i+1 < len(f); i++ {
			v := strings.TrimPrefix(f[i+1], ">")
			over := v != f[i+1]
			d, perr := time.ParseDuration(v)
			switch {
			case perr != nil:
			case f[i] == "p50" && !over:
				p50, got50 = d, true
			case f[i] == "p99":
				p99, over99, got99 = d, over, true
			}
		}
		if got50 && got99 {
			return p50, p99, over99, nil
		}
	}
	return 0, 0, false, errors.New("no line with min, p50 and p99")
}

// scale compares acquire latency on a small and a large database, times
// status over 10,000 keys and reports the CLI's peak RSS there.
func (e *env) scale() {
	fmt.Println("4. scale")
	keys, rows := scaleKeys, scaleHistoryRows
	if *quick {
		keys, rows = keys/10, rows/10
	}
	small := filepath.Join(e.dir, "small.db")
	large := filepath.Join(e.dir, "large.db")
	status := filepath.Join(e.dir, "status.db")
	t := time.Now()
	check(fixture(small, smallKeys, smallKeys*10))
	check(fixture(large, keys, rows))
	check(fixture(status, statusKeys, statusKeys*10))
	fmt.Printf("  fixtures: %d keys / %d history rows, %d / %d, %d / %d (built in %s)\n",
		smallKeys, smallKeys*10, keys, rows, statusKeys, statusKeys*10, time.Since(t).Round(100*time.Millisecond))

	// The library: one acquisition (a new tenure) and its release, in
	// process, so that process start-up does not hide the database.
	ctx := context.Background()
	lat := map[string][]time.Duration{}
	stores := map[string]*sqlite.Store{}
	for _, db := range []string{small, large} {
		s, err := sqlite.Open(ctx, db, sqlite.Options{})
		check(err)
		defer s.Close()
		stores[db] = s
	}
	ops := 400
	if *quick {
		ops = 100
	}
	for round := range ops {
		for k, db := range []string{small, large} {
			if (round+k)%2 == 1 {
				db = map[string]string{small: large, large: small}[db]
			}
			// A different key each time: the acquisition reads and writes
			// rows that are not cached yet.
			// Keys ending in 3 are held in the fixtures.
			key := fmt.Sprintf("key-%06d", []int{0, 1, 2, 4, 5, 6, 7, 8, 9}[round%9])
			t := time.Now()
			g, err := stores[db].Acquire(ctx, lock.AcquireRequest{Key: key, Holder: benchHolder, TTL: time.Minute, Checked: true})
			lat[db] = append(lat[db], time.Since(t))
			check(err)
			if !g.Acquired {
				check(fmt.Errorf("%s not acquired in %s", key, db))
			}
			_, err = stores[db].Release(ctx, lock.ReleaseRequest{Key: key, Holder: benchHolder, Acknowledge: true})
			check(err)
		}
	}
	ls, ll := median(lat[small]), median(lat[large])
	fmt.Printf("  library Acquire: %d keys median %s, %d keys median %s\n", smallKeys, ms(ls), keys, ms(ll))
	label := fmt.Sprintf("%dk keys, %s history rows", keys/1000, humanCount(rows))
	e.add(resultRow{"acquire latency, library: " + label, ms(ll), ms(ls) + " (10 keys)", fmt.Sprintf("%.2f×", float64(ll)/float64(ls)),
		"≤ 1.2×", verdict(float64(ll) <= targetScaleRatio*float64(ls))})

	// The CLI: acquire, then release (timed apart).
	vs := []*variant{
		{name: "acquire, 10 keys", procs: []proc{e.xp(small, "acquire", benchKey, "-H", benchHolder)}},
		{name: "acquire, " + label, procs: []proc{e.xp(large, "acquire", benchKey, "-H", benchHolder)}},
	}
	rel := []*variant{
		{name: "release, 10 keys", procs: []proc{e.xp(small, "release", benchKey, "-H", benchHolder)}},
		{name: "release, " + label, procs: []proc{e.xp(large, "release", benchKey, "-H", benchHolder)}},
	}
	for round := -1; round < e.reps; round++ {
		for k := range 2 {
			i := (k + max(round, 0)) % 2
			s, err := runSeq(vs[i].procs)
			check(err)
			r, err := runSeq(rel[i].procs)
			check(err)
			if round >= 0 {
				vs[i].samples = append(vs[i].samples, s)
				rel[i].samples = append(rel[i].samples, r)
			}
		}
	}
	for _, v := range append(vs, rel...) {
		fmt.Println(v.describe())
	}
	cs, cl := median(vs[0].walls()), median(vs[1].walls())
	e.add(resultRow{"acquire latency, CLI: " + label, ms(cl), ms(cs) + " (10 keys)", fmt.Sprintf("%.2f×", float64(cl)/float64(cs)),
		"≤ 1.2×", verdict(float64(cl) <= targetScaleRatio*float64(cs))})

	st := []*variant{
		{name: "status (table), 10,000 keys", procs: []proc{e.xp(status, "status")}},
		{name: "status --json, 10,000 keys", procs: []proc{e.xp(status, "status", "--json")}},
	}
	check(alternate(max(e.reps/2, 5), st))
	for _, v := range st {
		fmt.Println(v.describe())
	}
	tbl, js := median(st[0].walls()), median(st[1].walls())
	e.add(resultRow{"status over 10,000 keys (table / --json)", ms(tbl) + " / " + ms(js), "", "", "≤ 200ms",
		verdict(tbl <= targetStatus10k && js <= targetStatus10k)})
	rss := max(st[0].maxRSS(), st[1].maxRSS())
	e.add(resultRow{"CLI peak RSS: status of 10,000 keys", fmt.Sprintf("%.1f MiB", float64(rss)/1024), "", "", "≤ 20 MiB", verdict(rss <= targetPeakRSSKiB)})
	lrss := max(vs[1].maxRSS(), rel[1].maxRSS())
	e.add(resultRow{"CLI peak RSS: acquire/release, " + label, fmt.Sprintf("%.1f MiB", float64(lrss)/1024), "", "", "≤ 20 MiB", verdict(lrss <= targetPeakRSSKiB)})
	fmt.Println()
}

func humanCount(n int) string {
	switch {
	case n >= 1_000_000 && n%1_000_000 == 0:
		return fmt.Sprintf("%dM", n/1_000_000)
	case n >= 1000 && n%1000 == 0:
		return fmt.Sprintf("%dk", n/1000)
	}
	return strconv.Itoa(n)
}

// fixture makes a lock database through the library (so the schema is the
// real one) and fills it with keys free locks and rows history events, the
// events of all keys interleaved as they would be in use, each key with
// one acknowledging holder and every tenth key held.
func fixture(path string, keys, rows int) error {
	ctx := context.Background()
	s, err := sqlite.Open(ctx, path, sqlite.Options{})
	if err != nil {
		return err
	}
	s.Close()
	db, err := sql.Open("sqlite3", "file:"+path+"?_busy_timeout=5000")
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	// A throwaway fixture: fill it in one rollback-journal transaction, then
	// put it back in WAL mode as xplock uses it.
	if _, err := db.Exec("PRAGMA journal_mode=DELETE"); err != nil {
		return err
	}
	tx, err := db.Begin()
	if err != nil {
		return err
	}
	defer tx.Rollback()
	now := time.Now().UnixMicro()
	perKey := rows / keys
	insLock, err := tx.Prepare(`INSERT INTO xplock_keys (key, last_holder, generation, token, last_token, other_token, changed_at, events)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return err
	}
	insTenure, err := tx.Prepare(`INSERT INTO xplock_tenures (key, token, holder, mode, slots, checked, acquired_at, expires_at, ttl)
		VALUES (?, ?, ?, 'exclusive', 0, 0, ?, ?, ?)`)
	if err != nil {
		return err
	}
	insAck, err := tx.Prepare(`INSERT INTO xplock_acks (key, holder, token, generation) VALUES (?, ?, ?, ?)`)
	if err != nil {
		return err
	}
	insEvent, err := tx.Prepare(`INSERT INTO xplock_events (key, event, holder, generation, token, time) VALUES (?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return err
	}
	key := func(i int) string { return fmt.Sprintf("key-%06d", i) }
	for i := range keys {
		held := i%10 == 3 && key(i) != benchKey
		expires := now - int64(time.Minute/time.Microsecond)
		if held {
			expires = now + int64(time.Hour/time.Microsecond)
		}
		gen := int64(perKey/2 + 1)
		token := gen // every tenure a new holder's
		if _, err := insLock.Exec(key(i), "holder-"+strconv.Itoa(i%7), gen, token, token, token-1, now-1e6, perKey); err != nil {
			return err
		}
		if held {
			if _, err := insTenure.Exec(key(i), token, "holder-"+strconv.Itoa(i%7), now-1e6, expires, int64(time.Minute/time.Microsecond)); err != nil {
				return err
			}
		}
		ackToken, ackGen := token, gen
		if i%13 == 0 {
			ackToken, ackGen = token-2, gen-1 // a poisoned holder now and then
		}
		if _, err := insAck.Exec(key(i), "holder-"+strconv.Itoa(i%7), ackToken, ackGen); err != nil {
			return err
		}
	}
	for r := range perKey {
		ev := []string{lock.EventAcquired, lock.EventReleased}[r%2]
		for i := range keys {
			if _, err := insEvent.Exec(key(i), ev, "holder-"+strconv.Itoa(i%7), r/2+1, r/2+1, now-int64(perKey-r)*1e6); err != nil {
				return err
			}
		}
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	_, err = db.Exec("PRAGMA journal_mode=WAL")
	return err
}
