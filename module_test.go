package main

import (
	"context"
	"encoding/json"
	"go/version"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/xplock/xplock/cmd"
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

// testdata/thirdparty is a module of its own that uses the library as an
// importer would (lock.Do, Lock, xplockdb.Open): it must build against the
// repository with the go line above, and share locks with the CLI. It is
// built offline from the module cache that building xplock filled, with
// the repository's go.sum and requirements.
func TestThirdPartyModule(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a separate module")
	}
	root, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, name := range []string{"go.mod", "main.go"} {
		copyFile(t, filepath.Join(root, "testdata", "thirdparty", name), filepath.Join(dir, name))
	}
	copyFile(t, filepath.Join(root, "go.sum"), filepath.Join(dir, "go.sum"))
	goCmd := func(args ...string) {
		t.Helper()
		c := exec.Command("go", args...)
		c.Dir = dir
		// -mod=mod lets go settle go.mod as tidy would (indirect marks);
		// GOPROXY=off keeps it from the network.
		c.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off", "GOWORK=off", "GOTOOLCHAIN=local")
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	// What `go mod tidy` would add, without the network: the repository's
	// own requirements, so that go reads no go.mod beyond those it read to
	// build xplock (some of them predate module graph pruning).
	edit := []string{"mod", "edit", "-replace", "github.com/xplock/xplock=" + root}
	for _, r := range moduleRequirements(t, root) {
		edit = append(edit, "-require", r)
	}
	goCmd(edit...)
	goCmd("build", "-o", "deployer", ".")

	db := filepath.Join(dir, "locks.db")
	t.Setenv("XPLOCK_DB", db)
	// The lock commands drop to one P unless GOMAXPROCS is set.
	t.Setenv("GOMAXPROCS", strconv.Itoa(runtime.GOMAXPROCS(0)))
	xplock := func(want int, args ...string) {
		t.Helper()
		var stderr strings.Builder
		if code := cmd.Run(context.Background(), args, io.Discard, &stderr); code != want {
			t.Fatalf("xplock %s exited %d, want %d: %s", strings.Join(args, " "), code, want, stderr.String())
		}
	}
	deployer := func() string {
		t.Helper()
		out, err := exec.Command(filepath.Join(dir, "deployer")).CombinedOutput()
		if err != nil {
			t.Fatalf("deployer: %v\n%s", err, out)
		}
		return string(out)
	}

	xplock(0, "acquire", "deploy", "-H", "script")
	xplock(0, "release", "deploy", "-H", "script")
	// A newcomer has nothing stale; Do acknowledges generation 2.
	if got, want := deployer(), "do: generation 2, poisoned false\nlock: generation 2, poisoned false\n"; got != want {
		t.Errorf("first run printed %q, want %q", got, want)
	}
	// The script held the lock since: the program's next Do is poisoned.
	xplock(3, "acquire", "deploy", "-H", "script") // the program held it since the script did
	xplock(0, "release", "deploy", "-H", "script")
	if got, want := deployer(), "do: generation 4, poisoned true\nlock: generation 4, poisoned false\n"; got != want {
		t.Errorf("run after the CLI held the lock printed %q, want %q", got, want)
	}
}

// moduleRequirements lists the module in dir's requirements as path@version.
func moduleRequirements(t *testing.T, dir string) []string {
	t.Helper()
	c := exec.Command("go", "mod", "edit", "-json")
	c.Dir = dir
	out, err := c.Output()
	if err != nil {
		t.Fatalf("go mod edit -json: %v", err)
	}
	var mod struct {
		Require []struct{ Path, Version string }
	}
	if err := json.Unmarshal(out, &mod); err != nil {
		t.Fatal(err)
	}
	var reqs []string
	for _, r := range mod.Require {
		reqs = append(reqs, r.Path+"@"+r.Version)
	}
	return reqs
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o644); err != nil {
		t.Fatal(err)
	}
}
