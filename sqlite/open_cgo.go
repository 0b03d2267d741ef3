package sqlite

/*
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

// xplock_connection runs for every new SQLite connection in the process and
// changes only those that xplock opened: their URI says so.
static int xplock_connection(sqlite3 *db, char **errmsg, const void *api) {
	const char *file = sqlite3_db_filename(db, "main");
	if (file != 0 && sqlite3_uri_boolean(file, "xplock_no_ckpt_on_close", 0)) {
		sqlite3_db_config(db, XPLOCK_DBCONFIG_NO_CKPT_ON_CLOSE, 1, (int *)0);
		sqlite3_create_function(db, "xplock_checkpoint_on_close", 1, XPLOCK_UTF8 | XPLOCK_DIRECTONLY, 0,
			xplock_checkpoint_on_close, 0, 0);
	}
	return 0;
}

static int xplock_register_connection_setup(void) {
	return sqlite3_auto_extension((void (*)(void))xplock_connection);
}
*/
import "C"

import (
	"fmt"
	"sync"
)

// noCheckpointOnCloseParam is the URI parameter that makes a connection skip
// the checkpoint SQLite runs when the last connection to a database closes,
// and gives it the SQL function xplock_checkpoint_on_close(ON) to change
// that back.
const noCheckpointOnCloseParam = "xplock_no_ckpt_on_close"

var registerConnectionSetup = sync.OnceValue(func() error {
	if rc := C.xplock_register_connection_setup(); rc != 0 {
		return fmt.Errorf("sqlite3_auto_extension: error %d", int(rc))
	}
	return nil
})
