//go:build linux

package main

// The lease is a promise the holder keeps by its own clock: a run-mode
// holder whose store stops answering stops CMD before the lease ends, and
// nobody who takes the lock after the lease overlaps it. The store is made
// unreachable for the holder the way an application sharing the SQLite
// file can: by holding its write lock (BEGIN IMMEDIATE) from another
// connection for longer than the TTL.

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// safeEndCMD records, in shared.log, when it started and when SIGTERM
// reached it (wall clock, nanoseconds), then leaves at once.
const safeEndCMD = `
trap 'echo "$XPLOCK_HOLDER-term $(date +%s%N)" >> shared.log; exit 0' TERM
echo "$XPLOCK_HOLDER-start $(date +%s%N)" >> shared.log
touch started
while :; do sleep 0.01; done
`

func TestRunStopsBeforeLeaseEndsWhileStoreIsLocked(t *testing.T) {
	for _, ttl := range []time.Duration{time.Second, 3 * time.Second} {
		t.Run(ttl.String(), func(t *testing.T) { testRunSafeEnd(t, ttl) })
	}
}

func testRunSafeEnd(t *testing.T, ttl time.Duration) {
	bin := xplockBin(t)
	dir := t.TempDir()
	db := filepath.Join(dir, "locks.db")
	env := childEnv(db)
	grace := min(5*time.Second, ttl/4) // the default

	alice := make(chan proc, 1)
	go func() {
		alice <- runProc(t, bin, []string{"acquire", "k", "-H", "alice", "--ttl", ttl.String(),
			"--", "sh", "-c", safeEndCMD}, env, dir, 60*time.Second)
	}()
	waitForFile(t, filepath.Join(dir, "started"), alice)

	// From here on no renewal of alice's can commit: her lease ends where
	// the store has it now.
	unlock := lockSQLite(t, db)
	defer unlock()
	blocked := time.Now()
	st := runProc(t, bin, []string{"status", "k", "--json"}, env, dir, 30*time.Second)
	var status statusOut
	if err := decodeLine(st.Stdout, &status); err != nil || len(status.Locks) != 1 || status.Locks[0].Holder != "alice" {
		t.Fatalf("status while the store is locked: %v\n%s", err, st)
	}
	leaseEnd, err := time.Parse(time.RFC3339Nano, status.Locks[0].ExpiresAt)
	if err != nil {
		t.Fatal(err)
	}

	// bob queues for the lock meanwhile; he gets it once the store answers
	// again, long after alice's lease.
	bob := make(chan proc, 1)
	go func() {
		bob <- runProc(t, bin, []string{"acquire", "k", "-H", "bob", "--wait", "60s",
			"--", "sh", "-c", `echo "bob-start $(date +%s%N)" >> shared.log`}, env, dir, 90*time.Second)
	}()

	var a proc
	select {
	case a = <-alice:
	case <-time.After(30 * time.Second):
		t.Fatalf("alice's xplock still running 30s after the store was locked (lease end %s)", leaseEnd.Format(time.StampMilli))
	}
	checkNoRace(t, a)
	if a.Exit != 6 {
		t.Errorf("alice's xplock exited %d, want 6 (lock lost)\n%s", a.Exit, a)
	}
	if !strings.Contains(a.Stderr, "not renewed by its safe end") {
		t.Errorf("alice's message does not say the lease could not be renewed by its safe end:\n%s", a.Stderr)
	}
	// Promptly: not after a store timeout, and while the store is still
	// locked.
	if exited := time.Unix(0, a.Return); exited.After(leaseEnd.Add(2 * time.Second)) {
		t.Errorf("alice's xplock exited %s after her lease ended, want within 2s", exited.Sub(leaseEnd))
	}

	// Keep the store locked for longer than the TTL, then let bob in.
	time.Sleep(time.Until(blocked.Add(ttl + 500*time.Millisecond)))
	unlock()
	var b proc
	select {
	case b = <-bob:
	case <-time.After(60 * time.Second):
		t.Fatal("bob did not get the lock within 60s of the store being unlocked")
	}
	if b.Exit != 0 {
		t.Fatalf("bob's run exited %d, want 0\n%s", b.Exit, b)
	}

	times := readSharedLog(t, filepath.Join(dir, "shared.log"))
	term, bobStart := times["alice-term"], times["bob-start"]
	if term.IsZero() || bobStart.IsZero() {
		t.Fatalf("shared.log lacks alice's SIGTERM or bob's start: %v", times)
	}
	t.Logf("TTL %s: alice's CMD got SIGTERM %s before her lease ended, her xplock exited %s after it; bob started %s after it",
		ttl, leaseEnd.Sub(term).Round(time.Millisecond), time.Unix(0, a.Return).Sub(leaseEnd).Round(time.Millisecond),
		bobStart.Sub(leaseEnd).Round(time.Millisecond))
	// SIGTERM comes at the safe end (lease end - grace - margin): not
	// delayed by a look at the unreachable store to describe the loss.
	if latest := leaseEnd.Add(-grace / 2); term.After(latest) {
		t.Errorf("alice's CMD got SIGTERM %s before her lease ended, want at least %s before (by the safe end)",
			leaseEnd.Sub(term), grace/2)
	}
	if !term.Before(bobStart) || !bobStart.After(leaseEnd) {
		t.Errorf("alice's CMD ended at %s, her lease at %s, bob's CMD started at %s: want them in that order",
			term.Format(time.StampMicro), leaseEnd.Format(time.StampMicro), bobStart.Format(time.StampMicro))
	}
}

// lockSQLite takes db's write lock from a connection of its own, as an
// application sharing the file can, and returns what lets it go again (at
// most once).
func lockSQLite(t *testing.T, db string) (unlock func()) {
	t.Helper()
	raw, err := sql.Open("sqlite3", "file:"+db)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := raw.Conn(context.Background())
	if err != nil {
		raw.Close()
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(context.Background(), "BEGIN IMMEDIATE"); err != nil {
		conn.Close()
		raw.Close()
		t.Fatal(err)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			conn.ExecContext(context.Background(), "ROLLBACK")
			conn.Close()
			raw.Close()
		})
	}
}

// waitForFile waits up to 30s for path, failing early if the process
// behind done ends first.
func waitForFile(t *testing.T, path string, done chan proc) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		select {
		case p := <-done:
			t.Fatalf("%s ended before %s appeared\n%s", p.Args, path, p)
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear within 30s", path)
		}
	}
}

// readSharedLog reads "NAME NANOSECONDS" lines.
func readSharedLog(t *testing.T, path string) map[string]time.Time {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	times := map[string]time.Time{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, ns, ok := strings.Cut(sc.Text(), " ")
		n, err := strconv.ParseInt(ns, 10, 64)
		if !ok || err != nil {
			t.Fatalf("bad line in %s: %q", path, sc.Text())
		}
		if _, seen := times[name]; seen {
			t.Fatalf("%s twice in %s", name, path)
		}
		times[name] = time.Unix(0, n)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(fmt.Errorf("reading %s: %w", path, err))
	}
	return times
}

// A CMD that ended while the store cannot confirm the release: exit 1 (not
// CMD's own code), saying that the lock may still be held until its lease
// ends.
func TestRunUnconfirmedReleaseExits1(t *testing.T) {
	bin := xplockBin(t)
	dir := t.TempDir()
	db := filepath.Join(dir, "locks.db")
	env := childEnv(db)
	done := make(chan proc, 1)
	go func() {
		done <- runProc(t, bin, []string{"acquire", "k", "-H", "alice", "--ttl", "2s",
			"--", "sh", "-c", "touch ready; while [ ! -e go ]; do sleep 0.01; done; exit 7"}, env, dir, 60*time.Second)
	}()
	waitForFile(t, filepath.Join(dir, "ready"), done)
	defer lockSQLite(t, db)()
	if err := os.WriteFile(filepath.Join(dir, "go"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var p proc
	select {
	case p = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("xplock still running 30s after CMD ended")
	}
	checkNoRace(t, p)
	if p.Exit != 1 || !strings.Contains(p.Stderr, "the lock may still be held until its lease ends") {
		t.Errorf("exit %d, want 1 with a message that the lock may still be held until its lease ends\n%s", p.Exit, p)
	}
}
