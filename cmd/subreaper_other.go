//go:build !linux

package cmd

import "os"

// becomeSubreaper does nothing here: orphans go to init, which reaps them.
func becomeSubreaper() {}

// selfExecutable names xplock's own executable for the stub that becomes
// CMD.
func selfExecutable() string {
	if path, err := os.Executable(); err == nil {
		return path
	}
	return os.Args[0]
}
