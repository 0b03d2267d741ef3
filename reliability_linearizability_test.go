package main

// Linearizability: many real processes (xplock commands and library users)
// share one SQLite file and a few keys; every operation is recorded with its
// call and return times, and porcupine checks that the merged history can be
// put in one order, consistent with real time, in which every result is what
// SPEC.md's rules give. Leases are long: expiry is the faults test's subject.

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/sqlite"
)

// Operations of the linearizability history.
const (
	opAcquire = "acquire"
	opRelease = "release"
	opBreak   = "break"  // release --force
	opRenew   = "renew"  // xplock renew, Guard.Renew
	opAck     = "ack"    // Guard.ClearPoison
	opStatus  = "status" // xplock status, Store.Snapshot
)

// linInput is one call.
type linInput struct {
	Key     string `json:"key"`
	Holder  string `json:"holder"`
	Op      string `json:"op"`
	Via     string `json:"via"` // "cli" or "lib"
	Checked bool   `json:"checked,omitempty"`
	Wait    bool   `json:"wait,omitempty"`
	// KeepPoison releases without acknowledging.
	KeepPoison bool `json:"keep_poison,omitempty"`
	// Token names the tenure (a Guard's); 0 means any tenure of Holder.
	Token int64 `json:"token,omitempty"`
}

// linOutput is one result. Zero Generation, Token and Holder mean "not
// reported" where an API does not report them.
type linOutput struct {
	// Unknown: the process was killed during the call, or the call failed
	// in a way that does not say whether it took effect.
	Unknown bool   `json:"unknown,omitempty"`
	Err     string `json:"err,omitempty"`
	OK      bool   `json:"ok,omitempty"`
	// Busy: not acquired, another holder has the lock.
	Busy bool `json:"busy,omitempty"`
	// Refused: not held by this holder (exit 5, lock.ErrNotHeld).
	Refused    bool   `json:"refused,omitempty"`
	Holder     string `json:"holder,omitempty"`
	Generation int64  `json:"generation,omitempty"`
	Token      int64  `json:"token,omitempty"`
	Poisoned   bool   `json:"poisoned,omitempty"`
	// Signalled: poison reported as exit 3 or a *lock.PoisonError.
	Signalled bool `json:"signalled,omitempty"`
	Reentrant bool `json:"reentrant,omitempty"`
	// State and PoisonedHolders (sorted, comma-separated) are status's.
	State           string `json:"state,omitempty"`
	PoisonedHolders string `json:"poisoned_holders,omitempty"`
}

// linRecord is one line of a library worker's record file: a call before
// the operation starts, a return after it ends.
type linRecord struct {
	ID   int        `json:"id"`
	Time int64      `json:"t"`
	In   *linInput  `json:"in,omitempty"`
	Out  *linOutput `json:"out,omitempty"`
}

// linMaxHolders bounds the holders of one run (the model keeps an array).
const linMaxHolders = 24

// linState is one key as SPEC.md describes it.
type linState struct {
	Holder  int8 // current or last holder; -1 before the first acquisition
	Held    bool
	Checked bool // the open tenure had a checked acquisition
	Gen     int64
	// Token is the current (or last) tenure's token; 0 while unknown, after
	// an acquisition whose result was lost.
	Token int64
	// MinNext is a lower bound of the next tenure's token.
	MinNext int64
	// Acks are the acknowledged generations per holder; 0 for none.
	Acks [linMaxHolders]int64
}

// linModel is SPEC.md's sequential specification of one key.
type linModel struct {
	names []string
	index map[string]int8
}

func newLinModel(holders []string) *linModel {
	m := &linModel{names: holders, index: map[string]int8{}}
	for i, h := range holders {
		m.index[h] = int8(i)
	}
	return m
}

func (m *linModel) name(h int8) string {
	if h < 0 {
		return ""
	}
	return m.names[h]
}

// learnToken checks a reported token of the current tenure, or learns it.
func learnToken(s *linState, token int64) bool {
	if token == 0 {
		return true // not reported
	}
	if s.Token != 0 {
		return token == s.Token
	}
	// The unknown tenure's token is at least the bound before it began.
	if token < s.MinNext-1 {
		return false
	}
	s.Token, s.MinNext = token, max(s.MinNext, token+1)
	return true
}

// holding reports whether h holds the lock in the tenure token; maybe is
// true when that depends on a token the model does not know.
func holding(s linState, h int8, token int64) (yes, maybe bool) {
	if !s.Held || s.Holder != h {
		return false, false
	}
	if token == 0 || s.Token == token {
		return true, false
	}
	if s.Token == 0 {
		return false, true
	}
	return false, false
}

// acquire is a successful acquisition's effect, with the token unknown when
// token is 0, and what it reports.
func (m *linModel) acquire(s linState, h int8, checked bool, token int64) (n linState, reentrant, poisoned, ok bool) {
	n = s
	reentrant = s.Held
	if reentrant {
		n.Checked = s.Checked || checked
		if !learnToken(&n, token) {
			return n, false, false, false
		}
	} else {
		switch {
		case s.Holder < 0:
			n.Gen = 1
		case s.Holder != h:
			n.Gen++
		}
		n.Holder, n.Held, n.Checked = h, true, checked
		switch {
		case token == 0:
			n.Token, n.MinNext = 0, s.MinNext+1
		case token < s.MinNext:
			return n, false, false, false
		default:
			n.Token, n.MinNext = token, token+1
		}
	}
	acked := n.Acks[h]
	if acked == 0 && checked {
		acked = n.Gen // a newcomer has nothing stale
		n.Acks[h] = acked
	}
	return n, reentrant, acked != 0 && acked != n.Gen, true
}

// effect is an operation's effect when its result is unknown.
func (m *linModel) effect(s linState, in linInput) linState {
	h := m.index[in.Holder]
	switch in.Op {
	case opAcquire:
		if s.Held && s.Holder != h {
			return s
		}
		n, _, _, _ := m.acquire(s, h, in.Checked, 0)
		return n
	case opRelease:
		if yes, maybe := holding(s, h, in.Token); yes || maybe {
			n := s
			if !in.KeepPoison && n.Checked {
				n.Acks[h] = n.Gen
			}
			n.Held, n.Checked = false, false
			if maybe {
				n.Token = in.Token
			}
			return n
		}
	case opBreak:
		if s.Held {
			n := s
			n.Held, n.Checked = false, false
			return n
		}
	case opAck:
		if yes, maybe := holding(s, h, in.Token); yes || maybe {
			n := s
			n.Acks[h] = n.Gen
			if maybe {
				n.Token = in.Token
			}
			return n
		}
	}
	return s
}

// step is the state after in returned out, and whether it could.
func (m *linModel) step(s linState, in linInput, out linOutput) (bool, linState) {
	h := m.index[in.Holder]
	switch in.Op {
	case opAcquire:
		if out.Busy && out.Holder == "" {
			// The wait ran out before the store answered: nothing was
			// decided and nothing seen.
			return true, s
		}
		if s.Held && s.Holder != h {
			return out.Busy && out.Holder == m.name(s.Holder) && out.Generation == s.Gen, s
		}
		if !out.OK {
			return false, s
		}
		n, reentrant, poisoned, ok := m.acquire(s, h, in.Checked, out.Token)
		return ok && out.Generation == n.Gen && out.Poisoned == poisoned && out.Reentrant == reentrant &&
			out.Signalled == (poisoned && in.Checked) && (out.Holder == "" || out.Holder == in.Holder), n

	case opRelease, opRenew, opAck:
		yes, maybe := holding(s, h, in.Token)
		if out.Refused {
			return !yes, s
		}
		if !out.OK || !(yes || maybe) {
			return false, s
		}
		n := s
		if maybe && !learnToken(&n, in.Token) {
			return false, s
		}
		if !learnToken(&n, out.Token) || (out.Generation != 0 && out.Generation != n.Gen) ||
			(out.Holder != "" && out.Holder != in.Holder) {
			return false, s
		}
		switch in.Op {
		case opRelease:
			if !in.KeepPoison && n.Checked {
				n.Acks[h] = n.Gen // SPEC rule 3
			}
			n.Held, n.Checked = false, false
		case opAck:
			n.Acks[h] = n.Gen
		}
		return true, n

	case opBreak:
		if !s.Held {
			return out.Refused, s
		}
		n := s
		if !out.OK || !learnToken(&n, out.Token) || out.Generation != n.Gen || out.Holder != m.name(s.Holder) {
			return false, s
		}
		n.Held, n.Checked = false, false // the broken holder stays the last holder
		return true, n

	case opStatus:
		n := s
		state := lock.StateFree
		if s.Held {
			state = lock.StateHeld
		}
		if s.Holder < 0 {
			return out.OK && out.State == state && out.Holder == "" && out.Generation == 0 && out.Token == 0 &&
				out.PoisonedHolders == "", s
		}
		return out.OK && out.State == state && out.Holder == m.name(s.Holder) && out.Generation == s.Gen &&
			learnToken(&n, out.Token) && out.PoisonedHolders == m.poisoned(s), n
	}
	return false, s
}

// poisoned lists the holders whose acknowledged generation is behind.
func (m *linModel) poisoned(s linState) string {
	var names []string
	for i, g := range s.Acks {
		if g != 0 && g != s.Gen {
			names = append(names, m.names[i])
		}
	}
	slices.Sort(names)
	return strings.Join(names, ",")
}

func (m *linModel) porcupine() porcupine.Model {
	nm := porcupine.NondeterministicModel{
		Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
			byKey := map[string][]porcupine.Operation{}
			var keys []string
			for _, op := range history {
				k := op.Input.(linInput).Key
				if _, ok := byKey[k]; !ok {
					keys = append(keys, k)
				}
				byKey[k] = append(byKey[k], op)
			}
			var parts [][]porcupine.Operation
			for _, k := range keys {
				parts = append(parts, byKey[k])
			}
			return parts
		},
		Init: func() []any { return []any{linState{Holder: -1, MinNext: 1}} },
		Step: func(state, input, output any) []any {
			s, in, out := state.(linState), input.(linInput), output.(linOutput)
			if out.Unknown {
				// It took effect before the process died, or never did.
				if n := m.effect(s, in); n != s {
					return []any{s, n}
				}
				return []any{s}
			}
			if ok, n := m.step(s, in, out); ok {
				return []any{n}
			}
			return nil
		},
		Equal: func(a, b any) bool { return a.(linState) == b.(linState) },
		Hash: func(state any) uint64 {
			s := state.(linState)
			h := fnv.New64a()
			fmt.Fprint(h, s.Holder, s.Held, s.Checked, s.Gen, s.Token, s.MinNext, s.Acks)
			return h.Sum64()
		},
		DescribeOperation: func(input, output any) string {
			in, out := input.(linInput), output.(linOutput)
			return fmt.Sprintf("%s %s %s %+v -> %+v", in.Via, in.Holder, in.Op, in, out)
		},
		DescribeState: func(state any) string {
			s := state.(linState)
			held := "free"
			if s.Held {
				held = "held"
			}
			return fmt.Sprintf("%s by %s gen %d token %d (next>=%d) checked %v poisoned [%s]",
				held, m.name(s.Holder), s.Gen, s.Token, s.MinNext, s.Checked, m.poisoned(s))
		},
	}
	return nm.ToModel()
}

// linHistory collects operations from every client.
type linHistory struct {
	mu      sync.Mutex
	ops     []porcupine.Operation
	unknown int
	started map[string]int // processes, by kind
	killed  map[string]int // processes killed during an operation, by kind
	perOp   map[string]int
}

func (hist *linHistory) add(client int, in linInput, out linOutput, call, ret int64) {
	hist.mu.Lock()
	defer hist.mu.Unlock()
	hist.ops = append(hist.ops, porcupine.Operation{ClientId: client, Input: in, Output: out, Call: call, Return: ret})
	outcome := "ok"
	switch {
	case out.Unknown:
		hist.unknown++
		outcome = "unknown"
	case out.Busy:
		outcome = "busy"
	case out.Refused:
		outcome = "refused"
	case out.Signalled:
		outcome = "poisoned"
	}
	hist.perOp[in.Via+" "+in.Op+" "+outcome]++
}

func (hist *linHistory) count(kind string, started, killed int) {
	hist.mu.Lock()
	defer hist.mu.Unlock()
	hist.started[kind] += started
	hist.killed[kind] += killed
}

func TestReliabilityLinearizability(t *testing.T) {
	scale := reliabilityScale(t)
	bin := xplockBin(t)
	dir := t.TempDir()
	db := filepath.Join(dir, "locks.db")
	keys := []string{"k0", "k1", "k2"}
	const cliClients, libClients = 4, 4
	cliOps, libRounds, libOps := 25*scale, 3*scale, 200
	if testing.Short() {
		cliOps, libRounds, libOps = 15, 2, 60
	}
	var holders []string
	for i := range cliClients {
		holders = append(holders, fmt.Sprintf("c%d", i))
	}
	for i := range libClients {
		holders = append(holders, fmt.Sprintf("w%d", i))
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d, %d CLI clients x %d operations, %d library clients x %d processes x %d operations",
		seed, cliClients, cliOps, libClients, libRounds, libOps)

	hist := &linHistory{perOp: map[string]int{}, started: map[string]int{}, killed: map[string]int{}}
	start := time.Now()
	var wg sync.WaitGroup
	for i := range cliClients {
		wg.Go(func() {
			linCLIClient(t, bin, db, dir, keys, holders[i], i, cliOps, rand.New(rand.NewPCG(seed, uint64(i))), hist)
		})
	}
	for i := range libClients {
		client := cliClients + i
		wg.Go(func() {
			linLibClient(t, db, dir, keys, holders[client], client, libRounds, libOps, seed+uint64(client), hist)
		})
	}
	wg.Wait()
	// A last look at every key, by a process of its own.
	for _, k := range keys {
		in := linInput{Key: k, Holder: holders[0], Op: opStatus, Via: "cli"}
		p := runProc(t, bin, []string{"status", k, "--json"}, childEnv(db), dir, 0)
		hist.add(0, in, linParseCLI(t, in, p), p.Call, p.Return)
	}
	ran := time.Since(start)
	if t.Failed() {
		t.FailNow()
	}

	m := newLinModel(holders)
	checkStart := time.Now()
	res, info := porcupine.CheckOperationsVerbose(m.porcupine(), hist.ops, time.Duration(scale)*3*time.Minute)
	t.Logf("checked %d operations (%d of unknown outcome) on %d keys from %d xplock processes (%d killed mid-operation) "+
		"and %d library processes (%d killed): ran %s, checked in %s: %v", len(hist.ops), hist.unknown, len(keys),
		hist.started["cli"], hist.killed["cli"], hist.started["lib"], hist.killed["lib"],
		ran.Round(time.Millisecond), time.Since(checkStart).Round(time.Millisecond), res)
	t.Logf("operations: %v", hist.perOp)
	switch res {
	case porcupine.Ok:
	case porcupine.Illegal:
		f, err := os.CreateTemp("", "xplock-linearizability-*.html")
		if err == nil {
			porcupine.Visualize(m.porcupine(), info, f)
			f.Close()
		}
		m.explain(t, hist.ops)
		t.Fatalf("the history is not linearizable: no order of the operations gives the results SPEC.md's rules give; "+
			"see the visualization in %s (seed %d)", f.Name(), seed)
	default:
		t.Fatalf("the checker ran out of time (seed %d)", seed)
	}
}

// linCLIClient runs xplock commands for one holder, one process each, and
// kills some of them at a random moment.
func linCLIClient(t *testing.T, bin, db, dir string, keys []string, holder string, client, n int, rng *rand.Rand, hist *linHistory) {
	env := childEnv(db)
	held := map[string]bool{}
	started, killed := 0, 0
	for range n {
		key := keys[rng.IntN(len(keys))]
		var mine []string
		for k, h := range held {
			if h {
				mine = append(mine, k)
			}
		}
		if slices.Sort(mine); len(mine) > 0 && rng.IntN(3) != 0 {
			key = mine[rng.IntN(len(mine))] // hand locks on soon
		}
		in := linInput{Key: key, Holder: holder, Via: "cli"}
		r := rng.Float64()
		switch {
		case held[key] && r < 0.35, !held[key] && r >= 0.55 && r < 0.62:
			in.Op, in.KeepPoison = opRelease, rng.IntN(4) == 0
		case held[key] && r < 0.5, !held[key] && r >= 0.62 && r < 0.67:
			in.Op = opRenew
		case r >= 0.95:
			in.Op = opBreak
		case r >= 0.85:
			in.Op = opStatus
		default:
			in.Op, in.Checked, in.Wait = opAcquire, rng.IntN(4) != 0, rng.IntN(2) == 0
		}
		var args []string
		switch in.Op {
		case opAcquire:
			args = []string{"acquire", key, "-H", holder, "--ttl", "1h", "--json"}
			if in.Wait {
				args = append(args, "--wait", "200ms")
			} else {
				args = append(args, "--nowait")
			}
			if !in.Checked {
				args = append(args, "--unchecked")
			}
		case opRelease:
			args = []string{"release", key, "-H", holder, "--json"}
			if in.KeepPoison {
				args = append(args, "--keep-poison")
			}
		case opBreak:
			args = []string{"release", key, "-H", holder, "--force", "--json"}
		case opRenew:
			args = []string{"renew", key, "-H", holder, "--ttl", "1h", "--json"}
		case opStatus:
			args = []string{"status", key, "--json"}
		}
		var kill time.Duration
		if rng.IntN(12) == 0 {
			kill = time.Duration(1 + rng.Int64N(int64(150*time.Millisecond)))
		}
		p := runProc(t, bin, args, env, dir, kill)
		started++
		if p.Killed {
			killed++
		}
		out := linParseCLI(t, in, p)
		switch {
		case in.Op == opAcquire && out.OK:
			held[key] = true
		case in.Op == opRelease || in.Op == opRenew && out.Refused:
			held[key] = false
		case in.Op == opBreak && out.OK && out.Holder == holder:
			held[key] = false
		}
		hist.add(client, in, out, p.Call, p.Return)
	}
	hist.count("cli", started, killed)
}

// linParseCLI reads a command's result.
func linParseCLI(t *testing.T, in linInput, p proc) linOutput {
	checkNoRace(t, p)
	if p.Killed {
		return linOutput{Unknown: true}
	}
	var out linOutput
	var err error
	switch {
	case in.Op == opAcquire && (p.Exit == 0 || p.Exit == 3):
		var l leaseOut
		if err = decodeLine(p.Stdout, &l); err == nil && (l.Key != in.Key || l.Poisoned == nil) {
			err = errors.New("wrong key or no poisoned field")
		}
		if err == nil {
			out = linOutput{OK: true, Holder: l.Holder, Generation: l.Generation, Token: l.Token,
				Poisoned: *l.Poisoned, Reentrant: l.Reentrant, Signalled: p.Exit == 3}
		}
	case in.Op == opAcquire && p.Exit == 4:
		out.Busy = true
		m := busyPattern.FindStringSubmatch(p.Stderr)
		if m == nil {
			err = errors.New("the message does not name the holder and its generation")
		} else {
			out.Holder = m[1]
			out.Generation, _ = strconv.ParseInt(m[2], 10, 64)
		}
	case (in.Op == opRelease || in.Op == opBreak) && p.Exit == 0:
		var r releaseOut
		if err = decodeLine(p.Stdout, &r); err == nil {
			out = linOutput{OK: true, Holder: r.Holder, Generation: r.Generation, Token: r.Token}
		}
	case in.Op == opRenew && p.Exit == 0:
		var l leaseOut
		if err = decodeLine(p.Stdout, &l); err == nil {
			out = linOutput{OK: true, Holder: l.Holder, Generation: l.Generation, Token: l.Token}
		}
	case (in.Op == opRelease || in.Op == opBreak || in.Op == opRenew) && p.Exit == 5:
		out.Refused = true
	case in.Op == opStatus && p.Exit == 0:
		var s statusOut
		if err = decodeLine(p.Stdout, &s); err == nil && len(s.Locks) != 1 {
			err = fmt.Errorf("%d locks, want 1", len(s.Locks))
		}
		if err == nil {
			l := s.Locks[0]
			out = linOutput{OK: true, State: l.State, Holder: l.Holder, Generation: l.Generation, Token: l.Token,
				PoisonedHolders: strings.Join(slices.Sorted(slices.Values(l.PoisonedHolders)), ",")}
		}
	default:
		err = errors.New("exit code SPEC.md does not allow here")
	}
	if err == nil && storeErrorPattern.MatchString(p.Stderr) {
		err = errors.New("a store error reached the user")
	}
	if err != nil {
		t.Errorf("%v: %s", err, p)
		return linOutput{Unknown: true, Err: err.Error()}
	}
	return out
}

// linLibClient runs library worker processes for one holder, one after the
// other, and kills some of them at a random moment.
func linLibClient(t *testing.T, db, dir string, keys []string, holder string, client, rounds, n int, seed uint64, hist *linHistory) {
	bin := testBinary(t)
	rng := rand.New(rand.NewPCG(seed, 0))
	started, killed := 0, 0
	for round := range rounds {
		out := filepath.Join(dir, fmt.Sprintf("%s-%d.jsonl", holder, round))
		env := childEnv(db, workerEnv+"=linearizability", "XPLOCK_LIN_HOLDER="+holder, "XPLOCK_LIN_OUT="+out,
			"XPLOCK_LIN_KEYS="+strings.Join(keys, ","), fmt.Sprintf("XPLOCK_LIN_OPS=%d", n),
			fmt.Sprintf("XPLOCK_LIN_SEED=%d", rng.Uint64()))
		var kill time.Duration
		if rng.IntN(3) != 0 {
			kill = time.Duration(1 + rng.Int64N(int64(2*time.Second)))
		}
		p := runProc(t, bin, nil, env, dir, kill)
		started++
		checkNoRace(t, p)
		if p.Killed {
			killed++
		} else if p.Exit != 0 {
			t.Errorf("library worker %s failed: exit %d\n%s", holder, p.Exit, p.Stderr)
		}
		records, err := readLinRecords(out)
		if err != nil {
			t.Errorf("reading %s: %v", out, err)
			return
		}
		for _, r := range records {
			switch {
			case r.ret != nil:
				if r.ret.Err != "" {
					t.Errorf("%s %s %s: unexpected error: %s", holder, r.call.Op, r.call.Key, r.ret.Err)
				}
				hist.add(client, r.call, *r.ret, r.callTime, r.retTime)
			case p.Killed:
				// Killed during the call: it took effect before Return or never.
				hist.add(client, r.call, linOutput{Unknown: true}, r.callTime, p.Return)
			default:
				t.Errorf("%s %s %s: no result recorded", holder, r.call.Op, r.call.Key)
			}
		}
	}
	hist.count("lib", started, killed)
}

type linPair struct {
	call              linInput
	ret               *linOutput
	callTime, retTime int64
}

// readLinRecords pairs a worker's calls and returns. A line cut short by a
// kill is ignored: its write never completed, so neither did what followed.
func readLinRecords(path string) ([]linPair, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil // killed before it began
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var pairs []linPair
	byID := map[int]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var r linRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			continue
		}
		switch {
		case r.In != nil:
			byID[r.ID] = len(pairs)
			pairs = append(pairs, linPair{call: *r.In, callTime: r.Time})
		case r.Out != nil:
			i, ok := byID[r.ID]
			if !ok {
				return nil, fmt.Errorf("return %d without a call", r.ID)
			}
			pairs[i].ret, pairs[i].retTime = r.Out, r.Time
		}
	}
	return pairs, sc.Err()
}

var _ = registerWorker("linearizability", linWorker)

// linWorker is a library user in a process of its own: it takes and
// releases locks with lock.New, Lock, TryLock, LockUnchecked and the Guard,
// and records every call and return in XPLOCK_LIN_OUT.
func linWorker() int {
	ctx := context.Background()
	holder := os.Getenv("XPLOCK_LIN_HOLDER")
	keys := strings.Split(os.Getenv("XPLOCK_LIN_KEYS"), ",")
	n, _ := strconv.Atoi(os.Getenv("XPLOCK_LIN_OPS"))
	seed, _ := strconv.ParseUint(os.Getenv("XPLOCK_LIN_SEED"), 10, 64)
	rng := rand.New(rand.NewPCG(seed, 1))
	f, err := os.OpenFile(os.Getenv("XPLOCK_LIN_OUT"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	record := func(r linRecord) {
		b, _ := json.Marshal(r)
		if _, err := f.Write(append(b, '\n')); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	store, err := sqlite.Open(ctx, os.Getenv("XPLOCK_DB"), sqlite.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer store.Close()
	locks := map[string]*lock.Lock{}
	for _, k := range keys {
		// No background renewal: every store call is one recorded operation.
		if locks[k], err = lock.New(store, k, holder, lock.Options{TTL: time.Hour, NoRenew: true}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	guards := map[string]*lock.Guard{}
	for id := range n {
		key := keys[rng.IntN(len(keys))]
		if held := slices.Sorted(maps.Keys(guards)); len(held) > 0 && rng.IntN(3) != 0 {
			key = held[rng.IntN(len(held))] // hand locks on soon
		}
		g := guards[key]
		in := linInput{Key: key, Holder: holder, Via: "lib"}
		r := rng.Float64()
		switch {
		case g != nil && r < 0.4:
			in.Op, in.KeepPoison = opRelease, rng.IntN(4) == 0
		case g != nil && r < 0.55:
			in.Op = opRenew
		case g != nil && r < 0.65:
			in.Op = opAck
		case r >= 0.9:
			in.Op = opStatus
		default:
			in.Op, in.Checked, in.Wait = opAcquire, rng.IntN(4) != 0, rng.IntN(2) == 0
		}
		if g != nil && in.Op != opAcquire && in.Op != opStatus {
			in.Token = g.Token()
		}
		call := time.Now().UnixNano()
		record(linRecord{ID: id, Time: call, In: &in})
		out := linDo(ctx, store, locks[key], g, in)
		ret := time.Now().UnixNano()
		record(linRecord{ID: id, Time: ret, Out: &out.linOutput})
		switch {
		case in.Op == opStatus:
		case out.guard != nil:
			if g != nil && out.guard != g {
				// A Lock counts its live guards: the one this acquisition
				// joined is let go, which the store does not see.
				g.Release(ctx)
			}
			guards[key] = out.guard
		default:
			delete(guards, key)
		}
	}
	return 0
}

type linResult struct {
	linOutput
	guard *lock.Guard // the held guard after the call, if any
}

// linDo performs one library call.
func linDo(ctx context.Context, store lock.Store, l *lock.Lock, g *lock.Guard, in linInput) linResult {
	var res linResult
	unexpected := func(err error) linResult {
		return linResult{linOutput: linOutput{Unknown: true, Err: err.Error()}}
	}
	switch in.Op {
	case opAcquire:
		actx, cancel := ctx, context.CancelFunc(func() {})
		if in.Wait {
			actx, cancel = context.WithTimeout(ctx, 100*time.Millisecond)
		}
		guard, err := l.Acquire(actx, lock.AcquireOptions{Unchecked: !in.Checked, NoWait: !in.Wait})
		cancel()
		var busy *lock.BusyError
		var poison *lock.PoisonError
		switch {
		case errors.As(err, &busy):
			res.Busy, res.Holder, res.Generation, res.guard = true, busy.Current.Holder, busy.Current.Generation, g
			return res
		case errors.As(err, &poison):
			res.Signalled = true
		case err != nil:
			return unexpected(err)
		}
		gr := guard.Grant()
		res.OK, res.Holder, res.Generation, res.Token = true, gr.Holder, gr.Generation, gr.Token
		res.Poisoned, res.Reentrant, res.guard = gr.Poisoned, gr.Reentrant, guard
	case opRelease, opRenew, opAck:
		var err error
		switch in.Op {
		case opRelease:
			if in.KeepPoison {
				err = g.ReleaseKeepPoison(ctx)
			} else {
				err = g.Release(ctx)
			}
		case opRenew:
			err = g.Renew(ctx, time.Hour)
		case opAck:
			err = g.ClearPoison(ctx)
		}
		switch {
		case err == nil:
			res.OK = true
			if in.Op != opRelease {
				res.guard = g
			}
		case errors.Is(err, lock.ErrLeaseLost):
			res.Refused = true
		default:
			return unexpected(err)
		}
	case opStatus:
		snap, err := store.Snapshot(ctx, in.Key)
		if err != nil {
			return unexpected(err)
		}
		res.OK, res.State = true, lock.StateFree
		if len(snap.Locks) == 1 {
			s := snap.Locks[0]
			res.State, res.Holder, res.Generation, res.Token = s.State, s.Holder, s.Generation, s.Token
			res.PoisonedHolders = strings.Join(slices.Sorted(slices.Values(s.PoisonedHolders)), ",")
		}
	}
	return res
}

// explain logs, for each key whose history is not linearizable, how far the
// checker got: the state after the longest linearizable prefix and the
// operations that could come next, none of which the rules allow.
func (m *linModel) explain(t *testing.T, ops []porcupine.Operation) {
	t.Helper()
	model := m.porcupine()
	for _, part := range model.Partition(ops) {
		res, info := porcupine.CheckOperationsVerbose(model, part, time.Minute)
		if res != porcupine.Illegal {
			continue
		}
		var longest []porcupine.Operation
		for _, p := range info.PartialLinearizationsOperations()[0] {
			if len(p) > len(longest) {
				longest = p
			}
		}
		type id struct {
			client        int
			call, return_ int64
		}
		done := map[id]bool{}
		state := model.Init()
		for _, op := range longest {
			done[id{op.ClientId, op.Call, op.Return}] = true
			_, state = model.Step(state, op.Input, op.Output)
		}
		var rest []porcupine.Operation
		for _, op := range part {
			if !done[id{op.ClientId, op.Call, op.Return}] {
				rest = append(rest, op)
			}
		}
		slices.SortFunc(rest, func(a, b porcupine.Operation) int { return cmp.Compare(a.Call, b.Call) })
		firstReturn := int64(math.MaxInt64)
		for _, op := range rest {
			firstReturn = min(firstReturn, op.Return)
		}
		var b strings.Builder
		fmt.Fprintf(&b, "key %s: %d of %d operations linearized; the last of them:\n",
			part[0].Input.(linInput).Key, len(longest), len(part))
		for _, op := range longest[max(0, len(longest)-8):] {
			fmt.Fprintf(&b, "  [%d..%d] %s\n", op.Call, op.Return, model.DescribeOperation(op.Input, op.Output))
		}
		fmt.Fprintf(&b, "state(s) then: %s\nnone of these can come next:\n", model.DescribeState(state))
		for _, op := range rest {
			if op.Call > firstReturn {
				break
			}
			fmt.Fprintf(&b, "  [%d..%d] %s\n", op.Call, op.Return, model.DescribeOperation(op.Input, op.Output))
		}
		t.Log(b.String())
	}
}
