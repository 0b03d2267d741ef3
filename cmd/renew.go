package cmd

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/xplock/xplock/lock"
)

type renewOptions struct {
	*globalOptions
	Key    string
	Holder string
	TTL    time.Duration
	JSON   bool
}

func newRenewCmd(g *globalOptions) *cobra.Command {
	opts := &renewOptions{globalOptions: g}
	c := &cobra.Command{
		Annotations: map[string]string{onePAnnotation: "yes"},
		Use:         "renew KEY -H HOLDER [--ttl DURATION]",
		Short:       "Extend a holder's live lease",
		Long: `Extend HOLDER's live lease on KEY to now + TTL (the tenure's TTL unless
--ttl gives a new one). Exits 5 when the lease was lost or already ran out:
renewal never takes a lock back.`,
		Example: `  # A long job keeps its detached lock alive between steps:
  xplock acquire nightly -H etl --ttl 5m
  ./extract.sh && xplock renew nightly -H etl && ./load.sh
  xplock release nightly -H etl`,
		ValidArgsFunction: completeOneKey(g),
		RunE: func(c *cobra.Command, args []string) error {
			var err error
			if opts.Key, err = oneKey(args); err != nil {
				return err
			}
			if opts.Holder, err = resolveHolder(opts.Holder); err != nil {
				return err
			}
			if c.Flags().Changed("ttl") {
				if err := positiveDuration("ttl", opts.TTL); err != nil {
					return err
				}
			}
			return runRenew(c.Context(), opts)
		},
	}
	holderFlag(g, c, &opts.Holder, "whose lease is extended")
	c.Flags().DurationVar(&opts.TTL, "ttl", 0, "new lease length (default: the tenure's TTL)")
	c.Flags().BoolVar(&opts.JSON, "json", false, "print the lease, or why it was refused, as JSON")
	return c
}

func runRenew(ctx context.Context, opts *renewOptions) error {
	store, err := opts.openStore(ctx, storeChange)
	if err != nil {
		return err
	}
	defer store.Close()
	g, err := store.Renew(ctx, lock.RenewRequest{Key: opts.Key, Holder: opts.Holder, TTL: opts.TTL})
	if err != nil {
		return refuseNotHeld(opts.Out, opts.JSON, opts.Key, err)
	}
	if opts.JSON {
		return writeJSON(opts.Out, newLeaseJSON(g))
	}
	_, err = fmt.Fprintf(opts.Out, "renewed %s: generation %d, token %d, lease ends %s (in %s)\n",
		g.Key, g.Generation, g.Token, clock(g.ExpiresAt), roughly(g.ExpiresAt.Sub(g.Now)))
	return err
}
