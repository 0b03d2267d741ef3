package lock

import (
	"fmt"
	"unicode"
	"unicode/utf8"
)

// MaxNameLen is the longest key or holder, in bytes.
const MaxNameLen = 255

// ValidateKey checks a lock name: 1–255 bytes of UTF-8, no control characters.
func ValidateKey(key string) error { return validateName("key", key) }

// ValidateHolder checks a holder name with the same rules as keys.
func ValidateHolder(holder string) error { return validateName("holder", holder) }

func validateName(what, s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%s is empty: give 1 to %d bytes of text", what, MaxNameLen)
	case len(s) > MaxNameLen:
		return fmt.Errorf("%s is %d bytes long: the limit is %d bytes", what, len(s), MaxNameLen)
	case !utf8.ValidString(s):
		return fmt.Errorf("%s %q is not valid UTF-8", what, s)
	}
	for i, r := range s {
		if unicode.IsControl(r) {
			return fmt.Errorf("%s %q has a control character (%U) at byte %d: use printable text", what, s, r, i)
		}
	}
	return nil
}
