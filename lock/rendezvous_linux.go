package lock

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Endpoints are socket files, and Linux tells who is at the other end.
const rendezvousSupported = true

// maxSocketPath is the longest path bind and connect take: a longer one is
// reached through the directory's descriptor (see socketAddr).
const maxSocketPath = len(unix.RawSockaddrUnix{}.Path) - 1

// errUntrusted means something at an endpoint could have been made by a
// user who may not write the store: it is not used.
var errUntrusted = errors.New("not owned like the store")

// trustedDir checks that e.Dir is a directory owned like the store (or by
// root, who may open the store anyway) and opened no wider than it.
func trustedDir(e Endpoint) error {
	var st unix.Stat_t
	if err := unix.Lstat(e.Dir, &st); err != nil {
		return &fs.PathError{Op: "lstat", Path: e.Dir, Err: err}
	}
	switch perm := fs.FileMode(st.Mode & 0o777); {
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return fmt.Errorf("%s is not a directory: %w", e.Dir, errUntrusted)
	case st.Uid != 0 && !e.ownedLikeStore(st.Uid, st.Gid):
		return fmt.Errorf("%s belongs to uid %d, gid %d: %w", e.Dir, st.Uid, st.Gid, errUntrusted)
	case perm&^e.dirPerm() != 0:
		return fmt.Errorf("%s is opened wider (%v) than the store allows (%v): %w", e.Dir, perm, e.dirPerm(), errUntrusted)
	}
	return nil
}

// ensureDir makes e.Dir, owned like the store and opened no wider than it,
// unless it exists; then it checks that the directory can be trusted. Only
// holders call it: looking never creates anything.
func ensureDir(e Endpoint) error {
	err := trustedDir(e)
	if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := unix.Mkdir(e.Dir, 0o700); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return trustedDir(e)
		}
		return &fs.PathError{Op: "mkdir", Path: e.Dir, Err: err}
	}
	mode := uint32(e.dirPerm())
	switch {
	case os.Geteuid() == 0:
		unix.Lchown(e.Dir, int(e.UID), int(e.GID))
	case e.groupShared():
		unix.Lchown(e.Dir, -1, int(e.GID))
	}
	if e.groupShared() {
		// Sockets made inside belong to the store's group, whoever of
		// the group makes them.
		mode |= unix.S_ISGID
	}
	unix.Chmod(e.Dir, mode)
	if err := trustedDir(e); err != nil {
		unix.Rmdir(e.Dir)
		return err
	}
	return nil
}

// socketAddr is the address that binds or reaches the socket name in dir:
// its path, or, when that is too long for a socket address, the path through
// a descriptor of dir that done closes.
func socketAddr(dir, name string) (addr string, done func(), err error) {
	path := filepath.Join(dir, name)
	if len(path) <= maxSocketPath {
		return path, func() {}, nil
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, &fs.PathError{Op: "open", Path: dir, Err: err}
	}
	return fmt.Sprintf("/proc/self/fd/%d/%s", fd, name), func() { unix.Close(fd) }, nil
}

// listener is a holder's listening socket. Closing it removes its file, if
// the file is still its own.
type listener struct {
	*boundSocket
	path string
}

func (l *listener) Close() error {
	var st unix.Stat_t
	if unix.Lstat(l.path, &st) == nil && st.Dev == l.dev && st.Ino == l.ino {
		unix.Unlink(l.path)
	}
	return l.boundSocket.Close()
}

// listenEndpoint listens at e, making its directory if need be. The
// socket is made complete (mode, owner, listening) under a temporary name
// and then linked into place, so that a waiter never finds it half made. A
// socket file left there by a holder that was killed is removed first, but
// only when nobody answers on it; when a live process does (a re-entrant
// acquisition of the same tenure, or a holder that has not let go yet) it
// fails with errEndpointTaken. That includes a stopped process whose
// tenure is over: it answers but never greets, and a silent socket cannot
// be told from a live co-holder of the same tenure that is slow to greet,
// so it is never taken over. Waiters lose nothing by it: one that is not
// greeted sleeps on the store's changes too.
func listenEndpoint(e Endpoint) (*listener, error) {
	if err := ensureDir(e); err != nil {
		return nil, err
	}
	temp := "." + e.Name + "." + rand.Text()[:8]
	ln, err := bindEndpoint(e, temp)
	if err != nil {
		return nil, err
	}
	tempPath := filepath.Join(e.Dir, temp)
	defer unix.Unlink(tempPath)
	path := filepath.Join(e.Dir, e.Name)
	for retried := false; ; retried = true {
		err := unix.Link(tempPath, path)
		if err == nil {
			return &listener{boundSocket: ln, path: path}, nil
		}
		if !errors.Is(err, unix.EEXIST) || retried {
			ln.Close()
			return nil, &fs.PathError{Op: "link", Path: path, Err: err}
		}
		ctx, cancel := context.WithTimeout(context.Background(), notifyWait)
		c, err := dialEndpoint(ctx, e)
		cancel()
		if err == nil {
			c.Close()
			ln.Close()
			return nil, errEndpointTaken
		}
		if !errors.Is(err, errNoEndpoint) {
			ln.Close()
			return nil, err
		}
		unix.Unlink(path)
	}
}

// boundSocket is a listening socket and its file's identity.
type boundSocket struct {
	*net.UnixListener
	dev, ino uint64
}

// bindEndpoint listens at name in e.Dir, open to those who may write the
// store (the directory already keeps everyone else out) and owned like it.
func bindEndpoint(e Endpoint, name string) (*boundSocket, error) {
	addr, done, err := socketAddr(e.Dir, name)
	if err != nil {
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: addr, Net: "unix"})
	done()
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(false)
	path := filepath.Join(e.Dir, name)
	unix.Chmod(path, uint32(e.dirPerm()&0o666))
	switch {
	case os.Geteuid() == 0:
		unix.Lchown(path, int(e.UID), int(e.GID))
	case e.groupShared():
		unix.Lchown(path, -1, int(e.GID))
	}
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		ln.Close()
		unix.Unlink(path)
		return nil, err
	}
	return &boundSocket{UnixListener: ln, dev: st.Dev, ino: st.Ino}, nil
}

// dialEndpoint connects to the holder listening at e, after checking that
// the directory, the socket file and the process listening on it are all
// owned like the store. It never creates anything. It fails with
// errNoEndpoint when nobody listens there.
func dialEndpoint(ctx context.Context, e Endpoint) (net.Conn, error) {
	if err := trustedDir(e); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, errNoEndpoint
		}
		return nil, err
	}
	path := filepath.Join(e.Dir, e.Name)
	var st unix.Stat_t
	switch err := unix.Lstat(path, &st); {
	case errors.Is(err, unix.ENOENT):
		return nil, errNoEndpoint
	case err != nil:
		return nil, &fs.PathError{Op: "lstat", Path: path, Err: err}
	case st.Mode&unix.S_IFMT != unix.S_IFSOCK || st.Uid != 0 && !e.ownedLikeStore(st.Uid, st.Gid):
		return nil, fmt.Errorf("%s (uid %d, gid %d): %w", path, st.Uid, st.Gid, errUntrusted)
	}
	addr, done, err := socketAddr(e.Dir, e.Name)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", addr)
	done()
	switch {
	case errors.Is(err, unix.ECONNREFUSED) || errors.Is(err, unix.ENOENT):
		return nil, errNoEndpoint // a stale file, or one removed just now
	case err != nil:
		return nil, err
	case !trustedPeer(e, c):
		c.Close()
		return nil, fmt.Errorf("the process listening at %s: %w", path, errUntrusted)
	}
	return c, nil
}

// trustedPeer reports whether the process at the other end of c (its
// credentials as the kernel recorded them) is root, this process's user, or
// a user who may write the store.
func trustedPeer(e Endpoint, c net.Conn) bool {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return false
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return false
	}
	var cred *unix.Ucred
	raw.Control(func(fd uintptr) {
		cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if err != nil || cred == nil {
		return false
	}
	return cred.Uid == 0 || cred.Uid == uint32(os.Geteuid()) || e.ownedLikeStore(cred.Uid, cred.Gid)
}
