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
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/xplock/xplock/cmd/placeholder"
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
// or 6 when the lease was lost. The lock is released once CMD has ended
// and no process of its process group is left: a background job CMD
// started keeps the lock, as with flock(1).
func runLocked(ctx context.Context, opts *acquireOptions, store lock.Store, guard *lock.Guard, sigs *runSignals, stub *cmdStub) error {
	g := guard.Grant()
	if opts.JSON {
		// stdout belongs to CMD.
		writeJSON(opts.Err, opts.acquiredJSON(g))
	}
	r := &run{opts: opts, store: store, guard: guard, tty: controllingTerminal(), ourPgrp: syscall.Getpgrp(), pgid: stub.pgid}
	if guard.Err() != nil {
		r.reportLoss(ctx, "before CMD started; it was not run", time.Now().Add(lossLookup))
		return &exitError{code: exitLost}
	}
	// CMD's group gets the terminal before CMD runs; without a placeholder
	// the group exists only once CMD does.
	if r.pgid != 0 {
		r.handTerminal()
	}
	notRun, reason := stub.exec(g)
	if r.pgid == 0 && notRun == 0 {
		r.pgid = stub.pgid
		r.handTerminal()
	}
	if notRun != 0 {
		r.restoreTerminal()
		fmt.Fprintf(opts.Err, "xplock: cannot run %s: %s\n", opts.Command[0], reason)
		if err := releaseAfterRun(ctx, guard, false); err != nil {
			return r.afterRelease(ctx, err)
		}
		return &exitError{code: notRun}
	}
	child := stub.cmd
	exited := make(chan error, 1)
	go func() {
		waitExit(child.Process.Pid, r.childStopped) // on error, Wait alone still works
		exited <- child.Wait()
	}()

	var (
		guardDone = guard.Done()
		groupGone <-chan struct{}
		killAt    <-chan time.Time
		lost      bool
		code      int
	)
loop:
	for {
		select {
		case sig := <-sigs.ch:
			syscall.Kill(-r.pgid, sig.(syscall.Signal))
		case <-guardDone:
			guardDone, lost = nil, true
			termAt := time.Now()
			syscall.Kill(-r.pgid, syscall.SIGTERM)
			syscall.Kill(-r.pgid, syscall.SIGCONT) // a stopped CMD must see it too
			then := "sent SIGTERM and SIGKILL to CMD's process group (its lease has ended)"
			lookupBy := time.Now().Add(lossLookup)
			if killBy := r.killBy(termAt); killBy.After(time.Now()) {
				killTimer := time.NewTimer(time.Until(killBy))
				defer killTimer.Stop()
				killAt = killTimer.C
				// From the SIGTERM, so that the message says --grace as given.
				then = fmt.Sprintf("sent SIGTERM to CMD's process group (SIGKILL after %s)", killBy.Sub(termAt).Round(time.Millisecond))
				lookupBy = earliest(lookupBy, killBy)
			} else {
				syscall.Kill(-r.pgid, syscall.SIGKILL)
			}
			// Only now, so that describing the loss never delays a signal.
			r.reportLoss(ctx, then, lookupBy)
		case <-killAt:
			killAt = nil
			fmt.Fprintf(opts.Err, "xplock: CMD's process group still running after SIGTERM: sending SIGKILL\n")
			syscall.Kill(-r.pgid, syscall.SIGKILL)
		case waitErr := <-exited:
			r.restoreTerminal()
			code = cmdExitCode(child, waitErr, opts.Err)
			groupGone = r.groupGone()
		case <-groupGone:
			break loop
		}
	}

	if lost {
		fmt.Fprintf(opts.Err, "xplock: exit %d: the lock was lost while CMD ran (CMD exited %d)\n", exitLost, code)
		return &exitError{code: exitLost}
	}
	// A successful checked run acknowledges the generation (SPEC rule 3); a
	// failed one acknowledges nothing (rule 4).
	if err := releaseAfterRun(ctx, guard, code == 0); err != nil {
		return r.afterRelease(ctx, err)
	}
	if code == 0 {
		return nil
	}
	return &exitError{code: code}
}

// leaseEnv is what CMD's environment gets on top of xplock's.
func leaseEnv(g lock.Grant) []string {
	return []string{
		"XPLOCK_KEY=" + g.Key,
		"XPLOCK_HOLDER=" + g.Holder,
		"XPLOCK_GENERATION=" + strconv.FormatInt(g.Generation, 10),
		"XPLOCK_TOKEN=" + strconv.FormatInt(g.Token, 10),
		"XPLOCK_POISONED=" + map[bool]string{true: "1", false: "0"}[g.Poisoned],
	}
}

// handTerminal puts CMD's process group in the foreground of xplock's
// terminal when xplock has it, so that CMD can read the terminal and gets ^C
// and ^Z itself.
func (r *run) handTerminal() {
	if r.tty < 0 {
		return
	}
	if fg, err := tcgetpgrp(r.tty); err == nil && fg == r.ourPgrp && tcsetpgrp(r.tty, r.pgid) == nil {
		r.handedTerminal.Store(true)
	}
}

// cmdExitCode is CMD's exit code as a shell gives it: 128+N when signal N
// ended it.
func cmdExitCode(child *exec.Cmd, waitErr error, errOut io.Writer) int {
	st := child.ProcessState
	if st == nil {
		fmt.Fprintf(errOut, "xplock: lost track of CMD: %v\n", waitErr)
		return exitRuntime
	}
	ws := st.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// killBy is when CMD's process group gets SIGKILL after the lease was
// lost: --grace after the SIGTERM sent at termAt, and no later than the
// lease's end less the drift margin (the safe end plus the grace).
func (r *run) killBy(termAt time.Time) time.Time {
	return earliest(termAt.Add(r.guard.Grace()), r.guard.SafeEnd().Add(r.guard.Grace()))
}

func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// groupPoll is how often xplock looks whether CMD's process group is empty
// once CMD itself has exited.
const groupPoll = 20 * time.Millisecond

// groupGone returns a channel that is closed once no process of CMD's
// process group is left (kill(-pgid, 0) fails with ESRCH). Orphans of the
// group that were reparented to xplock are reaped on the way: as zombies
// they would still count as members.
func (r *run) groupGone() <-chan struct{} {
	gone := make(chan struct{})
	go func() {
		defer close(gone)
		tick := time.NewTicker(groupPoll)
		defer tick.Stop()
		for {
			for {
				if pid, err := syscall.Wait4(-r.pgid, nil, syscall.WNOHANG, nil); pid <= 0 || err != nil {
					break
				}
			}
			if err := syscall.Kill(-r.pgid, 0); errors.Is(err, syscall.ESRCH) {
				return
			}
			<-tick.C
		}
	}()
	return gone
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

// checkGrace refuses an explicit --grace that leaves no lease to hold:
// CMD is told to stop grace plus the drift margin before the lease ends.
func (o *acquireOptions) checkGrace() error {
	if !o.graceSet {
		return nil
	}
	if o.Grace <= 0 {
		return usageErrorf("--grace must be greater than 0")
	}
	if len(o.Command) > 0 && o.Grace >= o.TTL-lock.DriftMargin(o.TTL) {
		return usageErrorf("--grace %s plus the clock-drift margin (%s) must be shorter than the lease (--ttl %s): "+
			"give --ttl %s or more, or a shorter --grace", o.Grace, lock.DriftMargin(o.TTL), o.TTL, lock.MinTTL(o.Grace))
	}
	return nil
}

// runGrace is the lock's grace: --grace in run mode, else the default.
func (o *acquireOptions) runGrace() time.Duration {
	if len(o.Command) == 0 || !o.graceSet {
		return 0
	}
	return o.Grace
}

// releaseTimeout bounds the release after a run, so that a wedged store
// cannot keep xplock running for long; the lease ends by itself anyway.
const releaseTimeout = 5 * time.Second

// storeCloseWait bounds closing the store at exit: a store call the guard
// gave up on at its safe end may still be stuck in a hung or partitioned
// store, and must not keep xplock from exiting once CMD is gone.
const storeCloseWait = 500 * time.Millisecond

// closeStore closes store, waiting at most storeCloseWait.
func closeStore(store lock.Store) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		store.Close()
	}()
	select {
	case <-done:
	case <-time.After(storeCloseWait):
	}
}

// releaseAfterRun ends the tenure.
func releaseAfterRun(ctx context.Context, guard *lock.Guard, acknowledge bool) error {
	ctx, cancel := context.WithTimeout(ctx, releaseTimeout)
	defer cancel()
	if acknowledge {
		return guard.Release(ctx)
	}
	return guard.ReleaseKeepPoison(ctx)
}

// afterRelease reports a failed release after CMD's group ended: a lost
// lease is exit 6 whatever CMD returned; a release that cannot be
// confirmed is exit 1.
func (r *run) afterRelease(ctx context.Context, err error) error {
	if errors.Is(err, lock.ErrLeaseLost) {
		r.reportLoss(ctx, "found when releasing it after CMD ended", time.Now().Add(lossLookup))
		return &exitError{code: exitLost}
	}
	g := r.guard.Grant()
	fmt.Fprintf(r.opts.Err, "xplock: CMD ended, but the release of lock %q could not be confirmed: %v; the lock may still be held until its lease ends (%s)\n",
		g.Key, err, clock(g.ExpiresAt))
	return &exitError{code: exitRuntime}
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
	// foreground (by the main loop, or when CMD stopped and was continued
	// on the goroutine that waits for it).
	tty            int
	handedTerminal atomic.Bool
	reported       bool
}

// lossLookup bounds the store lookups that describe a loss: the store may
// be what failed.
const lossLookup = 250 * time.Millisecond

// reportLoss says on stderr, once, how the lease was lost, asking the
// store for details until by.
func (r *run) reportLoss(ctx context.Context, then string, by time.Time) {
	if r.reported {
		return
	}
	r.reported = true
	ctx, cancel := context.WithDeadline(ctx, by)
	defer cancel()
	g := r.guard.Grant()
	fmt.Fprintf(r.opts.Err, "xplock: lock %q lost while CMD ran: %s; %s\n", g.Key, describeLoss(ctx, r.store, r.guard), then)
}

// describeLoss explains a lost lease: who broke or released it, if the
// history says, or why it could not be renewed; and who has it now. What
// the store cannot tell within ctx is left out.
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
		r.handedTerminal.Store(true)
	}
	syscall.Kill(-r.pgid, syscall.SIGCONT)
}

// restoreTerminal takes the terminal back after CMD ended.
func (r *run) restoreTerminal() {
	if !r.handedTerminal.Load() {
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

// CMD's process group is known before the lock is taken, so that the tenure
// can name it before CMD can run (a process that proves it empty may end a
// dead holder's tenure at once). Its leader is a placeholder (see package
// placeholder) that execs CMD in place once the lock is held: CMD leads the
// group from the start, so a CMD that makes itself a group leader, as GNU
// timeout does, stays in it. Where the placeholder cannot start, CMD starts
// once the lock is held and the tenure names no keepers: its lease alone
// decides.

// cmdStub is CMD's process group and, once it runs, CMD.
type cmdStub struct {
	command     []string
	out, errOut io.Writer
	// placeholder is the group's leader, which becomes CMD; nil where it
	// could not start.
	placeholder *exec.Cmd
	pgid        int
	// hold is the placeholder's pipe: closing it unwritten ends the
	// placeholder.
	hold *os.File
	// cmd is CMD, once started.
	cmd *exec.Cmd
}

// startStub starts CMD's process group, waiting for the lock. It also makes
// xplock the writer of its own messages and the reaper of CMD's orphans,
// for the whole run.
func startStub(opts *acquireOptions) (*cmdStub, error) {
	opts.Out, opts.Err = sharedWriters(opts.Out, opts.Err)
	// Orphans of CMD's group (a background job whose parent exited) are
	// reparented to xplock, which reaps them while it waits for the group.
	becomeSubreaper()
	s := &cmdStub{command: opts.Command, out: opts.Out, errOut: opts.Err}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("cannot start CMD's process group: %w", err)
	}
	defer r.Close()
	// /proc/self/exe is this binary even after an upgrade replaced its file.
	p := s.newCmd("/proc/self/exe", append([]string{placeholder.Name}, opts.Command...), os.Environ())
	p.ExtraFiles = []*os.File{r} // fd 3, placeholder.Fd
	if err := p.Start(); err != nil {
		w.Close()
		return s, nil
	}
	s.placeholder, s.pgid, s.hold = p, p.Process.Pid, w
	return s, nil
}

// keepers are the processes that keep the tenure alive: xplock and CMD's
// process group. None without a stub (a detached acquire), without a
// placeholder, or where a death cannot be proved: the lease alone decides.
func (s *cmdStub) keepers() []lock.Keeper {
	if s == nil || s.placeholder == nil {
		return nil
	}
	self, err := lock.Self()
	if err != nil {
		return nil
	}
	self.Group = s.pgid
	return []lock.Keeper{self}
}

// exec runs CMD with the lease g in its environment. It returns the exit
// code a shell would give, and the reason, when CMD could not be run (0
// when it runs).
func (s *cmdStub) exec(g lock.Grant) (notRun int, reason string) {
	path, err := lookCommand(s.command[0])
	if err == nil {
		err = executable(path)
	}
	if err != nil {
		s.abandon()
		return notRunnable(err)
	}
	env := withEnv(os.Environ(), leaseEnv(g))
	if s.placeholder == nil {
		return s.startDirect(path, env)
	}
	_, err = s.hold.Write(placeholder.Message(path, env))
	s.hold.Close()
	s.hold = nil
	if err != nil {
		// Only a placeholder that is gone leaves the pipe unread.
		waitErr := s.placeholder.Wait()
		return placeholder.ExitNotRunnable, fmt.Sprintf("the process waiting to become CMD (%s, PID %d) ended before the lock was taken (%v); run it again",
			placeholder.Name, s.pgid, waitErr)
	}
	s.cmd = s.placeholder
	return 0, ""
}

// startDirect starts CMD as the leader of a new process group, for want of
// a placeholder.
func (s *cmdStub) startDirect(path string, env []string) (notRun int, reason string) {
	c := s.newCmd(path, s.command, env)
	err := c.Start()
	if errors.Is(err, syscall.ENOEXEC) {
		c = s.newCmd("/bin/sh", append([]string{"/bin/sh", path}, s.command[1:]...), env)
		err = c.Start()
	}
	if err != nil {
		return notRunnable(err)
	}
	s.cmd, s.pgid = c, c.Process.Pid
	return 0, ""
}

// abandon ends a placeholder whose CMD will never run (the lock was not
// taken, a signal came first, or CMD cannot be run).
func (s *cmdStub) abandon() {
	if s == nil || s.placeholder == nil || s.cmd != nil || s.hold == nil {
		return
	}
	s.hold.Close()
	s.hold = nil
	s.placeholder.Wait()
}

// newCmd is path run with args and env as CMD (or as the placeholder that
// becomes CMD), leading a process group of its own so that signals reach
// all of it (`sh -c 'a | b'` leaves no orphans).
func (s *cmdStub) newCmd(path string, args, env []string) *exec.Cmd {
	return &exec.Cmd{Path: path, Args: args, Env: env, Stdin: os.Stdin, Stdout: s.out, Stderr: s.errOut,
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
		// Writers that are not files are copied through pipes, which
		// whatever CMD left running in the background may hold open: do
		// not wait on those for long after CMD exits.
		WaitDelay: time.Second}
}

// executable reports why path cannot be run, as execve would: it does not
// exist, or is a directory or lacks execute permission.
func executable(path string) error {
	info, err := os.Stat(path)
	switch {
	case err != nil:
		return err
	case info.IsDir():
		return &fs.PathError{Op: "exec", Path: path, Err: syscall.EISDIR}
	}
	return syscall.Access(path, 1) // X_OK
}

// lookCommand finds name as exec.Command does. A PATH that names the
// current directory is taken on purpose, as a shell would take it.
func lookCommand(name string) (string, error) {
	if filepath.Base(name) != name {
		return name, nil
	}
	path, err := exec.LookPath(name)
	if err != nil && !errors.Is(err, exec.ErrDot) {
		return "", err
	}
	return path, nil
}

// withEnv is environ with added, whose variables replace environ's.
func withEnv(environ, added []string) []string {
	names := map[string]bool{}
	for _, kv := range added {
		name, _, _ := strings.Cut(kv, "=")
		names[name] = true
	}
	out := make([]string, 0, len(environ)+len(added))
	for _, kv := range environ {
		if name, _, _ := strings.Cut(kv, "="); !names[name] {
			out = append(out, kv)
		}
	}
	return append(out, added...)
}

func notRunnable(err error) (code int, reason string) {
	code = 126 // found but not runnable, as a shell says
	if errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist) {
		code = 127
	}
	if execErr := (*exec.Error)(nil); errors.As(err, &execErr) {
		err = execErr.Err
	}
	return code, err.Error()
}
