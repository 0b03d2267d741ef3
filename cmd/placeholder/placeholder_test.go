package placeholder

import (
	"bytes"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// childMarker is set in the environment of the test binary started as a
// placeholder. Init must have taken over before TestMain runs; if it did
// not, the child stops here instead of running the tests again.
const childMarker = "XPLOCK_PLACEHOLDER_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childMarker) != "" {
		os.Exit(99)
	}
	os.Exit(m.Run())
}

// startPlaceholder starts this test binary as a placeholder for args and
// writes msg to its pipe (nil: closes it unwritten). It returns the exit
// code and stdout+stderr.
func startPlaceholder(t *testing.T, msg []byte, args ...string) (int, string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	c := &exec.Cmd{Path: exe, Args: append([]string{Name}, args...), Env: append(os.Environ(), childMarker+"=1"),
		ExtraFiles: []*os.File{r}, Stdout: &out, Stderr: &out, Dir: t.TempDir()}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	r.Close()
	if msg != nil {
		if _, err := w.Write(msg); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	c.Wait()
	return c.ProcessState.ExitCode(), out.String()
}

func TestPlaceholderBecomesCMDWithTheGivenEnvironment(t *testing.T) {
	env := []string{"A=1", "BASH_FUNC_f%%=() {  echo hi", "dotted.name=x", "XPLOCK_TOKEN=7"}
	code, out := startPlaceholder(t, Message("/usr/bin/env", env), "env")
	if code != 0 || out != strings.Join(env, "\n")+"\n" {
		t.Fatalf("placeholder for env: exit %d, output %q; want exit 0 and exactly %q", code, out, env)
	}
}

func TestPlaceholderAbandonedRunsNothing(t *testing.T) {
	code, out := startPlaceholder(t, nil, "sh", "-c", "echo ran")
	if code != ExitAbandoned || out != "" {
		t.Fatalf("pipe closed unwritten: exit %d, output %q; want %d and nothing", code, out, ExitAbandoned)
	}
}

func TestPlaceholderScriptWithoutShebangRunsUnderSh(t *testing.T) {
	script := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(script, []byte("echo from-sh \"$1\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	code, out := startPlaceholder(t, Message(script, []string{"PATH=" + os.Getenv("PATH")}), script, "arg")
	if code != 0 || out != "from-sh arg\n" {
		t.Fatalf("script without #!: exit %d, output %q", code, out)
	}
}

func TestPlaceholderCMDNotFound(t *testing.T) {
	code, out := startPlaceholder(t, Message("/nonexistent/cmd", nil), "cmd")
	if code != ExitNotFound || !strings.Contains(out, "xplock: cannot run cmd: no such file or directory") {
		t.Fatalf("missing CMD: exit %d, output %q; want %d and a message", code, out, ExitNotFound)
	}
}

// The placeholder acts in init, before the packages a binary links are
// initialised; Go initialises this package right after its imports, so
// it must import nothing but syscall.
func TestPlaceholderImportsOnlySyscall(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "placeholder.go", nil, parser.ImportsOnly)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range f.Imports {
		if imp.Path.Value != `"syscall"` {
			t.Errorf("placeholder.go imports %s; it must import only syscall", imp.Path.Value)
		}
	}
}
