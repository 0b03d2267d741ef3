package postgres_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/xplock/xplock/lock"
	"github.com/xplock/xplock/postgres"
)

// TestRetriedRequests sends requests a second time with the same request
// ID, as the store does when a connection fails after the server may have
// committed the first attempt: the retry is answered from what the first
// attempt did. An acquisition is not re-entrant and keeps its poison
// report; a release or a break is done, not refused; nothing is recorded
// twice.
func TestRetriedRequests(t *testing.T) {
	srv := needServer(t)
	db := srv.newDB(t)
	ctx := context.Background()
	s := open(t, srv.url(db, false), postgres.Options{})
	other := open(t, srv.url(db, true), postgres.Options{})
	for _, h := range []string{"alice", "bob"} {
		if _, err := other.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: h, TTL: time.Hour, Checked: true}); err != nil {
			t.Fatal(err)
		}
		if _, err := other.Release(ctx, lock.ReleaseRequest{Key: "k", Holder: h, Acknowledge: true}); err != nil {
			t.Fatal(err)
		}
	}
	// Alice acknowledged generation 1, bob held it since: she is poisoned.
	s.FixRequestID("11111111-1111-4111-8111-111111111111")
	req := lock.AcquireRequest{Key: "k", Holder: "alice", TTL: time.Hour, Checked: true}
	first, err := s.Acquire(ctx, req)
	if err != nil || !first.Acquired || first.Reentrant || !first.Poisoned || first.Generation != 3 {
		t.Fatalf("first attempt: %+v, %v", first, err)
	}
	retry, err := s.Acquire(ctx, req)
	if err != nil || !retry.Acquired || retry.Reentrant || !retry.Poisoned || retry.Token != first.Token {
		t.Fatalf("retry of the acquisition: %+v, %v; want the same tenure, not re-entrant, poisoned", retry, err)
	}
	s.FixRequestID("22222222-2222-4222-8222-222222222222")
	if again, err := s.Acquire(ctx, req); err != nil || !again.Reentrant || again.Token != first.Token {
		t.Fatalf("a new re-entrant acquisition: %+v, %v", again, err)
	}

	s.FixRequestID("33333333-3333-4333-8333-333333333333")
	release := lock.ReleaseRequest{Key: "k", Holder: "alice", Token: first.Token, Acknowledge: true}
	if _, err := s.Release(ctx, release); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Release(ctx, release); err != nil {
		t.Fatalf("retry of the release: %v, want it done", err)
	}
	// Alice's retried acquisition kept her tenure checked: the release
	// acknowledged generation 3.
	if snap, err := s.Snapshot(ctx, "k"); err != nil || len(snap.Locks) != 1 || len(snap.Locks[0].PoisonedHolders) != 1 {
		t.Fatalf("after alice's release: %+v, %v; want only bob poisoned", snap, err)
	}
	s.FixRequestID("44444444-4444-4444-8444-444444444444")
	if _, err := s.Release(ctx, release); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("a new release of the released lock: %v, want ErrNotHeld", err)
	}

	if _, err := other.Acquire(ctx, lock.AcquireRequest{Key: "k", Holder: "bob", TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	s.FixRequestID("55555555-5555-4555-8555-555555555555")
	by := lock.Breaker{Holder: "ops", User: "root", Host: "h", PID: 1}
	if _, err := s.Break(ctx, "k", by); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Break(ctx, "k", by); err != nil {
		t.Fatalf("retry of the break: %v, want it done", err)
	}
	s.FixRequestID("66666666-6666-4666-8666-666666666666")
	if _, err := s.Break(ctx, "k", by); !errors.Is(err, lock.ErrNotHeld) {
		t.Fatalf("a new break of the broken lock: %v, want ErrNotHeld", err)
	}

	history, err := s.History(ctx, "k", 0)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, e := range history {
		types = append(types, e.Type+" "+e.Holder)
	}
	want := []string{"acquired alice", "released alice", "acquired bob", "released bob",
		"acquired alice", "released alice", "acquired bob", "broken bob"}
	if len(types) != len(want) {
		t.Fatalf("history %q, want %q", types, want)
	}
	for i := range want {
		if types[i] != want[i] {
			t.Fatalf("history %q, want %q", types, want)
		}
	}
}
