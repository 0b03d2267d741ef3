package cmd

import (
	"context"
	"fmt"
	"os"

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

--force breaks the lock whoever holds it, acknowledging nothing; the
history records who broke it.`,
		ValidArgsFunction: completeKeys(g),
		RunE: func(c *cobra.Command, args []string) error {
			var err error
			if opts.Key, err = oneKey(args); err != nil {
				return err
			}
			if opts.Holder, err = resolveHolder(opts.Holder); err != nil {
				return err
			}
			return runRelease(c.Context(), opts)
		},
	}
	holderFlag(c, &opts.Holder)
	c.Flags().BoolVar(&opts.KeepPoison, "keep-poison", false, "release without acknowledging the generation (the work failed)")
	c.Flags().BoolVar(&opts.Force, "force", false, "break the lock whoever holds it")
	c.Flags().BoolVar(&opts.JSON, "json", false, "print the released lock as JSON")
	return c
}

// releasedJSON is what release prints with --json.
type releasedJSON struct {
	Key        string        `json:"key"`
	Holder     string        `json:"holder"`
	Generation int64         `json:"generation"`
	Token      int64         `json:"token"`
	Event      string        `json:"event"`
	Time       string        `json:"time"`
	By         *lock.Breaker `json:"by,omitempty"`
}

func runRelease(ctx context.Context, opts *releaseOptions) error {
	store, err := opts.openStore(ctx, storeChange)
	if err != nil {
		return err
	}
	defer store.Close()
	out := releasedJSON{Event: lock.EventReleased}
	var st lock.State
	if opts.Force {
		by := breaker(opts.Holder)
		st, err = store.Break(ctx, opts.Key, by)
		out.Event, out.By = lock.EventBroken, &by
	} else {
		st, err = store.Release(ctx, lock.ReleaseRequest{Key: opts.Key, Holder: opts.Holder, Acknowledge: !opts.KeepPoison})
	}
	if err != nil {
		return err
	}
	// A run-mode holder of this tenure ends CMD now, not at its next renewal.
	lock.NotifyHolder(ctx, store, opts.Key)
	out.Key, out.Holder, out.Generation, out.Token, out.Time = st.Key, st.Holder, st.Generation, st.Token, rfc3339(st.Since)
	if opts.JSON {
		return writeJSON(opts.Out, out)
	}
	if opts.Force {
		_, err = fmt.Fprintf(opts.Out, "broke %s: %s's tenure (generation %d, token %d) ended\n", st.Key, st.Holder, st.Generation, st.Token)
	} else {
		_, err = fmt.Fprintf(opts.Out, "released %s: generation %d, token %d\n", st.Key, st.Generation, st.Token)
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
