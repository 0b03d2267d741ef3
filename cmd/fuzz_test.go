package cmd_test

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/xplock/xplock/cmd"
	"github.com/xplock/xplock/lock"
)

// The seeds below and those in testdata/fuzz run as ordinary tests; run
// `go test -fuzz=FuzzDurationFlags ./cmd` (or FuzzNames) to search further.

// fuzzEnv gives a fuzz target a database of its own and no xplock settings
// from the environment.
func fuzzEnv(f *testing.F) {
	f.Setenv("XPLOCK_DB", filepath.Join(f.TempDir(), "locks.db"))
	f.Setenv("XPLOCK_HOLDER", "")
	f.Setenv("XPLOCK_HISTORY_LIMIT", "")
}

func runCLI(args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = cmd.Run(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// durationFlag is one duration flag of one command, with the values it
// accepts and the exit codes a valid value may give.
type durationFlag struct {
	flag  string
	args  []string
	valid func(time.Duration) bool
	exits []int
}

var durationFlags = []durationFlag{
	// "k" is held by "h" with a long lease, so acquisitions are re-entrant.
	{"ttl", []string{"acquire", "k", "-H", "h", "--nowait", "--json"}, positive, []int{0}},
	// --wait 0 is --nowait. A wait shorter than one store round trip may
	// end before the store answers: "not acquired" (4) is then honest.
	{"wait", []string{"acquire", "k", "-H", "h", "--json"}, nonNegative, []int{0}},
	// --grace applies to run mode only, and must leave room in the lease:
	// the run-mode TTL is 30s. A re-entrant run keeps the tenure's TTL,
	// which an earlier input may have made shorter than the grace: the
	// lease is then lost before CMD starts (6).
	{"grace", []string{"acquire", "k", "-H", "h", "--nowait", "--", "true"}, fitsRunModeLease, []int{0, 6}},
	// A renewal may find that an earlier input's tiny --ttl let the lease run out.
	{"ttl", []string{"renew", "k", "-H", "h"}, positive, []int{0, 5}},
	// Run mode: a lease shorter than it takes to start the child is lost (6).
	{"ttl", []string{"acquire", "k", "-H", "h", "--nowait", "--", "true"}, positive, []int{0, 6}},
}

func positive(d time.Duration) bool    { return d > 0 }
func nonNegative(d time.Duration) bool { return d >= 0 }

func fitsRunModeLease(d time.Duration) bool {
	const ttl = 30 * time.Second
	return d > 0 && d < ttl-lock.DriftMargin(ttl)
}

// FuzzDurationFlags gives duration flags arbitrary values. Properties: no
// panic; a value that is not a Go duration, or out of the flag's range, is
// a usage error (exit 2) whose message names the flag and which prints
// nothing on stdout; a valid one is never a usage or runtime error.
func FuzzDurationFlags(f *testing.F) {
	fuzzEnv(f)
	if code, _, stderr := runCLI("acquire", "k", "-H", "h", "--ttl", "1h"); code != 0 {
		f.Fatalf("acquire: exit %d: %s", code, stderr)
	}
	for i := range durationFlags {
		for _, v := range []string{"1s", "30s", "1h30m", "1.5h", "500ms", "1us", "1µs", "1ns", "0", "0s", "-1s", "-0",
			"+5m", "", "1", "s", "1d", "1e3s", " 1s", "1s ", "9223372036854775807ns", "2562048h", ".5s", "1..5s", "\x00"} {
			f.Add(uint8(i), v)
		}
	}
	f.Fuzz(func(t *testing.T, which uint8, value string) {
		c := durationFlags[int(which)%len(durationFlags)]
		args := slices.Clone(c.args)
		flag := "--" + c.flag + "=" + value
		if dash := slices.Index(args, "--"); dash >= 0 {
			args = slices.Insert(args, dash, flag)
		} else {
			args = append(args, flag)
		}
		code, stdout, stderr := runCLI(args...)
		d, err := time.ParseDuration(value)
		valid := err == nil && c.valid(d)
		switch {
		case !valid && code != 2:
			t.Fatalf("%q: exit %d, want 2 (usage error)\n%s", args, code, stderr)
		case !valid && !strings.Contains(stderr, c.flag):
			t.Fatalf("%q: the message does not name --%s: %s", args, c.flag, stderr)
		case !valid && stdout != "":
			t.Fatalf("%q: a usage error printed on stdout: %s", args, stdout)
		case !valid:
		case c.flag == "wait" && d > 0 && d < time.Second && code == 4:
		case !slices.Contains(c.exits, code):
			t.Fatalf("%q: exit %d, want one of %v\n%s", args, code, c.exits, stderr)
		}
	})
}

// FuzzNames gives acquire, status and release arbitrary keys and holders.
// Properties: a key or holder that breaks SPEC.md's rules (1–255 bytes of
// UTF-8, no control characters) is a usage error (exit 2), never a runtime
// error; a valid one is taken, shown and released under its exact name.
func FuzzNames(f *testing.F) {
	fuzzEnv(f)
	for _, s := range [][2]string{
		{"k", "h"}, {"deploy", "ci-runner-3"}, {"ключ", "держатель"}, {"🔒", "🧑‍💻"}, {"a b", "c d"},
		{"'; DROP TABLE xplock_locks; --", "%_\\"}, {"k", ""}, {"", "h"}, {"bad\x01", "h"}, {"k", "tab\th"},
		{"\xff", "h"}, {"k", "\xc3"}, {strings.Repeat("k", 255), "h"}, {strings.Repeat("k", 256), "h"},
		{"k", strings.Repeat("é", 128)}, {"c1\u0085", "h"}, {"-k", "h"}, {"--", "h"}, {"--help", "h"}, {"k=v", "h=v"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, key, holder string) {
		code, stdout, stderr := runCLI("acquire", key, "--holder="+holder, "--nowait", "--ttl=1h", "--json")
		switch {
		case len(key) > 1 && key[0] == '-':
			// A flag to the command line, not a key (--help even succeeds).
			if code != 0 && code != 2 {
				t.Fatalf("acquire %q: exit %d, want 2\n%s", key, code, stderr)
			}
			return
		case !validName(key) || !validName(holder):
			if code != 2 || stdout != "" {
				t.Fatalf("acquire %q -H %q: exit %d, stdout %q, want exit 2 and nothing on stdout\n%s",
					key, holder, code, stdout, stderr)
			}
			return
		case code != 0 && code != 3 && code != 4:
			t.Fatalf("acquire %q -H %q: exit %d, want 0, 3 or 4\n%s", key, holder, code, stderr)
		case code == 4:
			return // another input's holder has it
		}
		var lease struct{ Key, Holder string }
		if err := json.Unmarshal([]byte(stdout), &lease); err != nil || lease.Key != key || lease.Holder != holder {
			t.Fatalf("acquire %q -H %q printed %s (%v)", key, holder, stdout, err)
		}
		code, stdout, stderr = runCLI("status", key, "--json")
		var st struct {
			Locks []struct{ Key, Holder, State string }
		}
		if err := json.Unmarshal([]byte(stdout), &st); code != 0 || err != nil || len(st.Locks) != 1 ||
			st.Locks[0].Key != key || st.Locks[0].Holder != holder || st.Locks[0].State != "held" {
			t.Fatalf("status %q: exit %d, %s (%v)\n%s", key, code, stdout, err, stderr)
		}
		if code, _, stderr = runCLI("release", key, "--holder="+holder); code != 0 {
			t.Fatalf("release %q -H %q: exit %d\n%s", key, holder, code, stderr)
		}
		// Human output too must not break on any name.
		if code, _, stderr = runCLI("status", key); code != 0 {
			t.Fatalf("status %q: exit %d\n%s", key, code, stderr)
		}
	})
}

// validName is SPEC.md's rule for keys and holders, written out.
func validName(s string) bool {
	if len(s) < 1 || len(s) > 255 || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || (r >= 0x7f && r <= 0x9f) {
			return false
		}
	}
	return true
}
