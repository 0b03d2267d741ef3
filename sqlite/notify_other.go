//go:build !linux

package sqlite

import "context"

// Subscribe implements lock.Store by polling PRAGMA data_version.
func (s *Store) Subscribe(ctx context.Context) (<-chan struct{}, error) {
	return s.pollDataVersion(ctx)
}
