// Command xplock takes cross-process locks that count generations and tell a
// holder when its cached view may be stale. See README.md.
package main

import (
	"os"

	"github.com/xplock/xplock/cmd"
)

func main() {
	os.Exit(cmd.Execute())
}
