//go:build unix

package sqlite_test

import (
	"context"
	"fmt"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/sqlite"
)

// BenchmarkAcquireHistory shows that the history bound costs acquisition
// nothing noticeable: one op is an acquisition that starts a new tenure
// (an `acquired` event) and its release (a `released` event).
//
//   - empty: the key's history is short and nothing is pruned (the key is
//     changed before it could reach the limit);
//   - full: the key's history is at the limit, so both inserts of every op
//     also delete the oldest event, in the same transaction;
//   - full-10x: the same with a ten times larger limit, full.
//
// Besides ns/op it reports cpu-µs/op, this process's user+system CPU time
// per op, which a busy machine disturbs less than wall time.
//
// Run: go test -run '^$' -bench AcquireHistory -benchtime 2000x ./sqlite/
func BenchmarkAcquireHistory(b *testing.B) {
	for _, c := range []struct {
		name  string
		limit int
		fill  bool
	}{
		{"empty", sqlite.DefaultHistoryLimit, false},
		{"full", sqlite.DefaultHistoryLimit, true},
		{"full-10x", 10 * sqlite.DefaultHistoryLimit, true},
	} {
		b.Run(fmt.Sprintf("%s/limit=%d", c.name, c.limit), func(b *testing.B) {
			ctx := context.Background()
			s, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "locks.db"), sqlite.Options{HistoryLimit: c.limit})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			cycle := func(key string, i int) {
				holder := []string{"app", "helper"}[i%2]
				g, err := s.Acquire(ctx, lock.AcquireRequest{Key: key, Holder: holder, TTL: time.Minute, Checked: true})
				if err != nil || !g.Acquired {
					b.Fatalf("acquire: %v %+v", err, g)
				}
				if _, err := s.Release(ctx, lock.ReleaseRequest{Key: key, Holder: holder, Acknowledge: true}); err != nil {
					b.Fatal(err)
				}
			}
			key := "k"
			if c.fill {
				for i := range c.limit / 2 {
					cycle(key, i)
				}
				if h, err := s.History(ctx, key, 0); err != nil || len(h) != c.limit {
					b.Fatalf("history has %d events (%v), want %d", len(h), err, c.limit)
				}
			}
			// Without filling, move to a fresh key well before the limit.
			perKey := c.limit / 4
			b.ResetTimer()
			cpu0 := cpuTime()
			for i := range b.N {
				if !c.fill && i%perKey == 0 {
					key = fmt.Sprintf("k%d", i)
				}
				cycle(key, i)
			}
			b.StopTimer()
			// CPU time is steadier than wall time on a shared machine.
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
			h, err := s.History(ctx, key, 0)
			if err != nil {
				b.Fatal(err)
			}
			if c.fill && len(h) != c.limit {
				b.Fatalf("history has %d events, want the limit %d", len(h), c.limit)
			}
			if !c.fill && len(h) >= c.limit {
				b.Fatalf("history reached the limit: the empty case pruned")
			}
		})
	}
}

// cpuTime is the user+system CPU time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
