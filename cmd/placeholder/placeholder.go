// Package placeholder is the leader of run mode's process group while
// xplock waits for the lock: xplock started again, as Name, waiting on a
// pipe. Once the lock is held xplock writes CMD's path and environment to
// the pipe, and the placeholder execs CMD in its place, so that CMD leads
// the group that the tenure names and that xplock signals. If xplock gives
// up or dies first, the pipe closes unwritten and the placeholder exits.
//
// The work is done in init, before the packages xplock links initialise
// (most of the cost of starting xplock, and of no use here). That is why
// this package imports nothing but syscall: Go initialises it right after
// syscall, and any binary that links it acts as the placeholder when
// started as one, test binaries included.
package placeholder

import "syscall"

// Name is the placeholder's argv[0]. ps shows it before CMD's arguments.
const Name = "xplock-waiting-to-run"

// Fd is the pipe from xplock, in the placeholder.
const Fd = 3

// Exit codes of a placeholder that did not become CMD.
const (
	// ExitAbandoned: xplock closed the pipe unwritten; CMD must not run.
	ExitAbandoned = 125
	// ExitNotRunnable and ExitNotFound are a shell's codes for a CMD that
	// cannot run.
	ExitNotRunnable = 126
	ExitNotFound    = 127
)

func init() {
	if args := ownArgs(); len(args) > 1 && args[0] == Name {
		syscall.Exit(becomeCMD(args[1:]))
	}
}

// Message is what xplock writes to the pipe: CMD's resolved path and its
// whole environment, each ended by a NUL byte.
func Message(path string, env []string) []byte {
	msg := append([]byte(path), 0)
	for _, kv := range env {
		msg = append(append(msg, kv...), 0)
	}
	return msg
}

// becomeCMD waits for xplock's message and execs CMD (args) as it says. It
// returns only when CMD did not run, with the exit code to end with.
func becomeCMD(args []string) int {
	msg, err := readAll(Fd)
	syscall.Close(Fd)
	if err != nil || len(msg) == 0 {
		return ExitAbandoned
	}
	fields := split(msg)
	path, env := fields[0], fields[1:]
	err = syscall.Exec(path, args, env)
	if err == syscall.ENOEXEC {
		// A script without "#!" runs under /bin/sh, as execvp(3) and
		// flock(1) do.
		err = syscall.Exec("/bin/sh", append([]string{"/bin/sh", path}, args[1:]...), env)
	}
	syscall.Write(2, []byte("xplock: cannot run "+args[0]+": "+err.Error()+"\n"))
	if err == syscall.ENOENT {
		return ExitNotFound
	}
	return ExitNotRunnable
}

// ownArgs is this process's argv, read from /proc (package os, which has
// it, is not initialised yet). Nil where /proc is not there.
func ownArgs() []string {
	fd, err := syscall.Open("/proc/self/cmdline", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	defer syscall.Close(fd)
	cmdline, err := readAll(fd)
	if err != nil {
		return nil
	}
	return split(cmdline)
}

// readAll reads fd to its end.
func readAll(fd int) ([]byte, error) {
	var out []byte
	buf := make([]byte, 4096)
	for {
		n, err := syscall.Read(fd, buf)
		switch {
		case err == syscall.EINTR:
		case err != nil:
			return nil, err
		case n == 0:
			return out, nil
		default:
			out = append(out, buf[:n]...)
		}
	}
}

// split splits NUL-ended fields.
func split(b []byte) []string {
	var fields []string
	for start, i := 0, 0; i < len(b); i++ {
		if b[i] == 0 {
			fields = append(fields, string(b[start:i]))
			start = i + 1
		}
	}
	return fields
}
