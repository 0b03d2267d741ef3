package postgres_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/postgres"
)

// The test binary doubles as the helper processes of these tests: with
// helperEnv set, TestMain runs runHelper instead of the tests.
const helperEnv = "XPLOCK_PG_TEST_HELPER"

// runHelper is a helper process's main: "contend" takes and releases a key
// in rounds, "hold" takes it and holds it (renewing) until killed.
func runHelper(role string) int {
	url, key, holder := os.Getenv("HELPER_URL"), os.Getenv("HELPER_KEY"), os.Getenv("HELPER_HOLDER")
	ctx := context.Background()
	s, err := postgres.Open(ctx, url, postgres.Options{})
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	defer s.Close()
	ttl, _ := time.ParseDuration(os.Getenv("HELPER_TTL"))
	l, err := lock.New(s, key, holder, lock.Options{TTL: ttl})
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	switch role {
	case "contend":
		return contend(ctx, l, holder)
	case "hold":
		g, err := l.Lock(ctx)
		var pe *lock.PoisonError
		if errors.As(err, &pe) {
			g, err = pe.IntoGuard(), nil
		}
		if err != nil {
			fmt.Println("error", err)
			return 1
		}
		fmt.Printf("held %d %d\n", g.Generation(), g.Token())
		select {} // until killed; the guard renews the lease meanwhile
	}
	return 2
}

// contend waits for "go" on stdin, then takes the lock HELPER_ROUNDS times,
// printing each grant. Inside, it creates the marker file exclusively: a
// second process inside at the same time finds it and reports the overlap.
func contend(ctx context.Context, l *lock.Lock, holder string) int {
	rounds, _ := strconv.Atoi(os.Getenv("HELPER_ROUNDS"))
	marker := os.Getenv("HELPER_MARKER")
	fmt.Println("ready")
	if line, _ := bufio.NewReader(os.Stdin).ReadString('\n'); line != "go\n" {
		return 2
	}
	for range rounds {
		g, err := l.Lock(ctx)
		poisoned := false
		var pe *lock.PoisonError
		if errors.As(err, &pe) {
			g, err, poisoned = pe.IntoGuard(), nil, true
		}
		if err != nil {
			fmt.Println("error", err)
			return 1
		}
		f, err := os.OpenFile(marker, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			fmt.Println("error overlap:", holder, "entered while another process was inside:", err)
			return 1
		}
		fmt.Fprintln(f, holder)
		f.Close()
		fmt.Printf("acq %s %d %d %v\n", holder, g.Generation(), g.Token(), poisoned)
		// Stay inside a moment, so that an overlap would be caught.
		time.Sleep(2 * time.Millisecond)
		if err := os.Remove(marker); err != nil {
			fmt.Println("error", err)
			return 1
		}
		if err := g.Release(ctx); err != nil {
			fmt.Println("error", err)
			return 1
		}
	}
	return 0
}

// helper starts the test binary as a helper process.
func helper(t *testing.T, role string, env ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append([]string{helperEnv + "=" + role}, env...)...)
	cmd.Stderr = os.Stderr
	return cmd
}

type grantLine struct {
	holder            string
	generation, token int64
	poisoned          bool
}

// TestCrossProcessContention has separate processes, each with its own
// connection URL to the server (Unix socket or TCP, their own application
// name), fight over one key: no two are ever inside at once, tokens grow,
// generations and poison follow the rules.
func TestCrossProcessContention(t *testing.T) {
	srv := needServer(t)
	db := srv.newDB(t)
	const procs, rounds = 4, 8
	marker := filepath.Join(t.TempDir(), "inside")
	type worker struct {
		cmd   *exec.Cmd
		stdin io.WriteCloser
		out   *bufio.Reader
	}
	var workers []worker
	for i := range procs {
		url := srv.url(db, i%2 == 1)
		url += fmt.Sprintf("&application_name=contender-%d", i)
		cmd := helper(t, "contend", "HELPER_URL="+url, "HELPER_KEY=shared", fmt.Sprintf("HELPER_HOLDER=p%d", i),
			fmt.Sprintf("HELPER_ROUNDS=%d", rounds), "HELPER_MARKER="+marker, "HELPER_TTL=30s")
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		workers = append(workers, worker{cmd, stdin, bufio.NewReader(stdout)})
	}
	for i, w := range workers {
		if line, err := w.out.ReadString('\n'); line != "ready\n" {
			t.Fatalf("worker %d: %q, %v", i, line, err)
		}
	}
	for _, w := range workers {
		io.WriteString(w.stdin, "go\n")
	}
	var grants []grantLine
	for i, w := range workers {
		rest, _ := io.ReadAll(w.out)
		if err := w.cmd.Wait(); err != nil {
			t.Fatalf("worker %d: %v\n%s", i, err, rest)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(rest)), "\n") {
			var g grantLine
			if _, err := fmt.Sscanf(line, "acq %s %d %d %t", &g.holder, &g.generation, &g.token, &g.poisoned); err != nil {
				t.Fatalf("worker %d: %q: %v", i, line, err)
			}
			grants = append(grants, g)
		}
	}
	if len(grants) != procs*rounds {
		t.Fatalf("%d grants, want %d", len(grants), procs*rounds)
	}
	// In token order the grants are the tenures one after the other.
	slices.SortFunc(grants, func(a, b grantLine) int { return int(a.token - b.token) })
	held := map[string]bool{}
	switched := 0
	for i, g := range grants {
		want := grantLine{holder: g.holder, generation: 1, token: 1}
		if i > 0 {
			prev := grants[i-1]
			want.token = prev.token + 1
			want.generation = prev.generation
			if prev.holder != g.holder {
				want.generation++
				switched++
			}
			// Every release acknowledged: poisoned exactly when someone else
			// held the lock since this holder last did.
			want.poisoned = held[g.holder] && prev.holder != g.holder
		}
		if g != want {
			t.Fatalf("tenure %d: %+v, want %+v", i, g, want)
		}
		held[g.holder] = true
	}
	if switched == 0 {
		t.Log("the processes never alternated; the run proved little")
	}
	s := open(t, srv.url(db, false), postgres.Options{})
	history, err := s.History(context.Background(), "shared", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(history) != 2*len(grants) {
		t.Fatalf("%d events, want %d", len(history), 2*len(grants))
	}
	for i, e := range history {
		g := grants[i/2]
		wantType := lock.EventAcquired
		if i%2 == 1 {
			wantType = lock.EventReleased
		}
		if e.Type != wantType || e.Holder != g.holder || e.Token != g.token || e.Generation != g.generation {
			t.Fatalf("event %d: %+v, want %s by %+v", i, e, wantType, g)
		}
	}
}

// lockAfterKill takes key "k" as holder once the lease of a holder killed
// at killed has run out, failing the test if that takes far longer than
// the lease. The guard is released at the end of the test.
func lockAfterKill(t *testing.T, s lock.Store, holder string, killed time.Time, ttl time.Duration) *lock.Guard {
	t.Helper()
	ctx := context.Background()
	l, err := lock.New(s, "k", holder, lock.Options{TTL: time.Minute, NoRenew: true})
	if err != nil {
		t.Fatal(err)
	}
	waitCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	g, err := l.Lock(waitCtx)
	if err != nil {
		t.Fatalf("the lock did not come back after its holder was killed: %v", err)
	}
	t.Cleanup(func() { g.Release(ctx) })
	if waited := time.Since(killed); waited > ttl+5*time.Second {
		t.Errorf("waited %v for a lease of %v", waited, ttl)
	}
	return g
}

// TestKilledHolder SIGKILLs a process while it holds (and renews) a lease,
// seen from a machine that cannot prove it dead:
// the lock comes back once the lease ends, not before, to the next holder
// with the next generation, and history records the expiry at the lease's
// end.
func TestKilledHolder(t *testing.T) {
	t.Parallel()
	srv := needServer(t)
	db := srv.newDB(t)
	ctx := context.Background()
	const ttl = 2 * time.Second
	cmd := helper(t, "hold", "HELPER_URL="+srv.url(db, true), "HELPER_KEY=k", "HELPER_HOLDER=victim", "HELPER_TTL="+ttl.String())
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var gen, token int64
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	if _, err := fmt.Sscanf(line, "held %d %d", &gen, &token); err != nil {
		t.Fatalf("helper said %q: %v", line, err)
	}
	// The survivor judges as from another machine: a holder on this one
	// would be proved dead at once (see TestDeadHolderOnThisMachine).
	s := open(t, srv.url(db, false), postgres.Options{Prover: remoteProver{}})
	snap, err := s.Snapshot(ctx, "k")
	if err != nil || len(snap.Locks) != 1 || snap.Locks[0].Holder != "victim" || snap.Locks[0].State != lock.StateHeld {
		t.Fatalf("before the kill: %+v, %v", snap.Locks, err)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	g := lockAfterKill(t, s, "survivor", time.Now(), ttl)
	if g.Generation() != gen+1 || g.Token() <= token || g.Poisoned() {
		t.Fatalf("survivor: generation %d token %d poisoned %v; the victim had generation %d token %d",
			g.Generation(), g.Token(), g.Poisoned(), gen, token)
	}
	history, err := s.History(ctx, "k", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(history) != 3 {
		t.Fatalf("history %+v, want acquired, expired, acquired", history)
	}
	acq, exp, next := history[0], history[1], history[2]
	if acq.Type != lock.EventAcquired || acq.Holder != "victim" ||
		exp.Type != lock.EventExpired || exp.Holder != "victim" || exp.Token != token ||
		next.Type != lock.EventAcquired || next.Holder != "survivor" {
		t.Fatalf("history %+v, want victim acquired, victim expired, survivor acquired", history)
	}
	// The expiry is stamped with the lease's end, which a renewing holder
	// kept at least a TTL after it took the lock; the lock was not handed
	// over before it.
	grant := g.Grant()
	if exp.Time.Before(acq.Time.Add(ttl)) || grant.AcquiredAt.Before(exp.Time) {
		t.Fatalf("victim acquired %v, expiry stamped %v, survivor acquired %v", acq.Time, exp.Time, grant.AcquiredAt)
	}
}

// remoteProver proves nothing, as a prover on another machine.
type remoteProver struct{}

func (remoteProver) ProveDead([]lock.Keeper) bool { return false }

// freePort returns a loopback port nothing listens on.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}
