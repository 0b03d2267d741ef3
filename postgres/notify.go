package postgres

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// notifyChannel is the LISTEN/NOTIFY channel a decision notifies, with the
// key as payload, when it records a state change.
const notifyChannel = "xplock"

// Health of the listening connection: after listenIdle without a
// notification it is pinged, and a ping unanswered within listenPing means
// the connection is dead (a partition that no error reports) and is
// replaced.
const (
	listenIdle = 10 * time.Second
	listenPing = 5 * time.Second
)

// Reconnection pauses of the listening connection.
const (
	minRelayPause = 50 * time.Millisecond
	maxRelayPause = time.Second
)

// listener is a store's one LISTEN connection, shared by its subscribers:
// a waiting Lock, a renewing Guard and a watcher in one process cost one
// connection, not one each.
type listener struct {
	mu      sync.Mutex
	running bool
	// subs maps each subscriber to the keys it follows; nil follows all.
	subs map[chan struct{}][]string
}

// Subscribe implements lock.Store: the channel receives a value after every
// change of any key. See SubscribeKeys.
func (s *Store) Subscribe(ctx context.Context) (<-chan struct{}, error) {
	return s.SubscribeKeys(ctx)
}

// SubscribeKeys is Subscribe for changes of the named keys only (all keys
// when none is named): a waiter on one key sleeps through the churn of
// others. It LISTENs on a connection of the store's own, shared by its
// subscribers and opened in the background, so that subscribing never
// waits for a connection. Every decision that records a
// state change (acquired, released, expired, broken) notifies in its own
// transaction with the key as payload, so subscribers wake once that
// change is committed and visible. Renewals and acknowledgements change no
// state that a waiter or watcher acts on and do not wake subscribers. Each
// time the connection starts listening (the first time, and after it was
// lost and reopened) every subscriber is woken once, since changes may have
// been missed meanwhile.
func (s *Store) SubscribeKeys(ctx context.Context, keys ...string) (<-chan struct{}, error) {
	if err := s.closed.Err(); err != nil {
		return nil, errors.New("the store is closed")
	}
	ch := make(chan struct{}, 1)
	l := &s.listener
	l.mu.Lock()
	if !l.running {
		l.running = true
		l.subs = map[chan struct{}][]string{}
		go s.relay()
	}
	if len(keys) == 0 {
		keys = nil
	}
	l.subs[ch] = slices.Clone(keys)
	l.mu.Unlock()
	context.AfterFunc(ctx, func() {
		l.mu.Lock()
		delete(l.subs, ch)
		l.mu.Unlock()
	})
	return ch, nil
}

// listen opens a connection that listens on notifyChannel.
func (s *Store) listen(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, s.connConfig.Copy())
	if err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, "LISTEN "+notifyChannel); err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, err
	}
	return conn, nil
}

// relay opens a listening connection while the store has subscribers, and
// wakes those that follow the key of each notification. Once open, the
// connection is kept until the store is closed; when it is lost (or stops
// answering pings) it is reopened if anyone still subscribes. While it
// cannot connect, waiters fall back on polling.
func (s *Store) relay() {
	ctx := s.closed
	var pause time.Duration
	for {
		if pause > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(pause):
			}
		}
		if !s.wanted() {
			return
		}
		conn, err := s.listen(ctx)
		if err != nil {
			pause = min(max(2*pause, minRelayPause), maxRelayPause)
			continue
		}
		s.wake("")
		s.follow(ctx, conn)
		closeCtx, cancel := context.WithTimeout(context.Background(), closeWait)
		conn.Close(closeCtx)
		cancel()
		pause = minRelayPause
	}
}

// follow relays conn's notifications until the connection fails, stops
// answering or ctx ends.
func (s *Store) follow(ctx context.Context, conn *pgx.Conn) {
	for ctx.Err() == nil {
		waitCtx, cancel := context.WithTimeout(ctx, listenIdle)
		n, err := conn.WaitForNotification(waitCtx)
		cancel()
		switch {
		case err == nil:
			s.wake(n.Payload)
		case ctx.Err() != nil || conn.IsClosed():
			return
		case errors.Is(err, context.DeadlineExceeded):
			pingCtx, cancel := context.WithTimeout(ctx, listenPing)
			err := conn.Ping(pingCtx)
			cancel()
			if err != nil {
				return
			}
		default:
			return
		}
	}
}

// wanted reports whether anyone subscribes; when nobody does, the relay
// stops and the next Subscribe starts another.
func (s *Store) wanted() bool {
	l := &s.listener
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.subs) == 0 {
		l.running = false
		return false
	}
	return true
}

// wake wakes the subscribers that follow key, every subscriber when key is
// empty.
func (s *Store) wake(key string) {
	l := &s.listener
	l.mu.Lock()
	defer l.mu.Unlock()
	for ch, keys := range l.subs {
		if key == "" || keys == nil || slices.Contains(keys, key) {
			signal(ch)
		}
	}
}

// signal wakes a subscriber without ever blocking; wake-ups coalesce.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
