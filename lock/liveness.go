package lock

import "errors"

// Prover tells whether every process that keeps a tenure alive is gone. A
// store asks it about each live tenure it loads and sets ProvedDeadAt when
// it says yes, so that Decide stays pure.
type Prover interface {
	// ProveDead reports true only when it proved every keeper gone; false
	// means "alive, or not provable from here", and the lease alone decides.
	ProveDead(keepers []Keeper) bool
}

// LocalProver proves deaths of processes in the caller's own boot and PID
// namespace (Linux only; elsewhere it proves nothing). A keeper is gone when
// kill(PID, 0) fails with ESRCH, when its PID now belongs to a process that
// started at another time (a reused PID), or when it is a zombie; a keeper
// with a Group is gone only when that process group is empty as well
// (kill(-Group, 0) fails with ESRCH). A keeper from another boot or PID
// namespace, one this process may not look at, or an empty list is never
// proved dead.
type LocalProver struct{}

// ErrNoLiveness is returned by Self where processes cannot be described
// well enough for anyone to prove them gone: not Linux, or a /proc that is
// missing or belongs to another PID namespace.
var ErrNoLiveness = errors.New("process liveness cannot be proved here")
