package cmd

import "net/url"

// displayLocation is the store's location as messages show it: a
// PostgreSQL URL with its password masked, anything else as given.
func displayLocation(location string) string {
	if isPostgresURL(location) {
		return redactURL(location)
	}
	return location
}

// redactURL masks the password of a URL (postgres://user:xxxxx@host/db),
// in its user part or in a password= parameter. A URL that does not parse
// is not shown at all: its password could not be found to mask it.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(an unparsable URL)"
	}
	if q := u.Query(); q.Has("password") {
		q.Set("password", masked)
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}

// masked stands in for a password, as url.URL.Redacted writes it.
const masked = "xxxxx"
