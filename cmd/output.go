package cmd

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/mattn/go-isatty"

	"github.com/xplock/xplock/lock"
)

// leaseJSON is what acquire and renew print with --json.
type leaseJSON struct {
	Key        string `json:"key"`
	Holder     string `json:"holder"`
	Generation int64  `json:"generation"`
	Token      int64  `json:"token"`
	Poisoned   bool   `json:"poisoned"`
	Reentrant  bool   `json:"reentrant"`
	AcquiredAt string `json:"acquired_at"`
	ExpiresAt  string `json:"expires_at"`
	TTL        string `json:"ttl"`
}

func newLeaseJSON(g lock.Grant) leaseJSON {
	return leaseJSON{
		Key: g.Key, Holder: g.Holder, Generation: g.Generation, Token: g.Token,
		Poisoned: g.Poisoned, Reentrant: g.Reentrant,
		AcquiredAt: rfc3339(g.AcquiredAt), ExpiresAt: rfc3339(g.ExpiresAt), TTL: g.TTL.String(),
	}
}

// eventJSON is one history or watch line with --json.
type eventJSON struct {
	Event      string        `json:"event"`
	Key        string        `json:"key"`
	Holder     string        `json:"holder"`
	Generation int64         `json:"generation"`
	Token      int64         `json:"token"`
	Time       string        `json:"time"`
	By         *lock.Breaker `json:"by,omitempty"`
}

func newEventJSON(e lock.Event) eventJSON {
	return eventJSON{Event: e.Type, Key: e.Key, Holder: e.Holder, Generation: e.Generation,
		Token: e.Token, Time: rfc3339(e.Time), By: e.By}
}

// writeJSON writes v as one line of JSON: the encoder writes its buffer,
// newline included, in one Write, with no copy of a large document.
func writeJSON(w io.Writer, v any) error {
	return json.NewEncoder(w).Encode(v)
}

// rfc3339 formats a store time for JSON; the zero time is empty.
func rfc3339(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// clock formats a time for people, in local time.
func clock(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05")
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

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && (isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd()))
}
