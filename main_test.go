package main

import (
	"database/sql"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"
	"github.com/rogpeppe/go-internal/testscript"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){"xplock": main})
}

// TestScripts runs the CLI scripts in testdata/script against the real
// binary, each with its own database in $WORK.
func TestScripts(t *testing.T) {
	params := scriptParams()
	params.Dir = "testdata/script"
	testscript.Run(t, params)
}

// scriptParams are the settings every script runs with: the real binary
// as xplock, and its own database in $WORK.
func scriptParams() testscript.Params {
	return testscript.Params{
		RequireExplicitExec: true,
		Setup: func(e *testscript.Env) error {
			e.Setenv("XPLOCK_DB", e.WorkDir+"/locks.db")
			e.Setenv("XDG_STATE_HOME", e.WorkDir+"/state")
			e.Setenv("USER", "tester")
			// Human output shows local times with their zone: UTC here, so
			// that scripts can match and mask them as ...Z.
			e.Setenv("TZ", "UTC")
			e.Setenv("NO_COLOR", "")
			// A race-enabled binary sleeps a second at exit by default; the
			// scripts start hundreds of them.
			e.Setenv("GORACE", "atexit_sleep_ms=0")
			// Names the scripts cannot spell literally.
			e.Setenv("LONGNAME", strings.Repeat("k", 256))
			e.Setenv("MAXNAME", strings.Repeat("k", 255))
			e.Setenv("CTRLNAME", "bad\x01name")
			return nil
		},
		Cmds: scriptCmds,
	}
}

// scriptCmds are the custom script commands; other test files add theirs
// in init functions.
var scriptCmds = map[string]func(ts *testscript.TestScript, neg bool, args []string){
	"exits":    cmdExits,
	"waitfile": cmdWaitFile,
	"sleep":    cmdSleep,
	"sqlexec":  cmdSQLExec,
}

// exits N PROG [ARGS...] runs PROG and checks that its exit code is N.
func cmdExits(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: exits CODE PROG [ARGS...]")
	}
	want, err := strconv.Atoi(args[0])
	ts.Check(err)
	err = ts.Exec(args[1], args[2:]...)
	got := 0
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		got = exitErr.ExitCode()
	} else if err != nil {
		ts.Fatalf("running %s: %v", args[1], err)
	}
	if got != want {
		ts.Fatalf("%s exited %d, want %d", args[1], got, want)
	}
}

// waitfile PATH waits up to 60 seconds for PATH to exist: scripts
// synchronise on events, not on sleeps.
func cmdWaitFile(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: waitfile PATH")
	}
	path := ts.MkAbs(args[0])
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(path); err == nil {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	ts.Fatalf("%s did not appear within 60s", args[0])
}

// sleep DURATION pauses, for scripts where time itself is the subject.
func cmdSleep(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: sleep DURATION")
	}
	d, err := time.ParseDuration(args[0])
	ts.Check(err)
	time.Sleep(d)
}

// sqlexec FILE SQL runs SQL on a SQLite file directly, to build files the
// store must refuse.
func cmdSQLExec(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: sqlexec FILE SQL")
	}
	db, err := sql.Open("sqlite3", ts.MkAbs(args[0]))
	ts.Check(err)
	defer db.Close()
	_, err = db.Exec(args[1])
	ts.Check(err)
}
