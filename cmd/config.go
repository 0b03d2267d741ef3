package cmd

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/sqlite"
)

// settingHistoryLimit is the name of the history limit in `xplock config`.
const settingHistoryLimit = "history-limit"

type configOptions struct {
	*globalOptions
	JSON bool
}

func newConfigCmd(g *globalOptions) *cobra.Command {
	opts := &configOptions{globalOptions: g}
	c := &cobra.Command{
		Use:   "config [history-limit N]",
		Short: "Show or change the lock store's settings",
		Long: `Print the settings kept in the lock store, which every process that uses
the store shares:

  history-limit   how many events each key's history keeps (status
                  --history, watch); older ones are pruned

'xplock config history-limit N' sets it for the whole store (N of 1 or
more). The excess is pruned as each key's history next grows. A store that
does not exist yet is not created: it starts with the default settings when
'xplock acquire' first creates it.`,
		Example: `  xplock config
  xplock config history-limit 100`,
		ValidArgs: []string{settingHistoryLimit},
		RunE: func(c *cobra.Command, args []string) error {
			switch {
			case len(args) == 0:
				return runConfigShow(c.Context(), opts)
			case len(args) == 2 && args[0] == settingHistoryLimit:
				n, err := strconv.Atoi(args[1])
				if err != nil || n <= 0 {
					return usageErrorf("history-limit %q: give the number of events to keep per key, 1 or more", args[1])
				}
				return runConfigSet(c.Context(), opts, n)
			case len(args) == 1 && args[0] == settingHistoryLimit:
				return usageErrorf("history-limit needs a value: xplock config history-limit N")
			}
			return usageErrorf("unknown setting %q: the settings are %s", args[0], settingHistoryLimit)
		},
	}
	c.Flags().BoolVar(&opts.JSON, "json", false, "print the settings as JSON")
	return c
}

type settingsJSON struct {
	HistoryLimit int `json:"history_limit"`
}

func configurable(store lock.Store, location string) (lock.Configurable, error) {
	if c, ok := store.(lock.Configurable); ok {
		return c, nil
	}
	return nil, fmt.Errorf("the lock store %s does not support settings", location)
}

func runConfigShow(ctx context.Context, opts *configOptions) error {
	settings := lock.Settings{HistoryLimit: sqlite.DefaultHistoryLimit}
	store, err := opts.openStore(ctx, storeLook)
	switch {
	case errors.Is(err, errNoStore):
		fmt.Fprintf(opts.Err, "xplock: no lock store at %s yet: these are the settings it starts with\n", opts.dbLocation())
	case err != nil:
		return err
	default:
		defer store.Close()
		c, err := configurable(store, opts.dbLocation())
		if err != nil {
			return err
		}
		if settings, err = c.Settings(ctx); err != nil {
			return err
		}
	}
	if opts.JSON {
		return writeJSON(opts.Out, settingsJSON{HistoryLimit: settings.HistoryLimit})
	}
	_, err = fmt.Fprintf(opts.Out, "%s  %d\n", settingHistoryLimit, settings.HistoryLimit)
	return err
}

func runConfigSet(ctx context.Context, opts *configOptions, historyLimit int) error {
	store, err := opts.openStore(ctx, storeChange)
	if err != nil {
		return err
	}
	defer store.Close()
	if _, absent := store.(absentStore); absent {
		return fmt.Errorf("nothing to configure yet: 'xplock acquire' creates the store, then set its history limit")
	}
	c, err := configurable(store, opts.dbLocation())
	if err != nil {
		return err
	}
	if err := c.SetHistoryLimit(ctx, historyLimit); err != nil {
		return err
	}
	if opts.JSON {
		return writeJSON(opts.Out, settingsJSON{HistoryLimit: historyLimit})
	}
	_, err = fmt.Fprintf(opts.Out, "%s  %d\n", settingHistoryLimit, historyLimit)
	return err
}
