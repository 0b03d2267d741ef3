// Package cmd is xplock's command line: one file per cobra command, each
// with an options struct and its work in a plain function.
package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/postgres"
	"github.com/xplock/xplock/sqlite"
	"github.com/xplock/xplock/xplockdb"
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
	DB string

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
		"lock store: a SQLite file, or a postgres:// URL (env XPLOCK_DB; default "+defaultDBHelp()+")")
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
		newConfigCmd(g),
		newManCmd(),
	)
	return root
}

// dbLocation is the store as resolved by storeLocation, or "" when there
// is none.
func (g *globalOptions) dbLocation() string {
	location, _ := g.storeLocation()
	return location
}

// storeLocation resolves the store: --db, XPLOCK_DB, then the state
// directory (see xplockdb.Location).
func (g *globalOptions) storeLocation() (string, error) {
	location, err := xplockdb.Location(g.DB)
	if errors.Is(err, xplockdb.ErrNoDefault) {
		return "", usageErrorf("%v; give --db PATH, or set XPLOCK_DB or HOME", err)
	}
	return location, err
}

// defaultDBHelp describes the default store for --help.
func defaultDBHelp() string {
	if p, err := xplockdb.DefaultPath(); err == nil {
		return displayPath(p)
	}
	return "$XDG_STATE_HOME/xplock/locks.db, else ~/.local/state/xplock/locks.db; none without HOME"
}

func displayPath(p string) string {
	if home := os.Getenv("HOME"); filepath.IsAbs(home) && strings.HasPrefix(p, home+"/") {
		return "~" + p[len(home):]
	}
	return p
}

// errNoStore means a command that only looks found no store: nothing was
// ever locked there.
var errNoStore = errors.New("no lock store yet")

// storeUse says what a command does with the store, which decides how it
// is opened.
type storeUse int

const (
	// storeAcquire may create the store (only acquire does).
	storeAcquire storeUse = iota
	// storeChange changes what is already held (release, renew, config):
	// a missing store is created by nobody, and a call that another
	// connection keeps waiting gives up after changeBound.
	storeChange
	// storeLook only reads (status, completion, config without
	// arguments): read-only, changing nothing, giving up after
	// changeBound; a missing store is errNoStore.
	storeLook
	// storeWatch reads like storeLook but waits as long as watch does.
	storeWatch
)

// changeBound is how long release, renew and status wait for a database
// that another connection keeps locked (an application's long
// transaction) before they give up with exit 1.
const changeBound = 10 * time.Second

// tryBound is how long `acquire --nowait` (one try) waits for a database
// that another connection keeps locked before it answers exit 4.
const tryBound = 2 * time.Second

// openStore opens the store for use. For storeChange, a store that does not
// exist is reported as holding nothing, and nothing is created.
func (g *globalOptions) openStore(ctx context.Context, use storeUse) (lock.Store, error) {
	location, err := g.storeLocation()
	if err != nil {
		return nil, err
	}
	looking := use == storeLook || use == storeWatch
	opts := xplockdb.Options{NoCreate: use == storeChange, ReadOnly: looking}
	if use == storeChange || use == storeLook {
		opts.BusyLimit = changeBound
	}
	s, err := xplockdb.Open(ctx, location, opts)
	switch {
	case err == nil:
		return s, nil
	case errors.Is(err, postgres.ErrBadURL):
		return nil, usageErrorf("--db/XPLOCK_DB: %v (expected postgres://USER:PASSWORD@HOST:PORT/DATABASE?sslmode=...)", err)
	case xplockdb.IsPostgres(location) && errors.Is(err, lock.ErrUnsupportedSchema):
		return nil, fmt.Errorf("%w (the database was left untouched)", err)
	case xplockdb.IsPostgres(location):
		// The store's own messages say what to check, never showing the password.
		return nil, err
	case looking && errors.Is(err, fs.ErrNotExist):
		return nil, errNoStore
	case use == storeChange && errors.Is(err, fs.ErrNotExist):
		what := "there is no lock store at " + location
		if _, statErr := os.Stat(location); statErr == nil {
			what = location + " has no xplock tables"
		}
		fmt.Fprintf(g.Err, "xplock: %s, so nothing is held there (nothing was created)\n", what)
		return absentStore{}, nil
	case errors.Is(err, sqlite.ErrNotSQLite):
		return nil, fmt.Errorf("%w; point --db or XPLOCK_DB at a lock database (it was left untouched)", err)
	case errors.Is(err, lock.ErrUnsupportedSchema):
		return nil, fmt.Errorf("%w (the file was left untouched)", err)
	case errors.Is(err, sqlite.ErrLocked):
		return nil, err
	}
	return nil, fmt.Errorf("cannot use lock store %s: %w; choose a readable, writable path with --db or XPLOCK_DB", location, err)
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
