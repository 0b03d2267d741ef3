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

// The benchmarks of issue 6 for the SQLite store. Run them with
//
//	go test -run '^$' -bench . ./sqlite/

func benchOpen(b *testing.B, path string) *sqlite.Store {
	b.Helper()
	s, err := sqlite.Open(context.Background(), path, sqlite.Options{})
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkCLICall is the database work of one `xplock acquire` and one
// `xplock release`, each with the store opened and closed around it as
// the CLI does: one op is two opens, two transactions and two closes.
// What happens when the last connection closes (a checkpoint, fsyncs,
// deleting and recreating the -wal and -shm files) is part of it.
func BenchmarkCLICall(b *testing.B) {
	ctx := context.Background()
	path := filepath.Join(b.TempDir(), "locks.db")
	benchOpen(b, path).Close()
	defer reportCPU(b, procCPU())
	for b.Loop() {
		s := benchOpen(b, path)
		if g, err := s.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: "bench", TTL: time.Minute, Checked: true}); err != nil || !g.Acquired {
			b.Fatalf("acquire: %v %+v", err, g)
		}
		s.Close()
		s = benchOpen(b, path)
		if _, err := s.Release(ctx, lock.ReleaseRequest{Key: "k", Holder: "bench", Acknowledge: true}); err != nil {
			b.Fatal(err)
		}
		s.Close()
	}
}

// BenchmarkAcquireRelease is one Acquire and one Release on a store that
// stays open: the two write transactions of a library Lock/Release cycle
// without the Lock and Guard machinery around them. With a context that
// can be cancelled (as every CLI command's can, by a signal), as well as
// without one.
func BenchmarkAcquireRelease(b *testing.B) {
	for _, cancellable := range []bool{false, true} {
		b.Run(fmt.Sprintf("cancellable=%v", cancellable), func(b *testing.B) {
			ctx := context.Background()
			if cancellable {
				var cancel context.CancelFunc
				ctx, cancel = context.WithCancel(ctx)
				defer cancel()
			}
			s := benchOpen(b, filepath.Join(b.TempDir(), "locks.db"))
			defer s.Close()
			defer reportCPU(b, procCPU())
			for b.Loop() {
				if g, err := s.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: "bench", TTL: time.Minute, Checked: true}); err != nil || !g.Acquired {
					b.Fatalf("acquire: %v %+v", err, g)
				}
				if _, err := s.Release(ctx, lock.ReleaseRequest{Key: "k", Holder: "bench", Acknowledge: true}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSnapshot reads every lock of a store with n keys, as `xplock
// status` does (target for 10,000 keys: the whole command in 200ms).
func BenchmarkSnapshot(b *testing.B) {
	for _, n := range []int{10, 10_000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			ctx := context.Background()
			s := benchOpen(b, filepath.Join(b.TempDir(), "locks.db"))
			defer s.Close()
			for i := range n {
				key := fmt.Sprintf("key-%06d", i)
				if _, err := s.Acquire(ctx, lock.AcquireRequest{Key: key, Holder: "bench", TTL: time.Minute, Checked: true}); err != nil {
					b.Fatal(err)
				}
			}
			defer reportCPU(b, procCPU())
			for b.Loop() {
				snap, err := s.Snapshot(ctx)
				if err != nil || len(snap.Locks) != n {
					b.Fatalf("snapshot: %v, %d locks", err, len(snap.Locks))
				}
			}
		})
	}
}

// procCPU is the CPU time (user and system, all threads) this process has
// used: on a machine shared with other work it varies much less than the
// wall time that ns/op reports.
func procCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU adds a cpu-ns/op metric for the loop that started at start.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(procCPU()-start)/float64(b.N), "cpu-ns/op")
}
