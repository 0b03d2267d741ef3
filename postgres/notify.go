package postgres

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// notifyChannel is the LISTEN/NOTIFY channel a decision notifies, with the
// key as payload, when it records a state change.
const notifyChannel = "xplock"

// listener is a store's one LISTEN connection, shared by its subscribers:
// a waiting Lock, a renewing Guard and a watcher in one process cost one
// connection, not one each.
type listener struct {
	mu      sync.Mutex
	running bool
	subs    map[chan struct{}]struct{}
}

// Subscribe implements lock.Store with LISTEN on a connection of the
// store's own, shared by its subscribers and opened in the background (see
// relay), so that subscribing never waits for a connection. Every decision that records a state change (acquired,
// released, expired, broken) notifies in its own transaction, so
// subscribers wake once that change is committed and visible. Renewals and
// acknowledgements change no state that a waiter or watcher acts on and do
// not wake subscribers. Each time the connection starts listening (the
// first time, and after it was lost and reopened) every subscriber is woken
// once, since changes may have been missed before.
func (s *Store) Subscribe(ctx context.Context) (<-chan struct{}, error) {
	if err := s.closed.Err(); err != nil {
		return nil, errors.New("the store is closed")
	}
	ch := make(chan struct{}, 1)
	l := &s.listener
	l.mu.Lock()
	if !l.running {
		l.running = true
		l.subs = map[chan struct{}]struct{}{}
		go s.relay()
	}
	l.subs[ch] = struct{}{}
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
// wakes them on every notification. Once open, the connection is kept until
// the store is closed; when it is lost it is reopened if anyone still
// subscribes. While it cannot connect, waiters fall back on polling.
func (s *Store) relay() {
	ctx := s.closed
	var delay time.Duration
	for {
		if delay > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(delay):
			}
		}
		if !s.wanted() {
			return
		}
		conn, err := s.listen(ctx)
		if err != nil {
			delay = min(max(2*delay, 100*time.Millisecond), 5*time.Second)
			continue
		}
		s.wakeAll()
		for err == nil {
			if _, err = conn.WaitForNotification(ctx); err == nil {
				s.wakeAll()
			}
		}
		conn.Close(context.WithoutCancel(ctx))
		delay = 50 * time.Millisecond
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

func (s *Store) wakeAll() {
	l := &s.listener
	l.mu.Lock()
	defer l.mu.Unlock()
	for ch := range l.subs {
		signal(ch)
	}
}

// signal wakes a subscriber without ever blocking; wake-ups coalesce.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
