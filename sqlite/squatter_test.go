package sqlite_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/sqlite"
)

// squatterEnv makes a re-executed test binary the squatter of
// TestOtherUserSquatter instead of running tests. Its value is a JSON-free
// list of what to do, one per line:
//
//	mkdir DIR          make DIR (mode 0777), as if to hold everyone's sockets
//	squat ADDR         listen at ADDR (a path, or "@name") and greet as SQUAT_TOKEN
//	dial ADDR          try to connect to ADDR
//
// It prints one line per step saying how it went, then "ready", and serves
// until its standard input closes.
const squatterEnv = "XPLOCK_TEST_SQUATTER"

func TestMain(m *testing.M) {
	if steps := os.Getenv(squatterEnv); steps != "" {
		os.Exit(runSquatter(steps))
	}
	os.Exit(m.Run())
}

func runSquatter(steps string) int {
	token, _ := strconv.ParseInt(os.Getenv("SQUAT_TOKEN"), 10, 64)
	hold := os.Getenv("SQUAT_HOLD") == "1"
	for step := range strings.Lines(steps) {
		verb, arg, _ := strings.Cut(strings.TrimSpace(step), " ")
		var err error
		switch verb {
		case "mkdir":
			if err = os.Mkdir(arg, 0o777); err == nil {
				err = os.Chmod(arg, 0o777)
			}
		case "squat":
			addr := arg
			if strings.HasPrefix(arg, "/") {
				// Bound by its name in its directory: the whole path may be
				// too long for a socket address.
				if err = os.Chdir(filepath.Dir(arg)); err != nil {
					break
				}
				addr = filepath.Base(arg)
			}
			var stop func()
			stop, err = squat(addr, token, hold)
			defer func() {
				if stop != nil {
					stop()
				}
			}()
		case "dial":
			var c net.Conn
			if c, err = net.Dial("unix", arg); err == nil {
				c.Close()
			}
		default:
			err = fmt.Errorf("unknown step %q", verb)
		}
		if err != nil {
			fmt.Printf("%s %s: refused: %v\n", verb, arg, err)
		} else {
			fmt.Printf("%s %s: done\n", verb, arg)
		}
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// otherUser creates a Unix user for the test and removes it afterwards.
func otherUser(t *testing.T) (name string, uid int) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a second Unix user (CI runs as root)")
	}
	for _, tool := range []string{"useradd", "userdel", "runuser"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
	name = "xpsq" + rand.Text()[:8]
	name = strings.ToLower(name)
	if out, err := exec.Command("useradd", "--no-create-home", "--shell", "/bin/sh", name).CombinedOutput(); err != nil {
		t.Fatalf("useradd: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("userdel", name).CombinedOutput(); err != nil {
			t.Errorf("userdel %s: %v\n%s", name, err, out)
		}
	})
	out, err := exec.Command("id", "-u", name).Output()
	if err != nil {
		t.Fatal(err)
	}
	uid, err = strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatal(err)
	}
	return name, uid
}

// squatterProcess runs steps (see squatterEnv) as user and returns its
// report once it is ready; it ends with the test.
func squatterProcess(t *testing.T, user, bin string, token int64, hold bool, steps ...string) string {
	t.Helper()
	cmd := exec.Command("runuser", "-u", user, "--", bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), squatterEnv+"="+strings.Join(steps, "\n"),
		"SQUAT_TOKEN="+strconv.FormatInt(token, 10), "SQUAT_HOLD="+map[bool]string{true: "1"}[hold])
	cmd.Dir = "/"
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Wait()
	})
	var report strings.Builder
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if sc.Text() == "ready" {
			t.Logf("squatter (%s):\n%s", user, report.String())
			return report.String()
		}
		report.WriteString(sc.Text() + "\n")
	}
	t.Fatalf("the squatter ended before it was ready:\n%s", report.String())
	return ""
}

// sharedDir makes a directory that every user may write, with the sticky
// bit, like /tmp, and a copy of this test binary that every user may run.
func sharedDir(t *testing.T) (dir, bin string) {
	t.Helper()
	base := t.TempDir()
	for p := base; p != "/" && p != os.TempDir(); p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dir = filepath.Join(base, "shared")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o1777); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	bin = filepath.Join(base, "squatter.test")
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, bin
}

// abstractName is the abstract socket name that earlier versions of xplock
// had a key's holder listen on, which any user could take first.
func abstractName(t *testing.T, path, key string) string {
	t.Helper()
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, path, unix.AT_STATX_SYNC_AS_STAT, unix.STATX_INO|unix.STATX_BTIME, &st); err != nil {
		t.Fatal(err)
	}
	id := fmt.Sprintf("%x.%x-%x", st.Dev_major, st.Dev_minor, st.Ino)
	if st.Mask&unix.STATX_BTIME != 0 {
		id += fmt.Sprintf("-%x.%x", st.Btime.Sec, st.Btime.Nsec)
	}
	sum := sha256.Sum256([]byte(key))
	return fmt.Sprintf("@xplock/%s/%s", id, hex.EncodeToString(sum[:16]))
}

// TestOtherUserSquatter: another local user, who cannot open the database
// (0600, root's) but can write the directory it is in (like /tmp), tries
// to stand in for the key's holder where waiters look: it makes the
// sockets' directory before any holder does and listens there (and on the
// abstract name earlier versions used), greeting as the holder's tenure and
// then hanging up or keeping the connection. A waiter is neither stalled
// past the hand-off bound after the real release nor made to spin. Once a
// holder has made the directory, the other user can neither listen nor
// connect there.
func TestOtherUserSquatter(t *testing.T) {
	skipUnlessLinux(t)
	user, _ := otherUser(t)
	for _, hold := range []bool{false, true} {
		name := map[bool]string{false: "hangs up", true: "keeps connections"}[hold]
		t.Run("first/"+name, func(t *testing.T) {
			dir, bin := sharedDir(t)
			path := filepath.Join(dir, "locks.db")
			holderStore := open(t, path, sqlite.Options{})
			e := endpoint(t, holderStore, "k")
			socket := filepath.Join(e.Dir, e.Name)
			squatterProcess(t, user, bin, 1, hold,
				"mkdir "+e.Dir, "squat "+socket, "squat "+abstractName(t, path, "k"))
			holder, _ := lock.New(holderStore, "k", "alice", lock.Options{TTL: time.Minute})
			held, err := holder.Lock(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if held.Token() != 1 {
				t.Fatalf("token %d, want 1", held.Token())
			}
			// Waiters hear of the release through the store, at once.
			squatterOutcome(t, path, held, 300*time.Millisecond)
		})
	}
	t.Run("after the holder", func(t *testing.T) {
		dir, bin := sharedDir(t)
		path := filepath.Join(dir, "locks.db")
		holderStore := open(t, path, sqlite.Options{})
		held := lockListening(t, holderStore, "k", "alice")
		e := endpoint(t, holderStore, "k")
		socket := filepath.Join(e.Dir, e.Name)
		report := squatterProcess(t, user, bin, 1, true,
			"mkdir "+e.Dir, "squat "+filepath.Join(e.Dir, "other"), "dial "+socket)
		if strings.Contains(report, ": done") {
			t.Errorf("the other user could reach into the sockets' directory:\n%s", report)
		}
		waiterLock, _ := lock.New(open(t, path, sqlite.Options{}), "k", "bob", lock.Options{TTL: time.Minute, NoRenew: true})
		w := startWaiting(context.Background(), waiterLock)
		<-w.started
		handOff(t, held, w, 300*time.Millisecond)
	})
}
