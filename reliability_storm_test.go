package main

// Busy storm: 32 xplock processes start at the same moment on a database
// that does not exist yet (so they race to create its directory, file and
// schema), then keep running acquire, release, renew and status on a few
// keys. No store error such as "database is locked" may reach a user, and
// every exit code must be one SPEC.md allows for the command.

import (
	"database/sql"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestReliabilityBusyStorm(t *testing.T) {
	scale := reliabilityScale(t)
	bin := xplockBin(t)
	const lanes = 32
	rounds := 2 * scale
	if testing.Short() {
		rounds = 1
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	allowed := map[string][]int{"acquire": {0, 3, 4}, "release": {0, 5}, "renew": {0, 5}, "status": {0}}
	var mu sync.Mutex
	exits := map[string]int{}
	total := 0
	start := time.Now()
	for round := range rounds {
		dir := t.TempDir()
		// Even rounds: not even the directory exists. Odd rounds: an empty
		// file, as a user might create with touch.
		db := filepath.Join(dir, "state", "xplock", "locks.db")
		if round%2 == 1 {
			db = filepath.Join(dir, "locks.db")
			if err := os.WriteFile(db, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		env := childEnv(db)
		commands := 2 - round%2 // one each on an empty file: enough to race for the schema
		go1 := make(chan struct{})
		var wg sync.WaitGroup
		for lane := range lanes {
			rng := rand.New(rand.NewPCG(seed, uint64(round*lanes+lane)))
			holder := fmt.Sprintf("s%d", lane)
			wg.Go(func() {
				<-go1
				for range commands {
					args := stormCommand(rng, holder)
					p := runProc(t, bin, args, env, dir, 0)
					checkNoRace(t, p)
					if !slices.Contains(allowed[args[0]], p.Exit) {
						t.Errorf("exit %d is not one SPEC.md allows for %s: %s", p.Exit, args[0], p)
					} else if storeErrorPattern.MatchString(p.Stderr) {
						t.Errorf("a store error reached the user: %s", p)
					}
					mu.Lock()
					exits[fmt.Sprintf("%s %d", args[0], p.Exit)]++
					total++
					mu.Unlock()
				}
			})
		}
		close(go1)
		wg.Wait()
		raw, err := sql.Open("sqlite3", "file:"+db+"?mode=ro")
		if err != nil {
			t.Fatal(err)
		}
		var integrity string
		var version int
		if err := raw.QueryRow("PRAGMA integrity_check").Scan(&integrity); err != nil || integrity != "ok" {
			t.Errorf("round %d: PRAGMA integrity_check: %q, %v", round, integrity, err)
		}
		if err := raw.QueryRow("SELECT schema_version FROM xplock_store").Scan(&version); err != nil || version < 1 {
			t.Errorf("round %d: schema version %d, %v", round, version, err)
		}
		raw.Close()
	}
	t.Logf("%d rounds of %d processes starting at once on a new database, %d commands in all, in %s; exits: %v",
		rounds, lanes, total, time.Since(start).Round(time.Millisecond), exits)
}

// stormCommand picks a command with its flags.
func stormCommand(rng *rand.Rand, holder string) []string {
	key := fmt.Sprintf("k%d", rng.IntN(3))
	pick := func(options ...string) string { return options[rng.IntN(len(options))] }
	switch rng.IntN(10) {
	case 0, 1, 2, 3:
		args := []string{"acquire", key, "-H", holder, "--ttl", pick("1s", "10s")}
		if rng.IntN(3) == 0 {
			args = append(args, "--nowait")
		} else {
			args = append(args, "--wait", pick("1ms", "100ms", "1s"))
		}
		if rng.IntN(4) == 0 {
			args = append(args, "--unchecked")
		}
		if rng.IntN(2) == 0 {
			args = append(args, "--json")
		}
		return args
	case 4, 5:
		args := []string{"release", key, "-H", holder, "--json"}
		switch rng.IntN(6) {
		case 0:
			args = append(args, "--keep-poison")
		case 1:
			args = append(args, "--force")
		}
		return args
	case 6:
		return []string{"renew", key, "-H", holder, "--ttl", pick("1s", "1m")}
	default:
		return []string{"status", pick(key, "k0", "--history"), "--json"}
	}
}
