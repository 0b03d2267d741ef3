package cmd

import (
	"context"
	"errors"

	"github.com/xplock/xplock/lock"
)

// runLocked runs opts.Command while guard is held (run mode).
func runLocked(ctx context.Context, opts *acquireOptions, guard *lock.Guard) error {
	guard.ReleaseKeepPoison(ctx)
	return errors.New("run mode is not implemented yet")
}
