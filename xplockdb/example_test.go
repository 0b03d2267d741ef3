package xplockdb_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/xplockdb"
)

// Open with "" opens the store the xplock command uses without --db:
// $XPLOCK_DB, else the default file. A lock taken here is the one that
// `xplock acquire deploy -H script` waits for, and `xplock status` shows.
func ExampleOpen() {
	// This example points XPLOCK_DB at a fresh file; a real program leaves
	// the environment alone, or passes the same --db string its users give
	// the CLI.
	dir, err := os.MkdirTemp("", "xplockdb-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Setenv(xplockdb.EnvVar, filepath.Join(dir, "locks.db"))
	defer os.Unsetenv(xplockdb.EnvVar)

	ctx := context.Background()
	store, err := xplockdb.Open(ctx, "", xplockdb.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()

	l, err := lock.New(store, "deploy", "app", lock.Options{})
	if err != nil {
		log.Fatal(err)
	}
	err = l.Do(ctx, func(ctx context.Context, g *lock.Guard) error {
		fmt.Println("deploying with token", g.Token())
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output: deploying with token 1
}

// DefaultPath is where the CLI keeps its locks when neither --db nor
// XPLOCK_DB says otherwise.
func ExampleDefaultPath() {
	os.Setenv("XDG_STATE_HOME", "/var/lib/state")
	defer os.Unsetenv("XDG_STATE_HOME")
	path, err := xplockdb.DefaultPath()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(path)
	// Output: /var/lib/state/xplock/locks.db
}
