package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/xplock/xplock/sqlite"
)

// Script commands for the store's edges:
//
//	dbhold NAME FILE SQL         open FILE on a connection of the test's own
//	                             (an application sharing the database) and
//	                             run SQL there, holding what it takes (BEGIN
//	                             IMMEDIATE: the write lock) until dbrelease
//	dbrelease NAME               roll that connection back and close it
//	sqlquery FILE SQL            print SQL's rows, one per line, columns
//	                             separated by |, reading FILE read-only
//	xplockwithin CODE MAX ARGS   run xplock ARGS and check that it exits CODE
//	                             within MAX (killing it then)
//	watchstopped NAME            wait until the watcher is stopped (after
//	                             watchsignal NAME STOP, which only sends it)
func init() {
	scriptCmds["watchstopped"] = cmdWatchStopped
	scriptCmds["dbhold"] = cmdDBHold
	scriptCmds["dbrelease"] = cmdDBRelease
	scriptCmds["sqlquery"] = cmdSQLQuery
	scriptCmds["xplockwithin"] = cmdXplockWithin
}

type heldDB struct {
	db   *sql.DB
	conn *sql.Conn
}

var (
	heldDBsMu sync.Mutex
	heldDBs   = map[*testscript.TestScript]map[string]*heldDB{}
)

func (h *heldDB) close() {
	h.conn.ExecContext(context.Background(), "ROLLBACK")
	h.conn.Close()
	h.db.Close()
}

func cmdDBHold(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 3 {
		ts.Fatalf("usage: dbhold NAME FILE SQL")
	}
	db, err := sql.Open("sqlite3", ts.MkAbs(args[1]))
	ts.Check(err)
	conn, err := db.Conn(context.Background())
	ts.Check(err)
	h := &heldDB{db: db, conn: conn}
	if _, err := conn.ExecContext(context.Background(), args[2]); err != nil {
		h.close()
		ts.Fatalf("dbhold: %v", err)
	}
	heldDBsMu.Lock()
	defer heldDBsMu.Unlock()
	if heldDBs[ts] == nil {
		heldDBs[ts] = map[string]*heldDB{}
		ts.Defer(func() {
			heldDBsMu.Lock()
			held := heldDBs[ts]
			delete(heldDBs, ts)
			heldDBsMu.Unlock()
			for _, h := range held {
				h.close()
			}
		})
	}
	if heldDBs[ts][args[0]] != nil {
		h.close()
		ts.Fatalf("dbhold: %q is already held", args[0])
	}
	heldDBs[ts][args[0]] = h
}

func cmdDBRelease(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: dbrelease NAME")
	}
	heldDBsMu.Lock()
	h := heldDBs[ts][args[0]]
	delete(heldDBs[ts], args[0])
	heldDBsMu.Unlock()
	if h == nil {
		ts.Fatalf("dbrelease: nothing held as %q", args[0])
	}
	h.close()
}

func cmdSQLQuery(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: sqlquery FILE SQL")
	}
	db, err := sql.Open("sqlite3", "file:"+ts.MkAbs(args[0])+"?mode=ro")
	ts.Check(err)
	defer db.Close()
	rows, err := db.Query(args[1])
	ts.Check(err)
	defer rows.Close()
	cols, err := rows.Columns()
	ts.Check(err)
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		ts.Check(rows.Scan(ptrs...))
		cells := make([]string, len(vals))
		for i, v := range vals {
			if b, ok := v.([]byte); ok {
				v = string(b)
			}
			cells[i] = fmt.Sprint(v)
		}
		fmt.Fprintln(ts.Stdout(), strings.Join(cells, "|"))
	}
	ts.Check(rows.Err())
}

func cmdXplockWithin(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 3 {
		ts.Fatalf("usage: xplockwithin CODE MAX ARGS...")
	}
	want, err := strconv.Atoi(args[0])
	ts.Check(err)
	limit, err := time.ParseDuration(args[1])
	ts.Check(err)
	exe, err := os.Executable()
	ts.Check(err)
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	// The test binary runs as xplock when argv[0] says so (testscript.Main).
	cmd := &exec.Cmd{Path: exe, Args: append([]string{"xplock"}, args[2:]...), Dir: ts.MkAbs("."), Env: watchScriptEnv(ts),
		Stdout: ts.Stdout(), Stderr: ts.Stderr()}
	ts.Check(cmd.Start())
	stop := context.AfterFunc(ctx, func() { cmd.Process.Kill() })
	start := time.Now()
	err = cmd.Wait()
	took := time.Since(start)
	if !stop() {
		ts.Fatalf("xplock %s still running after %s: killed", strings.Join(args[2:], " "), limit)
	}
	got := 0
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		got = exitErr.ExitCode()
	} else if err != nil {
		ts.Fatalf("running xplock: %v", err)
	}
	ts.Logf("exit %d after %s", got, took.Round(time.Millisecond))
	if got != want {
		ts.Fatalf("xplock exited %d, want %d", got, want)
	}
}

// createStore creates the lock store at path with room for historyLimit
// events per key, for tests that read back every event.
func createStore(t testing.TB, path string, historyLimit int) {
	t.Helper()
	s, err := sqlite.Open(context.Background(), path, sqlite.Options{HistoryLimit: historyLimit})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

func cmdWatchStopped(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: watchstopped NAME")
	}
	stat := fmt.Sprintf("/proc/%d/stat", getWatch(ts, args[0]).cmd.Process.Pid)
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(stat)
		ts.Check(err)
		// The state follows the command name in parentheses.
		if i := strings.LastIndexByte(string(b), ')'); i >= 0 && strings.HasPrefix(string(b[i:]), ") T") {
			return
		}
		time.Sleep(time.Millisecond)
	}
	ts.Fatalf("watcher %s did not stop", args[0])
}
