package cmd

import "syscall"

// becomeSubreaper makes xplock the parent of orphans among its
// descendants (PR_SET_CHILD_SUBREAPER), so that it can reap the ones left
// in CMD's process group: a zombie still counts as a member of its group.
func becomeSubreaper() {
	const prSetChildSubreaper = 36
	syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0)
}
