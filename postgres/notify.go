package postgres

import (
	"context"
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
// store's own, opened by the first subscriber and kept until Close. Every
// decision that records a state change (acquired, released, expired,
// broken) notifies in its own transaction, so subscribers wake once that
// change is committed and visible. Renewals and acknowledgements change no
// state that a waiter or watcher acts on and do not wake subscribers. When
// the connection is lost it is reopened, and every subscriber is woken
// once, since changes may have been missed meanwhile.
func (s *Store) Subscribe(ctx context.Context) (<-chan struct{}, error) {
	ch := make(chan struct{}, 1)
	l := &s.listener
	l.mu.Lock()
	if !l.running {
		// Listening before Subscribe returns: no commit after it is missed.
		conn, err := s.listen(ctx)
		if err != nil {
			l.mu.Unlock()
			return nil, err
		}
		l.running = true
		l.subs = map[chan struct{}]struct{}{}
		go s.relay(conn)
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
		return nil, describeConnError(s.connConfig, err)
	}
	if _, err := conn.Exec(ctx, "LISTEN "+notifyChannel); err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, describeConnError(s.connConfig, err)
	}
	return conn, nil
}

// relay wakes the subscribers on every notification until the store is
// closed, reopening the connection when it is lost.
func (s *Store) relay(conn *pgx.Conn) {
	ctx := s.closed
	for {
		_, err := conn.WaitForNotification(ctx)
		if err == nil {
			s.wakeAll()
			continue
		}
		conn.Close(context.WithoutCancel(ctx))
		for pause := 50 * time.Millisecond; ; pause = min(2*pause, 5*time.Second) {
			select {
			case <-ctx.Done():
				return
			case <-time.After(pause):
			}
			if conn, err = s.listen(ctx); err == nil {
				break
			}
		}
		s.wakeAll()
	}
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
