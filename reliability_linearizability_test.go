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
	// Shared asks for a shared tenure, under a limit of Slots when above 0.
	Shared bool `json:"shared,omitempty"`
	Slots  int  `json:"slots,omitempty"`
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
	// Busy: not acquired, the lock is held in a conflicting mode or its
	// slots are full. NoAnswer: the wait ran out before the store answered.
	Busy     bool `json:"busy,omitempty"`
	NoAnswer bool `json:"no_answer,omitempty"`
	// Queued: busy while others were queued ahead, which the model does not
	// track: a free lock may refuse then ("but others wait for it first").
	Queued bool `json:"queued,omitempty"`
	// Conflict: refused on arrival, the other mode or another slot limit.
	Conflict bool `json:"conflict,omitempty"`
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
	// Holders are status's live tenures, as linHolders writes them.
	Holders string `json:"holders,omitempty"`
}

// linRecord is one line of a library worker's record file: a call before
// the operation starts, a return after it ends.
type linRecord struct {
	ID   int        `json:"id"`
	Time int64      `json:"t"`
	In   *linInput  `json:"in,omitempty"`
	Out  *linOutput `json:"out,omitempty"`
}

// linMaxHolders bounds the holders of one run (the model keeps arrays).
const linMaxHolders = 16

// linTenure is one holder's live tenure of a key.
type linTenure struct {
	Held, Shared bool
	Checked      bool // the tenure had a checked acquisition
	// Token is 0 while unknown, after an acquisition whose result was
	// lost; Floor is then a lower bound of it.
	Token, Floor int64
}

// linState is one key as SPEC.md describes it. Poison is kept as what it
// means rather than as tokens: a holder that acknowledged is poisoned once
// an exclusive tenure of another holder begins, until it acknowledges again.
type linState struct {
	Gen int64
	// LastHolder is the last exclusive holder; -1 before the first.
	LastHolder int8
	// Top is the key's highest token, 0 while unknown; MinNext is a lower
	// bound of the next tenure's token.
	Top, MinNext int64
	// Slots is the limit of the live shared tenures (0 when there are none).
	Slots   int8
	Tenures [linMaxHolders]linTenure
	// Acked: the holder has an acknowledgement; Poisoned: an exclusive
	// tenure of another holder began since.
	Acked, Poisoned [linMaxHolders]bool
}

func (s linState) shared() (readers int, writer bool) {
	for _, t := range s.Tenures {
		switch {
		case t.Held && t.Shared:
			readers++
		case t.Held:
			writer = true
		}
	}
	return readers, writer
}

// linModel is SPEC.md's sequential specification of one key.
type linModel struct {
	names []string
	index map[string]int8
	// generationPoison is a deliberately wrong rule, for showing that the
	// checker rejects histories: poison as "the generation moved since the
	// holder acknowledged", which misses a writer that came back.
	generationPoison bool
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

// learnToken checks a reported token of h's live tenure, or learns it.
func learnToken(s *linState, h int8, token int64) bool {
	t := &s.Tenures[h]
	switch {
	case token == 0:
		return true // not reported
	case t.Token != 0:
		return token == t.Token
	case token < t.Floor:
		return false
	}
	t.Token, s.MinNext = token, max(s.MinNext, token+1)
	return settle(s)
}

// learnTop checks a reported highest token of the key, or learns it.
func learnTop(s *linState, token int64) bool {
	switch {
	case s.Top != 0:
		return token == s.Top
	case token < s.MinNext-1:
		return false
	}
	s.Top, s.MinNext = token, max(s.MinNext, token+1)
	return settle(s)
}

// settle makes a live exclusive tenure's token and the key's highest agree:
// nothing began after it.
func settle(s *linState) bool {
	for i := range s.Tenures {
		t := &s.Tenures[i]
		if !t.Held || t.Shared {
			continue
		}
		switch {
		case t.Token == 0 && s.Top != 0:
			if s.Top < t.Floor {
				return false
			}
			t.Token = s.Top
		case t.Token != 0 && s.Top == 0:
			s.Top = t.Token
		}
		return t.Token == s.Top
	}
	return true
}

// holding reports whether h holds the lock in the tenure token; maybe is
// true when that depends on a token the model does not know.
func holding(s linState, h int8, token int64) (yes, maybe bool) {
	t := s.Tenures[h]
	switch {
	case !t.Held:
		return false, false
	case token == 0 || t.Token == token:
		return true, false
	case t.Token == 0:
		return false, true
	}
	return false, false
}

// conflict reports whether an acquisition is refused on arrival: h holds the
// key in the other mode, or a shared request names another limit than the
// one in force.
func conflict(s linState, h int8, in linInput) bool {
	if t := s.Tenures[h]; t.Held {
		if t.Shared != in.Shared {
			return true
		}
	}
	readers, _ := s.shared()
	return in.Shared && readers > 0 && int(s.Slots) != in.Slots
}

// grantable reports whether a new tenure in the request's mode can begin.
func grantable(s linState, in linInput) bool {
	readers, writer := s.shared()
	if !in.Shared {
		return readers == 0 && !writer
	}
	return !writer && (in.Slots == 0 || readers < in.Slots)
}

// acquire is a successful acquisition's effect (neither a conflict nor
// busy), with the token unknown when token is 0, and what it reports.
func (m *linModel) acquire(s linState, h int8, in linInput, token int64) (n linState, reentrant, poisoned, ok bool) {
	n = s
	t := &n.Tenures[h]
	reentrant = t.Held
	if reentrant {
		t.Checked = t.Checked || in.Checked
		if !learnToken(&n, h, token) {
			return n, false, false, false
		}
	} else {
		switch {
		case n.Gen == 0:
			n.Gen = 1
		case !in.Shared && n.LastHolder >= 0 && n.LastHolder != h:
			n.Gen++
		}
		if !in.Shared {
			if !m.generationPoison || n.LastHolder != h {
				for i := range n.Poisoned {
					n.Poisoned[i] = n.Poisoned[i] || n.Acked[i] && int8(i) != h
				}
			}
			n.LastHolder = h
		} else if readers, _ := s.shared(); readers == 0 {
			n.Slots = int8(in.Slots)
		}
		*t = linTenure{Held: true, Shared: in.Shared, Checked: in.Checked}
		switch {
		case token == 0:
			t.Floor = n.MinNext
			n.Top, n.MinNext = 0, n.MinNext+1
		case token < n.MinNext:
			return n, false, false, false
		default:
			t.Token, n.Top, n.MinNext = token, token, token+1
		}
	}
	if !n.Acked[h] && in.Checked {
		n.Acked[h], n.Poisoned[h] = true, false // a newcomer has nothing stale
	}
	return n, reentrant, n.Poisoned[h], true
}

// end ends h's tenure, acknowledging when asked and it was checked.
func (m *linModel) end(n *linState, h int8, acknowledge bool) {
	if acknowledge && n.Tenures[h].Checked {
		n.Acked[h], n.Poisoned[h] = true, false // SPEC rule 3
	}
	n.Tenures[h] = linTenure{}
	if readers, _ := n.shared(); readers == 0 {
		n.Slots = 0
	}
}

// effect is an operation's effect when its result is unknown.
func (m *linModel) effect(s linState, in linInput) linState {
	h := m.index[in.Holder]
	switch in.Op {
	case opAcquire:
		if conflict(s, h, in) || !s.Tenures[h].Held && !grantable(s, in) {
			return s
		}
		n, _, _, _ := m.acquire(s, h, in, 0)
		return n
	case opRelease, opAck:
		if yes, maybe := holding(s, h, in.Token); yes || maybe {
			n := s
			if maybe {
				n.Tenures[h].Token = in.Token
			}
			if in.Op == opAck {
				n.Acked[h], n.Poisoned[h] = true, false
			} else {
				m.end(&n, h, !in.KeepPoison)
			}
			return n
		}
	case opBreak:
		if readers, writer := s.shared(); readers > 0 || writer {
			n := s
			for i := range n.Tenures {
				n.Tenures[i] = linTenure{}
			}
			n.Slots = 0
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
		switch {
		case out.NoAnswer:
			// The wait ran out before the store answered: nothing was
			// decided and nothing seen.
			return true, s
		case conflict(s, h, in):
			return out.Conflict, s
		case out.Busy && out.Queued && !s.Tenures[h].Held:
			return out.Generation == s.Gen, s
		case out.Conflict && out.Queued && in.Shared && !s.Tenures[h].Held:
			// A slot limit other than the queued shared requests'.
			readers, _ := s.shared()
			return readers == 0, s
		case !s.Tenures[h].Held && !grantable(s, in):
			return out.Busy && out.Holder == m.name(s.LastHolder) && out.Generation == s.Gen, s
		case !out.OK:
			return false, s
		}
		n, reentrant, poisoned, ok := m.acquire(s, h, in, out.Token)
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
		if maybe && !learnToken(&n, h, in.Token) {
			return false, s
		}
		if out.Generation != 0 && out.Generation != n.Gen {
			return false, s
		}
		switch in.Op {
		case opRelease:
			// A release reports the released tenure's own token as its
			// history event has it or, when history has moved on, the
			// key after it: the last exclusive holder and the highest token.
			if out.Holder != "" && out.Holder != in.Holder && out.Holder != m.name(n.LastHolder) {
				return false, s
			}
			if out.Token != 0 {
				own, top := n, n
				switch {
				case out.Holder == in.Holder && learnToken(&own, h, out.Token):
					n = own
				case learnTop(&top, out.Token):
					n = top
				default:
					return false, s
				}
			}
			m.end(&n, h, !in.KeepPoison)
		case opRenew:
			if out.Holder != "" && out.Holder != in.Holder || !learnToken(&n, h, out.Token) {
				return false, s
			}
		case opAck:
			n.Acked[h], n.Poisoned[h] = true, false
		}
		return true, n

	case opBreak:
		if readers, writer := s.shared(); readers == 0 && !writer {
			return out.Refused, s
		}
		n := s
		if !out.OK || out.Generation != n.Gen || !m.learnHolders(&n, out.Holders) {
			return false, s
		}
		for i := range n.Tenures {
			n.Tenures[i] = linTenure{} // the broken holder stays the last holder
		}
		n.Slots = 0
		return true, n

	case opStatus:
		n := s
		readers, writer := s.shared()
		state := lock.StateFree
		if readers > 0 || writer {
			state = lock.StateHeld
		}
		if s.Gen == 0 {
			return out.OK && out.State == state && out.Holder == "" && out.Generation == 0 && out.Token == 0 &&
				out.PoisonedHolders == "" && out.Holders == "", s
		}
		if !out.OK || out.State != state || out.Holder != m.name(s.LastHolder) || out.Generation != s.Gen ||
			!learnTop(&n, out.Token) || out.PoisonedHolders != m.poisoned(s) {
			return false, s
		}
		return m.learnHolders(&n, out.Holders), n
	}
	return false, s
}

// learnHolders checks the live tenures status shows, or a break ended
// ("holder/mode/token", sorted; the mode may be left out), against the
// model's, learning their tokens.
func (m *linModel) learnHolders(n *linState, holders string) bool {
	var want []string
	for i, t := range n.Tenures {
		if t.Held {
			want = append(want, m.names[i])
		}
	}
	got := strings.Split(holders, ",")
	if holders == "" {
		got = nil
	}
	if len(got) != len(want) {
		return false
	}
	for _, g := range got {
		name, rest, _ := strings.Cut(g, "/")
		mode, tok, _ := strings.Cut(rest, "/")
		h, ok := m.index[name]
		token, err := strconv.ParseInt(tok, 10, 64)
		if !ok || err != nil || !n.Tenures[h].Held || mode != "" && n.Tenures[h].Shared != (mode == string(lock.ModeShared)) ||
			!learnToken(n, h, token) {
			return false
		}
	}
	return true
}

// linHolders writes live tenures as learnHolders reads them.
func linHolders(hs []lock.HolderState) string {
	var parts []string
	for _, h := range hs {
		parts = append(parts, fmt.Sprintf("%s/%s/%d", h.Holder, h.Mode, h.Token))
	}
	slices.Sort(parts)
	return strings.Join(parts, ",")
}

// poisoned lists the holders that are poisoned.
func (m *linModel) poisoned(s linState) string {
	var names []string
	for i, p := range s.Poisoned {
		if p {
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
		Init: func() []any { return []any{linState{LastHolder: -1, MinNext: 1}} },
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
			h := fnv.New64a()
			fmt.Fprintf(h, "%v", state.(linState))
			return h.Sum64()
		},
		DescribeOperation: func(input, output any) string {
			in, out := input.(linInput), output.(linOutput)
			return fmt.Sprintf("%s %s %s %+v -> %+v", in.Via, in.Holder, in.Op, in, out)
		},
		DescribeState: func(state any) string {
			s := state.(linState)
			var held []string
			for i, t := range s.Tenures {
				if t.Held {
					mode := "exclusive"
					if t.Shared {
						mode = fmt.Sprintf("shared(slots %d)", s.Slots)
					}
					held = append(held, fmt.Sprintf("%s %s token %d (>=%d) checked %v", m.names[i], mode, t.Token, t.Floor, t.Checked))
				}
			}
			return fmt.Sprintf("held by [%s], last writer %s, gen %d, top token %d (next>=%d), poisoned [%s]",
				strings.Join(held, "; "), m.name(s.LastHolder), s.Gen, s.Top, s.MinNext, m.poisoned(s))
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
	case out.Conflict:
		outcome = "conflict"
	case out.Signalled:
		outcome = "poisoned"
	}
	mode := ""
	if in.Shared {
		mode = " shared"
	}
	hist.perOp[in.Via+" "+in.Op+mode+" "+outcome]++
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
		// The checker can fail: the same history under a wrong poison rule.
		wrong := newLinModel(holders)
		wrong.generationPoison = true
		t.Logf("the same history under a wrong poison rule (poisoned only when the generation moved): %v",
			porcupine.CheckOperationsTimeout(wrong.porcupine(), hist.ops, time.Minute))
	case porcupine.Illegal:
		f, err := os.CreateTemp("", "xplock-linearizability-*.html")
		if err == nil {
			porcupine.Visualize(m.porcupine(), info, f)
			f.Close()
		}
		m.explain(t, hist.ops)
		recorded := strings.TrimSuffix(f.Name(), ".html") + ".json"
		if b, err := json.Marshal(hist.ops); err == nil {
			os.WriteFile(recorded, b, 0o600)
		}
		t.Fatalf("the history is not linearizable: no order of the operations gives the results SPEC.md's rules give; "+
			"see the visualization in %s and the operations in %s (seed %d)", f.Name(), recorded, seed)
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
			in.Shared, in.Slots = linSharedRequest(key, rng)
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
			switch {
			case in.Slots > 0:
				args = append(args, "--slots", strconv.Itoa(in.Slots))
			case in.Shared:
				args = append(args, "--shared")
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
		var r linLockOut
		if err = decodeLine(p.Stdout, &r); err == nil && (r.Acquired == nil || *r.Acquired || r.Key != in.Key) {
			err = errors.New(`the refusal is not {"acquired": false} with the key`)
		}
		out = linOutput{Busy: true, NoAnswer: r.Reason == "no-answer", Queued: len(r.Waiters) > 0,
			Holder: r.Holder, Generation: r.Generation}
	case in.Op == opAcquire && p.Exit == 2:
		var r linLockOut
		if err = decodeLine(p.Stdout, &r); err == nil && r.Reason != "slot-limit" && r.Reason != "mode-conflict" {
			err = errors.New("a usage error other than a slot-limit or mode conflict")
		}
		out.Conflict, out.Queued = true, len(r.Waiters) > 0
	case in.Op == opRelease && p.Exit == 0:
		var r releaseOut
		if err = decodeLine(p.Stdout, &r); err == nil {
			out = linOutput{OK: true, Holder: r.Holder, Generation: r.Generation, Token: r.Token}
		}
	case in.Op == opBreak && p.Exit == 0:
		var r struct {
			releaseOut
			Broken []lock.HolderState `json:"broken"`
		}
		if err = decodeLine(p.Stdout, &r); err == nil {
			out = linOutput{OK: true, Generation: r.Generation, Holders: linHolders(r.Broken)}
		}
	case in.Op == opRenew && p.Exit == 0:
		var l leaseOut
		if err = decodeLine(p.Stdout, &l); err == nil {
			out = linOutput{OK: true, Holder: l.Holder, Generation: l.Generation, Token: l.Token}
		}
	case (in.Op == opRelease || in.Op == opBreak || in.Op == opRenew) && p.Exit == 5:
		out.Refused = true
	case in.Op == opStatus && p.Exit == 0:
		var s struct {
			Locks []linLockOut `json:"locks"`
		}
		if err = decodeLine(p.Stdout, &s); err == nil && len(s.Locks) != 1 {
			err = fmt.Errorf("%d locks, want 1", len(s.Locks))
		}
		if err == nil {
			l := s.Locks[0]
			out = linOutput{OK: true, State: l.State, Holder: l.Holder, Generation: l.Generation, Token: l.Token,
				PoisonedHolders: strings.Join(slices.Sorted(slices.Values(l.PoisonedHolders)), ","),
				Holders:         linHolders(l.Holders)}
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

// linLockOut is a key as status prints it with --json, and as acquire
// prints a refusal.
type linLockOut struct {
	Acquired        *bool              `json:"acquired"`
	Reason          string             `json:"reason"`
	Key             string             `json:"key"`
	State           string             `json:"state"`
	Holder          string             `json:"holder"`
	Holders         []lock.HolderState `json:"holders"`
	Generation      int64              `json:"generation"`
	Token           int64              `json:"token"`
	PoisonedHolders []string           `json:"poisoned_holders"`
	Waiters         []json.RawMessage  `json:"waiters"`
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
	// One Lock per key and mode (and limit), all of this holder.
	locks := map[linInput]*lock.Lock{}
	lockFor := func(in linInput) (*lock.Lock, error) {
		id := linInput{Key: in.Key, Shared: in.Shared, Slots: in.Slots}
		if l, ok := locks[id]; ok {
			return l, nil
		}
		// No background renewal: every store call is one recorded operation.
		l, err := lock.New(store, in.Key, holder, lock.Options{TTL: time.Hour, NoRenew: true, Shared: in.Shared, Slots: in.Slots})
		locks[id] = l
		return l, err
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
			in.Shared, in.Slots = linSharedRequest(key, rng)
		}
		if g != nil && in.Op != opAcquire && in.Op != opStatus {
			in.Token = g.Token()
		}
		l, err := lockFor(in)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		call := time.Now().UnixNano()
		record(linRecord{ID: id, Time: call, In: &in})
		out := linDo(ctx, store, l, g, in)
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

// linSharedRequest chooses the mode of an acquisition: k0 is only ever
// taken exclusively, k1 also by readers without a limit, k2 by readers
// under a limit of 2; now and then a reader names the other limit.
func linSharedRequest(key string, rng *rand.Rand) (shared bool, slots int) {
	if key == "k0" || rng.IntN(2) == 0 {
		return false, 0
	}
	slots = map[string]int{"k2": 2}[key]
	if rng.IntN(8) == 0 {
		slots = 2 - slots
	}
	return true, slots
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
		var conflict *lock.ConflictError
		switch {
		case errors.As(err, &busy):
			res.Busy, res.Holder, res.Generation, res.guard = true, busy.Current.Holder, busy.Current.Generation, g
			res.Queued = busy.Ahead > 0
			res.NoAnswer = busy.Current.State == ""
			return res
		case errors.As(err, &conflict):
			res.Conflict, res.Queued, res.guard = true, conflict.Queued, g
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
			res.Holders = linHolders(s.Holders)
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

// TestLinearizabilityModelRejects shows the checker is not blind: the
// worked example with readers, run one operation after the other, is
// linearizable under the model, and is not when one result is changed or
// when the model is given the wrong poison rule (the generation moved),
// which misses step 6: the writer came back and wrote again.
func TestLinearizabilityModelRejects(t *testing.T) {
	acq := func(h string, shared bool) linInput {
		return linInput{Key: "cache", Holder: h, Op: opAcquire, Via: "lib", Checked: true, Shared: shared}
	}
	rel := func(h string) linInput { return linInput{Key: "cache", Holder: h, Op: opRelease, Via: "lib"} }
	got := func(h string, gen, token int64, poisoned bool) linOutput {
		return linOutput{OK: true, Holder: h, Generation: gen, Token: token, Poisoned: poisoned, Signalled: poisoned}
	}
	ok := linOutput{OK: true}
	steps := []struct {
		in  linInput
		out linOutput
	}{
		{acq("w", false), got("w", 1, 1, false)}, // 1
		{rel("w"), ok},
		{acq("r1", true), got("r1", 1, 2, false)}, // 2
		{acq("r2", true), got("r2", 1, 3, false)},
		{acq("w", false), linOutput{Busy: true, Holder: "w", Generation: 1}}, // 3
		{rel("r1"), ok},                                                      // 4
		{rel("r2"), ok},
		{acq("w", false), got("w", 1, 4, false)}, // 5
		{rel("w"), ok},
		{acq("r1", true), got("r1", 1, 5, true)}, // 6
		{rel("r1"), ok},                          // 7
		{acq("r1", true), got("r1", 1, 6, false)},
		{rel("r1"), ok},
		{acq("r1", false), got("r1", 2, 7, false)}, // 8
		{rel("r1"), ok},                            // 9
		{acq("w", false), got("w", 3, 8, true)},
	}
	history := func(change func(i int, out *linOutput)) []porcupine.Operation {
		var ops []porcupine.Operation
		for i, s := range steps {
			out := s.out
			change(i, &out)
			ops = append(ops, porcupine.Operation{ClientId: i, Input: s.in, Output: out, Call: int64(2 * i), Return: int64(2*i + 1)})
		}
		return ops
	}
	holders := []string{"w", "r1", "r2"}
	right, wrong := newLinModel(holders), newLinModel(holders)
	wrong.generationPoison = true
	asRecorded := history(func(int, *linOutput) {})
	if res := porcupine.CheckOperations(right.porcupine(), asRecorded); !res {
		t.Fatal("the worked example with readers is not linearizable under the model")
	}
	if porcupine.CheckOperations(wrong.porcupine(), asRecorded) {
		t.Error("a model that poisons only when the generation moved accepts the worked example with readers")
	}
	for name, change := range map[string]func(int, *linOutput){
		"the writer beside the readers (step 3)": func(i int, out *linOutput) {
			if i == 4 {
				*out = got("w", 1, 4, false)
			}
		},
		"the reader not told of poison (step 6)": func(i int, out *linOutput) {
			if i == 9 {
				out.Poisoned, out.Signalled = false, false
			}
		},
		"a token given twice (step 2)": func(i int, out *linOutput) {
			if i == 3 {
				out.Token = 2
			}
		},
	} {
		if porcupine.CheckOperations(right.porcupine(), history(change)) {
			t.Errorf("the model accepts the worked example with %s", name)
		}
	}
}
