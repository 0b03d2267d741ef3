package lock

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Self describes the calling process as a Keeper (without a Group). It
// fails with an error wrapping ErrNoLiveness when /proc cannot tell who we
// are.
func Self() (Keeper, error) { return self() }

// self is computed once: a process never changes its boot, PID namespace,
// PID or start time, nor its time namespace (unshare moves only children,
// and setns refuses a process with many threads, as every Go program is).
var self = sync.OnceValues(func() (Keeper, error) {
	pid := os.Getpid()
	// A /proc mounted from another PID namespace would describe someone
	// else: /proc/self must be us.
	if link, err := os.Readlink("/proc/self"); err != nil || link != strconv.Itoa(pid) {
		return Keeper{}, fmt.Errorf("%w: /proc/self is not this process (/proc missing, or from another PID namespace)", ErrNoLiveness)
	}
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return Keeper{}, fmt.Errorf("%w: %w", ErrNoLiveness, err)
	}
	ns, err := os.Stat("/proc/self/ns/pid")
	if err != nil {
		return Keeper{}, fmt.Errorf("%w: %w", ErrNoLiveness, err)
	}
	// A kernel without time namespaces has no link: 0 then, as for
	// everyone on this boot.
	var timeNS uint64
	if tns, err := os.Stat("/proc/self/ns/time"); err == nil {
		timeNS = tns.Sys().(*syscall.Stat_t).Ino
	} else if !errors.Is(err, os.ErrNotExist) {
		return Keeper{}, fmt.Errorf("%w: %w", ErrNoLiveness, err)
	}
	st, err := readStat(pid)
	if err != nil {
		return Keeper{}, fmt.Errorf("%w: %w", ErrNoLiveness, err)
	}
	return Keeper{
		BootID:        string(bytes.TrimSpace(boot)),
		PIDNamespace:  ns.Sys().(*syscall.Stat_t).Ino,
		TimeNamespace: timeNS,
		PID:           pid,
		Start:         st.start,
	}, nil
})

// ProveDead reports whether every keeper is provably gone.
func (LocalProver) ProveDead(keepers []Keeper) bool {
	if len(keepers) == 0 {
		return false
	}
	me, err := self()
	if err != nil {
		return false
	}
	for _, k := range keepers {
		if k == me {
			return false // this very process, alive: no need to read /proc
		}
		if provedDead.has(k) {
			continue
		}
		// Start times read differently in another time namespace: a live
		// process there would look like a reused PID.
		if k.BootID != me.BootID || k.PIDNamespace != me.PIDNamespace || k.TimeNamespace != me.TimeNamespace ||
			!processGone(k.PID, k.Start) {
			return false
		}
		if k.Group != 0 && !groupEmpty(k.Group) {
			return false
		}
		provedDead.add(k)
	}
	return true
}

// provedDead remembers the keepers this process proved gone, so that a
// waiter's look and the acquisition right after it scan /proc once: a
// process that started at a given time never comes back, and a group with
// no member left but zombies is not joined again in practice.
var provedDead deaths

// deaths is a small set of the most recently proved keepers.
type deaths struct {
	mu   sync.Mutex
	ring [16]Keeper
	next int
}

func (d *deaths) has(k Keeper) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, r := range d.ring {
		if r == k {
			return true
		}
	}
	return false
}

func (d *deaths) add(k Keeper) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ring[d.next] = k
	d.next = (d.next + 1) % len(d.ring)
}

// processGone reports whether the process pid that started at start is
// provably gone: no such PID, a PID that now belongs to a process started
// at another time, or a zombie with no thread left (it runs no more code;
// its parent has not reaped it yet).
func processGone(pid int, start uint64) bool {
	if pid <= 0 {
		return false
	}
	switch err := syscall.Kill(pid, 0); {
	case errors.Is(err, syscall.ESRCH):
		return true
	case err != nil && !errors.Is(err, syscall.EPERM):
		return false
	}
	st, err := readStat(pid)
	if errors.Is(err, os.ErrNotExist) {
		// It exited between the two looks, unless /proc hides it from us
		// (hidepid): ask the kernel again.
		return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
	}
	if err != nil {
		return false
	}
	return st.start != start || zombie(pid, st)
}

// groupEmpty reports whether process group pgid has no member left that
// can still run: kill(-pgid, 0) fails with ESRCH, or every member is a
// zombie. Zombies must not keep a group alive: an orphan of a dead xplock
// is reparented to PID 1, which in many containers never reaps it. A group
// with a member this process may not signal, and a group ID taken again by
// an unrelated group, count as alive: both only make the lease decide.
func groupEmpty(pgid int) bool {
	if pgid <= 0 {
		return false
	}
	switch err := syscall.Kill(-pgid, 0); {
	case errors.Is(err, syscall.ESRCH):
		return true
	case err != nil:
		return false
	}
	// The common case, a live group, is settled by its leader.
	if st, err := readStat(pgid); err == nil && st.pgrp == pgid && !zombie(pgid, st) {
		return false
	}
	return onlyZombiesIn(pgid)
}

// onlyZombiesIn reports whether every process of group pgid that /proc
// lists is a zombie. A /proc that hides other users' processes (hidepid)
// could hide a live member: nothing is proved there.
func onlyZombiesIn(pgid int) bool {
	if procHidesProcesses() {
		return false
	}
	dir, err := os.Open("/proc")
	if err != nil {
		return false
	}
	defer dir.Close()
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return false
	}
	buf := make([]byte, 1024)
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil {
			continue
		}
		st, err := readStatInto(pid, buf)
		if err != nil {
			continue // gone meanwhile
		}
		if st.pgrp == pgid && !zombie(pid, st) {
			return false
		}
	}
	return true
}

// procHidesProcesses reports whether /proc is mounted with hidepid, or
// cannot be told.
var procHidesProcesses = sync.OnceValue(func() bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return true
	}
	for line := range bytes.Lines(b) {
		fields := bytes.Fields(line)
		if len(fields) > 4 && string(fields[4]) == "/proc" {
			opts := string(line)
			return strings.Contains(opts, "hidepid=") && !strings.Contains(opts, "hidepid=0") &&
				!strings.Contains(opts, "hidepid=off")
		}
	}
	return true
})

// procStat is what xplock needs from /proc/PID/stat.
type procStat struct {
	state byte
	pgrp  int
	start uint64
}

// zombie reports whether process pid, whose /proc/PID/stat says st, has
// exited and runs no more code; its parent has not reaped it yet. Linux
// also shows a process as Z when only its main thread exited (pthread_exit
// from main) while other threads run on: its thread count, which counts
// the exited main thread until the last one ends, tells them apart. Only
// processes in state Z or X pay for that second read.
func zombie(pid int, st procStat) bool {
	if st.state != 'Z' && st.state != 'X' {
		return false
	}
	threads, err := readThreads(pid)
	if errors.Is(err, os.ErrNotExist) {
		return true // reaped meanwhile
	}
	return err == nil && threads <= 1
}

// readThreads reads the number of threads from /proc/PID/status.
func readThreads(pid int) (int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for line := range bytes.Lines(b) {
		if n, ok := bytes.CutPrefix(line, []byte("Threads:")); ok {
			return strconv.Atoi(string(bytes.TrimSpace(n)))
		}
	}
	return 0, fmt.Errorf("no Threads line in /proc/%d/status", pid)
}

func readStat(pid int) (procStat, error) {
	return readStatInto(pid, make([]byte, 1024))
}

// readStatInto reads /proc/PID/stat with buf, in one read: a scan of a
// process group reads one per process on the machine, and os.ReadFile
// costs twice the system calls (the scan takes half the time). A line
// longer than buf (it is about 300 bytes) is an error.
func readStatInto(pid int, buf []byte) (procStat, error) {
	path := "/proc/" + strconv.Itoa(pid) + "/stat"
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return procStat{}, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer syscall.Close(fd)
	n, err := syscall.Read(fd, buf)
	for err == syscall.EINTR {
		n, err = syscall.Read(fd, buf)
	}
	switch {
	case err != nil:
		return procStat{}, &os.PathError{Op: "read", Path: path, Err: err}
	case n == len(buf):
		return procStat{}, fmt.Errorf("%s is longer than %d bytes", path, len(buf))
	}
	return parseStat(buf[:n])
}

// parseStat reads the state (field 3), process group (field 5) and start
// time (field 22) of a
// /proc/PID/stat line. The command name (field 2) is in parentheses and may
// itself hold spaces and parentheses, so the fields are counted from the
// last ')'.
func parseStat(b []byte) (procStat, error) {
	end := bytes.LastIndexByte(b, ')')
	if end < 0 {
		return procStat{}, fmt.Errorf("malformed /proc stat line %q", b)
	}
	fields := bytes.Fields(b[end+1:])
	const stateField, pgrpField, startField = 3, 5, 22 // as proc(5) numbers them
	if len(fields) <= startField-stateField || len(fields[0]) != 1 {
		return procStat{}, fmt.Errorf("malformed /proc stat line %q", b)
	}
	start, err := strconv.ParseUint(string(fields[startField-stateField]), 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("malformed start time in /proc stat line %q: %w", b, err)
	}
	pgrp, err := strconv.Atoi(string(fields[pgrpField-stateField]))
	if err != nil {
		return procStat{}, fmt.Errorf("malformed process group in /proc stat line %q: %w", b, err)
	}
	return procStat{state: fields[0][0], pgrp: pgrp, start: start}, nil
}

// watchKeepers watches the processes that keep holders' tenures alive on
// this machine (the same boot, PID namespace and time namespace as this
// process): each keeper itself and the leader of its process group, if it
// has one (run mode's CMD leads its own group). exited receives a value
// (coalesced) when one of them exits, or has exited by the time it is
// watched; stop ends the watch. A kernel without pidfd_open (before 5.3)
// watches nothing, and the waiter's looks notice the deaths instead.
//
// A wake-up only makes the waiter look: the store's proof (ProveDead)
// alone says whether the tenure ended. So a PID reused by another process
// can only make a wake-up early (a look that finds the tenure standing) or
// late (the next look), never end a tenure.
func watchKeepers(holders []HolderState) (exited <-chan struct{}, stop func()) {
	me, err := self()
	if err != nil {
		return nil, func() {}
	}
	ch := make(chan struct{}, 1)
	var files []*os.File
	watch := func(pid int, same func(procStat) bool) {
		f, err := openProcess(pid, same)
		switch {
		case errors.Is(err, syscall.ESRCH):
			poke(ch)
		case err == nil:
			files = append(files, f)
			go awaitExit(f, ch)
		}
	}
	for _, h := range holders {
		for _, k := range h.Keepers {
			if k.BootID != me.BootID || k.PIDNamespace != me.PIDNamespace || k.TimeNamespace != me.TimeNamespace {
				continue
			}
			if !processGone(k.PID, k.Start) {
				watch(k.PID, func(st procStat) bool { return st.start == k.Start })
			}
			if k.Group > 0 && k.Group != k.PID {
				watch(k.Group, func(st procStat) bool { return st.pgrp == k.Group })
			}
		}
	}
	return ch, func() {
		for _, f := range files {
			f.Close()
		}
	}
}

// openProcess opens a pidfd on process pid, nonblocking so that Go's poller
// waits for it, and checks that it is the process meant (same says so of
// its /proc/PID/stat, read after the open so that the pidfd cannot name
// another). It fails with ESRCH when the process meant is gone already.
func openProcess(pid int, same func(procStat) bool) (*os.File, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "pidfd:"+strconv.Itoa(pid))
	if st, err := readStat(pid); err != nil || !same(st) {
		f.Close()
		return nil, syscall.ESRCH
	}
	return f, nil
}

// awaitExit pokes ch once the process of pidfd f has exited (a pidfd is
// readable from then on, and read(2) on it fails, so readiness is asked of
// poll(2) and waited for through Go's poller), unless f is closed first.
func awaitExit(f *os.File, ch chan struct{}) {
	raw, err := f.SyscallConn()
	if err != nil {
		return
	}
	err = raw.Read(func(fd uintptr) bool {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 0)
		return err == nil && n > 0
	})
	if err == nil {
		poke(ch)
	}
}
