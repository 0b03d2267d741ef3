package sqlite

import (
	"crypto/sha256"
	"fmt"
)

// RendezvousAddress implements lock.Rendezvous: the processes that open
// this database file on this machine, by whatever path, name a key's
// socket alike. It is empty when the file cannot be identified.
func (s *Store) RendezvousAddress(key string) string {
	if s.fileID == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(key))
	return fmt.Sprintf("xplock/%s/%x", s.fileID, sum[:16])
}
