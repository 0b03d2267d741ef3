package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// notifyChannel is the LISTEN/NOTIFY channel a decision notifies, with the
// key as payload, when it records a state change.
const notifyChannel = "xplock"

// Subscribe implements lock.Store with LISTEN on a connection of its own.
// Every decision that records a state change (acquired, released, expired,
// broken) notifies in its own transaction, so a subscriber wakes once that
// change is committed and visible. Renewals and acknowledgements change no
// state that a waiter or watcher acts on and do not wake subscribers. When
// the connection is lost the subscription reconnects, and wakes its reader
// once, since changes may have been missed meanwhile.
func (s *Store) Subscribe(ctx context.Context) (<-chan struct{}, error) {
	conn, err := s.listen(ctx)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.closed, cancel)
	ch := make(chan struct{}, 1)
	go func() {
		defer cancel()
		defer stop()
		s.relay(ctx, conn, ch)
	}()
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

// relay wakes ch on every notification until ctx ends.
func (s *Store) relay(ctx context.Context, conn *pgx.Conn, ch chan struct{}) {
	pause := 50 * time.Millisecond
	for {
		_, err := conn.WaitForNotification(ctx)
		if err == nil {
			signal(ch)
			continue
		}
		conn.Close(context.WithoutCancel(ctx))
		for {
			if ctx.Err() != nil {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(pause):
			}
			pause = min(2*pause, 5*time.Second)
			if conn, err = s.listen(ctx); err == nil {
				break
			}
		}
		pause = 50 * time.Millisecond
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
