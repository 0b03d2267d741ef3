package cmd

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// newManCmd writes xplock's man pages (section 1) for packagers; it is
// hidden because users read the pages, not generate them.
func newManCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "man DIR",
		Short:  "Write the man pages (xplock.1, xplock-acquire.1, ...) into DIR",
		Hidden: true,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageErrorf("expected one DIR to write the man pages into, got %d arguments", len(args))
			}
			return nil
		},
		Example: "  xplock man /usr/local/share/man/man1",
		RunE: func(c *cobra.Command, args []string) error {
			if err := os.MkdirAll(args[0], 0o755); err != nil {
				return fmt.Errorf("cannot create the man page directory: %w", err)
			}
			root := c.Root()
			root.DisableAutoGenTag = true // pages stay the same from build to build
			return doc.GenManTree(root, &doc.GenManHeader{Title: "XPLOCK", Section: "1", Source: "xplock " + version()}, args[0])
		},
	}
}
