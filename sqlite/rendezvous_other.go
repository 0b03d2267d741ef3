//go:build !linux

package sqlite

import (
	"errors"

	"github.com/xplock/xplock/lock"
)

// fileID is empty: holders' endpoints are Linux-only (see lock.Rendezvous).
func fileID(string) string { return "" }

func fileOwner(string) (lock.Endpoint, error) {
	return lock.Endpoint{}, errors.New("holders' endpoints are Linux-only")
}
