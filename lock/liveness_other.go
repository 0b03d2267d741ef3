//go:build !linux

package lock

import "fmt"

// Self fails here: without Linux's /proc, boot id and PID namespaces nobody
// could prove a process gone, so tenures are ended by their lease alone.
func Self() (Keeper, error) {
	return Keeper{}, fmt.Errorf("%w: not supported on this system", ErrNoLiveness)
}

// ProveDead proves nothing here: the lease alone decides.
func (LocalProver) ProveDead([]Keeper) bool { return false }

// watchKeepers watches nothing here: the waiter's looks notice deaths.
func watchKeepers([]HolderState) (exited <-chan struct{}, stop func()) { return nil, func() {} }
