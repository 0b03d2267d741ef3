package main

import (
	"go/version"
	"os/exec"
	"strings"
	"testing"
)

// The go line of go.mod is a minimum for every importer: a module that
// requires xplock gets at least this line. So it names a Go release
// (1.N.0, never a patch release) and no newer one than a dependency needs;
// `go vet` (its stdversion check) says when the code itself needs more.
func TestGoLineIsTheOldestTheDependenciesNeed(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Path}} {{.GoVersion}}", "all").Output()
	if err != nil {
		t.Fatalf("go list -m all: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	ours := "go" + strings.Fields(lines[0])[1]
	if v := strings.TrimPrefix(ours, "go"); strings.Count(v, ".") != 2 || !strings.HasSuffix(v, ".0") {
		t.Errorf("go.mod says go %s: name a release (1.N.0), not a patch release every importer would then need", v)
	}
	need, by := "go1", "nothing"
	for _, line := range lines[1:] {
		f := strings.Fields(line)
		if len(f) == 2 && version.Compare("go"+f[1], need) > 0 {
			need, by = "go"+f[1], f[0]
		}
	}
	if version.Compare(ours, need) > 0 {
		t.Errorf("go.mod says go %s, but the dependencies need only %s (%s): lower it to that, "+
			"unless the code needs a newer Go (`go vet` says so), then say why here",
			strings.TrimPrefix(ours, "go"), strings.TrimPrefix(need, "go"), by)
	}
}
