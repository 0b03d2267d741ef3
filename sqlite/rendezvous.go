package sqlite

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"path/filepath"

	"github.com/xplock/xplock/lock"
)

// endpointDirSuffix names the directory of holders' sockets beside the
// database file: locks.db's are in locks.db-xplock.
const endpointDirSuffix = "-xplock"

// RendezvousEndpoint implements lock.Rendezvous: the processes that open
// this database file on this machine, through whatever symbolic links,
// find a key's socket in the same directory beside the file's real path,
// under a name that also tells this file from a later one at the same path
// (whose holders' sockets would otherwise meet those of the old file's
// holders that are still alive). It creates nothing.
func (s *Store) RendezvousEndpoint(key string) (lock.Endpoint, error) {
	if s.fileID == "" {
		return lock.Endpoint{}, errors.New("the database file cannot be identified")
	}
	abs, err := filepath.Abs(s.path)
	if err != nil {
		return lock.Endpoint{}, err
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return lock.Endpoint{}, err
	}
	e, err := fileOwner(real)
	if err != nil {
		return lock.Endpoint{}, err
	}
	sum := sha256.Sum256([]byte(s.fileID + "\x00" + key))
	e.Dir, e.Name = real+endpointDirSuffix, hex.EncodeToString(sum[:12])
	return e, nil
}
