package cmd

import (
	"runtime/debug"
	"testing"
	"time"
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

// Human times carry their zone, so a reader in another zone (or a log
// collected elsewhere) is not off by hours.
func TestClockShowsTheZone(t *testing.T) {
	defer func(l *time.Location) { time.Local = l }(time.Local)
	at := time.Date(2026, 12, 2, 22, 45, 1, 500, time.UTC)
	time.Local = time.FixedZone("IST", 5*3600+1800)
	if got, want := clock(at), "2026-12-03T04:15:01+05:30"; got != want {
		t.Errorf("clock in +05:30 = %q, want %q", got, want)
	}
	time.Local = time.UTC
	if got, want := clock(at), "2026-12-02T22:45:01Z"; got != want {
		t.Errorf("clock in UTC = %q, want %q", got, want)
	}
	if got := clock(time.Time{}); got != "-" {
		t.Errorf("clock of the zero time = %q, want -", got)
	}
}
