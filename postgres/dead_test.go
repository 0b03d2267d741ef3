//go:build linux

package postgres_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/postgres"
)

// TestDeadHolderOnThisMachine: a run-mode holder on this machine whose
// xplock and CMD are killed gives the lock back at once, as on SQLite: the
// next holder proves it dead, takes the next generation, and the history
// says the holder died.
func TestDeadHolderOnThisMachine(t *testing.T) {
	t.Parallel()
	srv := needServer(t)
	db := srv.newDB(t)
	ctx := context.Background()
	dir := t.TempDir()
	c := newCLI(t)
	alice := c.startIn(dir, "acquire", "k", "-H", "alice", "--ttl", "1m", "--db", tcpURL(srv, db, "alice"),
		"--", "sh", "-c", `cut -d' ' -f5 /proc/$$/stat > cmd.pgid && touch started && exec sleep 1000`)
	awaitFile(t, filepath.Join(dir, "started"), alice)
	b, err := os.ReadFile(filepath.Join(dir, "cmd.pgid"))
	if err != nil {
		t.Fatal(err)
	}
	var pgid int
	if _, err := fmt.Sscan(strings.TrimSpace(string(b)), &pgid); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-pgid, syscall.SIGKILL) })
	s := open(t, tcpURL(srv, db, "observer"), postgres.Options{})
	snap, err := s.Snapshot(ctx, "k")
	if err != nil || len(snap.Locks) != 1 || snap.Locks[0].State != lock.StateHeld {
		t.Fatalf("while CMD runs: %+v, %v", snap.Locks, err)
	}
	held := snap.Locks[0]

	killed := time.Now()
	alice.cmd.Process.Signal(syscall.SIGKILL)
	syscall.Kill(-pgid, syscall.SIGKILL)
	// The goal is at once; a loaded 2-core machine gets room (up to 5 s),
	// far below the minute's lease.
	g := lockAfterKill(t, s, "bob", killed, 0)
	t.Logf("SIGKILL to the next grant: %s", time.Since(killed))
	if g.Generation() != held.Generation+1 {
		t.Errorf("bob: generation %d after alice's %d", g.Generation(), held.Generation)
	}
	history, err := s.History(ctx, "k", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(history) != 3 || history[1].Type != lock.EventExpired || history[1].Detail != lock.DetailHolderDied {
		t.Fatalf("history %+v, want alice's expiry with the detail %q", history, lock.DetailHolderDied)
	}
}

// TestDeadRemoteHolderKeepsLease: a holder on another machine (its keeper
// from another boot) cut off behind a paused proxy, whose session the
// server then drops, keeps the lock until its lease ends: from here it
// cannot be told apart from a live holder in a network partition.
func TestDeadRemoteHolderKeepsLease(t *testing.T) {
	t.Parallel()
	srv := needServer(t)
	db := srv.newDB(t)
	ctx := context.Background()
	proxy := startProxy(t, srv)
	remote := open(t, proxy.url(db, "remote"), postgres.Options{})
	l, err := lock.New(remote, "k", "alice", lock.Options{TTL: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	elsewhere := lock.Keeper{BootID: "00000000-0000-0000-0000-000000000000", PIDNamespace: 1, PID: 1 << 30, Start: 1}
	g, err := l.Acquire(ctx, lock.AcquireOptions{Keepers: []lock.Keeper{elsewhere}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Release(ctx) })

	proxy.do(t, "pause")
	t.Cleanup(func() { proxy.do(t, "resume") })
	srv.exec(t, db, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'remote'`)
	if n := srv.queryInt(t, db, `SELECT count(*) FROM pg_stat_activity WHERE application_name = 'remote'`); n != 0 {
		t.Fatalf("%d sessions of the remote holder left", n)
	}

	s := open(t, tcpURL(srv, db, "bob"), postgres.Options{})
	snap, err := s.Snapshot(ctx, "k")
	if err != nil || len(snap.Locks) != 1 || snap.Locks[0].State != lock.StateHeld {
		t.Fatalf("after the session was dropped: %+v, %v; want still held", snap.Locks, err)
	}
	end := snap.Locks[0].ExpiresAt
	bg := lockAfterKill(t, s, "bob", time.Now(), time.Until(end))
	if at := bg.Grant().AcquiredAt; at.Before(end) {
		t.Errorf("bob had the lock at %s, before the remote holder's lease ended (%s)", at, end)
	}
	history, err := s.History(ctx, "k", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(history) != 3 || history[1].Type != lock.EventExpired || history[1].Detail != "" {
		t.Fatalf("history %+v, want alice's expiry at her lease's end, without detail", history)
	}
}
