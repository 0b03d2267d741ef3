package cmd

import (
	"runtime/debug"
	"strings"
	"testing"
)

func TestDisplayLocationMasksPasswords(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"postgres://user:PASSWORD@db.example:5432/app", "postgres://user:xxxxx@db.example:5432/app"},
		{"postgresql://user:p%40ss@host/db?sslmode=require", "postgresql://user:xxxxx@host/db?sslmode=require"},
		{"postgres://user@host/db?password=PASSWORD&sslmode=disable", "postgres://user@host/db?password=xxxxx&sslmode=disable"},
		{"postgres://user@host/db", "postgres://user@host/db"},
		{"postgres://user:PASSWORD@host:bad port/db", "postgres://user:xxxxx@host:bad port/db"},
		{"/var/lib/xplock/locks.db", "/var/lib/xplock/locks.db"},
	} {
		got := displayLocation(tc.in)
		if got != tc.want {
			t.Errorf("displayLocation(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if strings.Contains(got, "PASSWORD") {
			t.Errorf("displayLocation(%q) shows the password: %q", tc.in, got)
		}
	}
}

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
