package postgres

import "context"

// FixRequestID makes every request of s carry id, as the attempts of one
// request do: a request made again is taken for a retry of the last one.
func (s *Store) FixRequestID(id string) { s.fixedRequestID = id }

// MigrateTo brings the schema to version, as the xplock that knew that
// version left it.
func (s *Store) MigrateTo(ctx context.Context, version int) error { return s.migrateTo(ctx, version) }
