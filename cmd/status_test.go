package cmd_test

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
)

// TestStatusManyKeys: more keys on one command line than a store query
// takes parameters (SQLite's limit is 32,766), each shown once, in order.
func TestStatusManyKeys(t *testing.T) {
	t.Setenv("XPLOCK_DB", filepath.Join(t.TempDir(), "locks.db"))
	run(t, 0, "acquire", "last", "-H", "h")
	args := []string{"status", "--json"}
	for i := range 40_000 {
		args = append(args, fmt.Sprintf("k%d", i))
	}
	args = append(args, "last", "k0")
	var st struct {
		Locks []struct{ Key, State, Holder string }
	}
	if err := json.Unmarshal([]byte(run(t, 0, args...)), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Locks) != 40_001 || st.Locks[0].Key != "k0" || st.Locks[39_999].Key != "k39999" ||
		st.Locks[40_000].Key != "last" || st.Locks[40_000].State != "held" || st.Locks[40_000].Holder != "h" {
		t.Errorf("status of 40,000 keys and one held: %d locks, first %+v, last %+v",
			len(st.Locks), st.Locks[0], st.Locks[len(st.Locks)-1])
	}
}
