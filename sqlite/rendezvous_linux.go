package sqlite

import (
	"fmt"
	"io/fs"

	"golang.org/x/sys/unix"

	"github.com/xplock/xplock/lock"
)

// fileID identifies the database file by device, inode and birth time: the
// birth time tells a file from a later one that reuses the inode of a
// deleted one, whose holders may still be alive.
func fileID(path string) string {
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, unix.AT_STATX_SYNC_AS_STAT, unix.STATX_INO|unix.STATX_BTIME, &st); err != nil {
		return ""
	}
	id := fmt.Sprintf("%x.%x-%x", st.Dev_major, st.Dev_minor, st.Ino)
	if st.Mask&unix.STATX_BTIME != 0 {
		id += fmt.Sprintf("-%x.%x", st.Btime.Sec, st.Btime.Nsec)
	}
	return id
}

// fileOwner is an endpoint with the owner, group and permission bits of
// the file at path, which endpoints must match.
func fileOwner(path string) (lock.Endpoint, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return lock.Endpoint{}, &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	return lock.Endpoint{UID: st.Uid, GID: st.Gid, Mode: fs.FileMode(st.Mode & 0o777)}, nil
}
