package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/xplock/xplock/lock"
)

type releaseOptions struct {
	*globalOptions
	Key        string
	Holder     string
	KeepPoison bool
	Force      bool
	JSON       bool
	Quiet      bool
}

func newReleaseCmd(g *globalOptions) *cobra.Command {
	opts := &releaseOptions{globalOptions: g}
	c := &cobra.Command{
		Annotations: map[string]string{onePAnnotation: "yes"},
		Use:         "release KEY -H HOLDER [--keep-poison] [--force]",
		Short:       "End a holder's tenure, or break a lock with --force",
		Long: `End HOLDER's tenure of KEY now and acknowledge its generation, so that
HOLDER is no longer poisoned. The lock's row stays: last holder, generation
and history.

Exits 5 when HOLDER does not hold the lock: someone else has it, it is
free, or HOLDER's lease already ran out (the critical section then ran
unprotected after the lease's end, which is never reported as success).

--force breaks the lock whoever holds it (every reader of a key held
shared), acknowledging nothing; the history records each broken tenure and
who broke it (-H names the one breaking it).`,
		Example: `  xplock release deploy -H ci-runner-3
  # The work failed: release, but stay poisoned so the next run reloads.
  xplock release deploy -H ci-runner-3 --keep-poison
  # Break a lock whose holder is stuck:
  xplock release deploy -H ops --force`,
		ValidArgsFunction: completeOneKey(g),
		RunE: func(c *cobra.Command, args []string) error {
			var err error
			if opts.Key, err = oneKey(args); err != nil {
				return err
			}
			if opts.Holder, err = resolveHolder(opts.Holder); err != nil {
				return err
			}
			if opts.Force && opts.KeepPoison {
				return usageErrorf("--force and --keep-poison contradict each other: a break acknowledges nothing anyway; give one")
			}
			if opts.Quiet && opts.JSON {
				return usageErrorf("-q/--quiet and --json contradict each other: give one")
			}
			return runRelease(c.Context(), opts)
		},
	}
	holderFlag(g, c, &opts.Holder, "whose tenure ends (with --force: who breaks the lock)")
	c.Flags().BoolVar(&opts.KeepPoison, "keep-poison", false, "release without acknowledging the generation (the work failed)")
	c.Flags().BoolVar(&opts.Force, "force", false, "break the lock whoever holds it")
	c.Flags().BoolVar(&opts.JSON, "json", false, "print the release, or why it was refused, as JSON")
	c.Flags().BoolVarP(&opts.Quiet, "quiet", "q", false, "print nothing on stdout (the exit code says it all)")
	return c
}

func runRelease(ctx context.Context, opts *releaseOptions) error {
	store, err := opts.openStore(ctx, storeChange)
	if err != nil {
		return err
	}
	defer store.Close()
	var st lock.State
	var by *lock.Breaker
	if opts.Force {
		b := breaker(opts.Holder)
		by = &b
		st, err = store.Break(ctx, opts.Key, b)
	} else {
		st, err = store.Release(ctx, lock.ReleaseRequest{Key: opts.Key, Holder: opts.Holder, Acknowledge: !opts.KeepPoison})
	}
	if err != nil {
		return refuseNotHeld(opts.Out, opts.JSON, opts.Key, err)
	}
	// A run-mode holder of this tenure ends CMD now, not at its next renewal.
	lock.NotifyHolder(ctx, store, opts.Key)
	var broken []lock.Event
	if opts.Force {
		broken = brokenBy(ctx, store, opts.Key, *by, st.Since)
	}
	switch {
	case opts.JSON:
		e := lock.Event{Type: lock.EventReleased, Key: st.Key, Holder: st.Holder, Generation: st.Generation,
			Token: st.Token, Time: st.Since, By: by}
		if !opts.Force {
			return writeJSON(opts.Out, newEventJSON(e))
		}
		e.Type = lock.EventBroken
		if len(broken) > 0 {
			e.Holder, e.Mode, e.Token = broken[0].Holder, broken[0].Mode, broken[0].Token
		}
		out := breakJSON{eventJSON: newEventJSON(e), Broken: []brokenJSON{}}
		for _, b := range broken {
			out.Broken = append(out.Broken, brokenJSON{Holder: b.Holder, Token: b.Token})
		}
		return writeJSON(opts.Out, out)
	case opts.Quiet:
		return nil
	case opts.Force && len(broken) > 1:
		_, err = fmt.Fprintf(opts.Out, "broke %s: %d shared tenures (%s) ended (generation %d)\n",
			st.Key, len(broken), strings.Join(brokenHolders(broken), ", "), st.Generation)
	case opts.Force && len(broken) == 1:
		_, err = fmt.Fprintf(opts.Out, "broke %s: %s's tenure (generation %d, token %d) ended\n", st.Key, broken[0].Holder, st.Generation, broken[0].Token)
	case opts.Force:
		_, err = fmt.Fprintf(opts.Out, "broke %s: %s's tenure (generation %d, token %d) ended\n", st.Key, st.Holder, st.Generation, st.Token)
	default:
		_, err = fmt.Fprintf(opts.Out, "released %s: generation %d, token %d\n", st.Key, st.Generation, st.Token)
	}
	return err
}

// breakJSON is `release --force --json`: the break as history shows it
// (the first tenure broken), and every tenure it ended.
type breakJSON struct {
	eventJSON
	Broken []brokenJSON `json:"broken"`
}

// brokenJSON is one tenure a break ended.
type brokenJSON struct {
	Holder string `json:"holder"`
	Token  int64  `json:"token"`
}

// brokenBy reads from the key's history the tenures that this break (by b,
// at the store's time at) ended, oldest first: several when readers held
// the key. It is empty when history no longer has them (a history limit
// smaller than the number of readers); the messages then say less.
func brokenBy(ctx context.Context, store lock.Store, key string, b lock.Breaker, at time.Time) []lock.Event {
	events, err := store.History(ctx, key, 0)
	if err != nil {
		return nil
	}
	var broken []lock.Event
	for _, e := range events {
		if e.Type == lock.EventBroken && e.By != nil && *e.By == b && e.Time.Equal(at) {
			broken = append(broken, e)
		}
	}
	return broken
}

func brokenHolders(events []lock.Event) []string {
	names := make([]string, len(events))
	for i, e := range events {
		names[i] = e.Holder
	}
	return names
}

// refuseNotHeld passes err on; when it says the holder does not hold the
// lock (exit 5) and --json was given, it first prints why on stdout: the
// key as status shows it, "acquired": false and the reason.
func refuseNotHeld(stdout io.Writer, asJSON bool, key string, err error) error {
	if !asJSON || !errors.Is(err, lock.ErrNotHeld) {
		return err
	}
	current, reason := lock.State{Key: key, State: lock.StateFree}, lock.ReasonFree
	var notHeld *lock.NotHeldError
	if errors.As(err, &notHeld) {
		current, reason = notHeld.Current, notHeld.Reason
		if current.Key == "" {
			current.Key = key
		}
	}
	if werr := writeJSON(stdout, newRefusalJSON(current, reason)); werr != nil {
		return werr
	}
	return err
}

// breaker identifies this process for the history of a forced break.
func breaker(holder string) lock.Breaker {
	host, _ := os.Hostname()
	user := os.Getenv("USER")
	if user == "" {
		user = fmt.Sprint(os.Getuid())
	}
	return lock.Breaker{Holder: holder, User: user, Host: host, PID: os.Getpid()}
}
