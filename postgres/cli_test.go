package postgres_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/postgres"
)

var (
	buildOnce sync.Once
	binDir    string
	binPath   string
	buildErr  error
)

// xplockBinary builds the xplock command once per test binary.
func xplockBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if binDir, buildErr = os.MkdirTemp("", "xplock-bin-"); buildErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "xplock")
		cmd := exec.Command("go", "build", "-o", binPath, "github.com/xplock/xplock")
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatalf("cannot build xplock: %v", buildErr)
	}
	return binPath
}

// cli runs xplock with a clean environment (no XPLOCK_ variables from the
// caller) plus env.
type cli struct {
	t   *testing.T
	bin string
	env []string
}

func newCLI(t *testing.T, env ...string) *cli {
	var clean []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "XPLOCK_") {
			clean = append(clean, kv)
		}
	}
	clean = append(clean, "XDG_STATE_HOME="+t.TempDir(), "USER=tester")
	return &cli{t: t, bin: xplockBinary(t), env: append(clean, env...)}
}

func (c *cli) command(args ...string) *exec.Cmd {
	cmd := exec.Command(c.bin, args...)
	cmd.Env = c.env
	return cmd
}

// run runs xplock and checks its exit code.
func (c *cli) run(want int, args ...string) (stdout, stderr string) {
	c.t.Helper()
	cmd := c.command(args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		c.t.Fatal(err)
	}
	if code != want {
		c.t.Fatalf("xplock %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, want, &out, &errOut)
	}
	return out.String(), errOut.String()
}

type leaseJSON struct {
	Key        string `json:"key"`
	Holder     string `json:"holder"`
	Generation int64  `json:"generation"`
	Token      int64  `json:"token"`
	Poisoned   bool   `json:"poisoned"`
	ExpiresAt  string `json:"expires_at"`
}

type statusJSON struct {
	Locks []struct {
		Key             string   `json:"key"`
		State           string   `json:"state"`
		Holder          string   `json:"holder"`
		Generation      int64    `json:"generation"`
		Token           int64    `json:"token"`
		PoisonedHolders []string `json:"poisoned_holders"`
		History         []struct {
			Event  string `json:"event"`
			Holder string `json:"holder"`
		} `json:"history"`
	} `json:"locks"`
}

func decode[T any](t *testing.T, s string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("%v: %q", err, s)
	}
	return v
}

// TestCLI drives the xplock binary against PostgreSQL through --db and
// XPLOCK_DB: the exit codes of the worked example, status --json, and the
// runtime and usage errors of a bad store.
func TestCLI(t *testing.T) {
	srv := needServer(t)
	db := srv.newDB(t)
	url := srv.url(db, true) // postgres://
	c := newCLI(t)
	db1 := "--db=" + url

	out, _ := c.run(0, "acquire", "deploy", "-H", "alice", "--json", db1)
	if l := decode[leaseJSON](t, out); l.Generation != 1 || l.Poisoned || l.Holder != "alice" {
		t.Fatalf("first acquisition: %+v", l)
	} else if _, err := time.Parse(time.RFC3339, l.ExpiresAt); err != nil {
		t.Fatalf("expires_at %q: %v", l.ExpiresAt, err)
	}
	if _, stderr := c.run(4, "acquire", "deploy", "-H", "bob", "--nowait", db1); !strings.Contains(stderr, "alice") {
		t.Fatalf("busy message does not name the holder: %s", stderr)
	}
	c.run(5, "release", "deploy", "-H", "bob", db1)
	c.run(0, "release", "deploy", "-H", "alice", db1)

	// The same store through XPLOCK_DB, a postgresql:// URL over the socket.
	env := newCLI(t, "XPLOCK_DB="+srv.url(db, false))
	env.run(0, "acquire", "deploy", "-H", "bob")
	env.run(0, "release", "deploy", "-H", "bob")

	out, _ = c.run(3, "acquire", "deploy", "-H", "alice", "--json", db1)
	if l := decode[leaseJSON](t, out); l.Generation != 3 || !l.Poisoned {
		t.Fatalf("alice after bob: %+v, want generation 3, poisoned", l)
	}
	out, _ = c.run(0, "status", "deploy", "--json", "--history", db1)
	st := decode[statusJSON](t, out)
	if len(st.Locks) != 1 {
		t.Fatalf("status: %s", out)
	}
	l := st.Locks[0]
	// Both acknowledged an older generation: alice 1, bob 2.
	if l.State != "held" || l.Holder != "alice" || l.Generation != 3 || len(l.History) != 5 ||
		strings.Join(l.PoisonedHolders, ",") != "alice,bob" {
		t.Fatalf("status: %s", out)
	}
	c.run(0, "release", "deploy", "-H", "alice", db1)
	c.run(5, "renew", "deploy", "-H", "alice", db1)
	out, _ = c.run(0, "status", "--json", db1)
	if st := decode[statusJSON](t, out); len(st.Locks) != 1 || st.Locks[0].State != "free" ||
		strings.Join(st.Locks[0].PoisonedHolders, ",") != "bob" {
		t.Fatalf("status after alice's release: %s", out)
	}

	// An expired lease: the release is refused, saying so.
	c.run(0, "acquire", "brief", "-H", "alice", "--ttl", "200ms", db1)
	time.Sleep(time.Second)
	if _, stderr := c.run(5, "release", "brief", "-H", "alice", db1); !strings.Contains(stderr, "expired") {
		t.Fatalf("release after expiry: %s", stderr)
	}

	// Nothing listening: exit 1, saying what to check, not the password.
	bad := fmt.Sprintf("postgres://xplock:hunter2@127.0.0.1:%d/%s", freePort(t), db)
	if _, stderr := c.run(1, "status", "--db", bad); !strings.Contains(stderr, "check") || strings.Contains(stderr, "hunter2") {
		t.Fatalf("unreachable server: %s", stderr)
	}
	if _, stderr := c.run(1, "acquire", "k", "-H", "a", "--db", srv.url("missing_db", true)); !strings.Contains(stderr, "missing_db") {
		t.Fatalf("missing database: %s", stderr)
	}
	c.run(2, "status", "--db", "postgres://xplock:hunter2@127.0.0.1:notaport/x")

	// Looking at a database without xplock tables creates none.
	empty := srv.newDB(t)
	c.run(0, "status", "--db", srv.url(empty, true))
	c.run(0, "status", "--db", srv.url(empty, true)+"&search_path=nosuch")
	if n := srv.queryInt(t, empty, "SELECT count(*) FROM pg_class WHERE relname LIKE 'xplock%'"); n != 0 {
		t.Fatalf("status created %d xplock relations", n)
	}

	// A newer schema is refused, untouched.
	newer := srv.newDB(t)
	c.run(0, "acquire", "k", "-H", "a", "--db", srv.url(newer, true))
	srv.exec(t, newer, "UPDATE xplock_schema SET version = 99")
	if _, stderr := c.run(1, "status", "--db", srv.url(newer, true)); !strings.Contains(stderr, "upgrade xplock") {
		t.Fatalf("newer schema: %s", stderr)
	}
	c.run(1, "release", "k", "-H", "a", "--db", srv.url(newer, true))
	if v := srv.queryInt(t, newer, "SELECT version FROM xplock_schema"); v != 99 {
		t.Fatalf("the schema version became %d", v)
	}
	if n := srv.queryInt(t, newer, "SELECT count(*) FROM xplock_tenures"); n != 1 {
		t.Fatalf("the refused release changed the lock: %d held", n)
	}
}

// TestCLIWatch follows a key with `xplock watch` on PostgreSQL while other
// processes take and release it.
func TestCLIWatch(t *testing.T) {
	srv := needServer(t)
	db := srv.newDB(t)
	c := newCLI(t, "XPLOCK_DB="+srv.url(db, true))
	if _, stderr := c.run(0, "watch", "--help"); stderr != "" {
		t.Fatalf("watch --help: %s", stderr)
	}
	watch := c.command("watch", "k", "--json", "--count", "3", "--timeout", "60s")
	stdout, err := watch.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	watch.Stderr = os.Stderr
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { watch.Process.Kill(); watch.Wait() })
	lines := bufio.NewScanner(stdout)
	next := func() map[string]any {
		t.Helper()
		if !lines.Scan() {
			t.Fatalf("watch ended early: %v", lines.Err())
		}
		return decode[map[string]any](t, lines.Text())
	}
	if first := next(); first["event"] != "state" || first["state"] != "free" {
		t.Fatalf("opening line %v", first)
	}
	c.run(0, "acquire", "k", "-H", "a")
	c.run(0, "release", "k", "-H", "a")
	c.run(0, "acquire", "k", "-H", "b")
	for _, want := range []struct{ event, holder string }{{"acquired", "a"}, {"released", "a"}, {"acquired", "b"}} {
		if got := next(); got["event"] != want.event || got["holder"] != want.holder {
			t.Fatalf("watch line %v, want %s by %s", got, want.event, want.holder)
		}
	}
	if err := watch.Wait(); err != nil {
		t.Fatalf("watch --count 3: %v", err)
	}
}

// TestCLIRunModeKilled SIGKILLs `xplock acquire -- CMD` (run mode) on
// PostgreSQL while it holds and renews the lock: the lock comes back after
// the lease, with the next generation.
func TestCLIRunModeKilled(t *testing.T) {
	t.Parallel()
	srv := needServer(t)
	db := srv.newDB(t)
	c := newCLI(t, "XPLOCK_DB="+srv.url(db, true))
	const ttl = 2 * time.Second
	// CMD prints its PID (sh execs sleep in the same process), so that it
	// can be killed at the end: it outlives the killed xplock.
	run := c.command("acquire", "k", "-H", "runner", "--ttl", ttl.String(), "--", "sh", "-c", "echo $$; exec sleep 120")
	stdout, err := run.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderrPath := filepath.Join(t.TempDir(), "stderr")
	stderr, err := os.Create(stderrPath)
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()
	run.Stderr = stderr
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { run.Process.Kill(); run.Wait() })
	var child int
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	if _, err := fmt.Sscanf(line, "%d", &child); err != nil {
		run.Wait()
		msg, _ := os.ReadFile(stderrPath)
		t.Fatalf("run mode did not start CMD: %q\n%s", line, msg)
	}
	t.Cleanup(func() { syscall.Kill(child, syscall.SIGKILL) })
	ctx := context.Background()
	s := open(t, srv.url(db, false), postgres.Options{})
	snap, err := s.Snapshot(ctx, "k")
	if err != nil || len(snap.Locks) != 1 || snap.Locks[0].State != lock.StateHeld {
		t.Fatalf("while CMD runs: %+v, %v", snap.Locks, err)
	}
	held := snap.Locks[0]
	run.Process.Signal(syscall.SIGKILL)
	g := lockAfterKill(t, s, "next", time.Now(), ttl)
	if g.Generation() != held.Generation+1 || g.Token() <= held.Token {
		t.Fatalf("next holder: generation %d token %d after %+v", g.Generation(), g.Token(), held)
	}
	history, err := s.History(ctx, "k", 2)
	if err != nil || len(history) != 2 || history[0].Type != lock.EventExpired || history[0].Holder != "runner" {
		t.Fatalf("history %+v, %v: want runner's expiry before the next acquisition", history, err)
	}
}
