package lock_test

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/xplock/xplock/lock"
)

// The seeds below and those in testdata/fuzz run as ordinary tests; run
// `go test -fuzz=FuzzValidateKey ./lock` to search further.

func FuzzValidateKey(f *testing.F)    { fuzzName(f, lock.ValidateKey) }
func FuzzValidateHolder(f *testing.F) { fuzzName(f, lock.ValidateHolder) }

// fuzzName checks a name validator against SPEC.md's words, written out
// independently: accepted iff 1–255 bytes of valid UTF-8 without control
// characters (Unicode category Cc: U+0000–U+001F and U+007F–U+009F).
func fuzzName(f *testing.F, validate func(string) error) {
	for _, s := range []string{
		"k", "deploy", "ci-runner-3", "backup cron", "ключ", "🔒", "a/b:c@d", "'; DROP TABLE xplock_locks; --",
		"", "\x00", "bad\x01name", "tab\there", "line\n", "del\x7f", "c1\u0085", "\u00a0nbsp", "\u200bzero-width",
		"\xff", "\xc3", "\xed\xa0\x80", // invalid UTF-8: a stray byte, a cut sequence, a surrogate
		strings.Repeat("k", 255), strings.Repeat("k", 256), strings.Repeat("é", 127) + "k", strings.Repeat("é", 128),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		err := validate(s)
		want := len(s) >= 1 && len(s) <= lock.MaxNameLen && utf8.ValidString(s) && !hasControl(s)
		if (err == nil) != want {
			t.Fatalf("%q (%d bytes): error %v, want accepted = %v", s, len(s), err, want)
		}
		if err != nil && (err.Error() == "" || !utf8.ValidString(err.Error())) {
			t.Fatalf("%q: the error message %q must be non-empty, valid UTF-8", s, err.Error())
		}
	})
}

func hasControl(s string) bool {
	for _, r := range s {
		if r < 0x20 || (r >= 0x7f && r <= 0x9f) {
			return true
		}
	}
	return false
}
