package postgres_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
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

// These tests put faults between xplock processes and a real server: a
// pausable TCP proxy (scripts/pauseproxy, a real process) for network
// partitions, pg_terminate_backend for killed connections, and stops and
// restarts of a server of the test's own.

var (
	proxyOnce sync.Once
	proxyPath string
	proxyErr  error
)

// pauseProxy is a running scripts/pauseproxy in front of a server.
type pauseProxy struct {
	addr string
	ctl  net.Conn
	resp *bufio.Reader
}

// startProxy starts a pauseproxy forwarding to srv's TCP port, stopped
// when the test ends.
func startProxy(t *testing.T, srv *pgServer) *pauseProxy {
	t.Helper()
	proxyOnce.Do(func() {
		dir, err := os.MkdirTemp("", "xplock-proxy-")
		if err != nil {
			proxyErr = err
			return
		}
		proxyPath = filepath.Join(dir, "pauseproxy")
		cmd := exec.Command("go", "build", "-o", proxyPath, "./scripts/pauseproxy")
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			proxyErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if proxyErr != nil {
		t.Fatalf("cannot build scripts/pauseproxy: %v", proxyErr)
	}
	cmd := exec.Command(proxyPath, "-target", fmt.Sprintf("127.0.0.1:%d", srv.port))
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	out := bufio.NewReader(stdout)
	var p pauseProxy
	var ctlAddr string
	if line, err := out.ReadString('\n'); err != nil || !strings.HasPrefix(line, "proxy ") {
		t.Fatalf("pauseproxy said %q, %v", line, err)
	} else {
		p.addr = strings.TrimSpace(strings.TrimPrefix(line, "proxy "))
	}
	if line, err := out.ReadString('\n'); err != nil || !strings.HasPrefix(line, "control ") {
		t.Fatalf("pauseproxy said %q, %v", line, err)
	} else {
		ctlAddr = strings.TrimSpace(strings.TrimPrefix(line, "control "))
	}
	if p.ctl, err = net.Dial("tcp", ctlAddr); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.ctl.Close() })
	p.resp = bufio.NewReader(p.ctl)
	return &p
}

// do sends a command to the proxy and returns its answer once in force.
func (p *pauseProxy) do(t *testing.T, command string) string {
	t.Helper()
	if _, err := fmt.Fprintln(p.ctl, command); err != nil {
		t.Fatal(err)
	}
	line, err := p.resp.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ok") {
		t.Fatalf("pauseproxy %s: %q, %v", command, line, err)
	}
	return strings.TrimSpace(line)
}

// url connects to db through the proxy, as application app.
func (p *pauseProxy) url(db, app string) string {
	return fmt.Sprintf("postgres://xplock@%s/%s?sslmode=disable&application_name=%s", p.addr, db, app)
}

// tcpURL connects to db on srv over TCP as application app.
func tcpURL(srv *pgServer, db, app string) string {
	return srv.url(db, true) + "&application_name=" + app
}

// awaitBackend waits until a backend of application app runs a query that
// starts with prefix (its LISTEN, say), failing the test after a minute.
func awaitBackend(t *testing.T, srv *pgServer, db, app, prefix string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for srv.queryInt(t, db, `SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND query LIKE $2`,
		app, prefix+"%") == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no backend of %s ran %s... within a minute", app, prefix)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// started is a process started in the background whose exit is awaited.
type started struct {
	cmd            *exec.Cmd
	began          time.Time
	stdout, stderr bytes.Buffer
	done           chan struct{}
	took           time.Duration
	code           int
}

func (c *cli) start(args ...string) *started {
	c.t.Helper()
	return c.launch(&started{cmd: c.command(args...), done: make(chan struct{})})
}

// launch starts p's command, killed when the test ends.
func (c *cli) launch(p *started) *started {
	c.t.Helper()
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	// A CMD that outlives xplock keeps its output open: do not wait for it.
	p.cmd.WaitDelay = time.Second
	p.began = time.Now()
	if err := p.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	go func() {
		err := p.cmd.Wait()
		p.took = time.Since(p.began)
		if ee, ok := err.(*exec.ExitError); ok {
			p.code = ee.ExitCode()
		}
		close(p.done)
	}()
	c.t.Cleanup(func() { p.cmd.Process.Kill(); <-p.done })
	return p
}

// wait waits for the process to exit, at most limit.
func (p *started) wait(t *testing.T, limit time.Duration) {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(limit):
		p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("%s still running after %v\nstdout: %s\nstderr: %s", strings.Join(p.cmd.Args, " "), limit, &p.stdout, &p.stderr)
	}
}

// TestWaitBoundDuringPartition: `acquire --wait 5s` while the network to
// the server is cut returns within a second of its bound, exit 1, saying
// that the server is unreachable and since when.
func TestWaitBoundDuringPartition(t *testing.T) {
	t.Parallel()
	srv := needServer(t)
	db := srv.newDB(t)
	holder := open(t, srv.url(db, false), postgres.Options{})
	if _, err := holder.Acquire(context.Background(), lock.AcquireRequest{Key: "k", Holder: "a", TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	proxy := startProxy(t, srv)
	c := newCLI(t)
	const wait = 5 * time.Second
	waiter := c.start("acquire", "k", "-H", "b", "--wait", wait.String(), "--db", proxy.url(db, "waiter"))
	// Once it listens, it has found the lock held and waits.
	awaitBackend(t, srv, db, "waiter", "LISTEN")
	proxy.do(t, "pause")
	waiter.wait(t, time.Minute)
	t.Logf("--wait %v: exit %d after %v: %s", wait, waiter.code, waiter.took.Round(time.Millisecond), &waiter.stderr)
	if waiter.took > wait+time.Second {
		t.Errorf("--wait %v returned after %v", wait, waiter.took)
	}
	if waiter.took < wait-time.Second {
		t.Errorf("--wait %v gave up after %v", wait, waiter.took)
	}
	msg := waiter.stderr.String()
	if waiter.code != 1 || !strings.Contains(msg, "unreachable since") {
		t.Errorf("exit %d, %q: want exit 1 saying the server is unreachable since when", waiter.code, msg)
	}
}

// TestFaultsRiddenOut: a waiter and a watch keep going through a killed
// backend, connections dropped by the network, a fast restart of the
// server and a 3 s outage: the waiter acquires once the holder releases,
// and watch shows every change.
func TestFaultsRiddenOut(t *testing.T) {
	t.Parallel()
	srv := ownServer(t)
	db := srv.newDB(t)
	ctx := context.Background()
	holder := open(t, tcpURL(srv, db, "holder"), postgres.Options{})
	if _, err := holder.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: "a", TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	c := newCLI(t)
	proxy := startProxy(t, srv)
	waiter := c.start("acquire", "k", "-H", "b", "--wait", "90s", "--json", "--db", proxy.url(db, "waiter"))
	watchCmd := c.command("watch", "--json", "--timeout", "90s", "--db", proxy.url(db, "watcher"))
	watchOut, err := watchCmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var watchErr bytes.Buffer
	watchCmd.Stderr = &watchErr
	if err := watchCmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { watchCmd.Process.Kill(); watchCmd.Wait() })
	lines := make(chan map[string]any, 100)
	go func() {
		defer close(lines)
		scanner := bufio.NewScanner(watchOut)
		for scanner.Scan() {
			var m map[string]any
			if json.Unmarshal(scanner.Bytes(), &m) == nil {
				lines <- m
			}
		}
	}()
	expect := func(event, key, who string) {
		t.Helper()
		timeout := time.After(30 * time.Second)
		for {
			select {
			case m, ok := <-lines:
				if !ok {
					t.Fatalf("watch ended waiting for %s %s by %s: %s", event, key, who, &watchErr)
				}
				if m["event"] == event && m["key"] == key && m["holder"] == who {
					return
				}
			case <-timeout:
				t.Fatalf("watch did not show %s %s by %s within 30 s: %s", event, key, who, &watchErr)
			}
		}
	}
	expect("state", "k", "a")
	awaitBackend(t, srv, db, "waiter", "LISTEN")
	awaitBackend(t, srv, db, "watcher", "LISTEN")
	// A change of another key that watch must show: it still follows.
	tick := func(n int) {
		t.Helper()
		key := fmt.Sprintf("tick%d", n)
		tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if _, err := holder.Acquire(tctx, lock.AcquireRequest{Key: key, Holder: "t", TTL: time.Hour}); err != nil {
			t.Fatalf("tick %d: %v", n, err)
		}
		if _, err := holder.Release(tctx, lock.ReleaseRequest{Key: key, Holder: "t"}); err != nil {
			t.Fatalf("tick %d: %v", n, err)
		}
		expect("acquired", key, "t")
		expect("released", key, "t")
		t.Logf("watch showed tick %d", n)
	}
	tick(0)

	if n := srv.queryInt(t, db, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE application_name IN ('waiter', 'watcher')`); n < 2 {
		t.Fatalf("terminated %d backends, want the waiter's and the watcher's", n)
	}
	tick(1)
	proxy.do(t, "drop")
	tick(2)
	srv.restart(t, 0)
	tick(3)
	srv.restart(t, 3*time.Second)
	tick(4)
	select {
	case <-waiter.done:
		t.Fatalf("the waiter ended while the lock was held: exit %d\n%s", waiter.code, &waiter.stderr)
	default:
	}
	if _, err := holder.Release(ctx, lock.ReleaseRequest{Key: "k", Holder: "a"}); err != nil {
		t.Fatal(err)
	}
	expect("released", "k", "a")
	expect("acquired", "k", "b")
	waiter.wait(t, 30*time.Second)
	if waiter.code != 0 {
		t.Fatalf("waiter: exit %d\n%s", waiter.code, &waiter.stderr)
	}
	watchCmd.Process.Signal(syscall.SIGTERM)
	if err := watchCmd.Wait(); err != nil {
		t.Fatalf("watch: %v\n%s", err, &watchErr)
	}
}
