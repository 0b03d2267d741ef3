package sqlite

import (
	"crypto/sha256"
	"fmt"
	"os"
	"syscall"
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

// fileID identifies the database file by device and inode.
func fileID(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return ""
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return ""
	}
	return fmt.Sprintf("%x-%x", uint64(st.Dev), uint64(st.Ino))
}
