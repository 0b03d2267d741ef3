package sqlite

/*
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

// Declared here rather than included: the definitions are those of the
// SQLite that github.com/mattn/go-sqlite3 links into the program (its own
// amalgamation, or the system's library with the libsqlite3 build tag).
typedef struct sqlite3 sqlite3;
typedef struct sqlite3_context sqlite3_context;
typedef struct sqlite3_value sqlite3_value;
int sqlite3_auto_extension(void (*xEntryPoint)(void));
int sqlite3_db_config(sqlite3 *db, int op, ...);
const char *sqlite3_db_filename(sqlite3 *db, const char *zDbName);
int sqlite3_uri_boolean(const char *zFile, const char *zParam, int bDefault);
int sqlite3_create_function(sqlite3 *db, const char *zFunctionName, int nArg, int eTextRep, void *pApp,
	void (*xFunc)(sqlite3_context *, int, sqlite3_value **),
	void (*xStep)(sqlite3_context *, int, sqlite3_value **), void (*xFinal)(sqlite3_context *));
sqlite3 *sqlite3_context_db_handle(sqlite3_context *ctx);
int sqlite3_value_int(sqlite3_value *v);
void sqlite3_result_int(sqlite3_context *ctx, int v);
int sqlite3_create_function_v2(sqlite3 *db, const char *zFunctionName, int nArg, int eTextRep, void *pApp,
	void (*xFunc)(sqlite3_context *, int, sqlite3_value **),
	void (*xStep)(sqlite3_context *, int, sqlite3_value **), void (*xFinal)(sqlite3_context *),
	void (*xDestroy)(void *));
void *sqlite3_user_data(sqlite3_context *ctx);
int sqlite3_busy_handler(sqlite3 *db, int (*xBusy)(void *, int), void *arg);
int sqlite3_is_interrupted(sqlite3 *db);

// From sqlite3.h.
#define XPLOCK_DBCONFIG_NO_CKPT_ON_CLOSE 1006
#define XPLOCK_UTF8 1
#define XPLOCK_DIRECTONLY 0x000080000

// xplock_checkpoint_on_close(ON) gives a connection SQLite's usual close
// back (ON = 1) or takes it away (ON = 0).
static void xplock_checkpoint_on_close(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
	int on = sqlite3_value_int(argv[0]) != 0;
	sqlite3_db_config(sqlite3_context_db_handle(ctx), XPLOCK_DBCONFIG_NO_CKPT_ON_CLOSE, !on, (int *)0);
	sqlite3_result_int(ctx, on);
}

// xplock_busy_state is what a connection's busy handler knows.
struct xplock_busy_state {
	sqlite3 *db;
	long long timeout_us;
};

// xplock_waiting_for is the call (a cgo.Handle of its context) whose
// statement this thread runs, 0 for none: see execWaiting.
static __thread uintptr_t xplock_waiting_for;

static void xplock_set_waiting_for(uintptr_t call) {
	xplock_waiting_for = call;
}

// Defined in busy_cgo.go.
extern int xplockCallEnded(uintptr_t call);

// xplock_busy waits for a lock held by another connection like SQLite's own
// busy timeout handler, but in steps that fit transactions lasting a few
// hundred microseconds: 50 µs doubling to 2 ms, where SQLite sleeps 1, 2,
// 5, 10, 15, 20, 25 ms... A transaction that lost a race for the write lock
// then waits for the winner's transaction, not for ten times as long.
//
// It gives up at once when the statement is interrupted, as go-sqlite3
// does when the caller's context ends, or when the context of the call
// this thread runs the statement for has ended: a wait for the write lock
// keeps the caller's deadline, however long another program holds the
// lock.
static int xplock_busy(void *arg, int count) {
	struct xplock_busy_state *st = arg;
	long long waited_us = count <= 6 ? 50LL * ((1LL << count) - 1) : 3150LL + (count - 6) * 2000LL;
	long long delay_us = count < 6 ? 50LL << count : 2000LL;
	if (waited_us >= st->timeout_us || sqlite3_is_interrupted(st->db) ||
		(xplock_waiting_for != 0 && xplockCallEnded(xplock_waiting_for))) {
		return 0;
	}
	if (delay_us > st->timeout_us - waited_us) {
		delay_us = st->timeout_us - waited_us;
	}
	usleep((useconds_t)delay_us);
	return 1;
}

// xplock_busy_timeout(MS) sets the connection's busy handler to xplock_busy
// with a timeout of MS milliseconds (none for 0).
static void xplock_busy_timeout(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
	struct xplock_busy_state *st = sqlite3_user_data(ctx);
	int ms = sqlite3_value_int(argv[0]);
	st->timeout_us = (long long)ms * 1000;
	sqlite3_busy_handler(st->db, ms > 0 ? xplock_busy : 0, st);
	sqlite3_result_int(ctx, ms);
}

// xplock_connection runs for every new SQLite connection in the process and
// changes only those that xplock opened: their URI says so.
static int xplock_connection(sqlite3 *db, char **errmsg, const void *api) {
	const char *file = sqlite3_db_filename(db, "main");
	if (file != 0 && sqlite3_uri_boolean(file, "xplock_connection", 0)) {
		sqlite3_db_config(db, XPLOCK_DBCONFIG_NO_CKPT_ON_CLOSE, 1, (int *)0);
		sqlite3_create_function(db, "xplock_checkpoint_on_close", 1, XPLOCK_UTF8 | XPLOCK_DIRECTONLY, 0,
			xplock_checkpoint_on_close, 0, 0);
		struct xplock_busy_state *st = calloc(1, sizeof *st);
		if (st == 0) {
			return 0; // SQLite's own busy handler stays
		}
		st->db = db;
		// SQLite frees st when the connection closes.
		sqlite3_create_function_v2(db, "xplock_busy_timeout", 1, XPLOCK_UTF8 | XPLOCK_DIRECTONLY, st,
			xplock_busy_timeout, 0, 0, free);
	}
	return 0;
}

static int xplock_register_connection_setup(void) {
	return sqlite3_auto_extension((void (*)(void))xplock_connection);
}
*/
import "C"

import (
	"context"
	"database/sql"
	"fmt"
	"runtime"
	"runtime/cgo"
	"sync"

	sqlite3 "github.com/mattn/go-sqlite3"
)

// connectionParam is the URI parameter that marks xplock's connections. On
// them, the connection setup above
//   - skips the checkpoint SQLite runs when the last connection to a
//     database closes (see Store.Close), with the SQL function
//     xplock_checkpoint_on_close(ON) to change that back;
//   - adds the SQL function xplock_busy_timeout(MS), which the driver's
//     connect hook calls once go-sqlite3 has set its own busy timeout.
const connectionParam = "xplock_connection"

// driverName is the database/sql driver of xplock's connections:
// go-sqlite3 with a connect hook.
const driverName = "sqlite3-xplock"

// registerConnectionSetup makes every later SQLite connection of the
// process run xplock_connection, and registers driverName. Without it the
// store works all the same with go-sqlite3's "sqlite3" driver, only every
// Close pays for a checkpoint and waits for locks in coarser steps.
var registerConnectionSetup = sync.OnceValue(func() error {
	if rc := C.xplock_register_connection_setup(); rc != 0 {
		return fmt.Errorf("sqlite3_auto_extension: error %d", int(rc))
	}
	sql.Register(driverName, &sqlite3.SQLiteDriver{ConnectHook: func(c *sqlite3.SQLiteConn) error {
		_, err := c.Exec(fmt.Sprintf("SELECT xplock_busy_timeout(%d)", busySliceMillis), nil)
		return err
	}})
	return nil
})

// execWaiting runs query, a statement without arguments that may wait for
// another connection's lock (BEGIN IMMEDIATE, or COMMIT in rollback-journal
// mode), on conn: a wait gives up soon after ctx ends, with SQLITE_BUSY.
// go-sqlite3 watches a context by running each statement in a goroutine of
// its own, which costs more than the uncontended statement itself; here
// the busy handler asks about ctx instead, and only while it waits.
func execWaiting(ctx context.Context, conn *sql.Conn, query string) error {
	if ctx.Done() == nil || registerConnectionSetup() != nil {
		// Nothing to watch, or connections without xplock_busy.
		_, err := conn.ExecContext(ctx, query)
		return err
	}
	// The busy handler runs on the thread that runs the statement.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	call := cgo.NewHandle(ctx)
	defer call.Delete()
	C.xplock_set_waiting_for(C.uintptr_t(call))
	defer C.xplock_set_waiting_for(0)
	_, err := conn.ExecContext(context.WithoutCancel(ctx), query)
	return err
}
