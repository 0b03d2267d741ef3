package cmd

import (
	"context"
	"errors"
	"fmt"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/postgres"
)

// openPostgres opens the PostgreSQL store at url (postgres:// or
// postgresql://). A URL that cannot be parsed is a usage error (exit 2);
// a server that cannot be reached, refused credentials, a missing database
// or a newer schema are runtime errors (exit 1) whose message says what to
// check, never showing the password. With noCreate set, a database without
// xplock tables is left without them: it reads as holding no locks, and
// release and renew find nothing held there.
func openPostgres(ctx context.Context, url string, noCreate bool) (lock.Store, error) {
	s, err := postgres.Open(ctx, url, postgres.Options{NoCreate: noCreate})
	switch {
	case errors.Is(err, postgres.ErrBadURL):
		return nil, usageErrorf("--db/XPLOCK_DB: %v (expected postgres://USER:PASSWORD@HOST:PORT/DATABASE?sslmode=...)", err)
	case errors.Is(err, lock.ErrUnsupportedSchema):
		return nil, fmt.Errorf("%w (the database was left untouched)", err)
	case err != nil:
		return nil, err
	}
	return s, nil
}
