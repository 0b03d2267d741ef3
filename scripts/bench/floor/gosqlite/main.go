// Command gosqlite links go-sqlite3 (cgo, so dynamically linked against
// libc) and does nothing with it: the start-up floor of any Go command
// that embeds SQLite, measured by scripts/bench beside flock(1).
package main

import (
	"os"

	_ "github.com/mattn/go-sqlite3"
)

func main() { os.Stdout.WriteString("hello\n") }
