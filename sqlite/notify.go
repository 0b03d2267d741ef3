package sqlite

import (
	"context"
	"database/sql"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// subscribe is the subscription that Subscribe shares among all of the
// store's subscribers. Every commit in WAL mode writes the -wal file, so it
// watches that file with fsnotify (see watchedPaths): a subscriber hears of
// a commit within microseconds and an idle subscriber costs nothing. Where
// the files cannot be watched it polls PRAGMA data_version.
func (s *Store) subscribe(ctx context.Context) (<-chan struct{}, error) {
	if ch, err := s.watchCommits(ctx, watchedPaths); err == nil {
		return ch, nil
	}
	return s.pollDataVersion(ctx)
}

// watchCommits watches the paths that watched names for the database file
// and signals the channel it returns when a commit may have happened (see
// commitFiles), or says why it cannot watch them.
//
// The first write of a commit comes before the commit is visible: a waiter
// woken then would find the write lock still taken, and SQLite's busy
// handler would put it to sleep for a whole millisecond. So a file event is
// only passed on once PRAGMA data_version, read on a connection of the
// subscriber's own, says that a commit has become visible (see
// followCommits).
func (s *Store) watchCommits(ctx context.Context, watched func(db string) []string) (<-chan struct{}, error) {
	// SQLite keeps the -wal file beside the database file's real path.
	db, err := realPath(s.path)
	if err != nil {
		return nil, err
	}
	// The connection is open before the watch so that the -wal file it
	// reads exists (see watchFiles). Without one, events pass unconfirmed.
	conn, _, _ := s.versionConn(ctx)
	closeConn := func() {
		if conn != nil {
			conn.Close()
		}
	}
	watcher, err := fsnotify.NewWatcher()
	if err != nil {
		closeConn()
		return nil, err
	}
	for _, path := range watched(db) {
		if err := watcher.Add(path); err != nil {
			watcher.Close()
			closeConn()
			return nil, err
		}
	}
	var last int64
	if conn != nil {
		// The watch is in place before the version is read, so no commit
		// falls between the two.
		if last, err = dataVersion(ctx, conn); err != nil {
			conn.Close()
			conn = nil
		}
	}
	ch := make(chan struct{}, 1)
	go followCommits(ctx, watcher, commitFiles(db), conn, last, ch)
	return ch, nil
}

// watchDirectory watches the database file's directory: one watch that also
// sees a -wal file created, or deleted and created again, after it began.
// Cheap with inotify; kqueue (macOS, BSD) would open every file in the
// directory, which in a crowded one could use up the process's file
// descriptors.
func watchDirectory(db string) []string {
	return []string{filepath.Dir(db)}
}

// watchFiles watches the database file and its -wal file themselves, which
// works with every backend of fsnotify. The -wal file must exist: it does
// in WAL mode while a connection is open (watchCommits holds one), and the
// store's connections leave it behind when they close. Without it,
// subscribe polls.
func watchFiles(db string) []string {
	return []string{db, db + "-wal"}
}

// commitFiles are the files whose writes or creation may mean a commit: the
// -wal file, and the database file itself (a checkpoint, a rollback
// journal's commit, a file moved into its place).
func commitFiles(db string) map[string]bool {
	return map[string]bool{db: true, db + "-wal": true}
}

// isCommitEvent says whether ev is a write to or the creation of one of
// files, which may mean a commit.
func isCommitEvent(ev fsnotify.Event, files map[string]bool) bool {
	return (ev.Has(fsnotify.Write) || ev.Has(fsnotify.Create)) && files[filepath.Clean(ev.Name)]
}

// commitWait bounds how long a file event waits for a commit to show: a
// checkpoint or a new file writes without committing anything.
const commitWait = 20 * time.Millisecond

// followCommits signals ch for the watcher's events on files until ctx
// ends, then closes the watcher and conn.
//
// With conn (nil when the subscriber could not get a connection), an event
// is passed on once PRAGMA data_version has changed from last, looking
// again at every further event and after pauses that double from 25µs to
// 1ms. An event that no commit follows within commitWait is passed on all
// the same: a spurious wake-up costs a subscriber one look, a missed one
// could cost it a long wait. The pauses double because a writer that is
// descheduled between writing the WAL and publishing the commit (common
// with more runnable processes than cores) would otherwise be raced by
// every waiter looking every 25µs for the CPU it needs to finish.
func followCommits(ctx context.Context, watcher *fsnotify.Watcher, files map[string]bool, conn *sql.Conn, last int64, ch chan struct{}) {
	defer watcher.Close()
	if conn != nil {
		defer conn.Close()
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var (
		confirming bool // an event waits for its commit to show
		since      time.Time
		pause      time.Duration
	)
	for {
		var pauseOver <-chan time.Time
		if confirming {
			pauseOver = timer.C
		}
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-watcher.Events:
			if !ok {
				return
			}
			if !isCommitEvent(ev, files) {
				continue
			}
		case _, ok := <-watcher.Errors:
			if !ok {
				return
			}
			// Events may have been lost (the kernel's queue overflowed):
			// look as for an event.
		case <-pauseOver:
		}
		if conn == nil {
			signal(ch)
			continue
		}
		if !confirming {
			confirming, since, pause = true, time.Now(), 25*time.Microsecond
		}
		v, err := dataVersion(ctx, conn)
		if ctx.Err() != nil {
			return
		}
		if err != nil || v != last || time.Since(since) > commitWait {
			if err == nil {
				last = v
			}
			signal(ch)
			confirming = false
			continue
		}
		// A tick left from an earlier pause only brings a look forward.
		timer.Reset(pause)
		pause = min(2*pause, time.Millisecond)
	}
}

// pollInterval is how often a subscriber without file notifications checks
// PRAGMA data_version, which changes when another connection commits.
const pollInterval = 20 * time.Millisecond

// pollDataVersion is the portable way to hear of commits by other
// connections: it costs one cheap PRAGMA per interval on its own connection.
func (s *Store) pollDataVersion(ctx context.Context) (<-chan struct{}, error) {
	conn, last, err := s.versionConn(ctx)
	if err != nil {
		return nil, err
	}
	ch := make(chan struct{}, 1)
	go func() {
		defer conn.Close()
		ticker := time.NewTicker(pollInterval)
		defer ticker.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-ticker.C:
			}
			v, err := dataVersion(ctx, conn)
			if err != nil || v == last {
				continue
			}
			last = v
			signal(ch)
		}
	}()
	return ch, nil
}

// versionConn takes a connection of the subscriber's own and reads its
// PRAGMA data_version, which changes whenever another connection commits.
func (s *Store) versionConn(ctx context.Context) (*sql.Conn, int64, error) {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return nil, 0, err
	}
	v, err := dataVersion(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, 0, err
	}
	return conn, v, nil
}

func dataVersion(ctx context.Context, conn *sql.Conn) (int64, error) {
	var v int64
	err := conn.QueryRowContext(ctx, "PRAGMA data_version").Scan(&v)
	return v, err
}

// signal wakes a subscriber without ever blocking; wake-ups coalesce.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
