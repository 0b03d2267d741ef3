package cmd

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/mattn/go-isatty"
	"golang.org/x/sys/unix"

	"github.com/xplock/xplock/lock"
)

// The JSON shapes. Field names mean the same thing in every command;
// durations are seconds as JSON numbers; a time that does not apply is
// left out (omitzero), never "".

// modeExclusive is the only mode this version takes locks in.
const modeExclusive = "exclusive"

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
	Generation int64     `json:"generation"`
	Token      int64     `json:"token"`
	Poisoned   bool      `json:"poisoned"`
	AcquiredAt time.Time `json:"acquired_at,omitzero"`
	ExpiresAt  time.Time `json:"expires_at,omitzero"`
	TTL        seconds   `json:"ttl"`
}

func newLeaseJSON(g lock.Grant) leaseJSON {
	return leaseJSON{
		Key: g.Key, Holder: g.Holder, Mode: modeExclusive, Generation: g.Generation, Token: g.Token,
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
	Holder          string       `json:"holder,omitempty"`
	Holders         []tenureJSON `json:"holders"`
	Generation      int64        `json:"generation"`
	Token           int64        `json:"token"`
	Since           time.Time    `json:"since,omitzero"`
	ExpiresAt       time.Time    `json:"expires_at,omitzero"`
	PoisonedHolders []string     `json:"poisoned_holders"`
	History         []eventJSON  `json:"history,omitempty"`
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
		Token: s.Token, Since: s.Since.UTC(), ExpiresAt: s.ExpiresAt.UTC(), PoisonedHolders: s.PoisonedHolders}
	if s.State == lock.StateHeld || s.State == lock.StateExpired {
		j.Mode = modeExclusive
	}
	if s.State == lock.StateHeld {
		// An exclusive lock's one tenure holds the key's highest token.
		j.Holders = append(j.Holders, tenureJSON{Holder: s.Holder, Mode: modeExclusive, Token: s.Token,
			Since: j.Since, ExpiresAt: j.ExpiresAt})
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
	Holder     string        `json:"holder"`
	Generation int64         `json:"generation"`
	Token      int64         `json:"token"`
	Time       time.Time     `json:"time,omitzero"`
	By         *lock.Breaker `json:"by,omitempty"`
	Detail     string        `json:"detail,omitempty"`
}

func newEventJSON(e lock.Event) eventJSON {
	return eventJSON{Event: e.Type, Key: e.Key, Holder: e.Holder, Generation: e.Generation,
		Token: e.Token, Time: e.Time.UTC(), By: e.By, Detail: e.Detail}
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
	return fmt.Sprintf("held by %q (generation %d) for %s, lease ends in %s",
		s.Holder, s.Generation, roughly(now.Sub(s.Since)), roughly(s.ExpiresAt.Sub(now)))
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
