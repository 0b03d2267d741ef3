package sqlite_test

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/sqlite"
)

// watchedStore counts the calls by which a waiter could watch the store.
type watchedStore struct {
	*sqlite.Store
	subscribes, snapshots, acquires atomic.Int32
}

func (s *watchedStore) Subscribe(ctx context.Context) (<-chan struct{}, error) {
	s.subscribes.Add(1)
	return s.Store.Subscribe(ctx)
}

func (s *watchedStore) Snapshot(ctx context.Context, keys ...string) (lock.Snapshot, error) {
	s.snapshots.Add(1)
	return s.Store.Snapshot(ctx, keys...)
}

func (s *watchedStore) Acquire(ctx context.Context, req lock.AcquireRequest) (lock.Grant, error) {
	s.acquires.Add(1)
	return s.Store.Acquire(ctx, req)
}

func skipUnlessLinux(t *testing.T) {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("holders' sockets are Linux-only")
	}
}

// waitFor polls cond until it holds, for conditions that have no event to
// wait on (a file appearing).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func endpoint(t *testing.T, s *sqlite.Store, key string) lock.Endpoint {
	t.Helper()
	e, err := s.RendezvousEndpoint(key)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// waiting is a waiter's Acquire running in the background.
type waiting struct {
	started chan struct{} // closed when it first waits
	done    chan struct{} // closed when Acquire returned
	guard   *lock.Guard
	err     error
	at      time.Time // when Acquire returned
}

func startWaiting(ctx context.Context, l *lock.Lock) *waiting {
	w := &waiting{started: make(chan struct{}), done: make(chan struct{})}
	var once sync.Once
	go func() {
		defer close(w.done)
		w.guard, w.err = l.Acquire(ctx, lock.AcquireOptions{OnWait: func(lock.State, time.Time) {
			once.Do(func() { close(w.started) })
		}})
		w.at = time.Now()
	}()
	return w
}

// handOff releases g and returns how long w took to get the lock after it.
func handOff(t *testing.T, g *lock.Guard, w *waiting, within time.Duration) time.Duration {
	t.Helper()
	released := time.Now()
	if err := g.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w.done:
	case <-time.After(within + 10*time.Second):
		t.Fatalf("the waiter did not get the lock within %v of the release", within+10*time.Second)
	}
	if w.err != nil {
		t.Fatalf("the waiter: %v", w.err)
	}
	t.Cleanup(func() { w.guard.Release(context.Background()) })
	took := w.at.Sub(released)
	if took > within {
		t.Errorf("the waiter got the lock %v after the release, want within %v", took, within)
	}
	return took
}

// lockListening takes key for holder with a renewing Guard and waits until
// its socket answers.
func lockListening(t *testing.T, s *sqlite.Store, key, holder string) *lock.Guard {
	t.Helper()
	l, err := lock.New(s, key, holder, lock.Options{TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	g, err := l.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	e := endpoint(t, s, key)
	waitFor(t, "the holder's socket", func() bool { return answers(filepath.Join(e.Dir, e.Name)) })
	return g
}

// answers reports whether a process listens on the socket at path (which
// it greets and forgets).
func answers(path string) bool {
	c, err := net.Dial("unix", path)
	if err == nil {
		c.Close()
	}
	return err == nil
}

// TestWaiterSleepsOnLiveHolder: while a live holder (a renewing Guard) has
// the lock, a waiter on another store handle sleeps on the holder's socket
// without subscribing to the store, however many changes other keys make;
// it only looks at the key now and then (a read), and takes the lock once
// the holder releases it, trying exactly twice.
func TestWaiterSleepsOnLiveHolder(t *testing.T) {
	skipUnlessLinux(t)
	path := filepath.Join(t.TempDir(), "locks.db")
	ctx := context.Background()
	held := lockListening(t, open(t, path, sqlite.Options{}), "k", "alice")

	waiterStore := &watchedStore{Store: open(t, path, sqlite.Options{})}
	// NoRenew: bob's guard, once it has the lock, watches nothing itself.
	waiterLock, _ := lock.New(waiterStore, "k", "bob", lock.Options{TTL: time.Minute, NoRenew: true})
	start := time.Now()
	w := startWaiting(ctx, waiterLock)
	<-w.started

	// Changes to other keys would wake a waiter that watches the store.
	other := open(t, path, sqlite.Options{})
	for i := range 20 {
		if _, err := other.Acquire(ctx, lock.AcquireRequest{Key: "other", Holder: "carol", TTL: time.Minute, Checked: true}); err != nil {
			t.Fatal(err)
		}
		if _, err := other.Release(ctx, lock.ReleaseRequest{Key: "other", Holder: "carol", Acknowledge: i%2 == 0}); err != nil {
			t.Fatal(err)
		}
	}
	handOff(t, held, w, time.Second)
	if w.guard.Generation() != 2 {
		t.Errorf("bob got generation %d, want 2", w.guard.Generation())
	}
	if n := waiterStore.subscribes.Load(); n != 0 {
		t.Errorf("the waiter subscribed to the store %d times", n)
	}
	// One look after the release, and one every 400ms before it.
	if n, most := waiterStore.snapshots.Load(), int32(2+time.Since(start)/(400*time.Millisecond)); n > most {
		t.Errorf("the waiter read the store %d times, want at most %d", n, most)
	}
	if n := waiterStore.acquires.Load(); n != 2 {
		t.Errorf("the waiter tried %d times, want 2 (before and after the release)", n)
	}
}

// TestReentrantReleaseEndsOwnersGuard: a re-entrant acquisition in another
// process (here another store handle) cannot listen on the key's socket, so
// when it releases the tenure it tells the guard that does: that guard ends
// at once, not at its next renewal 5s away. (With a TTL of 15s it does
// not also watch the store.)
func TestReentrantReleaseEndsOwnersGuard(t *testing.T) {
	skipUnlessLinux(t)
	path := filepath.Join(t.TempDir(), "locks.db")
	ctx := context.Background()
	outer, _ := lock.New(open(t, path, sqlite.Options{}), "k", "alice", lock.Options{TTL: 15 * time.Second})
	g, err := outer.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	inner, _ := lock.New(open(t, path, sqlite.Options{}), "k", "alice", lock.Options{TTL: 15 * time.Second})
	g2, err := inner.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if g2.Token() != g.Token() {
		t.Fatalf("the inner acquisition got token %d, want the outer tenure's %d", g2.Token(), g.Token())
	}
	if err := g2.Release(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-g.Done():
	case <-time.After(3 * time.Second):
		t.Fatal("the outer guard did not notice within 3s that its tenure ended")
	}
}

// squat listens at path (or an abstract name, "@..."), greets every
// connection as the tenure with token, and then hangs up or, with hold,
// keeps it open until stop is called.
func squat(path string, token int64, hold bool) (stop func(), err error) {
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		hello := binary.BigEndian.AppendUint64(nil, uint64(token))
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write(hello)
			if !hold {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	return func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}, nil
}

// squatterOutcome waits on a key that a squatter's socket stands in for
// the holder's for a second, then releases the lock, and checks that the
// waiter neither spun nor stalled: it tried once while the lock was held
// (and once more to keep its place in the queue),
// read the store no more than its looks and backoff allow, and got the
// lock within within of the release.
func squatterOutcome(t *testing.T, path string, held *lock.Guard, within time.Duration) {
	t.Helper()
	waiterStore := &watchedStore{Store: open(t, path, sqlite.Options{})}
	waiterLock, _ := lock.New(waiterStore, "k", "bob", lock.Options{TTL: time.Minute, NoRenew: true})
	w := startWaiting(context.Background(), waiterLock)
	<-w.started
	// Time is the subject here: how much a waiter does in a second.
	time.Sleep(time.Second)
	tries, looks := waiterStore.acquires.Load(), waiterStore.snapshots.Load()
	took := handOff(t, held, w, within)
	t.Logf("in 1s of waiting: %d tries, %d looks; got the lock %v after the release", tries, looks, took)
	// Once, and again each DefaultWaitLease/3 to keep its place in the queue.
	if most := 1 + int32(time.Second/(lock.DefaultWaitLease/3)); tries > most {
		t.Errorf("the waiter tried %d times in 1s while the lock was held, want at most %d", tries, most)
	}
	// Looks every 400ms, after each wake-up by the squatter with a backoff
	// that doubles from 2ms to 500ms, and 5 more 1ms apart after the first
	// wake-up (which might be a holder's death): 17-19 measured.
	if looks > 25 {
		t.Errorf("the waiter read the store %d times in 1s", looks)
	}
}

// TestSameUserSquatter: a process of the store owner's own user that
// listens where the holder would (it was first; and where earlier versions
// had holders listen) and greets as the holder
// can neither make a waiter spin nor stall it past its look at the store,
// whether it hangs up at once or keeps the connection open.
func TestSameUserSquatter(t *testing.T) {
	skipUnlessLinux(t)
	for _, hold := range []bool{false, true} {
		name := map[bool]string{false: "hangs up", true: "keeps connections"}[hold]
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "locks.db")
			holderStore := open(t, path, sqlite.Options{})
			e := endpoint(t, holderStore, "k")
			if err := os.Mkdir(e.Dir, 0o700); err != nil {
				t.Fatal(err)
			}
			for _, addr := range []string{filepath.Join(e.Dir, e.Name), abstractName(t, path, "k")} {
				stop, err := squat(addr, 1, hold)
				if err != nil {
					t.Fatal(err)
				}
				defer stop()
			}
			holder, _ := lock.New(holderStore, "k", "alice", lock.Options{TTL: time.Minute})
			held, err := holder.Lock(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if held.Token() != 1 {
				t.Fatalf("token %d, want 1", held.Token())
			}
			squatterOutcome(t, path, held, 1500*time.Millisecond)
		})
	}
}

// TestEndpointDirFollowsStoreMode: the directory of holders' sockets is
// opened no wider than the database: a 0600 database gets a 0700 directory
// and 0600 sockets, a 0660 one a 0770 directory (setgid, so that sockets
// keep the database's group) and 0660 sockets. The socket goes away with
// the release.
func TestEndpointDirFollowsStoreMode(t *testing.T) {
	skipUnlessLinux(t)
	for _, tc := range []struct {
		db, dir, socket os.FileMode
	}{
		{0o600, 0o700 | os.ModeDir, 0o600 | os.ModeSocket},
		{0o660, 0o770 | os.ModeDir | os.ModeSetgid, 0o660 | os.ModeSocket},
	} {
		t.Run(tc.db.String(), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "locks.db")
			s := open(t, path, sqlite.Options{})
			if err := os.Chmod(path, tc.db); err != nil {
				t.Fatal(err)
			}
			g := lockListening(t, s, "k", "alice")
			e := endpoint(t, s, "k")
			socket := filepath.Join(e.Dir, e.Name)
			for p, want := range map[string]os.FileMode{e.Dir: tc.dir, socket: tc.socket} {
				if fi, err := os.Lstat(p); err != nil {
					t.Error(err)
				} else if fi.Mode() != want {
					t.Errorf("%s: mode %v, want %v", p, fi.Mode(), want)
				}
			}
			if err := g.Release(context.Background()); err != nil {
				t.Fatal(err)
			}
			if exists(socket) {
				t.Errorf("%s is still there after the release", socket)
			}
		})
	}
}

// TestUntrustedEndpointDirNotUsed: a directory where the sockets go that
// is opened wider than the database, or (as root) owned by another user,
// is not used: the holder does not listen there (it watches the store
// instead), and a waiter hears of the release all the same.
func TestUntrustedEndpointDirNotUsed(t *testing.T) {
	skipUnlessLinux(t)
	cases := map[string]func(dir string) error{
		"wider": func(dir string) error { return os.Chmod(dir, 0o755) },
		"other owner": func(dir string) error {
			if os.Geteuid() != 0 {
				return errSkip
			}
			return os.Chown(dir, 4242, 4242)
		},
	}
	for name, spoil := range cases {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "locks.db")
			holderStore := &watchedStore{Store: open(t, path, sqlite.Options{})}
			e := endpoint(t, holderStore.Store, "k")
			if err := os.Mkdir(e.Dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := spoil(e.Dir); errors.Is(err, errSkip) {
				t.Skip("changing a directory's owner needs root")
			} else if err != nil {
				t.Fatal(err)
			}
			holder, _ := lock.New(holderStore, "k", "alice", lock.Options{TTL: time.Minute})
			held, err := holder.Lock(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			// A holder that cannot listen watches the store for breaks.
			waitFor(t, "the holder watching the store", func() bool { return holderStore.subscribes.Load() > 0 })
			if entries, _ := os.ReadDir(e.Dir); len(entries) != 0 {
				t.Errorf("the holder made %d files in an untrusted directory", len(entries))
			}
			waiterStore := &watchedStore{Store: open(t, path, sqlite.Options{})}
			waiterLock, _ := lock.New(waiterStore, "k", "bob", lock.Options{TTL: time.Minute, NoRenew: true})
			w := startWaiting(context.Background(), waiterLock)
			<-w.started
			// The waiter finds no socket it trusts and watches the store.
			waitFor(t, "the waiter watching the store", func() bool { return waiterStore.subscribes.Load() > 0 })
			handOff(t, held, w, 300*time.Millisecond)
		})
	}
}

var errSkip = errors.New("skip")

// TestStaleSocketReplaced: a socket file left by a holder that was killed
// (nobody listens on it) does not stop the next holder from listening.
func TestStaleSocketReplaced(t *testing.T) {
	skipUnlessLinux(t)
	path := filepath.Join(t.TempDir(), "locks.db")
	s := open(t, path, sqlite.Options{})
	e := endpoint(t, s, "k")
	if err := os.Mkdir(e.Dir, 0o700); err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(e.Dir, e.Name)
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: socket}); err != nil {
		t.Fatal(err)
	}
	syscall.Close(fd) // the file stays, and nobody listens on it
	held := lockListening(t, s, "k", "alice")
	waitFor(t, "a socket that answers in place of the stale one", func() bool { return answers(socket) })
	waiterStore := &watchedStore{Store: open(t, path, sqlite.Options{})}
	waiterLock, _ := lock.New(waiterStore, "k", "bob", lock.Options{TTL: time.Minute, NoRenew: true})
	w := startWaiting(context.Background(), waiterLock)
	<-w.started
	handOff(t, held, w, 300*time.Millisecond)
	if n := waiterStore.subscribes.Load(); n != 0 {
		t.Errorf("the waiter subscribed to the store %d times: it did not sleep on the new socket", n)
	}
}
