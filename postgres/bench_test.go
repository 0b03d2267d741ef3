package postgres_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/postgres"
	"github.com/xplock/xplock/sqlite"
)

// BenchmarkAcquireRelease measures one uncontended acquisition and release
// (two decisions, each recording an event and pruning history at its
// limit) on the PostgreSQL store over loopback (Unix socket and TCP), and
// the same on the SQLite store for comparison.
//
//	go test -run '^$' -bench AcquireRelease -benchtime 3s ./postgres/
func BenchmarkAcquireRelease(b *testing.B) {
	b.Run("postgres-unix", func(b *testing.B) {
		srv := needServer(b)
		benchAcquireRelease(b, open(b, srv.url(srv.newDB(b), false), postgres.Options{}))
	})
	b.Run("postgres-tcp", func(b *testing.B) {
		srv := needServer(b)
		benchAcquireRelease(b, open(b, srv.url(srv.newDB(b), true), postgres.Options{}))
	})
	b.Run("sqlite", func(b *testing.B) {
		s, err := sqlite.Open(context.Background(), filepath.Join(b.TempDir(), "locks.db"), sqlite.Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { s.Close() })
		benchAcquireRelease(b, s)
	})
}

func benchAcquireRelease(b *testing.B, s lock.Store) {
	ctx := context.Background()
	acquire := lock.AcquireRequest{Key: "bench", Holder: "app", TTL: time.Minute, Checked: true}
	release := lock.ReleaseRequest{Key: "bench", Holder: "app", Acknowledge: true}
	// Warm up: connections, prepared statements, the key's row.
	for range 10 {
		if _, err := s.Acquire(ctx, acquire); err != nil {
			b.Fatal(err)
		}
		if _, err := s.Release(ctx, release); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		g, err := s.Acquire(ctx, acquire)
		if err != nil || !g.Acquired {
			b.Fatal(g, err)
		}
		if _, err := s.Release(ctx, release); err != nil {
			b.Fatal(err)
		}
	}
}
