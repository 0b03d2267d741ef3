package cmd

import (
	"errors"
	"fmt"
	"runtime/debug"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// helpWithArguments refuses -h/--help given with anything else to a
// command that takes -H: `acquire k -h app` is a typo for -H, and showing
// help would exit 0 without the lock (in run mode, without running CMD).
// Global flags (--db) may come along: an alias may carry them.
func helpWithArguments(c *cobra.Command) error {
	if c.Flags().Lookup("holder") == nil || !c.Flags().Parsed() {
		return nil
	}
	others := 0
	c.Flags().Visit(func(f *pflag.Flag) {
		if f.Name != "help" && c.InheritedFlags().Lookup(f.Name) == nil {
			others++
		}
	})
	if c.Flags().NArg() == 0 && others == 0 {
		return nil
	}
	return usageErrorf("-h/--help asks for help, but other arguments were given: nothing was done. " +
		"To name the holder use -H (capital H), as in -H HOLDER; for help give -h alone")
}

// unknownCommand refuses a mistyped command with cobra's suggestions.
func unknownCommand(root *cobra.Command, name string) error {
	msg := fmt.Sprintf("unknown command %q", name)
	if suggestions := root.SuggestionsFor(name); len(suggestions) > 0 {
		msg += "; did you mean " + strings.Join(suggestions, " or ") + "?"
	}
	return usageErrorf("%s", msg)
}

// flagHint adds what to do to a flag error pflag words for programmers.
func flagHint(err error) string {
	var invalid *pflag.InvalidValueError
	if !errors.As(err, &invalid) || invalid.GetFlag().Value.Type() != "duration" {
		return ""
	}
	if _, numErr := strconv.ParseFloat(invalid.GetValue(), 64); numErr == nil {
		return fmt.Sprintf(". A duration needs a unit: for example --%s %ss, %sm or 1h30m",
			invalid.GetFlag().Name, invalid.GetValue(), invalid.GetValue())
	}
	return ". Give a Go duration, for example 30s, 5m or 1h30m"
}

// version describes this build for --version: the module version, and the
// commit, its time and the Go release the binary was built from.
func version() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "dev"
	}
	return describeBuild(info)
}

func describeBuild(info *debug.BuildInfo) string {
	v := info.Main.Version
	if v == "" || v == "(devel)" {
		v = "dev"
	}
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	var details []string
	if rev := settings["vcs.revision"]; rev != "" {
		if settings["vcs.modified"] == "true" {
			rev += ", with uncommitted changes"
		}
		details = append(details, "revision "+rev)
	}
	if t := settings["vcs.time"]; t != "" {
		details = append(details, "committed "+t)
	}
	details = append(details, "built with "+info.GoVersion)
	return v + " (" + strings.Join(details, ", ") + ")"
}
