package cmd

import (
	"runtime/debug"
	"testing"
)

func TestDescribeBuildShowsRevisionTimeAndGo(t *testing.T) {
	info := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.2.3"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "4f68c91d"}, {Key: "vcs.time", Value: "2026-12-02T18:00:00Z"}, {Key: "vcs.modified", Value: "true"},
	}}
	want := "v1.2.3 (revision 4f68c91d, with uncommitted changes, committed 2026-12-02T18:00:00Z, built with go1.26.8)"
	if got := describeBuild(info); got != want {
		t.Errorf("describeBuild = %q, want %q", got, want)
	}
	info = &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}}
	if got, want := describeBuild(info), "dev (built with go1.26.8)"; got != want {
		t.Errorf("describeBuild without VCS = %q, want %q", got, want)
	}
}
