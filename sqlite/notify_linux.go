package sqlite

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"syscall"
	"unsafe"
)

// Subscribe implements lock.Store. On Linux it watches the database's
// directory with inotify: every commit in WAL mode writes the -wal file, so
// a waiter wakes within microseconds of a release and an idle subscriber
// costs nothing. Without inotify it polls PRAGMA data_version.
func (s *Store) Subscribe(ctx context.Context) (<-chan struct{}, error) {
	abs, err := filepath.Abs(s.path)
	if err != nil {
		return s.pollDataVersion(ctx)
	}
	fd, err := syscall.InotifyInit1(syscall.IN_NONBLOCK | syscall.IN_CLOEXEC)
	if err != nil {
		return s.pollDataVersion(ctx)
	}
	if _, err := syscall.InotifyAddWatch(fd, filepath.Dir(abs),
		syscall.IN_MODIFY|syscall.IN_CREATE|syscall.IN_MOVED_TO); err != nil {
		syscall.Close(fd)
		return s.pollDataVersion(ctx)
	}
	// A non-blocking descriptor in an *os.File uses the runtime poller, so
	// Close unblocks the reader when ctx ends.
	f := os.NewFile(uintptr(fd), "inotify")
	go func() {
		<-ctx.Done()
		f.Close()
	}()
	ch := make(chan struct{}, 1)
	names := [][]byte{[]byte(filepath.Base(abs) + "-wal"), []byte(filepath.Base(abs))}
	go func() {
		buf := make([]byte, 16*1024)
		for {
			n, err := f.Read(buf)
			if err != nil {
				return
			}
			for off := 0; off+syscall.SizeofInotifyEvent <= n; {
				ev := (*syscall.InotifyEvent)(unsafe.Pointer(&buf[off]))
				start := off + syscall.SizeofInotifyEvent
				name := bytes.TrimRight(buf[start:start+int(ev.Len)], "\x00")
				off = start + int(ev.Len)
				if bytes.Equal(name, names[0]) || bytes.Equal(name, names[1]) {
					signal(ch)
					break
				}
			}
		}
	}()
	return ch, nil
}
