package cmd

import (
	"slices"

	"github.com/spf13/cobra"

	"github.com/xplock/xplock/lock"
)

// Shell completion reads the store and never writes it: openStore with
// readOnly creates nothing, and a missing store offers nothing.

// snapshotForCompletion reads every lock, or nothing when there is no store.
func snapshotForCompletion(g *globalOptions, c *cobra.Command) []lock.State {
	store, err := g.openStore(c.Context(), storeLook)
	if err != nil {
		return nil
	}
	defer store.Close()
	snap, err := store.Snapshot(c.Context())
	if err != nil {
		return nil
	}
	return snap.Locks
}

// completeKeys offers the store's keys not yet on the command line.
func completeKeys(g *globalOptions) cobra.CompletionFunc {
	return func(c *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
		var keys []cobra.Completion
		for _, l := range snapshotForCompletion(g, c) {
			if !slices.Contains(args, l.Key) {
				keys = append(keys, l.Key)
			}
		}
		return keys, cobra.ShellCompDirectiveNoFileComp
	}
}

// completeOneKey offers keys for a command's only KEY, then nothing.
func completeOneKey(g *globalOptions) cobra.CompletionFunc {
	return keyThen(g, cobra.ShellCompDirectiveNoFileComp)
}

// completeAcquireArgs offers keys for KEY; every word after it belongs to
// CMD (after '--'), which the shell completes as it would on its own.
func completeAcquireArgs(g *globalOptions) cobra.CompletionFunc {
	return keyThen(g, cobra.ShellCompDirectiveDefault)
}

// keyThen offers keys for the first argument and leaves later ones to
// the shell as afterKey says.
func keyThen(g *globalOptions, afterKey cobra.ShellCompDirective) cobra.CompletionFunc {
	keys := completeKeys(g)
	return func(c *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, afterKey
		}
		return keys(c, args, toComplete)
	}
}

// completeHolders offers the holders the store knows: current and last
// holders, and those poisoned on a key.
func completeHolders(g *globalOptions) cobra.CompletionFunc {
	return func(c *cobra.Command, _ []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
		var holders []cobra.Completion
		for _, l := range snapshotForCompletion(g, c) {
			for _, h := range append([]string{l.Holder}, l.PoisonedHolders...) {
				if h != "" && !slices.Contains(holders, h) {
					holders = append(holders, h)
				}
			}
		}
		return holders, cobra.ShellCompDirectiveNoFileComp
	}
}
