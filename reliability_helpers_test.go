package main

// Shared machinery of the reliability suite (reliability_*_test.go): real
// xplock processes, library worker processes, and what they print.
//
// The xplock command is the copy of this test binary that testscript.Main
// puts first in $PATH (see TestMain): invoked under the name "xplock" it runs
// main(), so it is the real CLI, built with -race when the tests are.
// Library workers are the same binary started with XPLOCK_RELIABILITY_WORKER
// set; init below turns such a process into a worker before any test runs.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// workerEnv names the worker role a re-executed test binary plays.
const workerEnv = "XPLOCK_RELIABILITY_WORKER"

// workers are the roles a re-executed test binary can play; each returns
// the process exit code. Files register theirs in package-level variables,
// which are all set before init runs.
var workers = map[string]func() int{}

func registerWorker(role string, run func() int) bool {
	workers[role] = run
	return true
}

func init() {
	role := os.Getenv(workerEnv)
	if role == "" {
		return
	}
	run, ok := workers[role]
	if !ok {
		fmt.Fprintf(os.Stderr, "unknown reliability worker %q\n", role)
		os.Exit(2)
	}
	os.Exit(run())
}

// reliabilityScale multiplies the size of every reliability run:
// XPLOCK_RELIABILITY_SCALE=10 runs ten times as many operations.
func reliabilityScale(t *testing.T) int {
	s := os.Getenv("XPLOCK_RELIABILITY_SCALE")
	if s == "" {
		return 1
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		t.Fatalf("XPLOCK_RELIABILITY_SCALE=%q: want a positive integer", s)
	}
	return n
}

var (
	xplockOnce sync.Once
	xplockPath string
	xplockErr  error
)

// xplockBin is the xplock command installed by testscript.Main. It refuses
// any other xplock found in $PATH: the suite must test this tree's code.
func xplockBin(t *testing.T) string {
	t.Helper()
	xplockOnce.Do(func() {
		xplockPath, xplockErr = exec.LookPath("xplock")
		if xplockErr == nil && !strings.HasPrefix(filepath.Base(filepath.Dir(filepath.Dir(xplockPath))), "testscript-main") {
			xplockErr = fmt.Errorf("%s is not the test binary's copy installed by testscript.Main", xplockPath)
		}
	})
	if xplockErr != nil {
		t.Fatalf("finding the xplock command: %v", xplockErr)
	}
	return xplockPath
}

// testBinary is this test binary, for starting library workers.
func testBinary(t *testing.T) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return exe
}

// childEnv is the environment of every process the suite starts: this
// process's, without xplock settings the tests do not choose, with db as
// the store, and without the race detector's one-second sleep at exit
// (which would otherwise dominate the run time of short-lived processes).
func childEnv(db string, extra ...string) []string {
	var env []string
	gorace := ""
	for _, kv := range os.Environ() {
		name, value, _ := strings.Cut(kv, "=")
		switch {
		case name == "GORACE":
			gorace = value
		case strings.HasPrefix(name, "XPLOCK_"):
		default:
			env = append(env, kv)
		}
	}
	if !strings.Contains(gorace, "atexit_sleep_ms") {
		gorace = strings.TrimSpace(gorace + " atexit_sleep_ms=0")
	}
	env = append(env, "GORACE="+gorace, "XPLOCK_DB="+db)
	return append(env, extra...)
}

// proc is one finished process.
type proc struct {
	Args []string
	// Exit is the exit code, -1 when the process was killed by a signal.
	Exit int
	// Killed is true when our SIGKILL ended the process.
	Killed         bool
	Stdout, Stderr string
	// Call is just before the process started and Return just after it was
	// reaped, in wall-clock nanoseconds (comparable across processes).
	Call, Return int64
}

func (p proc) String() string {
	return fmt.Sprintf("xplock %s: exit %d, killed %v\nstdout: %s\nstderr: %s",
		strings.Join(p.Args, " "), p.Exit, p.Killed, p.Stdout, p.Stderr)
}

// runProc runs bin with args and env in dir. When killAfter > 0 the process
// group gets SIGKILL after that long, unless it ended first. It may be
// called from any goroutine.
func runProc(t *testing.T, bin string, args, env []string, dir string, killAfter time.Duration) proc {
	t.Helper()
	var stdout, stderr bytes.Buffer
	c := exec.Command(bin, args...)
	c.Env, c.Dir, c.Stdout, c.Stderr = env, dir, &stdout, &stderr
	// Its own process group, so that a kill also ends a run-mode child.
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// A grandchild that outlives xplock must not hold Wait forever.
	c.WaitDelay = 30 * time.Second
	p := proc{Args: args, Call: time.Now().UnixNano()}
	if err := c.Start(); err != nil {
		t.Errorf("starting %s: %v", bin, err)
		p.Exit, p.Return = -1, time.Now().UnixNano()
		return p
	}
	var mu sync.Mutex
	reaped := false
	if killAfter > 0 {
		pid := c.Process.Pid
		timer := time.AfterFunc(killAfter, func() {
			mu.Lock()
			defer mu.Unlock()
			if !reaped {
				syscall.Kill(-pid, syscall.SIGKILL)
			}
		})
		defer timer.Stop()
	}
	err := c.Wait()
	mu.Lock()
	reaped = true
	mu.Unlock()
	p.Return = time.Now().UnixNano()
	p.Stdout, p.Stderr = stdout.String(), stderr.String()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr):
		p.Exit = exitErr.ExitCode()
		if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			p.Killed = ws.Signal() == syscall.SIGKILL
		}
	case errors.Is(err, exec.ErrWaitDelay):
		// The process exited; a grandchild kept its output open.
		p.Exit = c.ProcessState.ExitCode()
	default:
		t.Errorf("waiting for %s %v: %v", bin, args, err)
		p.Exit = -1
	}
	return p
}

// checkNoRace fails the test when a process reported a data race.
func checkNoRace(t *testing.T, p proc) {
	t.Helper()
	if strings.Contains(p.Stderr, "WARNING: DATA RACE") {
		t.Errorf("data race in a child process:\n%s", p)
	}
}

// storeErrorPattern matches store errors that must never reach a user
// (SPEC: store rules), and other internal failures.
var storeErrorPattern = regexp.MustCompile(`(?i)database is locked|database table is locked|sqlite_busy|\bbusy\b|` +
	`disk i/o error|malformed|interrupted|context deadline exceeded|context canceled|no such table|panic:|goroutine \d+`)

// leaseOut is what acquire and renew print with --json. A refusal has
// the key's fields too, with acquired false.
type leaseOut struct {
	Acquired   *bool  `json:"acquired"`
	Key        string `json:"key"`
	Holder     string `json:"holder"`
	Generation int64  `json:"generation"`
	Token      int64  `json:"token"`
	Poisoned   *bool  `json:"poisoned"`
	Reentrant  bool   `json:"reentrant"`
	ExpiresAt  string `json:"expires_at"`
}

// releaseOut is what release prints with --json.
type releaseOut struct {
	Key        string `json:"key"`
	Holder     string `json:"holder"`
	Generation int64  `json:"generation"`
	Token      int64  `json:"token"`
	Event      string `json:"event"`
}

// eventOut is one history entry of status --history --json.
type eventOut struct {
	Event      string `json:"event"`
	Key        string `json:"key"`
	Holder     string `json:"holder"`
	Generation int64  `json:"generation"`
	Token      int64  `json:"token"`
	Time       string `json:"time"`
}

// statusOut is what status prints with --json.
type statusOut struct {
	Locks []struct {
		Key             string     `json:"key"`
		State           string     `json:"state"`
		Holder          string     `json:"holder"`
		Generation      int64      `json:"generation"`
		Token           int64      `json:"token"`
		ExpiresAt       string     `json:"expires_at"`
		PoisonedHolders []string   `json:"poisoned_holders"`
		History         []eventOut `json:"history"`
	} `json:"locks"`
}

// decodeLine decodes the first line of s that is a JSON object into v.
func decodeLine(s string, v any) error {
	for line := range strings.Lines(s) {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "{") {
			return json.Unmarshal([]byte(line), v)
		}
	}
	return errors.New("no JSON object in output")
}

// busyPattern reads who holds the lock from acquire's "not acquired" message.
var busyPattern = regexp.MustCompile(`held by "([^"]*)" \(generation (\d+)\)`)
