//go:build linux

package lock_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/xplock/xplock/lock"
)

// requestLog passes acquisitions on to a store and keeps them.
type requestLog struct {
	lock.Store
	mu   sync.Mutex
	seen []lock.AcquireRequest
}

func (s *requestLog) Acquire(ctx context.Context, req lock.AcquireRequest) (lock.Grant, error) {
	s.mu.Lock()
	s.seen = append(s.seen, req)
	s.mu.Unlock()
	return s.Store.Acquire(ctx, req)
}

// A Lock that waits names this process as its queue entry's keeper, so a
// waiter killed while it waits is skipped at once, even when nothing keeps
// its tenure alive (NoRenew, the library's detached acquisition).
func TestWaitingLockKeepsItsQueueEntry(t *testing.T) {
	self, err := lock.Self()
	if err != nil {
		t.Skip(err)
	}
	ctx := context.Background()
	for _, noRenew := range []bool{false, true} {
		s := openDoStore(t)
		holder, err := lock.New(s, "k", "holder", lock.Options{TTL: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		held := lockOrFail(t, holder)
		log := &requestLog{Store: s}
		l, err := lock.New(log, "k", "waiter", lock.Options{TTL: time.Minute, NoRenew: noRenew})
		if err != nil {
			t.Fatal(err)
		}
		waitCtx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		g, err := l.Lock(waitCtx)
		cancel()
		if g != nil {
			t.Fatalf("NoRenew %v: granted while held", noRenew)
		}
		var tenure []lock.Keeper
		if !noRenew {
			tenure = []lock.Keeper{self}
		}
		log.mu.Lock()
		for _, req := range log.seen {
			if !slices.Equal(req.WaitKeepers, []lock.Keeper{self}) || !slices.Equal(req.Keepers, tenure) {
				t.Errorf("NoRenew %v: a waiting try named keepers %+v for its entry and %+v for its tenure, want %+v and %+v",
					noRenew, req.WaitKeepers, req.Keepers, self, tenure)
			}
		}
		if len(log.seen) == 0 {
			t.Errorf("NoRenew %v: no try reached the store", noRenew)
		}
		log.mu.Unlock()
		held.Release(ctx)
	}
}
