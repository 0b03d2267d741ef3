package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/sqlite"
)

// Script commands for `xplock watch`: a watcher runs as a real subprocess
// whose stdout lines are read as they appear, so that scripts synchronise on
// what it printed rather than on sleeps.
//
//	watchstart NAME [ARGS...]    start `xplock watch ARGS...`
//	waitline NAME REGEXP [MAX]   wait (default 20s) for a line matching REGEXP
//	waiterr NAME REGEXP [MAX]    the same for its stderr
//	linelag NAME REGEXP MAX      the first line matching REGEXP appeared at most
//	                             MAX after the time in its JSON "time" field
//	watchsignal NAME SIGNAL      send STOP, CONT, INT or TERM
//	watchstop NAME               SIGINT, then expect exit 0
//	watchwait NAME CODE [MAX]    wait (default 20s) for exit with CODE
//	watchcmp NAME FILE           stdout, with times, hosts and pids masked,
//	                             equals FILE
//	jsonenv VAR FIELD            set VAR to FIELD of the JSON in stdout
//	burst KEY N                  make N changes to KEY in-process, fast
//
// watchstop and watchwait leave the watcher's output in stdout and stderr
// for the usual assertions.
func init() {
	scriptCmds["watchstart"] = cmdWatchStart
	scriptCmds["waitline"] = cmdWaitLine
	scriptCmds["waiterr"] = cmdWaitErr
	scriptCmds["linelag"] = cmdLineLag
	scriptCmds["watchsignal"] = cmdWatchSignal
	scriptCmds["watchstop"] = cmdWatchStop
	scriptCmds["watchwait"] = cmdWatchWait
	scriptCmds["watchcmp"] = cmdWatchCmp
	scriptCmds["jsonenv"] = cmdJSONEnv
	scriptCmds["burst"] = cmdBurst
}

type watchLine struct {
	text string
	at   time.Time
}

type watchProc struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	lines  []watchLine
	stderr strings.Builder
	done   chan struct{} // closed when stdout is drained and the process exited
	err    error
}

func (p *watchProc) snapshot() ([]watchLine, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.done:
		return append([]watchLine(nil), p.lines...), true
	default:
		return append([]watchLine(nil), p.lines...), false
	}
}

func (p *watchProc) stdout() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var b strings.Builder
	for _, l := range p.lines {
		b.WriteString(l.text + "\n")
	}
	return b.String()
}

var (
	watchProcsMu sync.Mutex
	watchProcs   = map[*testscript.TestScript]map[string]*watchProc{}
)

func getWatch(ts *testscript.TestScript, name string) *watchProc {
	watchProcsMu.Lock()
	defer watchProcsMu.Unlock()
	p := watchProcs[ts][name]
	if p == nil {
		ts.Fatalf("no watcher %q: start it with watchstart", name)
	}
	return p
}

// watchScriptEnv is the environment a script gives the commands it runs.
func watchScriptEnv(ts *testscript.TestScript) []string {
	env := os.Environ()
	for _, k := range []string{"PATH", "HOME", "TMPDIR", "WORK", "USER", "NO_COLOR",
		"XPLOCK_DB", "XPLOCK_HOLDER", "XPLOCK_HISTORY_LIMIT", "XDG_STATE_HOME"} {
		env = append(env, k+"="+ts.Getenv(k))
	}
	return env
}

func cmdWatchStart(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 1 {
		ts.Fatalf("usage: watchstart NAME [ARGS...]")
	}
	exe, err := os.Executable()
	ts.Check(err)
	// The test binary runs as xplock when argv[0] says so (testscript.Main).
	cmd := &exec.Cmd{Path: exe, Args: append([]string{"xplock", "watch"}, args[1:]...),
		Dir: ts.MkAbs("."), Env: watchScriptEnv(ts)}
	p := &watchProc{cmd: cmd, done: make(chan struct{})}
	cmd.Stderr = &watchLockedWriter{mu: &p.mu, w: &p.stderr}
	out, err := cmd.StdoutPipe()
	ts.Check(err)
	ts.Check(cmd.Start())
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, watchLine{text: sc.Text(), at: time.Now()})
			p.mu.Unlock()
		}
		err := cmd.Wait()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
	}()
	watchProcsMu.Lock()
	if watchProcs[ts] == nil {
		watchProcs[ts] = map[string]*watchProc{}
		ts.Defer(func() {
			watchProcsMu.Lock()
			procs := watchProcs[ts]
			delete(watchProcs, ts)
			watchProcsMu.Unlock()
			for _, p := range procs {
				p.cmd.Process.Kill()
				<-p.done
			}
		})
	}
	if watchProcs[ts][args[0]] != nil {
		watchProcsMu.Unlock()
		ts.Fatalf("watcher %q already started", args[0])
	}
	watchProcs[ts][args[0]] = p
	watchProcsMu.Unlock()
}

type watchLockedWriter struct {
	mu *sync.Mutex
	w  *strings.Builder
}

func (l *watchLockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// watchOptDuration parses an optional duration argument.
func watchOptDuration(ts *testscript.TestScript, args []string, i int, def time.Duration) time.Duration {
	if len(args) <= i {
		return def
	}
	d, err := time.ParseDuration(args[i])
	ts.Check(err)
	return d
}

func (p *watchProc) describe() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var b strings.Builder
	b.WriteString("watcher stdout:\n")
	for _, l := range p.lines {
		fmt.Fprintf(&b, "  %s  %s\n", l.at.Format("15:04:05.000"), l.text)
	}
	fmt.Fprintf(&b, "watcher stderr:\n%s", p.stderr.String())
	return b.String()
}

func cmdWaitLine(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 || len(args) > 3 {
		ts.Fatalf("usage: waitline NAME REGEXP [MAX]")
	}
	p := getWatch(ts, args[0])
	re, err := regexp.Compile(args[1])
	ts.Check(err)
	deadline := time.Now().Add(watchOptDuration(ts, args, 2, 20*time.Second))
	for {
		lines, exited := p.snapshot()
		for _, l := range lines {
			if re.MatchString(l.text) {
				return
			}
		}
		switch {
		case exited:
			ts.Fatalf("watcher %s exited without a line matching %q\n%s", args[0], args[1], p.describe())
		case time.Now().After(deadline):
			ts.Fatalf("no line matching %q from watcher %s in time\n%s", args[1], args[0], p.describe())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func cmdWaitErr(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 || len(args) > 3 {
		ts.Fatalf("usage: waiterr NAME REGEXP [MAX]")
	}
	p := getWatch(ts, args[0])
	re, err := regexp.Compile(args[1])
	ts.Check(err)
	deadline := time.Now().Add(watchOptDuration(ts, args, 2, 20*time.Second))
	for {
		p.mu.Lock()
		stderr := p.stderr.String()
		p.mu.Unlock()
		if re.MatchString(stderr) {
			return
		}
		if time.Now().After(deadline) {
			ts.Fatalf("nothing matching %q on watcher %s's stderr in time\n%s", args[1], args[0], p.describe())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func cmdLineLag(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 3 {
		ts.Fatalf("usage: linelag NAME REGEXP MAX")
	}
	p := getWatch(ts, args[0])
	re, err := regexp.Compile(args[1])
	ts.Check(err)
	limit := watchOptDuration(ts, args, 2, 0)
	lines, _ := p.snapshot()
	for _, l := range lines {
		if !re.MatchString(l.text) {
			continue
		}
		var e struct{ Time time.Time }
		if err := json.Unmarshal([]byte(l.text), &e); err != nil {
			ts.Fatalf("line %q: %v", l.text, err)
		}
		lag := l.at.Sub(e.Time)
		ts.Logf("line appeared %s after its time", lag)
		if lag > limit || lag < -time.Second {
			ts.Fatalf("line %q appeared %s after its time, want at most %s", l.text, lag, limit)
		}
		return
	}
	ts.Fatalf("no line matching %q\n%s", args[1], p.describe())
}

func cmdWatchSignal(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: watchsignal NAME STOP|CONT|INT|TERM")
	}
	sig, ok := map[string]syscall.Signal{"STOP": syscall.SIGSTOP, "CONT": syscall.SIGCONT,
		"INT": syscall.SIGINT, "TERM": syscall.SIGTERM}[args[1]]
	if !ok {
		ts.Fatalf("unknown signal %q", args[1])
	}
	ts.Check(getWatch(ts, args[0]).cmd.Process.Signal(sig))
}

// finish waits for the watcher to exit, checks its exit code and hands its
// output to the script.
func finishWatch(ts *testscript.TestScript, name string, want int, max time.Duration) {
	p := getWatch(ts, name)
	select {
	case <-p.done:
	case <-time.After(max):
		p.cmd.Process.Kill()
		<-p.done
		ts.Fatalf("watcher %s still running after %s\n%s", name, max, p.describe())
	}
	got := 0
	var exitErr *exec.ExitError
	if errors.As(p.err, &exitErr) {
		got = exitErr.ExitCode()
	} else if p.err != nil {
		ts.Fatalf("watcher %s: %v", name, p.err)
	}
	fmt.Fprint(ts.Stdout(), p.stdout())
	p.mu.Lock()
	fmt.Fprint(ts.Stderr(), p.stderr.String())
	p.mu.Unlock()
	if got != want {
		ts.Fatalf("watcher %s exited %d, want %d\n%s", name, got, want, p.describe())
	}
}

func cmdWatchStop(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: watchstop NAME")
	}
	p := getWatch(ts, args[0])
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil && !errors.Is(err, os.ErrProcessDone) {
		ts.Fatalf("interrupting watcher %s: %v", args[0], err)
	}
	finishWatch(ts, args[0], 0, 20*time.Second)
}

func cmdWatchWait(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 || len(args) > 3 {
		ts.Fatalf("usage: watchwait NAME CODE [MAX]")
	}
	code, err := strconv.Atoi(args[1])
	ts.Check(err)
	finishWatch(ts, args[0], code, watchOptDuration(ts, args, 2, 20*time.Second))
}

var watchMasks = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`"(time|since|expires_at)":"[^"]+"`), `"$1":"T"`},
	{regexp.MustCompile(`"waited":[0-9.e+-]+`), `"waited":W`},
	{regexp.MustCompile(`"user":"[^"]*","host":"[^"]*","pid":\d+`), `"user":"U","host":"H","pid":0`},
	{regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ`), `YYYY-MM-DDThh:mm:ssZ`},
	{regexp.MustCompile(`\(user .*, host .*, pid \d+\)`), `(user U, host H, pid P)`},
}

func cmdWatchCmp(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: watchcmp NAME FILE")
	}
	got := getWatch(ts, args[0]).stdout()
	for _, m := range watchMasks {
		got = m.re.ReplaceAllString(got, m.with)
	}
	want := ts.ReadFile(args[1])
	if got != want {
		ts.Fatalf("watcher %s printed (masked):\n%s\nwant %s:\n%s", args[0], got, args[1], want)
	}
}

func cmdJSONEnv(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: jsonenv VAR FIELD")
	}
	var obj map[string]any
	ts.Check(json.Unmarshal([]byte(ts.ReadFile("stdout")), &obj))
	v, ok := obj[args[1]]
	if !ok {
		ts.Fatalf("no field %q in stdout", args[1])
	}
	ts.Setenv(args[0], fmt.Sprint(v))
}

// burst KEY N makes N changes to KEY as fast as the store allows: holders
// p and q take turns acquiring and releasing, so the generation rises with
// every acquisition.
func cmdBurst(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: burst KEY N")
	}
	n, err := strconv.Atoi(args[1])
	ts.Check(err)
	ctx := context.Background()
	store, err := sqlite.Open(ctx, ts.Getenv("XPLOCK_DB"), sqlite.Options{})
	ts.Check(err)
	defer store.Close()
	start := time.Now()
	for i := range n {
		holder := []string{"p", "q"}[i/2%2]
		if i%2 == 0 {
			g, err := store.Acquire(ctx, lock.AcquireRequest{Key: args[0], Holder: holder, TTL: time.Minute, Checked: true})
			ts.Check(err)
			if !g.Acquired {
				ts.Fatalf("burst: %s did not get %s", holder, args[0])
			}
		} else {
			_, err := store.Release(ctx, lock.ReleaseRequest{Key: args[0], Holder: holder, Acknowledge: true})
			ts.Check(err)
		}
	}
	ts.Logf("%d changes in %s", n, time.Since(start))
}
