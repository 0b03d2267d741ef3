package cmd_test

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"
)

// The JSON shapes are contracts for scripts: these tests decode them
// strictly (unknown fields fail), so that a renamed field, a duration
// printed as a string or a time printed as "" is caught.

type leaseOut struct {
	Key        string     `json:"key"`
	Holder     string     `json:"holder"`
	Mode       string     `json:"mode"`
	Slots      int        `json:"slots"`
	Generation int64      `json:"generation"`
	Token      int64      `json:"token"`
	Poisoned   bool       `json:"poisoned"`
	AcquiredAt *time.Time `json:"acquired_at"`
	ExpiresAt  *time.Time `json:"expires_at"`
	TTL        *float64   `json:"ttl"`
}

type acquireOut struct {
	Acquired *bool `json:"acquired"`
	leaseOut
	Reentrant *bool    `json:"reentrant"`
	Waited    *float64 `json:"waited"`
}

type tenureOut struct {
	Holder    string     `json:"holder"`
	Mode      string     `json:"mode"`
	Token     int64      `json:"token"`
	Since     *time.Time `json:"since"`
	ExpiresAt *time.Time `json:"expires_at"`
}

type lockOut struct {
	Key             string      `json:"key"`
	State           string      `json:"state"`
	Mode            string      `json:"mode"`
	Slots           int         `json:"slots"`
	Holder          string      `json:"holder"`
	Holders         []tenureOut `json:"holders"`
	Generation      int64       `json:"generation"`
	Token           int64       `json:"token"`
	Since           *time.Time  `json:"since"`
	ExpiresAt       *time.Time  `json:"expires_at"`
	PoisonedHolders []string    `json:"poisoned_holders"`
	Waiters         []any       `json:"waiters"`
	History         []any       `json:"history"`
}

type refusalOut struct {
	Acquired *bool `json:"acquired"`
	lockOut
	Reason string `json:"reason"`
}

// decodeStrict decodes exactly one JSON object from out into v.
func decodeStrict(t *testing.T, out string, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader([]byte(out)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("decoding %s: %v", out, err)
	}
	if dec.More() {
		t.Fatalf("more than one JSON value: %s", out)
	}
}

func run(t *testing.T, wantCode int, args ...string) string {
	t.Helper()
	code, stdout, stderr := runCLI(args...)
	if code != wantCode {
		t.Fatalf("%q: exit %d, want %d\n%s", args, code, wantCode, stderr)
	}
	return stdout
}

func TestJSONShapes(t *testing.T) {
	t.Setenv("XPLOCK_DB", filepath.Join(t.TempDir(), "locks.db"))
	t.Setenv("XPLOCK_HOLDER", "")

	// A never-acquired key: no times at all, no mode, no holder.
	var st struct{ Locks []lockOut }
	decodeStrict(t, run(t, 0, "status", "k", "--json"), &st)
	if l := st.Locks[0]; len(st.Locks) != 1 || l.State != "free" || l.Since != nil || l.ExpiresAt != nil || l.Mode != "" ||
		l.Holder != "" || l.Holders == nil || len(l.Holders) != 0 || l.PoisonedHolders == nil || l.Waiters == nil {
		t.Errorf("status of a new key: %+v", st.Locks)
	}

	var acq acquireOut
	decodeStrict(t, run(t, 0, "acquire", "k", "-H", "alice", "--ttl", "90s", "--json"), &acq)
	if acq.Acquired == nil || !*acq.Acquired || acq.Key != "k" || acq.Holder != "alice" || acq.Mode != "exclusive" ||
		acq.Generation != 1 || acq.Token != 1 || acq.TTL == nil || *acq.TTL != 90 || acq.Waited == nil || *acq.Waited < 0 ||
		acq.Reentrant == nil || *acq.Reentrant || acq.AcquiredAt == nil || acq.ExpiresAt == nil ||
		acq.ExpiresAt.Sub(*acq.AcquiredAt) != 90*time.Second {
		t.Errorf("acquire: %+v", acq)
	}

	// renew: the lease, without reentrant or waited.
	var ren leaseOut
	decodeStrict(t, run(t, 0, "renew", "k", "-H", "alice", "--ttl", "2m", "--json"), &ren)
	if ren.TTL == nil || *ren.TTL != 120 || ren.Token != 1 || ren.AcquiredAt == nil || !ren.AcquiredAt.Equal(*acq.AcquiredAt) {
		t.Errorf("renew: %+v", ren)
	}

	// status names the same moment "since" that acquire calls acquired_at.
	st.Locks = nil
	decodeStrict(t, run(t, 0, "status", "k", "--json"), &st)
	l := st.Locks[0]
	if l.State != "held" || l.Mode != "exclusive" || l.Holder != "alice" || len(l.Holders) != 1 ||
		l.Holders[0].Holder != "alice" || l.Holders[0].Token != 1 || l.Since == nil || !l.Since.Equal(*acq.AcquiredAt) ||
		!l.Holders[0].Since.Equal(*acq.AcquiredAt) || !l.Holders[0].ExpiresAt.Equal(*l.ExpiresAt) {
		t.Errorf("status of a held key: %+v", l)
	}

	// Exit 4: the key as status shows it, and acquired:false.
	var busy refusalOut
	decodeStrict(t, run(t, 4, "acquire", "k", "-H", "bob", "--nowait", "--json"), &busy)
	if busy.Acquired == nil || *busy.Acquired || busy.Key != "k" || busy.State != "held" || busy.Holder != "alice" ||
		busy.Generation != 1 || busy.ExpiresAt == nil || len(busy.Holders) != 1 {
		t.Errorf("acquire refused: %+v", busy)
	}
	// A wait that ends before the store answers says so rather than
	// inventing a state.
	var early refusalOut
	if code, stdout, _ := runCLI("acquire", "k", "-H", "bob", "--wait", "1ns", "--json"); code == 4 {
		decodeStrict(t, stdout, &early)
		if early.State == "" && (early.Reason != "no-answer" || early.Mode != "" || early.Key != "k") {
			t.Errorf("acquire refused before an answer: %+v", early)
		}
	}
	// A --wait that ran out: the request has left the queue, so the
	// waiters listed are the others only (none here).
	var timedOut refusalOut
	decodeStrict(t, run(t, 4, "acquire", "k", "-H", "bob", "--wait", "200ms", "--json"), &timedOut)
	if timedOut.State != "held" || timedOut.Waiters == nil || len(timedOut.Waiters) != 0 {
		t.Errorf("acquire refused after waiting: %+v, want held and no waiters", timedOut)
	}
	// The same with -E.
	decodeStrict(t, run(t, 8, "acquire", "k", "-H", "bob", "--nowait", "-E", "8", "--json"), &busy)

	// Exit 5 from release and renew: the same shape, with the reason.
	for _, args := range [][]string{{"release", "k", "-H", "bob", "--json"}, {"renew", "k", "-H", "bob", "--json"}} {
		var refused refusalOut
		decodeStrict(t, run(t, 5, args...), &refused)
		if refused.Acquired == nil || *refused.Acquired || refused.Reason != "held" || refused.Holder != "alice" || refused.State != "held" {
			t.Errorf("%q refused: %+v", args, refused)
		}
	}

	// release: the event, as history and watch show it.
	var rel struct {
		Event, Key, Holder, Mode string
		Generation, Token        int64
		Time                     time.Time
	}
	decodeStrict(t, run(t, 0, "release", "k", "-H", "alice", "--json"), &rel)
	if rel.Event != "released" || rel.Key != "k" || rel.Holder != "alice" || rel.Token != 1 || rel.Time.IsZero() {
		t.Errorf("release: %+v", rel)
	}

	// A free key that was held: no expires_at, no mode; release refused as free.
	st.Locks = nil
	decodeStrict(t, run(t, 0, "status", "k", "--json"), &st)
	if l := st.Locks[0]; l.State != "free" || l.ExpiresAt != nil || l.Since == nil || l.Mode != "" || l.Holder != "alice" {
		t.Errorf("status of a released key: %+v", l)
	}
	var free refusalOut
	decodeStrict(t, run(t, 5, "release", "k", "-H", "alice", "--json"), &free)
	if free.Reason != "free" || free.State != "free" || free.ExpiresAt != nil {
		t.Errorf("release of a free key: %+v", free)
	}
}
