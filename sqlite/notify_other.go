//go:build !linux

package sqlite

import "context"

// subscribe is the subscription that Subscribe shares among all of the
// store's subscribers: it polls PRAGMA data_version.
func (s *Store) subscribe(ctx context.Context) (<-chan struct{}, error) {
	return s.pollDataVersion(ctx)
}
