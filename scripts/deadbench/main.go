// Command deadbench measures how soon a waiting process gets a lock whose
// holder was killed with SIGKILL, for xplock and for flock(1) doing the
// same, side by side in one run.
//
// Each round starts a holder that runs `sleep` under the lock (xplock:
// `xplock acquire k -H alice -- sh -c ...`, in run mode; flock:
// `flock FILE sh -c ...`), then a waiter (xplock: a detached
// `xplock acquire k -H bob --json`; flock: `flock FILE echo`), gives the
// waiter -settle to start waiting, kills the holder and its command with
// SIGKILL, and times the waiter's first line of output from the kill. The
// time from when this program reaped the killed holder is shown too.
//
//	go build -o /tmp/xplock . && go run ./scripts/deadbench -xplock /tmp/xplock -rounds 50
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	var (
		xplock = flag.String("xplock", "xplock", "the xplock binary")
		rounds = flag.Int("rounds", 30, "kills per tool")
		settle = flag.Duration("settle", 200*time.Millisecond, "time the waiter gets to start waiting before the kill")
	)
	flag.Parse()
	dir, err := os.MkdirTemp("", "xplock-deadbench")
	check(err)
	defer os.RemoveAll(dir)
	db := filepath.Join(dir, "locks.db")
	lockFile := filepath.Join(dir, "flock")
	tools := []struct {
		name           string
		holder, waiter []string
	}{
		{"xplock", []string{*xplock, "--db", db, "acquire", "k", "-H", "alice", "--"},
			[]string{*xplock, "--db", db, "acquire", "k", "-H", "bob", "--unchecked", "--json"}},
		{"flock(1)", []string{"flock", lockFile}, []string{"flock", lockFile, "echo", "granted"}},
	}
	release := []string{*xplock, "--db", db, "release", "k", "-H", "bob"}
	type result struct{ fromKill, fromReap []time.Duration }
	results := make([]result, len(tools))
	for range *rounds {
		// Interleaved, so that both tools meet the same load.
		for i, tool := range tools {
			fromKill, fromReap := round(dir, tool.holder, tool.waiter, *settle)
			results[i].fromKill = append(results[i].fromKill, fromKill)
			results[i].fromReap = append(results[i].fromReap, fromReap)
			if tool.name == "xplock" {
				check(exec.Command(release[0], release[1:]...).Run())
			}
		}
	}
	fmt.Printf("SIGKILL of the holder to the waiter's grant, %d rounds each (median / p90 / p99 / max):\n", *rounds)
	for i, tool := range tools {
		fmt.Printf("  %-9s from the kill %s   from the holder's reaping %s\n", tool.name,
			summary(results[i].fromKill), summary(results[i].fromReap))
	}
	ratio := float64(median(results[0].fromKill)) / float64(median(results[1].fromKill))
	fmt.Printf("xplock / flock(1), medians from the kill: %.2f\n", ratio)
}

// round runs one kill: holder runs a command that writes its process
// group's ID and sleeps; once it runs, waiter starts and gets settle to wait; then the
// holder and its command's process group get SIGKILL. It returns the times
// from the kill and from the holder's reaping to the waiter's first line.
func round(dir string, holder, waiter []string, settle time.Duration) (fromKill, fromReap time.Duration) {
	groupFile := filepath.Join(dir, "cmd.pgid")
	os.Remove(groupFile)
	h := exec.Command(holder[0], append(slices.Clone(holder[1:]), "sh", "-c",
		`cut -d' ' -f5 /proc/$$/stat > "$1.tmp" && mv "$1.tmp" "$1"; exec sleep 1000`, "sh", groupFile)...)
	h.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	check(h.Start())
	reaped := make(chan time.Time, 1)
	go func() {
		h.Wait()
		reaped <- time.Now()
	}()
	var cmdGroup int
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Millisecond) {
		if b, err := os.ReadFile(groupFile); err == nil {
			cmdGroup, err = strconv.Atoi(strings.TrimSpace(string(b)))
			check(err)
			break
		}
		if time.Now().After(deadline) {
			fail("the holder %v did not start its command", holder)
		}
	}
	w := exec.Command(waiter[0], waiter[1:]...)
	out, err := w.StdoutPipe()
	check(err)
	check(w.Start())
	lines := bufio.NewReader(out)
	time.Sleep(settle)
	killed := time.Now()
	syscall.Kill(-h.Process.Pid, syscall.SIGKILL)
	syscall.Kill(-cmdGroup, syscall.SIGKILL) // run mode's CMD has a group of its own
	if _, err := lines.ReadString('\n'); err != nil {
		fail("the waiter %v said nothing: %v", waiter, err)
	}
	granted := time.Now()
	check(w.Wait())
	return granted.Sub(killed), granted.Sub(<-reaped)
}

func summary(ds []time.Duration) string {
	s := slices.Sorted(slices.Values(ds))
	at := func(q float64) time.Duration {
		return s[min(len(s)-1, int(q*float64(len(s))))].Round(10 * time.Microsecond)
	}
	return fmt.Sprintf("%8s / %8s / %8s / %8s", at(0.5), at(0.9), at(0.99), s[len(s)-1].Round(10*time.Microsecond))
}

func median(ds []time.Duration) time.Duration {
	s := slices.Sorted(slices.Values(ds))
	return s[len(s)/2]
}

func check(err error) {
	if err != nil {
		fail("%v", err)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "deadbench: "+format+"\n", args...)
	os.Exit(1)
}
