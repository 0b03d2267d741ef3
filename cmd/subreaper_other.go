//go:build !linux

package cmd

// becomeSubreaper does nothing here: orphans go to init, which reaps them.
func becomeSubreaper() {}
