package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/xplock/xplock/lock"
)

// Run mode: xplock runs CMD in its own process group while holding the
// lock, forwards signals to that group, and ends it when the lease is lost.

// forwardedSignals are passed on to CMD's process group in run mode.
var forwardedSignals = []os.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT}

// ignoredAtStart records the signals xplock was started with ignored (as a
// shell does for `cmd &` and nohup). Run mode leaves them ignored, so that
// CMD inherits that, instead of catching and forwarding them. It is read
// before main runs, while no signal handler has been installed yet.
var ignoredAtStart = func() map[os.Signal]bool {
	m := map[os.Signal]bool{}
	for _, sig := range forwardedSignals {
		m[sig] = signal.Ignored(sig)
	}
	return m
}()

// catchable drops the signals that were ignored when xplock started.
func catchable(sigs ...os.Signal) []os.Signal {
	var out []os.Signal
	for _, sig := range sigs {
		if !ignoredAtStart[sig] {
			out = append(out, sig)
		}
	}
	return out
}

// runSignals catches the forwarded signals from before the lock is taken
// until xplock exits: while waiting one ends the wait, before CMD starts one
// means CMD does not start, and afterwards they go to CMD.
type runSignals struct {
	ch chan os.Signal

	early      syscall.Signal
	quit, done chan struct{}
}

func catchSignals() *runSignals {
	s := &runSignals{ch: make(chan os.Signal, 16)}
	if sigs := catchable(forwardedSignals...); len(sigs) > 0 {
		signal.Notify(s.ch, sigs...)
	}
	return s
}

// interruptWait calls cancel on the first signal until beforeStart.
func (s *runSignals) interruptWait(cancel context.CancelFunc) {
	s.quit, s.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(s.done)
		select {
		case sig := <-s.ch:
			s.early = sig.(syscall.Signal)
			cancel()
		case <-s.quit:
		}
	}()
}

// beforeStart returns a signal that arrived before CMD could start, or 0.
func (s *runSignals) beforeStart() syscall.Signal {
	if s.quit != nil {
		close(s.quit)
		<-s.done
		s.quit = nil
	}
	if s.early != 0 {
		return s.early
	}
	select {
	case sig := <-s.ch:
		return sig.(syscall.Signal)
	default:
		return 0
	}
}

func (s *runSignals) stop() { signal.Stop(s.ch) }

var signalNames = map[syscall.Signal]string{
	syscall.SIGINT: "SIGINT", syscall.SIGTERM: "SIGTERM", syscall.SIGHUP: "SIGHUP",
	syscall.SIGQUIT: "SIGQUIT", syscall.SIGKILL: "SIGKILL",
}

func signalName(sig syscall.Signal) string {
	if name, ok := signalNames[sig]; ok {
		return name
	}
	return "signal " + strconv.Itoa(int(sig))
}

// runLocked runs opts.Command while guard is held (run mode) and returns
// the exit code SPEC.md gives: CMD's own, 128+N when a signal N ended it,
// or 6 when the lease was lost.
func runLocked(ctx context.Context, opts *acquireOptions, store lock.Store, guard *lock.Guard, sigs *runSignals) error {
	opts.Out, opts.Err = sharedWriters(opts.Out, opts.Err)
	g := guard.Grant()
	if opts.JSON {
		// stdout belongs to CMD.
		writeJSON(opts.Err, opts.acquiredJSON(g))
	}
	r := &run{opts: opts, store: store, guard: guard, tty: controllingTerminal(), ourPgrp: syscall.Getpgrp()}
	child := exec.Command(opts.Command[0], opts.Command[1:]...)
	if errors.Is(child.Err, exec.ErrDot) {
		child.Err = nil // PATH names the current directory on purpose, as a shell would take it
	}
	child.Stdin, child.Stdout, child.Stderr = os.Stdin, opts.Out, opts.Err
	// Writers that are not files are copied through pipes, which whatever
	// CMD left running in the background may hold open: do not wait on
	// those for long after CMD exits.
	child.WaitDelay = time.Second
	child.Env = append(os.Environ(),
		"XPLOCK_KEY="+g.Key,
		"XPLOCK_HOLDER="+g.Holder,
		"XPLOCK_GENERATION="+strconv.FormatInt(g.Generation, 10),
		"XPLOCK_TOKEN="+strconv.FormatInt(g.Token, 10),
		"XPLOCK_POISONED="+map[bool]string{true: "1", false: "0"}[g.Poisoned],
	)
	// CMD gets a process group of its own, so that signals reach all of it
	// (`sh -c 'a | b'` leaves no orphans). When xplock runs in the
	// foreground of a terminal, that group takes the terminal over, so CMD
	// can read it and gets ^C and ^Z itself.
	child.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if r.tty >= 0 {
		if fg, err := tcgetpgrp(r.tty); err == nil && fg == r.ourPgrp {
			child.SysProcAttr.Foreground, child.SysProcAttr.Ctty = true, r.tty
			r.handedTerminal = true
		}
	}
	if guard.Err() != nil {
		r.reportLoss(ctx, "before CMD started; it was not run")
		return &exitError{code: exitLost}
	}
	if err := child.Start(); err != nil {
		r.restoreTerminal()
		code := 126 // found but not runnable, as a shell says
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist) {
			code = 127
		}
		reason := err
		var pathErr *fs.PathError
		var execErr *exec.Error
		if errors.As(err, &execErr) {
			reason = execErr.Err
		} else if errors.As(err, &pathErr) {
			reason = pathErr.Err
		}
		fmt.Fprintf(opts.Err, "xplock: cannot run %s: %v\n", opts.Command[0], reason)
		if err := releaseAfterRun(ctx, guard, false); err != nil {
			return r.afterRelease(ctx, err, code)
		}
		return &exitError{code: code}
	}
	r.pgid = child.Process.Pid
	exited := make(chan error, 1)
	go func() {
		waitExit(r.pgid, r.childStopped) // on error, Wait alone still works
		exited <- child.Wait()
	}()

	var (
		guardDone = guard.Done()
		killTimer *time.Timer
		killAt    <-chan time.Time
		lost      bool
		waitErr   error
	)
loop:
	for {
		select {
		case sig := <-sigs.ch:
			syscall.Kill(-r.pgid, sig.(syscall.Signal))
		case <-guardDone:
			guardDone = nil
			lost = true
			r.reportLoss(ctx, fmt.Sprintf("sending SIGTERM to CMD (SIGKILL after %s)", opts.Grace))
			syscall.Kill(-r.pgid, syscall.SIGTERM)
			syscall.Kill(-r.pgid, syscall.SIGCONT) // a stopped CMD must see it too
			killTimer = time.NewTimer(opts.Grace)
			defer killTimer.Stop()
			killAt = killTimer.C
		case <-killAt:
			killAt = nil
			fmt.Fprintf(opts.Err, "xplock: CMD still running %s after SIGTERM: sending SIGKILL\n", opts.Grace)
			syscall.Kill(-r.pgid, syscall.SIGKILL)
		case waitErr = <-exited:
			break loop
		}
	}
	r.restoreTerminal()
	code := exitRuntime
	if st := child.ProcessState; st != nil {
		ws := st.Sys().(syscall.WaitStatus)
		switch {
		case ws.Exited():
			code = ws.ExitStatus()
		case ws.Signaled():
			code = 128 + int(ws.Signal())
		}
	} else {
		fmt.Fprintf(opts.Err, "xplock: lost track of CMD: %v\n", waitErr)
	}

	if lost {
		// Whatever is left of CMD's group gets the rest of the grace period.
		if killAt != nil {
			r.awaitGroup(killAt)
		}
		fmt.Fprintf(opts.Err, "xplock: exit %d: the lock was lost while CMD ran (CMD exited %d)\n", exitLost, code)
		return &exitError{code: exitLost}
	}
	// A successful checked run acknowledges the generation (SPEC rule 3); a
	// failed one acknowledges nothing (rule 4).
	if err := releaseAfterRun(ctx, guard, code == 0); err != nil {
		return r.afterRelease(ctx, err, code)
	}
	if code == 0 {
		return nil
	}
	return &exitError{code: code}
}

// sharedWriters makes xplock's own messages and the copying of CMD's output
// take turns on writers that are not files (CMD writes to files directly).
func sharedWriters(out, errOut io.Writer) (io.Writer, io.Writer) {
	mu := new(sync.Mutex)
	wrap := func(w io.Writer) io.Writer {
		if _, ok := w.(*os.File); ok {
			return w
		}
		return &syncWriter{mu: mu, w: w}
	}
	return wrap(out), wrap(errOut)
}

type syncWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// releaseTimeout bounds the release after a run, so that a wedged store
// cannot keep xplock running for long; the lease ends by itself anyway.
const releaseTimeout = 30 * time.Second

// releaseAfterRun ends the tenure.
func releaseAfterRun(ctx context.Context, guard *lock.Guard, acknowledge bool) error {
	ctx, cancel := context.WithTimeout(ctx, releaseTimeout)
	defer cancel()
	if acknowledge {
		return guard.Release(ctx)
	}
	return guard.ReleaseKeepPoison(ctx)
}

// afterRelease reports a failed release: a lost lease is exit 6 whatever
// CMD returned; any other failure keeps CMD's failure, or is a runtime
// error after a success.
func (r *run) afterRelease(ctx context.Context, err error, code int) error {
	if errors.Is(err, lock.ErrLeaseLost) {
		r.reportLoss(ctx, fmt.Sprintf("found when releasing it after CMD exited %d", code))
		return &exitError{code: exitLost}
	}
	g := r.guard.Grant()
	fmt.Fprintf(r.opts.Err, "xplock: could not release lock %q: %v; it stays taken until its lease ends (%s)\n",
		g.Key, err, clock(g.ExpiresAt))
	if code == 0 {
		code = exitRuntime
	}
	return &exitError{code: code}
}

// run is one run of CMD.
type run struct {
	opts  *acquireOptions
	store lock.Store
	guard *lock.Guard

	pgid    int // CMD's process group
	ourPgrp int
	// tty is xplock's controlling terminal among stdin, stdout and stderr,
	// or -1; handedTerminal is set when CMD's group was put in its
	// foreground.
	tty            int
	handedTerminal bool
	reported       bool
}

// reportLoss says on stderr, once, how the lease was lost.
func (r *run) reportLoss(ctx context.Context, then string) {
	if r.reported {
		return
	}
	r.reported = true
	g := r.guard.Grant()
	fmt.Fprintf(r.opts.Err, "xplock: lock %q lost while CMD ran: %s; %s\n", g.Key, describeLoss(ctx, r.store, r.guard), then)
}

// describeLoss explains a lost lease: who broke or released it, if the
// history says, or why it could not be renewed; and who has it now.
func describeLoss(ctx context.Context, store lock.Store, guard *lock.Guard) string {
	g := guard.Grant()
	cause := guard.Err()
	how := strings.TrimPrefix(cause.Error(), lock.ErrLeaseLost.Error()+": ")
	var notHeld *lock.NotHeldError
	if errors.As(cause, &notHeld) {
		switch notHeld.Reason {
		case lock.ReasonExpired:
			how = "the lease ran out before it was renewed"
		case lock.ReasonFree:
			how = "someone else ended the tenure"
		default:
			how = "another tenure replaced ours"
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if events, err := store.History(ctx, g.Key, 50); err == nil {
		for _, e := range events {
			if e.Token != g.Token {
				continue
			}
			switch e.Type {
			case lock.EventBroken:
				how = "broken with --force"
				if e.By != nil {
					how += fmt.Sprintf(" by %q (user %s on %s, pid %d)", e.By.Holder, e.By.User, e.By.Host, e.By.PID)
				}
				how += " at " + clock(e.Time)
			case lock.EventReleased:
				how = fmt.Sprintf("released at %s by another process using holder %q", clock(e.Time), e.Holder)
			case lock.EventExpired:
				if notHeld != nil {
					how = fmt.Sprintf("the lease ran out at %s before it was renewed", clock(e.Time))
				}
			}
		}
	}
	var current lock.State
	if snap, err := store.Snapshot(ctx, g.Key); err == nil && len(snap.Locks) == 1 {
		current = snap.Locks[0]
	} else if notHeld != nil {
		current = notHeld.Current
	}
	if current.State == lock.StateHeld && current.Token != g.Token {
		how += fmt.Sprintf("; taken over by %q (generation %d, token %d)", current.Holder, current.Generation, current.Token)
	}
	return how
}

// awaitGroup waits until CMD's process group is empty, or kills what is
// left of it at deadline.
func (r *run) awaitGroup(deadline <-chan time.Time) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if err := syscall.Kill(-r.pgid, 0); err != nil {
			return
		}
		select {
		case <-deadline:
			syscall.Kill(-r.pgid, syscall.SIGKILL)
			return
		case <-tick.C:
		}
	}
}

// Process and terminal plumbing.

// waitExit blocks until pid has exited, leaving it for exec.Cmd.Wait to
// reap, and calls onStop whenever it stops.
func waitExit(pid int, onStop func()) error {
	const pPID = 1 // P_PID on Linux and the BSDs
	for {
		// signo, errno and code lead siginfo_t on Linux and Darwin.
		var info struct {
			signo, errno, code int32
			_                  [116]byte
		}
		_, _, e := syscall.Syscall6(syscall.SYS_WAITID, pPID, uintptr(pid), uintptr(unsafe.Pointer(&info)),
			syscall.WEXITED|syscall.WSTOPPED|syscall.WNOWAIT, 0, 0)
		switch {
		case e == syscall.EINTR:
			continue
		case e != 0:
			return e
		case info.code != cldStopped:
			return nil
		}
		// Consume the stop, so that the next look sees what follows it.
		syscall.Syscall6(syscall.SYS_WAITID, pPID, uintptr(pid), uintptr(unsafe.Pointer(&info)),
			syscall.WSTOPPED|syscall.WNOHANG, 0, 0)
		onStop()
	}
}

const cldStopped = 5 // CLD_STOPPED

// childStopped does what a shell does when a job stops: when CMD stops
// (^Z, or reading the terminal in the background) xplock takes the terminal
// back and stops too, so that the shell regains control; when continued
// (fg, bg) it hands the terminal on again if it has it and continues CMD.
// Without a terminal there is no job control and a stopped CMD is left to
// whoever stopped it. The lease is not renewed while xplock is stopped.
func (r *run) childStopped() {
	if r.tty < 0 {
		return
	}
	if fg, err := tcgetpgrp(r.tty); err == nil && fg == r.pgid {
		tcsetpgrp(r.tty, r.ourPgrp)
	}
	cont := make(chan os.Signal, 1)
	signal.Notify(cont, syscall.SIGCONT)
	syscall.Kill(syscall.Getpid(), syscall.SIGTSTP)
	// An orphaned process group ignores SIGTSTP: do not spin then.
	select {
	case <-cont:
	case <-time.After(200 * time.Millisecond):
	}
	signal.Stop(cont)
	if fg, err := tcgetpgrp(r.tty); err == nil && fg == r.ourPgrp && tcsetpgrp(r.tty, r.pgid) == nil {
		r.handedTerminal = true
	}
	syscall.Kill(-r.pgid, syscall.SIGCONT)
}

// restoreTerminal takes the terminal back after CMD ended.
func (r *run) restoreTerminal() {
	if !r.handedTerminal {
		return
	}
	if fg, err := tcgetpgrp(r.tty); err == nil && fg != r.ourPgrp {
		tcsetpgrp(r.tty, r.ourPgrp)
	}
}

// controllingTerminal returns the first of stdin, stdout and stderr that is
// xplock's controlling terminal, or -1.
func controllingTerminal() int {
	for fd := range 3 {
		if _, err := tcgetpgrp(fd); err == nil {
			return fd
		}
	}
	return -1
}

func tcgetpgrp(fd int) (int, error) {
	var pgrp int32
	_, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), uintptr(syscall.TIOCGPGRP), uintptr(unsafe.Pointer(&pgrp)))
	if e != 0 {
		return 0, e
	}
	return int(pgrp), nil
}

// tcsetpgrp puts pgrp in the terminal's foreground. A background process
// may do so only while ignoring SIGTTOU.
func tcsetpgrp(fd, pgrp int) error {
	signal.Ignore(syscall.SIGTTOU)
	defer signal.Reset(syscall.SIGTTOU)
	p := int32(pgrp)
	_, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), uintptr(syscall.TIOCSPGRP), uintptr(unsafe.Pointer(&p)))
	if e != 0 {
		return e
	}
	return nil
}
