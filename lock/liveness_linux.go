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
)

// Self describes the calling process as a Keeper (without a Group). It
// fails with an error wrapping ErrNoLiveness when /proc cannot tell who we
// are.
func Self() (Keeper, error) { return self() }

// self is computed once: a process never changes its boot, PID namespace,
// PID or start time.
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
	st, err := readStat(pid)
	if err != nil {
		return Keeper{}, fmt.Errorf("%w: %w", ErrNoLiveness, err)
	}
	return Keeper{
		BootID:       string(bytes.TrimSpace(boot)),
		PIDNamespace: ns.Sys().(*syscall.Stat_t).Ino,
		PID:          pid,
		Start:        st.start,
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
		if provedDead.has(k) {
			continue
		}
		if k.BootID != me.BootID || k.PIDNamespace != me.PIDNamespace || !processGone(k.PID, k.Start) {
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
// at another time, or a zombie (it runs no more code; its parent has not
// reaped it yet).
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
	return st.start != start || st.zombie()
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
	if st, err := readStat(pgid); err == nil && st.pgrp == pgid && !st.zombie() {
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
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return false
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStat(pid)
		if err != nil {
			continue // gone meanwhile
		}
		if st.pgrp == pgid && !st.zombie() {
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

// zombie: the process has exited and runs no more code; its parent has
// not reaped it yet.
func (st procStat) zombie() bool { return st.state == 'Z' || st.state == 'X' }

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	return parseStat(b)
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
