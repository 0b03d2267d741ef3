package lock

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestParseStat(t *testing.T) {
	for _, c := range []struct {
		line  string
		state byte
		pgrp  int
		start uint64
	}{
		{"42 (sleep) S 1 40 42 0 -1 4194304 94 0 0 0 0 0 0 0 20 0 1 0 123456 2215936 256 18446744073709551615", 'S', 40, 123456},
		// A command name may hold spaces and parentheses: only the last ')' ends it.
		{"7 (a) b (c) Z 9) R 1 7 7 0 -1 4194304 94 0 0 0 0 0 0 0 20 0 1 0 99 2215936 256", 'R', 7, 99},
		{"8 () Z 1 8 8 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0\n", 'Z', 8, 5},
	} {
		st, err := parseStat([]byte(c.line))
		if err != nil || st.state != c.state || st.pgrp != c.pgrp || st.start != c.start {
			t.Errorf("parseStat(%q) = %c %d %d, %v; want %c %d %d", c.line, st.state, st.pgrp, st.start, err, c.state, c.pgrp, c.start)
		}
	}
	for _, bad := range []string{"", "42 sleep S 1", "42 (sleep) S 1 2 3", "42 (x) S 1 42 42 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 notanumber 0"} {
		if _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("parseStat(%q) did not fail", bad)
		}
	}
}

func TestSelf(t *testing.T) {
	me := mustSelf(t)
	if me.PID != os.Getpid() || me.BootID == "" || me.PIDNamespace == 0 || me.Start == 0 || me.Group != 0 {
		t.Fatalf("Self() = %+v", me)
	}
	// Read back independently: the start time is /proc/self/stat's field 22.
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if fields[19] != strconv.FormatUint(me.Start, 10) {
		t.Errorf("Self().Start = %d, /proc/self/stat says %s", me.Start, fields[19])
	}
	if (LocalProver{}).ProveDead([]Keeper{me}) {
		t.Error("the test process itself was proved dead")
	}
}

func TestProveDeadEmptyIsNeverProved(t *testing.T) {
	if (LocalProver{}).ProveDead(nil) {
		t.Error("an empty keeper list was proved dead")
	}
}

func TestProveDeadExitedAndReaped(t *testing.T) {
	child := start(t, "true")
	k := keeperOf(t, child.Process.Pid)
	child.Wait()
	if !(LocalProver{}).ProveDead([]Keeper{k}) {
		t.Errorf("a reaped child %+v was not proved dead", k)
	}
}

func TestProveDeadZombie(t *testing.T) {
	child := start(t, "true")
	k := keeperOf(t, child.Process.Pid)
	defer child.Wait()
	// Wait for the exit without reaping it.
	var info [128]byte
	if _, _, e := syscall.Syscall6(syscall.SYS_WAITID, 1 /* P_PID */, uintptr(k.PID), uintptr(unsafe.Pointer(&info)),
		syscall.WEXITED|syscall.WNOWAIT, 0, 0); e != 0 {
		t.Fatal(e)
	}
	if st, err := readStat(k.PID); err != nil || st.state != 'Z' {
		t.Fatalf("the child is not a zombie: %c, %v", st.state, err)
	}
	if !(LocalProver{}).ProveDead([]Keeper{k}) {
		t.Error("an exited child not yet reaped (a zombie) was not proved dead")
	}
}

// TestProveDeadGroupOfZombies: a group whose only members are zombies
// runs no more code. (A dead xplock's CMD is reparented to PID 1, which in
// many containers never reaps it.)
func TestProveDeadGroupOfZombies(t *testing.T) {
	if procHidesProcesses() {
		t.Skip("/proc hides processes (hidepid): zombie groups are left to the lease")
	}
	child := exec.Command("true")
	child.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer child.Wait()
	k := keeperOf(t, child.Process.Pid)
	k.Group = k.PID
	var info [128]byte
	if _, _, e := syscall.Syscall6(syscall.SYS_WAITID, 1 /* P_PID */, uintptr(k.PID), uintptr(unsafe.Pointer(&info)),
		syscall.WEXITED|syscall.WNOWAIT, 0, 0); e != 0 {
		t.Fatal(e)
	}
	if err := syscall.Kill(-k.Group, 0); err != nil {
		t.Fatalf("the zombie's group cannot be signalled (%v): the test proves nothing", err)
	}
	if !(LocalProver{}).ProveDead([]Keeper{k}) {
		t.Error("a group of one zombie was not proved dead")
	}
}

func TestProveDeadAliveChild(t *testing.T) {
	child := start(t, "sleep", "1000")
	k := keeperOf(t, child.Process.Pid)
	if (LocalProver{}).ProveDead([]Keeper{k}) {
		t.Error("a running child was proved dead")
	}
	// One dead keeper does not make a live one dead.
	gone := start(t, "true")
	dead := keeperOf(t, gone.Process.Pid)
	gone.Wait()
	if (LocalProver{}).ProveDead([]Keeper{dead, k}) {
		t.Error("a tenure with one live keeper was proved dead")
	}
}

func TestProveDeadStoppedIsAlive(t *testing.T) {
	child := start(t, "sleep", "1000")
	k := keeperOf(t, child.Process.Pid)
	if err := child.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer child.Process.Signal(syscall.SIGCONT)
	waitState(t, k.PID, 'T')
	if (LocalProver{}).ProveDead([]Keeper{k}) {
		t.Error("a stopped child was proved dead: only its lease may end it")
	}
}

func TestProveDeadReusedPID(t *testing.T) {
	child := start(t, "sleep", "1000")
	k := keeperOf(t, child.Process.Pid)
	k.Start++ // the recorded process started at another time: this PID was reused
	if !(LocalProver{}).ProveDead([]Keeper{k}) {
		t.Error("a PID now held by a process with another start time was not proved dead")
	}
}

// TestProveDeadGroup: a keeper with a group stays alive while any process
// of the group is left, even after the keeper process itself is gone.
func TestProveDeadGroup(t *testing.T) {
	// The leader starts a member in its group and exits.
	leader := exec.Command("sh", "-c", "sleep 1000 >/dev/null 2>&1 & echo $!")
	leader.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := leader.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := leader.Start(); err != nil {
		t.Fatal(err)
	}
	k := keeperOf(t, leader.Process.Pid)
	k.Group = leader.Process.Pid
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	member, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(member, syscall.SIGKILL)
	leader.Wait()

	if !processGone(k.PID, k.Start) {
		t.Fatal("the leader was not gone after it was reaped")
	}
	if (LocalProver{}).ProveDead([]Keeper{k}) {
		t.Error("a group whose leader exited but whose member lives was proved dead")
	}
	// The member is not our child: init reaps it once it is killed.
	syscall.Kill(member, syscall.SIGKILL)
	deadline := time.Now().Add(30 * time.Second)
	for !groupEmpty(k.Group) {
		if time.Now().After(deadline) {
			t.Fatal("the killed member's group never emptied")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !(LocalProver{}).ProveDead([]Keeper{k}) {
		t.Error("an empty group with a dead leader was not proved dead")
	}
}

func TestProveDeadOtherBootIsNotProvable(t *testing.T) {
	child := start(t, "true")
	k := keeperOf(t, child.Process.Pid)
	child.Wait()
	k.BootID = "00000000-0000-0000-0000-000000000000"
	if (LocalProver{}).ProveDead([]Keeper{k}) {
		t.Error("a keeper from another boot was judged here")
	}
}

// TestProveDeadOtherPIDNamespaceIsNotProvable describes a process from a
// real other PID namespace (unshare) and checks that it is never judged
// from here, even when its PID means a dead process in ours.
func TestProveDeadOtherPIDNamespaceIsNotProvable(t *testing.T) {
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("needs unshare(1)")
	}
	cmd := exec.Command("unshare", "--pid", "--fork", "--mount-proc", os.Args[0], "-test.run=^TestSelfHelper$")
	cmd.Env = append(os.Environ(), "XPLOCK_TEST_PRINT_SELF=1")
	b, err := cmd.Output()
	if err != nil {
		t.Skipf("cannot make a PID namespace (unshare --pid --fork --mount-proc needs root): %v", err)
	}
	var inner Keeper
	if err := json.Unmarshal(b[:strings.IndexByte(string(b), '\n')], &inner); err != nil {
		t.Fatalf("helper printed %q: %v", b, err)
	}
	me := mustSelf(t)
	if inner.PIDNamespace == me.PIDNamespace || inner.BootID != me.BootID {
		t.Fatalf("the helper was not in another PID namespace of this boot: %+v, we are %+v", inner, me)
	}
	if (LocalProver{}).ProveDead([]Keeper{inner}) {
		t.Errorf("a gone keeper from another PID namespace (%+v) was judged from here", inner)
	}
	// The same record with a PID that is provably gone here: only the
	// namespace stands between it and a proof.
	gone := start(t, "true")
	dead := keeperOf(t, gone.Process.Pid)
	gone.Wait()
	inner.PID, inner.Start = dead.PID, dead.Start
	if (LocalProver{}).ProveDead([]Keeper{inner}) {
		t.Error("a keeper from another PID namespace was judged by a PID of ours")
	}
}

// TestSelfHelper prints Self() as JSON when run as a helper process, and
// with XPLOCK_TEST_PRINT_SELF=hold stays alive until its stdin ends.
func TestSelfHelper(t *testing.T) {
	mode := os.Getenv("XPLOCK_TEST_PRINT_SELF")
	if mode == "" {
		t.Skip("helper process for the tests of other namespaces")
	}
	k, err := Self()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(k)
	os.Stdout.Write(append(b, '\n'))
	if mode == "hold" {
		io.Copy(io.Discard, os.Stdin)
	}
}

// TestProveDeadWithoutPermission: a checker that may not signal a process
// (EPERM) counts it alive, and still proves a reused PID dead by its start
// time.
func TestProveDeadWithoutPermission(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run the checker as another user")
	}
	me := mustSelf(t)
	reused := me
	reused.Start++
	checker := copyForAnyone(t, os.Args[0])
	for _, c := range []struct {
		k    Keeper
		want string
	}{{me, "alive"}, {reused, "dead"}} {
		b, _ := json.Marshal(c.k)
		cmd := exec.Command(checker, "-test.run=^TestProveHelper$")
		cmd.Env = append(os.Environ(), "XPLOCK_TEST_PROVE="+string(b), "XPLOCK_TEST_PROVE_EPERM=1")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Skipf("cannot run the checker as nobody: %v: %s", err, out)
		}
		if got := strings.Fields(string(out)); len(got) == 0 || got[0] != c.want {
			t.Errorf("checker as nobody on %+v said %q, want %s", c.k, out, c.want)
		}
	}
}

// TestProveHelper prints "dead" or "alive" for a keeper when run as a
// helper process.
func TestProveHelper(t *testing.T) {
	arg := os.Getenv("XPLOCK_TEST_PROVE")
	if arg == "" {
		t.Skip("helper process for checkers run elsewhere")
	}
	var k Keeper
	if err := json.Unmarshal([]byte(arg), &k); err != nil {
		t.Fatal(err)
	}
	if os.Getenv("XPLOCK_TEST_PROVE_EPERM") != "" && !errors.Is(syscall.Kill(k.PID, 0), syscall.EPERM) {
		t.Fatalf("the checker may signal %d: the test needs EPERM", k.PID)
	}
	verdict := "alive"
	if (LocalProver{}).ProveDead([]Keeper{k}) {
		verdict = "dead"
	}
	os.Stdout.WriteString(verdict + "\n")
}

// copyForAnyone copies the executable at path where any user may run it.
func copyForAnyone(t *testing.T, path string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "xplock-liveness")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	copied := filepath.Join(dir, "checker")
	if err := os.WriteFile(copied, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return copied
}

func mustSelf(t *testing.T) Keeper {
	t.Helper()
	k, err := Self()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// start starts a child that is killed and reaped when the test ends.
func start(t *testing.T, name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(name, args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd
}

// keeperOf describes pid, a process of this boot and PID namespace.
func keeperOf(t *testing.T, pid int) Keeper {
	t.Helper()
	st, err := readStat(pid)
	if err != nil {
		t.Fatal(err)
	}
	k := mustSelf(t)
	k.PID, k.Start = pid, st.start
	return k
}

// waitState waits until pid is in state (R, S, T, Z...).
func waitState(t *testing.T, pid int, state byte) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := readStat(pid)
		if err == nil && st.state == state {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d never reached state %c (last %c, %v)", pid, state, st.state, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestProveDeadLeaderThreadExited: Linux shows a process whose main thread
// exited while another thread runs as a zombie (state Z). It still runs,
// so neither it nor its group is proved dead until it is really gone.
func TestProveDeadLeaderThreadExited(t *testing.T) {
	if procHidesProcesses() {
		t.Skip("/proc hides processes (hidepid): groups are left to the lease")
	}
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("needs gcc to build a program whose main thread exits while another runs (Go cannot)")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "mainexit.c")
	if err := os.WriteFile(src, []byte(`#include <pthread.h>
#include <unistd.h>
static void *work(void *arg) {
	for (;;)
		pause();
	return arg;
}
int main(void) {
	pthread_t t;
	if (pthread_create(&t, NULL, work, NULL) != 0)
		return 1;
	pthread_exit(NULL);
}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "mainexit")
	if out, err := exec.Command(gcc, "-pthread", "-o", bin, src).CombinedOutput(); err != nil {
		t.Skipf("gcc cannot build the helper: %v: %s", err, out)
	}
	cmd := exec.Command(bin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	k := keeperOf(t, cmd.Process.Pid)
	waitState(t, k.PID, 'Z')

	// A keeper that is gone whose group is the running process's.
	gone := start(t, "true")
	ofGroup := keeperOf(t, gone.Process.Pid)
	gone.Wait()
	ofGroup.Group = k.PID
	withGroup := k
	withGroup.Group = k.PID

	for _, c := range []struct {
		name string
		k    Keeper
	}{{"the process", k}, {"the process with its group", withGroup}, {"a gone keeper with the process's group", ofGroup}} {
		if (LocalProver{}).ProveDead([]Keeper{c.k}) {
			t.Errorf("%s was proved dead while a thread of it runs (%+v)", c.name, c.k)
		}
	}
	cmd.Process.Kill()
	cmd.Wait()
	for _, c := range []Keeper{k, withGroup, ofGroup} {
		if !(LocalProver{}).ProveDead([]Keeper{c}) {
			t.Errorf("%+v was not proved dead once the process was killed and reaped", c)
		}
	}
}

// TestProveDeadOtherTimeNamespaceIsNotProvable: /proc/PID/stat's start time
// is shifted by the reader's time namespace, so a live process in another
// one looks like a reused PID. It must not be judged from here, nor judge
// us from there.
func TestProveDeadOtherTimeNamespaceIsNotProvable(t *testing.T) {
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("needs unshare(1)")
	}
	if err := exec.Command("unshare", "--time", "--boottime", "100000", "--fork", "true").Run(); err != nil {
		t.Skipf("cannot make a time namespace (unshare --time needs root or a user namespace, and Linux 5.6): %v", err)
	}
	holder := exec.Command("unshare", "--time", "--boottime", "100000", "--fork", os.Args[0], "-test.run=^TestSelfHelper$")
	holder.Env = append(os.Environ(), "XPLOCK_TEST_PRINT_SELF=hold")
	stdin, err := holder.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer holder.Wait()
	defer stdin.Close() // the helper holds on until its stdin ends
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("the helper printed nothing: %v", err)
	}
	var inner Keeper
	if err := json.Unmarshal([]byte(line), &inner); err != nil {
		t.Fatalf("helper printed %q: %v", line, err)
	}
	me := mustSelf(t)
	if inner.TimeNamespace == me.TimeNamespace || inner.PIDNamespace != me.PIDNamespace || inner.BootID != me.BootID {
		t.Fatalf("the helper was not in another time namespace of this boot and PID namespace: %+v, we are %+v", inner, me)
	}
	if (LocalProver{}).ProveDead([]Keeper{inner}) {
		t.Errorf("a live keeper in another time namespace (%+v) was proved dead from here", inner)
	}

	// The other way round: a checker in another time namespace judges us.
	b, _ := json.Marshal(me)
	checker := exec.Command("unshare", "--time", "--boottime", "100000", "--fork", os.Args[0], "-test.run=^TestProveHelper$")
	checker.Env = append(os.Environ(), "XPLOCK_TEST_PROVE="+string(b))
	out, err := checker.CombinedOutput()
	if err != nil {
		t.Fatalf("checker in a time namespace: %v: %s", err, out)
	}
	if got := strings.Fields(string(out)); len(got) == 0 || got[0] != "alive" {
		t.Errorf("a checker in another time namespace said %q about this live process", out)
	}
}

// TestWatchKeepersWakesOnExit: a watch wakes when the keeper's group
// leader exits, not before, and not for a keeper of another boot.
func TestWatchKeepersWakesOnExit(t *testing.T) {
	if _, err := unix.PidfdOpen(os.Getpid(), 0); err != nil {
		t.Skipf("no pidfd_open here (%v): waiters fall back to their looks", err)
	}
	gone := start(t, "true")
	dead := keeperOf(t, gone.Process.Pid)
	gone.Wait()
	leader := exec.Command("sleep", "1000")
	leader.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := leader.Start(); err != nil {
		t.Fatal(err)
	}
	defer leader.Process.Kill()
	// Run mode: xplock (gone here) keeps the tenure with CMD's group.
	k := dead
	k.Group = leader.Process.Pid
	elsewhere := keeperOf(t, leader.Process.Pid)
	elsewhere.BootID = "00000000-0000-0000-0000-000000000000"
	exited, stop := watchKeepers([]HolderState{{Keepers: []Keeper{k, elsewhere}}})
	defer stop()
	select {
	case <-exited:
		t.Fatal("the watch woke while the group's leader ran")
	case <-time.After(100 * time.Millisecond):
	}
	leader.Process.Kill()
	leader.Wait()
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatal("the watch did not wake when the group's leader exited")
	}
}

// TestWatchKeepersStops: stopping a watch ends it without a wake-up, and a
// keeper already gone (its PID now another process's) is not watched: the
// process with its PID never wakes the waiter.
func TestWatchKeepersStops(t *testing.T) {
	if _, err := unix.PidfdOpen(os.Getpid(), 0); err != nil {
		t.Skipf("no pidfd_open here (%v)", err)
	}
	child := start(t, "sleep", "1000")
	k := keeperOf(t, child.Process.Pid)
	exited, stop := watchKeepers([]HolderState{{Keepers: []Keeper{k}}})
	stop()
	child.Process.Kill()
	child.Wait()
	select {
	case <-exited:
		t.Fatal("a stopped watch woke")
	case <-time.After(100 * time.Millisecond):
	}
	other := start(t, "sleep", "1000")
	reused := keeperOf(t, other.Process.Pid)
	reused.Start++ // the keeper started at another time: its PID was reused
	reused.Group = 0
	exited, stop = watchKeepers([]HolderState{{Keepers: []Keeper{reused}}})
	defer stop()
	select {
	case <-exited:
		t.Fatal("a keeper whose PID was reused was watched")
	case <-time.After(100 * time.Millisecond):
	}
}
