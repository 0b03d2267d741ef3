package sqlite

import (
	"context"
	"errors"
	"sync"
	"time"
)

// subscriptionLinger is how long the shared subscription outlives its last
// subscriber: a process that locks and releases in a loop subscribes
// (through each Guard) once per cycle, and setting up a file watch, a
// connection and goroutines each time cost more than the cycle's two
// transactions.
const subscriptionLinger = 2 * time.Second

var errStoreClosed = errors.New("sqlite: store closed")

// fanout shares one subscription (subscribe, in notify_*.go) among all of
// a Store's subscribers.
type fanout struct {
	mu     sync.Mutex
	subs   map[chan struct{}]struct{}
	stop   context.CancelFunc // ends the shared subscription; nil when there is none
	linger *time.Timer        // ends it after the last subscriber left
	closed bool
}

// Subscribe implements lock.Store. Every subscriber gets its own channel;
// all of them are fed by one shared subscription, which is set up by the
// first subscriber and ended two seconds after the last one leaves, so that
// a process locking in a loop does not set it up again every cycle.
func (s *Store) Subscribe(ctx context.Context) (<-chan struct{}, error) {
	f := &s.changes
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, errStoreClosed
	}
	if f.linger != nil {
		f.linger.Stop()
		f.linger = nil
	}
	if f.stop == nil {
		// The shared subscription is in place before this call returns, so
		// every change after the call reaches ch.
		sharedCtx, stop := context.WithCancel(context.Background())
		src, err := s.subscribe(sharedCtx)
		if err != nil {
			stop()
			return nil, err
		}
		f.stop = stop
		f.subs = map[chan struct{}]struct{}{}
		go f.forward(sharedCtx, src)
	}
	ch := make(chan struct{}, 1)
	f.subs[ch] = struct{}{}
	context.AfterFunc(ctx, func() { f.leave(ch) })
	return ch, nil
}

// forward passes every change on to all current subscribers.
func (f *fanout) forward(ctx context.Context, src <-chan struct{}) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-src:
		}
		f.mu.Lock()
		for ch := range f.subs {
			signal(ch)
		}
		f.mu.Unlock()
	}
}

func (f *fanout) leave(ch chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.subs, ch)
	if len(f.subs) > 0 || f.stop == nil || f.linger != nil {
		return
	}
	stop := f.stop
	var t *time.Timer
	t = time.AfterFunc(subscriptionLinger, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.linger != t || len(f.subs) > 0 {
			return // a subscriber came back
		}
		stop()
		f.stop, f.linger = nil, nil
	})
	f.linger = t
}

// close ends the shared subscription for good.
func (f *fanout) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	if f.linger != nil {
		f.linger.Stop()
		f.linger = nil
	}
	if f.stop != nil {
		f.stop()
		f.stop = nil
	}
}
