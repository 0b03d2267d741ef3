package cmd

import (
	"context"
	"errors"
	"time"

	"github.com/xplock/xplock/lock"
)

// absentStore is a store that does not exist: nothing is held in it, and
// release and renew say so (exit 5) rather than create it.
type absentStore struct{}

var _ lock.Store = absentStore{}

var errAbsentStore = errors.New("there is no lock store here")

func notHeld(key, holder string) error {
	return &lock.NotHeldError{Key: key, Holder: holder, Reason: lock.ReasonFree,
		Current: lock.State{Key: key, State: lock.StateFree}}
}

func (absentStore) Acquire(context.Context, lock.AcquireRequest) (lock.Grant, error) {
	return lock.Grant{}, errAbsentStore
}

func (absentStore) Renew(_ context.Context, req lock.RenewRequest) (lock.Grant, error) {
	return lock.Grant{}, notHeld(req.Key, req.Holder)
}

func (absentStore) Release(_ context.Context, req lock.ReleaseRequest) (lock.State, error) {
	return lock.State{Key: req.Key, State: lock.StateFree}, notHeld(req.Key, req.Holder)
}

func (absentStore) Break(_ context.Context, key string, by lock.Breaker) (lock.State, error) {
	return lock.State{Key: key, State: lock.StateFree}, notHeld(key, by.Holder)
}

func (absentStore) Acknowledge(_ context.Context, key, holder string, _ int64) error {
	return notHeld(key, holder)
}

func (absentStore) Snapshot(context.Context, ...string) (lock.Snapshot, error) {
	return lock.Snapshot{Now: time.Now()}, nil
}

func (absentStore) History(context.Context, string, int) ([]lock.Event, error) { return nil, nil }

func (absentStore) EventsAfter(context.Context, int64, []string, int) ([]lock.Event, error) {
	return nil, nil
}

// Subscribe gives a channel that never fires: nothing changes in a store
// that does not exist.
func (absentStore) Subscribe(context.Context) (<-chan struct{}, error) {
	return make(chan struct{}), nil
}

func (absentStore) Close() error { return nil }
