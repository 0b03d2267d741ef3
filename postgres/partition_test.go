package postgres_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/postgres"
)

// holderCMD records in shared.log when it started and when SIGTERM reached
// it (wall clock, nanoseconds), then leaves at once.
const holderCMD = `
echo $$ > "$XPLOCK_HOLDER.pid"
trap 'echo "$XPLOCK_HOLDER-term $(date +%s%N)" >> shared.log; exit 0' TERM
echo "$XPLOCK_HOLDER-start $(date +%s%N)" >> shared.log
touch started
while :; do sleep 0.01; done
`

// TestRunStopsBeforeLeaseEndsInPartition: a run-mode holder cut off from
// the server stops its CMD before its lease ends, by its own clock, and
// the holder who takes the lock after the lease never overlaps it. The
// partition is full (every connection of the holder's paused), or only of
// its queries while its notifications still flow and other keys change
// every 0.1 s.
func TestRunStopsBeforeLeaseEndsInPartition(t *testing.T) {
	t.Parallel()
	ttls := []time.Duration{time.Second, 3 * time.Second}
	if !testing.Short() {
		ttls = append(ttls, 30*time.Second)
	}
	for _, mode := range []string{"pause", "pause-query"} {
		for _, ttl := range ttls {
			t.Run(fmt.Sprintf("%s/%s", mode, ttl), func(t *testing.T) {
				t.Parallel()
				testRunInPartition(t, mode, ttl)
			})
		}
	}
}

func testRunInPartition(t *testing.T, mode string, ttl time.Duration) {
	srv := needServer(t)
	db := srv.newDB(t)
	ctx := context.Background()
	proxy := startProxy(t, srv)
	dir := t.TempDir()
	c := newCLI(t)
	direct := open(t, tcpURL(srv, db, "observer"), postgres.Options{})

	alice := c.startIn(dir, "acquire", "k", "-H", "alice", "--ttl", ttl.String(), "--db", proxy.url(db, "alice"),
		"--", "sh", "-c", holderCMD)
	awaitFile(t, filepath.Join(dir, "started"), alice)
	// If xplock fails to stop it, CMD is stopped when the test ends.
	t.Cleanup(func() {
		if pid, err := os.ReadFile(filepath.Join(dir, "alice.pid")); err == nil {
			if n, err := strconv.Atoi(strings.TrimSpace(string(pid))); err == nil {
				syscall.Kill(n, syscall.SIGKILL)
			}
		}
	})
	// Alice renews through a connection that also listens: wait for it, so
	// that a query-only partition leaves her notifications flowing.
	awaitBackend(t, srv, db, "alice", "LISTEN")

	if mode == "pause-query" {
		churnCtx, stop := context.WithCancel(ctx)
		churned := make(chan struct{})
		t.Cleanup(func() { stop(); <-churned })
		go func() {
			defer close(churned)
			for i := 0; churnCtx.Err() == nil; i++ {
				key := fmt.Sprintf("churn%d", i%5)
				direct.Acquire(churnCtx, lock.AcquireRequest{Key: key, Holder: "churner", TTL: time.Minute})
				direct.Release(churnCtx, lock.ReleaseRequest{Key: key, Holder: "churner"})
				select {
				case <-churnCtx.Done():
				case <-time.After(100 * time.Millisecond):
				}
			}
		}()
	}
	proxy.do(t, mode)
	paused := time.Now()
	t.Cleanup(func() { proxy.do(t, "resume") })

	bob := c.startIn(dir, "acquire", "k", "-H", "bob", "--wait", (ttl + time.Minute).String(),
		"--db", tcpURL(srv, db, "bob"), "--", "sh", "-c", `echo "bob-start $(date +%s%N)" >> shared.log`)
	alice.wait(t, ttl+30*time.Second)
	bob.wait(t, ttl+time.Minute)
	if bob.code != 0 {
		t.Fatalf("bob: exit %d\n%s", bob.code, &bob.stderr)
	}
	if alice.code != 6 {
		t.Errorf("alice: exit %d, want 6 (lock lost)\n%s", alice.code, &alice.stderr)
	}

	// Bob's acquisition recorded alice's expiry, stamped with her lease's
	// end as the server had it.
	history, err := direct.History(ctx, "k", 0)
	if err != nil {
		t.Fatal(err)
	}
	var leaseEnd time.Time
	for _, e := range history {
		if e.Type == lock.EventExpired && e.Holder == "alice" {
			leaseEnd = e.Time
		}
	}
	if leaseEnd.IsZero() {
		t.Fatalf("no expiry of alice's lease in history %+v", history)
	}
	times := readTimes(t, filepath.Join(dir, "shared.log"))
	term, bobStart := times["alice-term"], times["bob-start"]
	if term.IsZero() || bobStart.IsZero() {
		t.Fatalf("shared.log lacks alice's SIGTERM or bob's start: %v", times)
	}
	t.Logf("partitioned %s before alice's lease ended; her CMD got SIGTERM %s before it, her xplock exited %s after it; bob started %s after it",
		leaseEnd.Sub(paused).Round(time.Millisecond), leaseEnd.Sub(term).Round(time.Millisecond),
		alice.began.Add(alice.took).Sub(leaseEnd).Round(time.Millisecond), bobStart.Sub(leaseEnd).Round(time.Millisecond))
	if !term.Before(leaseEnd) || !leaseEnd.Before(bobStart) {
		t.Errorf("alice's CMD got SIGTERM at %s, her lease ended at %s, bob's CMD started at %s: want them in that order",
			term.Format(time.StampMicro), leaseEnd.Format(time.StampMicro), bobStart.Format(time.StampMicro))
	}
	if exited := alice.began.Add(alice.took); exited.After(leaseEnd.Add(2 * time.Second)) {
		t.Errorf("alice's xplock exited %s after her lease ended, want within 2 s", exited.Sub(leaseEnd))
	}
}

// startIn is start in directory dir.
func (c *cli) startIn(dir string, args ...string) *started {
	c.t.Helper()
	p := &started{cmd: c.command(args...), done: make(chan struct{})}
	p.cmd.Dir = dir
	return c.launch(p)
}

// awaitFile waits up to 30 s for path, failing early if p ends first.
func awaitFile(t *testing.T, path string, p *started) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		select {
		case <-p.done:
			t.Fatalf("%s ended (exit %d) before %s appeared\n%s", p.cmd.Args, p.code, path, &p.stderr)
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear within 30 s", path)
		}
	}
}

// readTimes reads "NAME NANOSECONDS" lines.
func readTimes(t *testing.T, path string) map[string]time.Time {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	times := map[string]time.Time{}
	lines := bufio.NewScanner(f)
	for lines.Scan() {
		name, ns, ok := strings.Cut(lines.Text(), " ")
		n, err := strconv.ParseInt(ns, 10, 64)
		if !ok || err != nil {
			t.Fatalf("bad line in %s: %q", path, lines.Text())
		}
		if _, seen := times[name]; seen {
			t.Fatalf("%s twice in %s", name, path)
		}
		times[name] = time.Unix(0, n)
	}
	return times
}
