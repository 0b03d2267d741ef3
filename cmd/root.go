// Package cmd is xplock's command line: one file per cobra command, each
// with an options struct and its work in a plain function.
package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/sqlite"
)

// onePAnnotation marks the lock commands, which run on one P (unless
// GOMAXPROCS says otherwise): they do one thing at a time, and a second P
// only made the runtime start and wake threads around each cgo call into
// SQLite. An acquire+release cycle took 12-15% less CPU and wall time
// (perf stat -r 40, side by side). status keeps every P: with one, its
// garbage collector fell behind the table's garbage (+10% peak RSS).
const onePAnnotation = "xplock/one-p"

// globalOptions are the flags every command shares.
type globalOptions struct {
	DB           string
	HistoryLimit int

	Out, Err io.Writer
}

// Execute runs xplock with os.Args and returns the process exit code.
func Execute() int {
	// A signal xplock was started with ignored stays ignored (see
	// ignoredAtStart), so that run mode's CMD inherits that.
	ctx, stop := signal.NotifyContext(context.Background(), catchable(os.Interrupt, syscall.SIGTERM)...)
	defer stop()
	return Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
}

// Run runs xplock with args and returns the exit code SPEC.md gives.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRootCmd(&globalOptions{Out: stdout, Err: stderr})
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	// cobra shows help for -h wherever it appears and then succeeds. For a
	// command that takes -H that turns a typo into a critical section run
	// without the lock, so help with other arguments is refused instead.
	var refused error
	showHelp := root.HelpFunc()
	root.SetHelpFunc(func(c *cobra.Command, args []string) {
		if refused = helpWithArguments(c); refused == nil {
			showHelp(c, args)
		}
	})
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		err = refused
	}
	if err == nil {
		return 0
	}
	code := exitCode(err)
	var silent *exitError
	if !errors.As(err, &silent) || silent.err != nil {
		fmt.Fprintf(stderr, "xplock: %v\n", err)
		if code == exitUsage && cmd != nil {
			fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
		}
	}
	return code
}

func newRootCmd(g *globalOptions) *cobra.Command {
	root := &cobra.Command{
		Use:   "xplock",
		Short: "Cross-process locks that count generations and report stale holders",
		Long: `xplock takes named locks in a shared SQLite (or PostgreSQL) store.
Each lock counts generations: +1 every time a different holder takes it.
A holder that gets a lock back after someone else had it is told its cached
view may be stale: the lock is poisoned for it, and 'xplock acquire' exits 3.

Exit codes: 0 done, 1 runtime error, 2 usage error, 3 acquired but poisoned,
4 not acquired, 5 not held by this holder, 6 lock lost while CMD ran.`,
		Example: `  # Run a command under a lock, as flock(1) does:
  xplock acquire deploy -H ci-runner-3 -- ./deploy.sh
  # See who holds what:
  xplock status
  # Shell completion (bash; see 'xplock completion --help' for others):
  source <(xplock completion bash)`,
		Version:       version(),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args: func(c *cobra.Command, args []string) error {
			if len(args) > 0 {
				return unknownCommand(c, args[0])
			}
			return nil
		},
		RunE: func(c *cobra.Command, _ []string) error { return c.Help() },
		PersistentPreRun: func(c *cobra.Command, _ []string) {
			if c.Annotations[onePAnnotation] != "" && os.Getenv("GOMAXPROCS") == "" {
				runtime.GOMAXPROCS(1)
			}
		},
	}
	root.SuggestionsMinimumDistance = 2 // cobra's own default, which SuggestionsFor does not apply
	root.PersistentFlags().StringVar(&g.DB, "db", "",
		"lock store: a SQLite file, or a postgres:// URL (env XPLOCK_DB; default "+displayPath(defaultDBPath())+")")
	root.PersistentFlags().IntVar(&g.HistoryLimit, "history-limit", 0,
		fmt.Sprintf("events kept per key (env XPLOCK_HISTORY_LIMIT; default %d)", sqlite.DefaultHistoryLimit))
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		if !c.HasParent() && c.Flags().NArg() > 0 {
			// A mistyped command: its flags are not the root's.
			return unknownCommand(c, c.Flags().Arg(0))
		}
		return usageErrorf("%v%s", err, flagHint(err))
	})
	root.AddCommand(
		newAcquireCmd(g),
		newReleaseCmd(g),
		newRenewCmd(g),
		newStatusCmd(g),
		newWatchCmd(g),
		newManCmd(),
	)
	return root
}

// dbLocation resolves the store: --db, XPLOCK_DB, then the state directory.
func (g *globalOptions) dbLocation() string {
	if g.DB != "" {
		return g.DB
	}
	if env := os.Getenv("XPLOCK_DB"); env != "" {
		return env
	}
	return defaultDBPath()
}

func defaultDBPath() string {
	if state := os.Getenv("XDG_STATE_HOME"); state != "" {
		return filepath.Join(state, "xplock", "locks.db")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		home = "."
	}
	return filepath.Join(home, ".local", "state", "xplock", "locks.db")
}

func displayPath(p string) string {
	if home, err := os.UserHomeDir(); err == nil && strings.HasPrefix(p, home+"/") {
		return "~" + p[len(home):]
	}
	return p
}

func isPostgresURL(location string) bool {
	return strings.HasPrefix(location, "postgres://") || strings.HasPrefix(location, "postgresql://")
}

// errNoStore means a read-only command found no database: nothing was ever
// locked there.
var errNoStore = errors.New("no lock store yet")

// openStore opens the store. Commands that only read pass readOnly, so that
// looking never creates a database.
func (g *globalOptions) openStore(ctx context.Context, readOnly bool) (lock.Store, error) {
	location := g.dbLocation()
	limit := g.HistoryLimit
	if limit == 0 {
		if env := os.Getenv("XPLOCK_HISTORY_LIMIT"); env != "" {
			n, err := strconv.Atoi(env)
			if err != nil || n <= 0 {
				return nil, usageErrorf("XPLOCK_HISTORY_LIMIT=%q: give a positive number of events", env)
			}
			limit = n
		}
	} else if limit < 0 {
		return nil, usageErrorf("--history-limit must be a positive number of events")
	}
	if isPostgresURL(location) {
		return openPostgres(ctx, location, limit, readOnly)
	}
	s, err := sqlite.Open(ctx, location, sqlite.Options{HistoryLimit: limit, NoCreate: readOnly})
	switch {
	case readOnly && errors.Is(err, os.ErrNotExist):
		return nil, errNoStore
	case errors.Is(err, sqlite.ErrNotSQLite):
		return nil, fmt.Errorf("%w; point --db or XPLOCK_DB at a lock database (it was left untouched)", err)
	case errors.Is(err, lock.ErrUnsupportedSchema):
		return nil, fmt.Errorf("%w (the file was left untouched)", err)
	case err != nil:
		return nil, fmt.Errorf("cannot use lock store %s: %w; choose a readable, writable path with --db or XPLOCK_DB", location, err)
	}
	return s, nil
}

// holderFlag registers --holder/-H, described by usage, and completes it
// with the holders the store knows.
func holderFlag(g *globalOptions, c *cobra.Command, holder *string, usage string) {
	c.Flags().StringVarP(holder, "holder", "H", "", usage+": a stable name for a process role (env XPLOCK_HOLDER)")
	// cobra keeps a help flag that is already there; this one says that -h is not -H.
	c.Flags().BoolP("help", "h", false, "show this help; only alone (-H, capital, names the holder)")
	if err := c.RegisterFlagCompletionFunc("holder", completeHolders(g)); err != nil {
		panic(err) // only a programming mistake: the flag was just registered
	}
}

// resolveHolder applies XPLOCK_HOLDER and checks the holder.
func resolveHolder(holder string) (string, error) {
	if holder == "" {
		holder = os.Getenv("XPLOCK_HOLDER")
	}
	if holder == "" {
		return "", usageErrorf("missing holder: give --holder/-H NAME or set XPLOCK_HOLDER. A holder is a stable name " +
			"for a process role (app, backup-cron, ci-runner-3); the same holder taking a lock again is re-entrant, " +
			"so concurrent processes must use different holders")
	}
	if err := lock.ValidateHolder(holder); err != nil {
		return "", usageErrorf("%v", err)
	}
	return holder, nil
}

// oneKey checks that args hold exactly one valid key.
func oneKey(args []string) (string, error) {
	if len(args) != 1 {
		return "", usageErrorf("expected one KEY, got %d arguments", len(args))
	}
	if err := lock.ValidateKey(args[0]); err != nil {
		return "", usageErrorf("%v", err)
	}
	return args[0], nil
}

// positiveDuration checks a duration flag that must be > 0.
func positiveDuration(name string, d time.Duration) error {
	if d <= 0 {
		return usageErrorf("--%s must be greater than 0 (Go duration syntax, for example 30s, 5m or 1h30m)", name)
	}
	return nil
}
