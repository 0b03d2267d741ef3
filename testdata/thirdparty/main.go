// Command deployer takes the lock "deploy" in the store the xplock command
// uses (XPLOCK_DB, else the default file), so that it and scripts calling
// `xplock acquire deploy` never deploy at the same time.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/xplockdb"
)

func main() {
	ctx := context.Background()
	store, err := xplockdb.Open(ctx, "", xplockdb.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	l, err := lock.New(store, "deploy", "deployer", lock.Options{})
	if err != nil {
		log.Fatal(err)
	}

	// The safe pattern: Do releases always and acknowledges on success.
	err = l.Do(ctx, func(ctx context.Context, g *lock.Guard) error {
		fmt.Printf("do: generation %d, poisoned %t\n", g.Generation(), g.Poisoned())
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}

	// By hand: a poisoned Lock still holds the lock.
	g, err := l.Lock(ctx)
	var poisoned *lock.PoisonError
	if err != nil && !errors.As(err, &poisoned) {
		log.Fatal(err)
	}
	fmt.Printf("lock: generation %d, poisoned %t\n", g.Generation(), poisoned != nil)
	if err := g.Release(ctx); err != nil {
		log.Fatal(err)
	}
}
