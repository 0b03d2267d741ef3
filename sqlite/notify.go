package sqlite

import (
	"context"
	"time"
)

// pollInterval is how often a subscriber without file notifications checks
// PRAGMA data_version, which changes when another connection commits.
const pollInterval = 20 * time.Millisecond

// pollDataVersion is the portable way to hear of commits by other
// connections: it costs one cheap PRAGMA per interval on its own connection.
func (s *Store) pollDataVersion(ctx context.Context) (<-chan struct{}, error) {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	var last int64
	if err := conn.QueryRowContext(ctx, "PRAGMA data_version").Scan(&last); err != nil {
		conn.Close()
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
			var v int64
			if err := conn.QueryRowContext(ctx, "PRAGMA data_version").Scan(&v); err != nil || v == last {
				continue
			}
			last = v
			signal(ch)
		}
	}()
	return ch, nil
}

// signal wakes a subscriber without ever blocking; wake-ups coalesce.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
