package sqlite

import (
	"context"
	"database/sql"
	"time"
)

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
