package sqlite

import (
	"fmt"

	"golang.org/x/sys/unix"
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
