package sqlite

// #include <stdint.h>
import "C"

import (
	"context"
	"runtime/cgo"
)

// xplockCallEnded tells the busy handler of open_cgo.go whether the context
// of the call it waits for (a cgo.Handle made by execWaiting) has
// ended. It runs only while a statement waits for another connection's
// lock.
//
//export xplockCallEnded
func xplockCallEnded(call C.uintptr_t) C.int {
	if cgo.Handle(call).Value().(context.Context).Err() != nil {
		return 1
	}
	return 0
}
