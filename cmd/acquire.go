package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/olekukonko/tablewriter/pkg/twwidth"
	"github.com/spf13/cobra"

	"github.com/xplock/xplock/lock"
)

// Default lease lengths. A detached lock has nobody renewing it, so its
// lease must cover a whole critical section; in run mode xplock renews the
// lease while CMD runs, so it only bounds how long a crashed holder's lock
// stays taken.
const (
	detachedTTL = 5 * time.Minute
	runModeTTL  = 30 * time.Second // rides out a 10s store outage: see checkGrace
)

type acquireOptions struct {
	*globalOptions
	Key       string
	Holder    string
	TTL       time.Duration
	Wait      time.Duration
	NoWait    bool
	Unchecked bool
	JSON      bool
	Quiet     bool
	// Command, when set, is run while the lock is held (run mode).
	Command []string
	// Shell is -c's command string, run as CMD under /bin/sh -c.
	Shell string
	// Grace is how long CMD has between SIGTERM and SIGKILL when the lock
	// is lost.
	Grace time.Duration
	// BusyExit is the exit code for "not acquired", in both modes.
	BusyExit int
	// Shared takes a reader's tenure; Slots (implying Shared) caps the
	// shared tenures at once, a counting semaphore.
	Shared bool
	Slots  int

	ttlSet, waitSet, graceSet, shellSet bool
	// waited is how long the acquisition waited, for --json.
	waited time.Duration
}

func newAcquireCmd(g *globalOptions) *cobra.Command {
	opts := &acquireOptions{globalOptions: g}
	c := &cobra.Command{
		Annotations: map[string]string{onePAnnotation: "yes"},
		Use:         "acquire KEY -H HOLDER [flags] [-- CMD [ARGS...]]",
		Short:       "Take a lock, detached or around a command",
		Long: `Take the lock KEY as HOLDER.

Without CMD the lock stays held after xplock exits, until 'xplock release',
the lease runs out (--ttl, default ` + detachedTTL.String() + `), or someone breaks it.
With '-- CMD ARGS' (or -c 'COMMAND STRING', run by /bin/sh -c) xplock runs
CMD while holding the lock, renews the lease (default ` + runModeTTL.String() + `) in the
background, releases when CMD ends and exits with CMD's exit code. Flags go
before '--': everything after it is CMD's.

--shared takes the lock as a reader: any number of shared holders at once,
never beside an exclusive one (a writer). --slots N admits at most N shared
holders at once, a counting semaphore. Every shared holder of a key must
use the limit in force, and a holder cannot change mode while it holds the
lock: both are refused at once with exit 2.

CMD gets these environment variables:
  XPLOCK_KEY         the lock's key
  XPLOCK_HOLDER      the holder
  XPLOCK_GENERATION  the lock's generation
  XPLOCK_TOKEN       the tenure's fencing token: pass it to what you protect
  XPLOCK_POISONED    1 when another holder had the lock since HOLDER last
                     did (reload what you cached), else 0

Exit codes:
  0    acquired (detached)
  3    acquired, but poisoned: another holder had the lock since HOLDER last
       did, so anything HOLDER cached may be stale (detached only)
  4    not acquired: held by another holder (or readers, with every slot
       taken), or others queued ahead, and waiting ran out (or the code
       given with -E)
  In run mode, CMD's own exit code (128+N when signal N ended it), and:
  6    the lock was lost while CMD ran (CMD was ended)
  126  CMD could not be run (not executable)
  127  CMD was not found
  1 and 2 are runtime and usage errors, as for every command; 2 also
       refuses a --slots limit other than the one in force, or a change
       of mode by a holder.`,
		Example: `  # Hold a lock across several commands of a script:
  xplock acquire deploy -H ci-runner-3 --ttl 10m
  ./deploy.sh
  xplock release deploy -H ci-runner-3

  # Run a command under the lock; skip it if someone else has the lock:
  xplock acquire cache -H app --nowait -- ./rebuild-cache.sh

  # flock(1) style: a shell command string, exit 0 when busy:
  xplock acquire backup -H backup-cron -n -E 0 -c 'pg_dump app > /backup/app.sql'

  # Readers share the lock; the writer waits for them all:
  xplock acquire cache -H "reader-$$" --shared -- ./serve-from-cache
  xplock acquire cache -H rebuild -- ./rebuild-cache

  # At most 2 CI jobs on the device farm at once:
  xplock acquire device-farm -H "ci-$CI_JOB_ID" --slots 2 -- ./run-device-tests`,
		ValidArgsFunction: completeAcquireArgs(g),
		RunE: func(c *cobra.Command, args []string) error {
			if dash := c.ArgsLenAtDash(); dash >= 0 {
				opts.Command = args[dash:]
				args = args[:dash]
				if len(opts.Command) == 0 {
					return usageErrorf("nothing after '--': give the command to run while holding the lock")
				}
			}
			if len(args) > 1 && len(opts.Command) == 0 {
				return usageErrorf("expected one KEY, got %d arguments; to run a command while holding the lock, "+
					"put it after '--': xplock acquire %s -H HOLDER -- %s", len(args), args[0], strings.Join(args[1:], " "))
			}
			var err error
			if opts.Key, err = oneKey(args); err != nil {
				return err
			}
			if opts.Holder, err = resolveHolder(opts.Holder); err != nil {
				return err
			}
			f := c.Flags()
			opts.ttlSet, opts.waitSet = f.Changed("ttl"), f.Changed("wait")
			opts.graceSet, opts.shellSet = f.Changed("grace"), f.Changed("command")
			if err := opts.checkSlots(f.Changed("slots")); err != nil {
				return err
			}
			if err := opts.check(f.Changed("conflict-exit-code")); err != nil {
				return err
			}
			return runAcquire(c.Context(), opts)
		},
	}
	holderFlag(g, c, &opts.Holder, "who takes the lock")
	f := c.Flags()
	f.DurationVar(&opts.TTL, "ttl", 0, fmt.Sprintf("lease length (default %s detached, %s in run mode)", detachedTTL, runModeTTL))
	f.DurationVar(&opts.Wait, "wait", 0, "give up after waiting this long (default: wait until acquired)")
	f.BoolVarP(&opts.NoWait, "nowait", "n", false, "try once; exit 4 if another holder has the lock")
	f.BoolVar(&opts.Unchecked, "unchecked", false, "take the lock without caring about poison (never exits 3)")
	f.BoolVar(&opts.JSON, "json", false, "print the lease, or why it was not acquired, as JSON (on stderr in run mode)")
	f.BoolVarP(&opts.Quiet, "quiet", "q", false, "detached: print nothing on stdout (the exit code says it all)")
	f.StringVarP(&opts.Shell, "command", "c", "", "run mode: run this command string with /bin/sh -c while holding the lock")
	f.DurationVar(&opts.Grace, "grace", 0, "run mode: time between SIGTERM and SIGKILL when the lock is lost (default min(5s, TTL/4))")
	f.IntVarP(&opts.BusyExit, "conflict-exit-code", "E", exitBusy, "exit code when the lock is not acquired (0, 4 or 7-255)")
	f.BoolVar(&opts.Shared, "shared", false, "take a shared lock (a reader): any number of shared holders at once, never beside an exclusive one")
	f.IntVar(&opts.Slots, "slots", 0, "admit at most N shared holders at once (a counting semaphore); implies --shared")
	return c
}

func (o *acquireOptions) check(busyExitSet bool) error {
	if o.shellSet {
		if len(o.Command) > 0 {
			return usageErrorf("-c and '-- CMD' both give a command: give one")
		}
		if o.Shell == "" {
			return usageErrorf("-c needs a command string, as in -c 'make deploy'")
		}
		o.Command = []string{"/bin/sh", "-c", o.Shell}
	}
	runMode := len(o.Command) > 0
	if o.ttlSet {
		if err := positiveDuration("ttl", o.TTL); err != nil {
			return err
		}
	} else if runMode {
		o.TTL = runModeTTL
	} else {
		o.TTL = detachedTTL
	}
	if o.Wait < 0 {
		return usageErrorf("--wait must be 0 or more (Go duration syntax, for example 30s)")
	}
	if o.waitSet && o.NoWait {
		return usageErrorf("--wait and --nowait contradict each other: give one")
	}
	if o.graceSet && !runMode {
		return usageErrorf("--grace only applies in run mode, to CMD: give CMD after '--' (or with -c), or drop --grace")
	}
	if err := o.checkGrace(); err != nil {
		return err
	}
	if o.Quiet && runMode {
		return usageErrorf("-q/--quiet only applies to a detached acquire: in run mode xplock prints nothing on stdout anyway")
	}
	if o.Quiet && o.JSON {
		return usageErrorf("-q/--quiet and --json contradict each other: give one")
	}
	if busyExitSet {
		switch code := o.BusyExit; {
		case code < 0 || code > 255:
			return usageErrorf("-E/--conflict-exit-code must be between 0 and 255")
		case code >= exitRuntime && code <= exitLost && code != exitBusy:
			return usageErrorf("-E/--conflict-exit-code %d is taken: 1-3, 5 and 6 mean other things; give 0, 4 or 7-255", code)
		}
	}
	return nil
}

// checkSlots validates --slots, which implies --shared.
func (o *acquireOptions) checkSlots(slotsSet bool) error {
	if !slotsSet {
		return nil
	}
	if o.Slots < 1 {
		return usageErrorf("--slots must be 1 or more (got %d): the number of shared holders admitted at once", o.Slots)
	}
	o.Shared = true
	return nil
}

func runAcquire(ctx context.Context, opts *acquireOptions) error {
	runMode := len(opts.Command) > 0
	var sigs *runSignals
	if runMode {
		// From here on the forwarded signals are run mode's to handle: they
		// end the wait, or go to CMD, but never end xplock halfway. The root
		// context ends on SIGINT and SIGTERM, so run mode does not use it.
		ctx = context.WithoutCancel(ctx)
		sigs = catchSignals()
		defer sigs.stop()
	}
	store, err := opts.openStore(ctx, storeAcquire)
	if err != nil {
		return err
	}
	defer closeStore(store)
	l, err := lock.New(store, opts.Key, opts.Holder, lock.Options{
		TTL: opts.TTL, KeepTenureTTL: !opts.ttlSet, NoRenew: len(opts.Command) == 0, Grace: opts.runGrace(),
		Shared: opts.Shared, Slots: opts.Slots,
	})
	if err != nil {
		return usageErrorf("%v", err)
	}
	var stub *cmdStub
	if runMode {
		if stub, err = startStub(opts); err != nil {
			return err
		}
		defer stub.abandon()
	}
	waitCtx := ctx
	// --wait 0 is --nowait: one try, given tryBound to get at the database
	// (another program may hold it locked).
	if wait := opts.Wait; opts.NoWait || opts.waitSet {
		if wait == 0 {
			wait = tryBound
		}
		var cancel context.CancelFunc
		waitCtx, cancel = context.WithTimeout(ctx, wait)
		defer cancel()
	}
	if runMode {
		var cancel context.CancelFunc
		waitCtx, cancel = context.WithCancel(waitCtx)
		defer cancel()
		sigs.interruptWait(cancel)
	}
	progress := newWaitProgress(opts.Err, opts.Key)
	guard, err := l.Acquire(waitCtx, lock.AcquireOptions{
		Unchecked: opts.Unchecked,
		NoWait:    opts.NoWait || (opts.waitSet && opts.Wait == 0),
		OnWait:    progress.update,
		Keepers:   stub.keepers(),
	})
	progress.clear()
	if guard != nil {
		opts.waited = guard.Waited()
	}
	if runMode {
		// A signal before CMD starts means CMD must not start.
		if sig := sigs.beforeStart(); sig != 0 {
			if guard != nil {
				releaseAfterRun(ctx, guard, false)
			}
			fmt.Fprintf(opts.Err, "xplock: %s before CMD started; it was not run\n", signalName(sig))
			return &exitError{code: 128 + int(sig)}
		}
	}
	var busy *lock.BusyError
	if errors.As(err, &busy) {
		return opts.refuse(busy, progress.started)
	}
	var conflict *lock.ConflictError
	if errors.As(err, &conflict) {
		return opts.refuseConflict(conflict)
	}
	if err != nil && !errors.Is(err, lock.ErrPoisoned) {
		return err
	}
	if runMode {
		return runLocked(ctx, opts, store, guard, sigs, stub)
	}
	return reportAcquired(opts, guard.Grant())
}

// reasonNoAnswer is the refusal's reason when the wait ended before the
// store said who holds the lock.
const reasonNoAnswer = "no-answer"

// refuse reports a lock that was not acquired, with -E's exit code, and
// with --json says why on stdout (stderr in run mode, where stdout is CMD's).
func (o *acquireOptions) refuse(busy *lock.BusyError, waitStarted time.Time) error {
	err := notAcquired(busy, waitStarted)
	if o.JSON {
		out := o.Out
		if len(o.Command) > 0 {
			out = o.Err
		}
		current, reason := busy.Current, ""
		if current.State == "" {
			current.Key, reason = o.Key, reasonNoAnswer
		}
		// The last try saw this request queued; it has left the queue.
		current.Waiters = slices.DeleteFunc(slices.Clone(current.Waiters),
			func(w lock.WaiterState) bool { return w.Holder == o.Holder })
		if werr := writeJSON(out, newRefusalJSON(current, reason)); werr != nil {
			return werr
		}
	}
	fmt.Fprintf(o.Err, "xplock: %v\n", err)
	return &exitError{code: o.BusyExit}
}

// Reasons in the JSON of an acquisition refused with exit 2.
const (
	reasonSlotLimit    = "slot-limit"
	reasonModeConflict = "mode-conflict"
)

// refuseConflict reports an acquisition the key cannot grant as asked (exit
// 2): a slot limit other than the one in force, or a change of mode by a
// holder. With --json it first says why on stdout (stderr in run mode).
func (o *acquireOptions) refuseConflict(c *lock.ConflictError) error {
	if o.JSON {
		out := o.Out
		if len(o.Command) > 0 {
			out = o.Err
		}
		reason := reasonSlotLimit
		if errors.Is(c, lock.ErrModeConflict) {
			reason = reasonModeConflict
		}
		current := c.Current
		if current.Key == "" {
			current.Key = o.Key
		}
		if err := writeJSON(out, newRefusalJSON(current, reason)); err != nil {
			return err
		}
	}
	// A usage error, but not of the flags' syntax: no pointer to --help.
	fmt.Fprintf(o.Err, "xplock: not acquired: %s\n", conflictMessage(c))
	return &exitError{code: exitUsage}
}

// conflictMessage says, in the command line's terms, why a request can
// never be granted as asked and what to ask instead.
func conflictMessage(c *lock.ConflictError) string {
	if errors.Is(c, lock.ErrModeConflict) {
		return fmt.Sprintf("%q holds lock %q %s and asked for it %s; a holder cannot change mode while it holds a lock "+
			"(release it first, then acquire again)", c.Holder, c.Key, c.Held, c.Mode)
	}
	who := fmt.Sprintf("lock %q is %s", c.Key, heldBy(c.Current))
	if c.Queued {
		who = fmt.Sprintf("the shared requests queued for lock %q wait", c.Key)
	}
	asked, fix := "without --slots", "drop --slots"
	if c.Slots > 0 {
		asked = fmt.Sprintf("with --slots %d", c.Slots)
	}
	if c.Limit > 0 {
		fix = fmt.Sprintf("give --slots %d", c.Limit)
	}
	return fmt.Sprintf("%s under %s, and %q asked %s; every shared holder of a key must use the limit in force: %s",
		who, limitInForce(c.Limit), c.Holder, asked, fix)
}

// limitInForce names a slot limit for messages.
func limitInForce(slots int) string {
	if slots == 0 {
		return "no slot limit"
	}
	return fmt.Sprintf("a limit of %d slots", slots)
}

// notAcquired explains who holds the lock and how long we waited.
func notAcquired(busy *lock.BusyError, waitStarted time.Time) error {
	c := busy.Current
	if c.State == "" {
		// The wait ended before the store gave its first answer.
		if errors.Is(busy.Err, context.Canceled) {
			return errors.New("not acquired: interrupted before the lock store answered")
		}
		return fmt.Errorf("not acquired: the wait ran out after %s, before the lock store answered; give --wait more time",
			roughly(time.Since(waitStarted)))
	}
	msg := fmt.Sprintf("not acquired: lock %q is %s (generation %d) since %s; its lease ends %s",
		c.Key, heldBy(c), c.Generation, clock(c.Since), clock(c.ExpiresAt))
	if c.State != lock.StateHeld {
		msg = fmt.Sprintf("not acquired: lock %q is free (generation %d), but others wait for it first", c.Key, c.Generation)
	}
	if busy.Ahead > 0 {
		msg += fmt.Sprintf("; %d queued ahead", busy.Ahead)
	}
	switch {
	case errors.Is(busy.Err, context.DeadlineExceeded):
		msg += fmt.Sprintf("; gave up after waiting %s", roughly(time.Since(waitStarted)))
	case errors.Is(busy.Err, context.Canceled):
		msg += "; interrupted while waiting"
	default:
		msg += "; wait with --wait DURATION, or drop --nowait"
	}
	return errors.New(msg)
}

// reportAcquired prints a detached acquisition; a poisoned one exits 3.
func reportAcquired(opts *acquireOptions, g lock.Grant) error {
	switch {
	case opts.JSON:
		if err := writeJSON(opts.Out, opts.acquiredJSON(g)); err != nil {
			return err
		}
	case !opts.Quiet:
		how := "acquired"
		if g.Reentrant {
			how = "re-acquired"
		}
		fmt.Fprintf(opts.Out, "%s %s as %s: generation %d, token %d, lease ends %s (in %s)\n",
			how, g.Key, g.Holder, g.Generation, g.Token, clock(g.ExpiresAt), roughly(g.ExpiresAt.Sub(g.Now)))
	}
	if g.Poisoned && !opts.Unchecked {
		why := fmt.Sprintf("it is at generation %d, but %q last caught up with generation %d", g.Generation, g.Holder, g.Acknowledged)
		if g.Generation == g.Acknowledged {
			// The same writer came back: the generation stayed, the data did not.
			why = fmt.Sprintf("a writer held it exclusively since %q last caught up, though the generation is still %d", g.Holder, g.Generation)
		}
		fmt.Fprintf(opts.Err, "xplock: lock %q is poisoned for %q: %s. "+
			"Reload what you cached, then 'xplock release' to acknowledge.\n", g.Key, g.Holder, why)
		return &exitError{code: exitPoisoned}
	}
	return nil
}

// waitProgress keeps one live line on a terminal while waiting. The lock
// library reports the holder each time it looks; a ticker redraws the line
// every second in between, so that how long we have waited stays live.
// The line is cut to the terminal's width (a wrapped line would leave its
// first part behind at each redraw). A dumb terminal (TERM=dumb) gets one
// plain line instead, with no escape sequences.
type waitProgress struct {
	w       io.Writer
	key     string
	tty     bool
	dumb    bool
	started time.Time

	mu       sync.Mutex
	current  lock.State
	skew     time.Duration // the store's clock minus ours
	shown    bool
	drawn    time.Time // when the line was last drawn
	stopped  bool
	stopTick chan struct{}
	tickDone chan struct{}
}

// minRedraw spaces the redraws that the store's answers cause: a waiter
// may look many times a second.
const minRedraw = 250 * time.Millisecond

func newWaitProgress(w io.Writer, key string) *waitProgress {
	tty := isTerminal(w)
	return &waitProgress{w: w, key: key, tty: tty, dumb: tty && os.Getenv("TERM") == "dumb", started: time.Now()}
}

// update records what the store said and redraws the line; the first
// update starts the ticker.
func (p *waitProgress) update(current lock.State, now time.Time) {
	if !p.tty {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return
	}
	p.current, p.skew = current, time.Until(now)
	if p.dumb {
		if !p.shown {
			fmt.Fprintf(p.w, "waiting for %q: %s\n", p.key, describeHolder(p.current, now))
			p.shown = true
		}
		return
	}
	if time.Since(p.drawn) >= minRedraw {
		p.drawLocked()
	}
	if p.stopTick == nil {
		p.stopTick, p.tickDone = make(chan struct{}), make(chan struct{})
		go p.tick()
	}
}

func (p *waitProgress) tick() {
	defer close(p.tickDone)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-p.stopTick:
			return
		case <-t.C:
			p.mu.Lock()
			p.drawLocked()
			p.mu.Unlock()
		}
	}
}

// drawLocked writes the line, judging the holder's times by the store's
// clock as last seen plus the local time since.
func (p *waitProgress) drawLocked() {
	storeNow := time.Now().Add(p.skew)
	line := fmt.Sprintf("waiting %s for %q: %s", time.Since(p.started).Truncate(time.Second), p.key,
		describeHolder(p.current, storeNow))
	if cols := terminalWidth(p.w); cols > 1 {
		line = twwidth.Truncate(line, cols-1, "…") // the last column would wrap on some terminals
	}
	fmt.Fprint(p.w, "\r\x1b[K"+line)
	p.shown, p.drawn = true, time.Now()
}

// clear stops the ticker and erases the line.
func (p *waitProgress) clear() {
	p.mu.Lock()
	p.stopped = true
	stop, done := p.stopTick, p.tickDone
	p.mu.Unlock()
	if stop != nil {
		close(stop)
		<-done
	}
	if p.shown && !p.dumb {
		fmt.Fprint(p.w, "\r\x1b[K")
	}
}
