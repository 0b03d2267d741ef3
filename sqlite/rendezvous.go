package sqlite

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"path/filepath"
	"sync"

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
	real, err := realPath(s.path)
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

// realPaths caches realPath: a guard that lets go looks for the tenure's
// other listeners (see lock.NotifyHolder) on every release, and resolving
// each directory of the path again would cost more than the look.
var realPaths sync.Map // path as opened -> its real path

// realPath is path's absolute form without symbolic links, as first seen
// by this process.
func realPath(path string) (string, error) {
	if real, ok := realPaths.Load(path); ok {
		return real.(string), nil
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", err
	}
	if filepath.IsAbs(path) {
		// A relative path means another file once the directory changes.
		realPaths.Store(path, real)
	}
	return real, nil
}
