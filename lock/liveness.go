package lock

import (
	"errors"
	"time"
)

// Prover tells whether every process that keeps a tenure alive is gone. A
// store asks it about each live tenure it loads and sets ProvedDeadAt when
// it says yes, so that Decide stays pure.
type Prover interface {
	// ProveDead reports true only when it proved every keeper gone; false
	// means "alive, or not provable from here", and the lease alone decides.
	ProveDead(keepers []Keeper) bool
}

// LocalProver proves deaths of processes in the caller's own boot, PID
// namespace and time namespace (Linux only; elsewhere it proves nothing). A
// keeper is gone when kill(PID, 0) fails with ESRCH, when its PID now
// belongs to a process that started at another time (a reused PID), or
// when it is a zombie with no thread left (a process whose main thread
// exited while others run shows as a zombie too, and is alive); a keeper
// with a Group is gone only when that process group has no member left
// but zombies as well (kill(-Group, 0) fails with ESRCH, or /proc lists
// only zombies in it). A keeper from another boot, PID namespace or time
// namespace (where start times read differently), one this process may
// not look at, or an empty list is never proved dead.
type LocalProver struct{}

// ErrNoLiveness is returned by Self where processes cannot be described
// well enough for anyone to prove them gone: not Linux, or a /proc that is
// missing or belongs to another PID namespace.
var ErrNoLiveness = errors.New("process liveness cannot be proved here")

// ProveDeaths asks p about every tenure and queue entry of k that is still
// live at now and names its keepers, and stamps now as ProvedDeadAt on
// those it proves dead. A store calls it on what it loads, inside the
// transaction that decides (and before a looker's View), so that Decide
// and View judge the proof without doing I/O.
func ProveDeaths(p Prover, k *KeyState, now time.Time) {
	for i := range k.Tenures {
		t := &k.Tenures[i]
		if len(t.Keepers) > 0 && t.ProvedDeadAt.IsZero() && t.ExpiresAt.After(now) && p.ProveDead(t.Keepers) {
			t.ProvedDeadAt = now
		}
	}
	for i := range k.Queue {
		q := &k.Queue[i]
		if len(q.Keepers) > 0 && q.ProvedDeadAt.IsZero() && q.LeaseEnd.After(now) && p.ProveDead(q.Keepers) {
			q.ProvedDeadAt = now
		}
	}
}
