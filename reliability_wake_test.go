//go:build linux

package main

// Waiters wake at once however the holder before them went, with real
// processes on SQLite: after a stopped holder's tenure is broken, its
// stopped process still listens at the key's socket, which never greets;
// the queue behind it must still be handed the lock from one holder to the
// next within milliseconds, through the store's changes.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/xplock/xplock/lock"
)

// handoffs are the pauses between the end of each tenure of key k (a
// release, break or expiry) and the next acquisition in its history, with
// the holder acquiring.
func handoffs(t *testing.T, db string) (holders []string, gaps []time.Duration) {
	t.Helper()
	events, err := lookAt(t, db).History(context.Background(), "k", 0)
	if err != nil {
		t.Fatal(err)
	}
	var ended time.Time
	for _, e := range events {
		switch e.Type {
		case lock.EventAcquired:
			if !ended.IsZero() {
				holders, gaps = append(holders, e.Holder), append(gaps, e.Time.Sub(ended))
			}
			ended = time.Time{}
		case lock.EventReleased, lock.EventBroken, lock.EventExpired:
			ended = e.Time
		}
	}
	return holders, gaps
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// TestWakeQueueBehindStoppedHolder: alice's xplock and CMD are stopped,
// five run-mode waiters queue, and alice's tenure ends: broken, or at its
// lease's end. Each waiter takes the lock from the one before it at once:
// the hand-offs after the first take milliseconds, not the waiters' 400 ms
// looks, although alice's stopped xplock still listens at the key's socket
// and never greets anyone.
func TestWakeQueueBehindStoppedHolder(t *testing.T) {
	for _, c := range []struct {
		name string
		ttl  time.Duration
		end  func(s *queueSetup)
	}{
		{"broken", time.Minute, func(s *queueSetup) { s.must("release", "k", "-H", "admin", "--force") }},
		// Long enough for the queue to form first on a loaded machine.
		{"expired", 5 * time.Second, func(*queueSetup) {}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newQueueSetup(t)
			h := startDeadHolder(t, s.dir, childEnv(s.db), c.ttl)
			syscall.Kill(h.xplock.Process.Pid, syscall.SIGSTOP)
			syscall.Kill(-h.pgid, syscall.SIGSTOP)
			var queued []string
			var done []<-chan proc
			for i := range 5 {
				name := fmt.Sprintf("w%d", i+1)
				done = append(done, s.start("acquire", "k", "-H", name, "--", "sleep", "0.2"))
				queued = append(queued, name)
				s.awaitWaiters("k", queued...)
			}
			// Let every waiter dial the socket and settle into its sleep.
			time.Sleep(500 * time.Millisecond)
			c.end(s)
			for _, d := range done {
				if p := <-d; p.Exit != 0 {
					t.Fatalf("%v", p)
				}
			}
			holders, gaps := handoffs(t, s.db)
			if !slices.Equal(holders, queued) {
				t.Fatalf("the lock went to %v after alice, want %v", holders, queued)
			}
			t.Logf("hand-offs: after alice %s, then %v (median %s)", gaps[0], gaps[1:], median(gaps[1:]))
			// A hand-off takes a few ms; a waiter that only notices at its
			// next look takes up to 400 ms (about 300 ms in this chain).
			// The bound leaves room for a loaded machine.
			if m := median(gaps[1:]); m > 150*time.Millisecond {
				t.Errorf("the median hand-off between waiters took %s, want a few ms (at most 150 ms): %v", m, gaps[1:])
			}
		})
	}
}

// TestWakeWhenKilledXplocksCMDEnds: alice's xplock is killed while her CMD
// goes on, so the lock stays held; the waiter, whose looks have backed off
// to one every 400 ms by the time CMD ends, takes the lock within
// milliseconds of CMD's end all the same: it watches CMD's process.
func TestWakeWhenKilledXplocksCMDEnds(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "locks.db")
	env := childEnv(db)
	var lat []time.Duration
	rounds := 5 * reliabilityScale(t)
	for i := range rounds {
		h := startDeadHolder(t, dir, env, time.Minute)
		w := startDeadWaiter(t, dir, env)
		syscall.Kill(h.xplock.Process.Pid, syscall.SIGKILL)
		<-h.exited
		// Long enough for the waiter's looks after the hang-up to back
		// off to one every 400 ms, and then a part of that pause that
		// differs in each round, so that CMD ends at every point between
		// two looks.
		if line := w.next(t, 700*time.Millisecond+time.Duration(i)*400*time.Millisecond/time.Duration(rounds)); line != "" {
			t.Fatalf("the waiter said %q while alice's CMD still ran", line)
		}
		os.WriteFile(filepath.Join(dir, "stop"), nil, 0o600)
		at, generation := w.granted(t, 30*time.Second)
		b, err := os.ReadFile(filepath.Join(dir, "cmd.ended"))
		var ns int64
		if _, scanErr := fmt.Sscan(string(b), &ns); err != nil || scanErr != nil {
			t.Fatalf("CMD's end time %q: %v %v", b, err, scanErr)
		}
		lat = append(lat, at.Sub(time.Unix(0, ns)))
		if generation != h.generation+1 {
			t.Errorf("the waiter got generation %d after alice's %d", generation, h.generation)
		}
		<-w.exited
	}
	slices.Sort(lat)
	t.Logf("CMD's end to the next grant, %d runs: min %s, median %s, max %s", len(lat), lat[0], median(lat), lat[len(lat)-1])
	// Looks every 400 ms make it about 200 ms; a wake-up makes it a few
	// ms. The bound leaves room for a loaded machine.
	if m := median(lat); m > 100*time.Millisecond {
		t.Errorf("the median time from CMD's end to the next grant is %s, want a few ms (at most 100 ms): %v", m, lat)
	}
}
