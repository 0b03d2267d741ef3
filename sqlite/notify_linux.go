package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"syscall"
	"time"
	"unsafe"
)

// subscribe is the subscription that Subscribe shares among all of the
// store's subscribers. On Linux it watches the database's
// directory with inotify: every commit in WAL mode writes the -wal file, so
// a subscriber hears of a commit within microseconds and an idle subscriber
// costs nothing. Without inotify it polls PRAGMA data_version.
//
// The first write of a commit comes before the commit is visible: a waiter
// woken then would find the write lock still taken, and SQLite's busy
// handler would put it to sleep for a whole millisecond. So a file event is
// only passed on once PRAGMA data_version, read on a connection of the
// subscriber's own, says that a commit has become visible (see
// confirmCommits).
func (s *Store) subscribe(ctx context.Context) (<-chan struct{}, error) {
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
	ch := make(chan struct{}, 1)
	events := ch
	conn, last, err := s.versionConn(ctx)
	if err == nil {
		// The watch is in place before the version is read, so no commit
		// falls between the two.
		events = make(chan struct{}, 1)
		go s.confirmCommits(ctx, conn, last, events, ch)
	}
	go func() {
		<-ctx.Done()
		f.Close()
	}()
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
					signal(events)
					break
				}
			}
		}
	}()
	return ch, nil
}

// commitWait bounds how long a file event waits for a commit to show: a
// checkpoint or a new file writes without committing anything.
const commitWait = 20 * time.Millisecond

// confirmCommits passes each file event on to ch once PRAGMA data_version
// has changed, looking again at every further event and after pauses that
// double from 25µs to 1ms. An event that no commit follows within
// commitWait is passed on all the same: a spurious wake-up costs a
// subscriber one look, a missed one could cost it a long wait.
//
// The pauses double because a writer that is descheduled between writing
// the WAL and publishing the commit (common with more runnable processes
// than cores) would otherwise be raced by every waiter looking every 25µs
// for the CPU it needs to finish.
func (s *Store) confirmCommits(ctx context.Context, conn *sql.Conn, last int64, events <-chan struct{}, ch chan struct{}) {
	defer conn.Close()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-events:
		}
		start := time.Now()
		pause := 25 * time.Microsecond
		for {
			v, err := dataVersion(ctx, conn)
			if ctx.Err() != nil {
				return
			}
			waited := time.Since(start)
			if err != nil || v != last || waited > commitWait {
				if err == nil {
					last = v
				}
				signal(ch)
				break
			}
			timer.Reset(pause)
			pause = min(2*pause, time.Millisecond)
			select {
			case <-ctx.Done():
				return
			case <-events:
				if !timer.Stop() {
					<-timer.C
				}
			case <-timer.C:
			}
		}
	}
}
