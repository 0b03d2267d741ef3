package cmd

import (
	"context"
	"errors"

	"github.com/xplock/xplock/lock"
)

func openPostgres(ctx context.Context, url string, historyLimit int) (lock.Store, error) {
	return nil, errors.New("the PostgreSQL store is not part of this build yet; use a SQLite file for --db")
}
