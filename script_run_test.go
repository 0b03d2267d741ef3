//go:build linux

package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/rogpeppe/go-internal/testscript"
)

// Script commands for run mode: signals to processes that report their
// own pid, waiting for processes to come and go, and running a command on a
// terminal.
func init() {
	scriptCmds["signal"] = cmdSignal
	scriptCmds["waitproc"] = cmdWaitProc
	scriptCmds["waitfilewithin"] = cmdWaitFileWithin
	scriptCmds["ttyexits"] = cmdTTYExits
}

var scriptSignals = map[string]syscall.Signal{
	"INT": syscall.SIGINT, "TERM": syscall.SIGTERM, "HUP": syscall.SIGHUP,
	"QUIT": syscall.SIGQUIT, "KILL": syscall.SIGKILL, "STOP": syscall.SIGSTOP, "CONT": syscall.SIGCONT,
}

// signal SIG PIDFILE sends SIG (INT, TERM, HUP, QUIT, KILL, STOP, CONT) to the
// process whose pid PIDFILE holds; a child writes $PPID to name xplock.
func cmdSignal(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: signal INT|TERM|HUP|QUIT|KILL|STOP|CONT PIDFILE")
	}
	sig, ok := scriptSignals[args[0]]
	if !ok {
		ts.Fatalf("unknown signal %q", args[0])
	}
	pid, err := strconv.Atoi(strings.TrimSpace(ts.ReadFile(args[1])))
	ts.Check(err)
	if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		ts.Fatalf("kill %d: %v", pid, err)
	}
}

// waitproc [-gone] TEXT waits up to 30 seconds for a live process whose
// command line contains TEXT to exist (with -gone: for none to be left).
func cmdWaitProc(ts *testscript.TestScript, neg bool, args []string) {
	gone := len(args) == 2 && args[0] == "-gone"
	if gone {
		args = args[1:]
	}
	if neg || len(args) != 1 {
		ts.Fatalf("usage: waitproc [-gone] TEXT")
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		pids := processesMatching(args[0])
		if gone == (len(pids) == 0) {
			return
		}
		if time.Now().After(deadline) {
			if gone {
				ts.Fatalf("processes %v matching %q still running after 30s", pids, args[0])
			}
			ts.Fatalf("no process matching %q within 30s", args[0])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// processesMatching lists live (not zombie) processes whose command line
// contains text.
func processesMatching(text string) []int {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var pids []int
	for _, dir := range dirs {
		cmdline, err := os.ReadFile(dir + "/cmdline")
		if err != nil || !strings.Contains(string(bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})), text) {
			continue
		}
		stat, err := os.ReadFile(dir + "/stat")
		if i := bytes.LastIndexByte(stat, ')'); err != nil || i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z' {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(dir))
		pids = append(pids, pid)
	}
	return pids
}

// waitfilewithin DURATION PATH fails unless PATH appears within DURATION.
func cmdWaitFileWithin(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: waitfilewithin DURATION PATH")
	}
	d, err := time.ParseDuration(args[0])
	ts.Check(err)
	path := ts.MkAbs(args[1])
	start := time.Now()
	for time.Since(start) < d {
		if _, err := os.Stat(path); err == nil {
			ts.Logf("%s appeared after %s", args[1], time.Since(start).Round(time.Millisecond))
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	ts.Fatalf("%s did not appear within %s", args[1], d)
}

// ttyexits [-in FILE [-after PATH]] CODE OUTFILE PROG [ARGS...] runs PROG
// in a new session with a pseudo-terminal as its controlling terminal and
// its stdin, stdout and stderr, types FILE's content into the terminal (once
// PATH exists, a key every 50ms), writes everything the terminal showed to OUTFILE and checks
// that PROG exited CODE.
func cmdTTYExits(ts *testscript.TestScript, neg bool, args []string) {
	var input []byte
	var after string
	for len(args) > 1 && (args[0] == "-in" || args[0] == "-after") {
		if args[0] == "-in" {
			input = []byte(ts.ReadFile(args[1]))
		} else {
			after = ts.MkAbs(args[1])
		}
		args = args[2:]
	}
	if neg || len(args) < 3 {
		ts.Fatalf("usage: ttyexits [-in FILE [-after PATH]] CODE OUTFILE PROG [ARGS...]")
	}
	want, err := strconv.Atoi(args[0])
	ts.Check(err)
	ptm, tty, err := openPTY()
	ts.Check(err)
	defer ptm.Close()

	path, err := exec.LookPath(args[2])
	ts.Check(err)
	c := exec.Command(path, args[3:]...)
	c.Dir = ts.MkAbs(".")
	c.Env = os.Environ()
	for _, k := range []string{"PATH", "HOME", "TMPDIR", "WORK", "USER", "XPLOCK_DB", "XDG_STATE_HOME", "XPLOCK_HOLDER"} {
		if v := ts.Getenv(k); v != "" {
			c.Env = append(c.Env, k+"="+v)
		}
	}
	c.Stdin, c.Stdout, c.Stderr = tty, tty, tty
	c.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	ts.Check(c.Start())
	tty.Close()
	var out bytes.Buffer
	read := make(chan struct{})
	go func() {
		io.Copy(&out, ptm) // ends with EIO once no process has the terminal open
		close(read)
	}()
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	if len(input) > 0 {
		go func() {
			for deadline := time.Now().Add(30 * time.Second); after != "" && time.Now().Before(deadline); {
				if _, err := os.Stat(after); err == nil {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			for i := range input {
				ptm.Write(input[i : i+1])
				time.Sleep(50 * time.Millisecond) // typed, not pasted
			}
		}()
	}
	select {
	case err = <-done:
	case <-time.After(60 * time.Second):
		c.Process.Kill()
		<-done
		ts.Fatalf("%s still running after 60s on a terminal", args[2])
	}
	select {
	case <-read:
	case <-time.After(10 * time.Second):
		ts.Fatalf("terminal still open 10s after %s exited", args[2])
	}
	ts.Check(os.WriteFile(ts.MkAbs(args[1]), out.Bytes(), 0o666))
	got := 0
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		got = exitErr.ExitCode()
	} else if err != nil {
		ts.Fatalf("running %s: %v", args[2], err)
	}
	if got != want {
		ts.Fatalf("%s exited %d on a terminal, want %d; the terminal showed:\n%s", args[2], got, want, out.String())
	}
}

// openPTY opens a pseudo-terminal pair.
func openPTY() (ptm, tty *os.File, err error) {
	ptm, err = os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, err
	}
	var unlock int32
	var n uint32
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, ptm.Fd(), syscall.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); e != 0 {
		ptm.Close()
		return nil, nil, e
	}
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, ptm.Fd(), syscall.TIOCGPTN, uintptr(unsafe.Pointer(&n))); e != 0 {
		ptm.Close()
		return nil, nil, e
	}
	tty, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		ptm.Close()
		return nil, nil, err
	}
	return ptm, tty, nil
}
