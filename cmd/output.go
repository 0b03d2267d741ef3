package cmd

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/mattn/go-isatty"
	"golang.org/x/sys/unix"

	"github.com/xplock/xplock/lock"
)

// The JSON shapes. Field names mean the same thing in every command;
// durations are seconds as JSON numbers; a time that does not apply is
// left out (omitzero), never "".

// modeName is a mode as JSON and tables show it; a tenure or event stored
// without one (by versions before shared locks) is exclusive.
func modeName(m lock.Mode) string {
	if m == "" {
		return string(lock.ModeExclusive)
	}
	return string(m)
}

// seconds is a duration that JSON shows as a number of seconds.
type seconds time.Duration

func (s seconds) MarshalJSON() ([]byte, error) {
	return strconv.AppendFloat(nil, time.Duration(s).Seconds(), 'f', -1, 64), nil
}

// leaseJSON is a tenure as acquire and renew print it with --json.
type leaseJSON struct {
	Key        string    `json:"key"`
	Holder     string    `json:"holder"`
	Mode       string    `json:"mode"`
	Slots      int       `json:"slots,omitempty"`
	Generation int64     `json:"generation"`
	Token      int64     `json:"token"`
	Poisoned   bool      `json:"poisoned"`
	AcquiredAt time.Time `json:"acquired_at,omitzero"`
	ExpiresAt  time.Time `json:"expires_at,omitzero"`
	TTL        seconds   `json:"ttl"`
}

func newLeaseJSON(g lock.Grant) leaseJSON {
	return leaseJSON{
		Key: g.Key, Holder: g.Holder, Mode: modeName(g.Mode), Slots: g.Slots, Generation: g.Generation, Token: g.Token,
		Poisoned: g.Poisoned, AcquiredAt: g.AcquiredAt.UTC(), ExpiresAt: g.ExpiresAt.UTC(), TTL: seconds(g.TTL),
	}
}

// acquiredJSON is a granted acquisition: the lease, and how it was got.
type acquiredJSON struct {
	Acquired bool `json:"acquired"`
	leaseJSON
	Reentrant bool    `json:"reentrant"`
	Waited    seconds `json:"waited"`
}

func (o *acquireOptions) acquiredJSON(g lock.Grant) acquiredJSON {
	return acquiredJSON{Acquired: true, leaseJSON: newLeaseJSON(g), Reentrant: g.Reentrant, Waited: seconds(o.waited)}
}

// lockJSON is one key as status shows it; refusals use the same shape.
type lockJSON struct {
	Key             string       `json:"key"`
	State           string       `json:"state,omitempty"` // unknown only when the store never answered
	Mode            string       `json:"mode,omitempty"`
	Slots           int          `json:"slots,omitempty"`
	Holder          string       `json:"holder,omitempty"`
	Holders         []tenureJSON `json:"holders"`
	Generation      int64        `json:"generation"`
	Token           int64        `json:"token"`
	Since           time.Time    `json:"since,omitzero"`
	ExpiresAt       time.Time    `json:"expires_at,omitzero"`
	PoisonedHolders []string     `json:"poisoned_holders"`
	Waiters         []waiterJSON `json:"waiters"`
	History         []eventJSON  `json:"history,omitempty"`
}

// waiterJSON is one request in a key's queue.
type waiterJSON struct {
	Holder string    `json:"holder"`
	Mode   string    `json:"mode"`
	Since  time.Time `json:"since,omitzero"`
}

func newWaitersJSON(waiters []lock.WaiterState) []waiterJSON {
	j := make([]waiterJSON, 0, len(waiters))
	for _, w := range waiters {
		j = append(j, waiterJSON{Holder: w.Holder, Mode: string(w.Mode), Since: w.Since.UTC()})
	}
	return j
}

// tenureJSON is one live tenure of a key.
type tenureJSON struct {
	Holder    string    `json:"holder"`
	Mode      string    `json:"mode"`
	Token     int64     `json:"token"`
	Since     time.Time `json:"since,omitzero"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}

func newLockJSON(s lock.State) lockJSON {
	j := lockJSON{Key: s.Key, State: s.State, Holder: s.Holder, Holders: []tenureJSON{}, Generation: s.Generation,
		Token: s.Token, Since: s.Since.UTC(), ExpiresAt: s.ExpiresAt.UTC(), PoisonedHolders: s.PoisonedHolders,
		Waiters: newWaitersJSON(s.Waiters)}
	if s.State == lock.StateHeld || s.State == lock.StateExpired {
		j.Mode, j.Slots = modeName(s.Mode), s.Slots
	}
	for _, h := range s.Holders {
		j.Holders = append(j.Holders, tenureJSON{Holder: h.Holder, Mode: modeName(h.Mode), Token: h.Token,
			Since: h.Since.UTC(), ExpiresAt: h.ExpiresAt.UTC()})
	}
	if j.PoisonedHolders == nil {
		j.PoisonedHolders = []string{}
	}
	return j
}

// refusalJSON says why a lock was not acquired (exit 4), released or
// renewed (exit 5): the key as status shows it, and the reason.
type refusalJSON struct {
	Acquired bool `json:"acquired"`
	lockJSON
	Reason string `json:"reason,omitempty"`
}

func newRefusalJSON(s lock.State, reason string) refusalJSON {
	return refusalJSON{lockJSON: newLockJSON(s), Reason: reason}
}

// eventJSON is one history or watch line with --json.
type eventJSON struct {
	Event      string        `json:"event"`
	Key        string        `json:"key"`
	Holder     string        `json:"holder,omitempty"` // left out on a key that never had an exclusive holder
	Mode       lock.Mode     `json:"mode,omitempty"`   // left out where the store did not record it
	Generation int64         `json:"generation"`
	Token      int64         `json:"token"`
	Time       time.Time     `json:"time,omitzero"`
	By         *lock.Breaker `json:"by,omitempty"`
	// Waited is on acquired events only.
	Waited *seconds `json:"waited,omitempty"`
	Detail string   `json:"detail,omitempty"`
}

func newEventJSON(e lock.Event) eventJSON {
	j := eventJSON{Event: e.Type, Key: e.Key, Holder: e.Holder, Mode: e.Mode, Generation: e.Generation,
		Token: e.Token, Time: e.Time.UTC(), By: e.By, Detail: e.Detail}
	if e.Type == lock.EventAcquired {
		waited := seconds(e.Waited)
		j.Waited = &waited
	}
	return j
}

// writeJSON writes v as one line of JSON: the encoder writes its buffer,
// newline included, in one Write, with no copy of a large document.
func writeJSON(w io.Writer, v any) error {
	return json.NewEncoder(w).Encode(v)
}

// clock formats a time for people: local time to the second, in RFC 3339
// so that it carries its zone (Z for UTC, else the offset), as the lock
// package's messages do.
func clock(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format(time.RFC3339)
}

// roughly rounds a duration for people.
func roughly(d time.Duration) string {
	switch {
	case d >= time.Hour:
		return d.Round(time.Minute).String()
	case d >= time.Minute:
		return d.Round(time.Second).String()
	case d >= time.Second:
		return d.Round(100 * time.Millisecond).String()
	default:
		return d.Round(time.Millisecond).String()
	}
}

// describeHolder says who holds a lock, for messages about waiting.
func describeHolder(s lock.State, now time.Time) string {
	return fmt.Sprintf("%s (generation %d) for %s, lease ends in %s",
		heldBy(s), s.Generation, roughly(now.Sub(s.Since)), roughly(s.ExpiresAt.Sub(now)))
}

// namedReaders is how many shared holders messages and tables name before
// they only count the rest.
const namedReaders = 3

// heldBy says who holds a key: `held by "w"`, or for readers
// `held by 2 readers ("r1", "r2")`, naming the first few, and how many
// slots they take of the limit.
func heldBy(s lock.State) string {
	if s.Mode != lock.ModeShared || len(s.Holders) == 0 {
		return fmt.Sprintf("held by %q", s.Holder)
	}
	readers := "readers"
	if len(s.Holders) == 1 {
		readers = "reader"
	}
	msg := fmt.Sprintf("held by %d %s (%s)", len(s.Holders), readers, firstHolders(s.Holders, strconv.Quote, ", "))
	if s.Slots > 0 {
		msg += fmt.Sprintf(", %d of %d slots taken", len(s.Holders), s.Slots)
	}
	return msg
}

// firstHolders names the first namedReaders holders, each as name gives it,
// and "…" for the rest.
func firstHolders(hs []lock.HolderState, name func(string) string, sep string) string {
	names := make([]string, 0, namedReaders+1)
	for _, h := range hs[:min(len(hs), namedReaders)] {
		names = append(names, name(h.Holder))
	}
	if len(hs) > namedReaders {
		names = append(names, "…")
	}
	return strings.Join(names, sep)
}

// terminalWidth is the width in columns of the terminal w writes to, or 0
// when it is not known.
func terminalWidth(w io.Writer) int {
	f, ok := w.(*os.File)
	if !ok {
		return 0
	}
	ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
	if err != nil {
		return 0
	}
	return int(ws.Col)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && (isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd()))
}
