package cmd

import "github.com/xplock/xplock/postgres"

// displayLocation is the store's location as messages show it: a
// PostgreSQL URL with its password masked, anything else as given.
func displayLocation(location string) string {
	if isPostgresURL(location) {
		return postgres.Redact(location)
	}
	return location
}
