//go:build linux

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// unixSocket is one of a process's Unix sockets as /proc shows it.
type unixSocket struct {
	path      string // the bound path (an accepted connection shows its listener's)
	listening bool
}

// unixSockets lists the named Unix sockets that process pid has open.
func unixSockets(t *testing.T, pid int) []unixSocket {
	t.Helper()
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	inodes := map[string]bool{}
	for _, e := range entries {
		target, _ := os.Readlink(filepath.Join(dir, e.Name()))
		if inode, ok := strings.CutPrefix(target, "socket:["); ok {
			inodes[strings.TrimSuffix(inode, "]")] = true
		}
	}
	table, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		t.Fatal(err)
	}
	var socks []unixSocket
	// Num RefCount Protocol Flags Type St Inode Path
	for line := range strings.Lines(string(table)) {
		f := strings.Fields(line)
		if len(f) == 8 && inodes[f[6]] {
			socks = append(socks, unixSocket{path: f[7], listening: f[3] == "00010000"})
		}
	}
	return socks
}

// listeningOn is the path process pid listens on, or "".
func listeningOn(t *testing.T, pid int) string {
	for _, s := range unixSockets(t, pid) {
		if s.listening {
			return s.path
		}
	}
	return ""
}

// accepted counts the connections process pid accepted on path.
func accepted(t *testing.T, pid int, path string) int {
	n := 0
	for _, s := range unixSockets(t, pid) {
		if !s.listening && s.path == path {
			n++
		}
	}
	return n
}

// pollUntil checks cond every few milliseconds for up to 30s, for events
// that only show in /proc or the file system.
func pollUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 30s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestForceBreakOfStoppedHolderWakesWaiter: a waiter asleep on a run-mode
// holder's socket wakes within about a second when the holder, stopped
// (SIGSTOP) and so unable to close its socket, has its lock broken with
// `release --force`: the waiter also looks at the store while it sleeps.
// Before, it slept until its --wait ran out while `status` showed the lock
// free (issue 11, finding 2).
func TestForceBreakOfStoppedHolderWakesWaiter(t *testing.T) {
	bin := xplockBin(t)
	dir := t.TempDir()
	env := childEnv(filepath.Join(dir, "locks.db"))
	start := func(args ...string) *exec.Cmd {
		cmd := exec.Command(bin, args...)
		cmd.Dir, cmd.Env = dir, env
		// A file, not a pipe: CMD's own processes may outlive the test.
		stderr, err := os.Create(filepath.Join(dir, args[3]+".stderr"))
		if err != nil {
			t.Fatal(err)
		}
		defer stderr.Close()
		cmd.Stderr = stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	holder := start("acquire", "k", "-H", "alice", "--ttl", "60s", "--", "sh", "-c", "echo $$ > cmd.pid; touch started; exec sleep 120")
	t.Cleanup(func() {
		if pid, err := os.ReadFile(filepath.Join(dir, "cmd.pid")); err == nil {
			if n, err := strconv.Atoi(strings.TrimSpace(string(pid))); err == nil {
				syscall.Kill(n, syscall.SIGKILL)
			}
		}
		holder.Process.Kill()
		holder.Wait()
		if t.Failed() {
			for _, name := range []string{"alice", "bob"} {
				out, _ := os.ReadFile(filepath.Join(dir, name+".stderr"))
				t.Logf("%s's stderr:\n%s", name, out)
			}
		}
	})
	started := filepath.Join(dir, "started")
	pollUntil(t, "the holder's CMD starting", func() bool { _, err := os.Stat(started); return err == nil })
	var listener string
	pollUntil(t, "the holder listening", func() bool { listener = listeningOn(t, holder.Process.Pid); return listener != "" })

	gotLock := filepath.Join(dir, "got-lock")
	waiter := start("acquire", "k", "-H", "bob", "--wait", "30s", "--", "touch", "got-lock")
	t.Cleanup(func() {
		waiter.Process.Kill()
		waiter.Wait()
	})
	// The holder greets each connection as soon as it accepts it.
	pollUntil(t, "the holder accepting the waiter", func() bool { return accepted(t, holder.Process.Pid, listener) > 0 })
	if err := holder.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}

	out, err := exec.Command(bin, "--db", filepath.Join(dir, "locks.db"), "release", "k", "-H", "ops", "--force").CombinedOutput()
	if err != nil {
		t.Fatalf("release --force: %v\n%s", err, out)
	}
	broken := time.Now()
	pollUntil(t, "the waiter taking the lock", func() bool { _, err := os.Stat(gotLock); return err == nil })
	took := time.Since(broken)
	t.Logf("the waiter took the lock %v after the break", took.Round(time.Millisecond))
	if took > 1500*time.Millisecond {
		t.Errorf("the waiter took the lock %v after the break of a stopped holder, want about 1s at most", took.Round(time.Millisecond))
	}
	if err := waiter.Wait(); err != nil {
		t.Errorf("the waiter: %v", err)
	}
}
